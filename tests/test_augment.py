"""Per-image crop, flip and cutout, and the epoch table keyed by example index."""

import numpy as np
import tensorflow as tf

from fastcifar import augment


def _padded_batch(b=64, pad=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (b, 32 + 2 * pad, 32 + 2 * pad, 3), dtype=np.uint8)


def test_crop_is_the_slice_at_each_images_own_offset():
    x = _padded_batch(16)
    dy = np.arange(16) % 9
    dx = (np.arange(16) * 5) % 9
    out = augment.crop(tf.constant(x), tf.constant(dy, tf.int32), tf.constant(dx, tf.int32)).numpy()
    assert out.shape == (16, 32, 32, 3)
    for i in range(16):
        np.testing.assert_array_equal(out[i], x[i, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32])


def test_augment_draws_all_81_offsets_and_differs_within_a_batch():
    n = 4096
    u, _ = augment.epoch_table(3, 0, n)
    u = u.numpy()
    dy = np.minimum(np.floor(u[:, 1] * 9), 8).astype(int)
    dx = np.minimum(np.floor(u[:, 2] * 9), 8).astype(int)
    assert len(set(zip(dy, dx))) == 81
    # the first batch of 512 images does not share one offset (unlike keras RandomCrop)
    assert len(set(zip(dy[:512], dx[:512]))) > 50
    # and the augmented batch really is the slice at the drawn offsets
    x = _padded_batch(8, seed=1)
    out = augment.augment(tf.constant(x), tf.constant(u[:8]), lambda v: v, pad=4,
                          do_flip=False, cutout_size=0).numpy()
    for i in range(8):
        np.testing.assert_array_equal(out[i], x[i, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32])


def test_flip_mirrors_exactly_the_selected_images():
    x = _padded_batch(6, pad=0)
    sel = np.array([True, False, True, False, False, True])
    out = augment.flip(tf.constant(x), tf.constant(sel)).numpy()
    for i in range(6):
        np.testing.assert_array_equal(out[i], x[i, :, ::-1] if sel[i] else x[i])


def test_cutout_zeroes_one_square_of_the_given_size():
    x = tf.ones([5, 32, 32, 3])
    cy = tf.constant([0, 24, 10, 3, 17], tf.int32)
    cx = tf.constant([0, 24, 5, 20, 9], tf.int32)
    out = augment.cutout(x, cy, cx, 8).numpy()
    for i in range(5):
        zeros = out[i] == 0
        assert zeros.sum() == 8 * 8 * 3
        r, c = int(cy[i]), int(cx[i])
        assert zeros[r:r + 8, c:c + 8].all()
    assert set(np.unique(out)) == {0.0, 1.0}


def test_cutout_positions_stay_inside_the_image():
    u, _ = augment.epoch_table(0, 1, 2000)
    out = augment.augment(tf.ones([2000, 32, 32, 3]), u, lambda v: v, pad=0, do_flip=False,
                          cutout_size=8).numpy()
    assert ((out == 0).reshape(2000, -1).sum(1) == 8 * 8 * 3).all()


def test_epoch_table_depends_only_on_seed_and_epoch():
    a_u, a_p = augment.epoch_table(7, 2, 1000)
    b_u, b_p = augment.epoch_table(7, 2, 1000)
    c_u, c_p = augment.epoch_table(7, 3, 1000)
    np.testing.assert_array_equal(a_u.numpy(), b_u.numpy())
    np.testing.assert_array_equal(a_p.numpy(), b_p.numpy())
    assert not np.array_equal(a_p.numpy(), c_p.numpy())
    assert sorted(a_p.numpy().tolist()) == list(range(1000))  # a permutation


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    n = 500
    flips = [augment.epoch_table(4, e, n, alternating_flip=True)[0].numpy()[:, augment.FLIP] < 0.5
             for e in range(4)]
    for e in range(3):
        assert (flips[e] != flips[e + 1]).all()  # every image switches, every epoch
    assert 0.4 < flips[0].mean() < 0.6
    random_flips = [augment.epoch_table(4, e, n)[0].numpy()[:, augment.FLIP] < 0.5 for e in range(2)]
    assert (random_flips[0] != random_flips[1]).mean() < 0.7  # the default stays random


def test_epoch_table_is_identical_with_and_without_xla():
    def table():
        return augment.epoch_table(tf.constant(3, tf.int64), tf.constant(5, tf.int64), 3000,
                                   alternating_flip=True)

    u0, p0 = table()
    u1, p1 = tf.function(table, jit_compile=True)()
    np.testing.assert_array_equal(u0.numpy(), u1.numpy())
    np.testing.assert_array_equal(p0.numpy(), p1.numpy())
    u = u0.numpy()[:, [0, 1, 2, 4, 5]]  # column 3 holds the alternating flip's 0/1
    assert u.min() >= 0 and u.max() < 1
    assert abs(u[:, 1].mean() - 0.5) < 0.03 and abs(np.corrcoef(u[:, 1], u[:, 2])[0, 1]) < 0.06


def test_mul32_matches_wrapping_multiplication():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2 ** 32, 1000, dtype=np.uint64)
    for c in (0x7FEB352D, 0x846CA68B, 0xFFFFFFFF, 1):
        got = augment._mul32(tf.constant(x.astype(np.int64)), c).numpy()
        np.testing.assert_array_equal(got.astype(np.uint64), (x * np.uint64(c)) & np.uint64(0xFFFFFFFF))
