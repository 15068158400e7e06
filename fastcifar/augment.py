"""On-device, batched augmentation: per-image crop, flip, cutout, and the epoch's order.

All randomness comes from one table per epoch, drawn statelessly from (seed, epoch) with a
row per training example. Example i always reads row i, so what it sees depends on
(seed, epoch, i) only: batch size, steps per call or a split across devices cannot change it.
"""

from __future__ import annotations

import tensorflow as tf

TABLE_COLUMNS = 6  # order key, crop dy, crop dx, flip, cutout y, cutout x


def epoch_table(seed, epoch, n: int):
    """Uniform [n, 6] float32 table and the epoch's permutation (int64), both stateless."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    u = tf.random.stateless_uniform([n, TABLE_COLUMNS], seed=key, dtype=tf.float32)
    perm = tf.argsort(u[:, 0], stable=True)
    return u, tf.cast(perm, tf.int64)


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


def augment(x_padded, u, pad: int, do_flip: bool, cutout_size: int):
    """Crop + flip on the (uint8 or normalised) padded batch, using its table rows `u`.
    Cutout is applied separately, after normalisation (see `apply_cutout`)."""
    size = x_padded.shape[1] - 2 * pad
    x = crop(x_padded, _draw(u[:, 1], 2 * pad + 1), _draw(u[:, 2], 2 * pad + 1), size) \
        if pad else x_padded
    if do_flip:
        x = flip(x, u[:, 3] < 0.5)
    return x


def apply_cutout(x, u, cutout_size: int):
    if not cutout_size:
        return x
    span = x.shape[1] - cutout_size + 1
    return cutout(x, _draw(u[:, 4], span), _draw(u[:, 5], span), cutout_size)
