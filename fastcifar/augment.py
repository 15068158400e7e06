"""On-device, batched augmentation: per-image crop, flip, cutout, and the epoch's order.

All randomness comes from one table per epoch, drawn statelessly from (seed, epoch) with a
row per training example. Example i always reads row i, so what it sees depends on
(seed, epoch, i) only: batch size, steps per call or a split across devices cannot change it.
"""

from __future__ import annotations

import tensorflow as tf

# Columns of the epoch table: one uniform [0, 1) draw per example and purpose.
ORDER, CROP_Y, CROP_X, FLIP, CUTOUT_Y, CUTOUT_X = range(6)
TABLE_COLUMNS = 6


_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow: c is split into
    16-bit halves so every product stays below 2^48."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + tf.bitwise.left_shift(tf.bitwise.bitwise_and(x * hi, 0xFFFF), 16)) & _M32


def _mix32(x):
    """A 32-bit integer finaliser ("lowbias32"): integer ops only, so the same bits under
    XLA and without it (TF's stateless random ops differ between the two)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, 0x7FEB352D)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = _mul32(x, 0x846CA68B)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hash_bits(seed, epoch, n: int, columns: int):
    """[n, columns] int64 in [0, 2^32): a function of (seed, epoch, example, column) only."""
    key = _mix32(tf.cast(seed, tf.int64) & _M32)
    key = _mix32(tf.bitwise.bitwise_xor(key, tf.cast(epoch, tf.int64) & _M32))
    cols = _mix32(tf.bitwise.bitwise_xor(key, tf.range(columns, dtype=tf.int64)))  # [C]
    idx = tf.range(n, dtype=tf.int64)[:, None]
    return _mix32(tf.bitwise.bitwise_xor(_mix32(idx + 0x9E3779B9), cols[None, :]))


def epoch_table(seed, epoch, n: int, alternating_flip: bool = False):
    """Uniform [n, 6] float32 table and the epoch's permutation (int64), both stateless.

    With `alternating_flip` the flip column is not drawn per epoch: each example gets one
    coin from (seed, index) and is mirrored on every other epoch from there (airbench's
    "alternating flip"), so over two epochs every image is seen both ways."""
    bits = hash_bits(seed, epoch, n, TABLE_COLUMNS)
    table = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))  # [0, 1)
    if alternating_flip:
        coin = hash_bits(seed, 0x7FFFFFFF, n, 1)[:, 0] >= (1 << 31)  # not keyed by epoch
        odd = tf.equal(tf.math.floormod(tf.cast(epoch, tf.int64), 2), 1)
        flip_now = tf.math.logical_xor(coin, odd)
        table = tf.concat([table[:, :FLIP], tf.where(flip_now, 0.0, 1.0)[:, None],
                           table[:, FLIP + 1:]], axis=1)
    perm = tf.argsort(bits[:, ORDER], stable=True)  # 32-bit keys: ties are rare, and stable
    return table, tf.cast(perm, tf.int64)


def _draw(u, count: int):
    """Uniform [0,1) -> integer in [0, count)."""
    return tf.minimum(tf.cast(tf.floor(u * count), tf.int32), count - 1)


def crop(x, dy, dx, size: int = 32):
    """Each image's own `size` x `size` window at (dy, dx); one gather per axis."""
    r = tf.range(size, dtype=tf.int32)
    x = tf.gather(x, dy[:, None] + r[None, :], axis=1, batch_dims=1)
    return tf.gather(x, dx[:, None] + r[None, :], axis=2, batch_dims=1)


def flip(x, do_flip):
    """Mirror left-right where `do_flip` (bool [B]) is set."""
    return tf.where(do_flip[:, None, None, None], tf.reverse(x, axis=[2]), x)


def cutout(x, cy, cx, size: int):
    """Zero a `size` x `size` square at (cy, cx) per image: zero is the dataset mean after
    normalisation, as in the original."""
    h, w = x.shape[1], x.shape[2]
    rows = tf.range(h, dtype=tf.int32)[None, :]
    cols = tf.range(w, dtype=tf.int32)[None, :]
    in_r = (rows >= cy[:, None]) & (rows < cy[:, None] + size)  # [B, H]
    in_c = (cols >= cx[:, None]) & (cols < cx[:, None] + size)  # [B, W]
    keep = ~(in_r[:, :, None] & in_c[:, None, :])
    return x * tf.cast(keep, x.dtype)[..., None]


def augment(x_padded, rows, normalise, pad: int, do_flip: bool, cutout_size: int):
    """The whole augmentation of a batch: crop the padded images (uint8 or normalised),
    flip, `normalise`, then cut out (after normalisation, so the square is the dataset
    mean, as in the original). `rows` are the batch's rows of the epoch table."""
    size = x_padded.shape[1] - 2 * pad
    x = x_padded
    if pad:
        x = crop(x, _draw(rows[:, CROP_Y], 2 * pad + 1), _draw(rows[:, CROP_X], 2 * pad + 1),
                 size)
    if do_flip:
        x = flip(x, rows[:, FLIP] < 0.5)
    x = normalise(x)
    if cutout_size:
        span = x.shape[1] - cutout_size + 1
        x = cutout(x, _draw(rows[:, CUTOUT_Y], span), _draw(rows[:, CUTOUT_X], span),
                   cutout_size)
    return x


# Each view's weight in the test-time average, as airbench94 weights them: the image and
# its mirror half; the two one-pixel translations (each with its mirror) the other half.
TTA_WEIGHTS = {"none": (1.0,), "flip": (0.5, 0.5),
               "flip_translate": (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)}


def tta_views(x, mode: str) -> list:
    """Test-time views of a batch, in the order of `TTA_WEIGHTS[mode]`: the images, their
    mirrors (`flip`), then (`flip_translate`) the images shifted one pixel up-left (reflect
    padding), their mirrors, shifted down-right, their mirrors."""
    if mode == "none":
        return [x]
    mirror = lambda v: tf.reverse(v, axis=[2])
    views = [x, mirror(x)]
    if mode == "flip_translate":
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        h, w = x.shape[1], x.shape[2]
        for shifted in (padded[:, 0:h, 0:w], padded[:, 2:h + 2, 2:w + 2]):
            views += [shifted, mirror(shifted)]
    return views
