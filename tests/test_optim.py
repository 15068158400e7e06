"""The tutorial's schedule and its Nesterov form, against hand computations."""

import numpy as np
import pytest
import tensorflow as tf

from fastcifar.optim import TutorialNesterov, l2_penalty, lr_numpy, lr_tensor


@pytest.mark.parametrize("epochs", [24, 2, 10])
def test_schedule_matches_np_interp(epochs):
    spe, batch = 97, 512
    steps = np.arange(0, epochs * spe + 1)
    got = lr_tensor(tf.constant(steps, tf.int64), epochs * spe, 5 / 24, 0.4, batch).numpy()
    xs = [0, epochs * 5 / 24, epochs]  # the tutorial's knots, in epochs
    want = np.interp(steps / spe, xs, [0, 0.4, 0]) / batch
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(lr_numpy(steps, epochs * spe, 5 / 24, 0.4, batch), want)
    assert got[0] == 0 and abs(got.max() * batch - 0.4) < 0.01  # warm-up kept for short runs


def test_24_epoch_schedule_peaks_at_epoch_5():
    spe = 97
    lr = lr_tensor(tf.constant(5 * spe, tf.int64), 24 * spe, 5 / 24, 0.4, 1).numpy()
    assert abs(lr - 0.4) < 1e-6


def test_airbench_schedule_by_hand():
    """airbench94: factor 0.2 -> 1.0 over the first 23% of 476 steps, then -> 0.07."""
    total, peak = 476, 1.5
    for step, factor in ((0, 0.2), (238, None), (476, 0.07), (int(476 * 0.23), None)):
        got = float(lr_tensor(tf.constant(step, tf.int64), total, 0.23, peak, 1,
                              start=0.2, end=0.07)) / peak
        t = step / total
        want = (0.2 + 0.8 * t / 0.23) if t < 0.23 else 1.0 - 0.93 * (t - 0.23) / 0.77
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
        if factor is not None:
            assert got == pytest.approx(factor, rel=1e-5)


def test_nesterov_update_is_the_tutorials_form_with_a_changing_rate():
    rates = [0.1, 0.3, 0.05]
    step = tf.Variable(0, dtype=tf.int64)
    opt = TutorialNesterov(learning_rate=lambda: tf.gather(tf.constant(rates), step),
                           momentum=0.9)
    w = tf.Variable([1.0, -2.0])
    opt.build([w])
    grads = [np.array([0.5, 1.0]), np.array([-1.0, 0.25]), np.array([2.0, -0.5])]
    ref_w, ref_v = np.array([1.0, -2.0]), np.zeros(2)
    for g, lr in zip(grads, rates):
        opt.apply_gradients([(tf.constant(g, tf.float32), w)])
        step.assign_add(1)
        ref_v = 0.9 * ref_v + g                    # TF1 MomentumOptimizer / PyTorch
        ref_w = ref_w - lr * (g + 0.9 * ref_v)
    np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6)
    # Keras SGD keeps lr inside the velocity: with a changing rate the result differs
    keras_v, keras_w = np.zeros(2), np.array([1.0, -2.0])
    for g, lr in zip(grads, rates):
        keras_v = 0.9 * keras_v - lr * g
        keras_w = keras_w + 0.9 * keras_v - lr * g
    assert np.abs(keras_w - ref_w).max() > 1e-3


def test_l2_penalty_is_half_wd_batch_sum_of_squares():
    vs = [tf.Variable([1.0, 2.0]), tf.Variable([[3.0]])]
    got = l2_penalty(vs, 5e-4, 512).numpy()
    assert got == pytest.approx(0.5 * 5e-4 * 512 * 14.0)
    assert l2_penalty(vs, 0.0, 512).numpy() == 0.0


def test_label_smoothing_loss_matches_a_hand_computation():
    from fastcifar.train import cross_entropy

    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], np.float32)
    labels = np.array([0, 1])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    eps, k = 0.2, 3
    target = np.eye(k)[labels] * (1 - eps) + eps / k
    want = -(target * np.log(p)).sum(1)
    got = cross_entropy(tf.constant(labels), tf.constant(logits), eps).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    plain = cross_entropy(tf.constant(labels), tf.constant(logits), 0.0).numpy()
    np.testing.assert_allclose(plain, -np.log(p[[0, 1], labels]), rtol=1e-5)
