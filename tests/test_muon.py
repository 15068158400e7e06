"""Muon for the conv filters (`--muon-lr`, airbench94_muon's optimizer): the Newton-Schulz
iteration and the step, each against a computation written out here in numpy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fastcifar.config import FAST_TECHNIQUES, ConfigError, RuntimeConfig, recipe
from fastcifar.data import synthetic
from fastcifar.optim import TutorialNesterov, newton_schulz
from fastcifar.train import Trainer

A, B, C = 3.4445, -4.7750, 2.0315  # airbench94_muon's quintic


def _orthogonalised_by_svd(g, steps=3):
    """Newton-Schulz acts on each singular value alone: s -> p(p(p(s / |g|_F)))."""
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    s = s / np.linalg.norm(g)
    for _ in range(steps):
        s = A * s + B * s ** 3 + C * s ** 5
    return u @ np.diag(s) @ vt


@pytest.mark.parametrize("shape", [(4, 18), (18, 4), (5, 5)])
def test_newton_schulz_maps_each_singular_value_through_the_quintic_three_times(shape):
    g = np.random.default_rng(1).standard_normal(shape)
    got = newton_schulz(tf.constant(g, tf.float32)).numpy()
    np.testing.assert_allclose(got, _orthogonalised_by_svd(g), rtol=0, atol=2e-5)
    if shape[0] != shape[1]:  # a square Gaussian can have a singular value near 0
        # it whitens: every singular value ends near 1 (airbench: roughly 0.5 to 1.5)
        s = np.linalg.svd(got, compute_uv=False)
        assert s.min() > 0.5 and s.max() < 1.5, s


def test_two_optimizer_steps_by_hand_muon_for_the_filter_nesterov_for_the_bias():
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((3, 3, 2, 4))
    b0 = rng.standard_normal(4)
    grads = [(rng.standard_normal(w0.shape), rng.standard_normal(4)) for _ in range(2)]
    w = keras.Variable(w0.astype("float32"), name="kernel")
    b = keras.Variable(b0.astype("float32"), name="bias")
    opt = TutorialNesterov(learning_rate=0.1, momentum=0.9, muon=[w.path],
                           muon_learning_rate=0.1 * 2.0, muon_momentum=0.6)
    opt.build([w, b])
    for gw, gb in grads:
        opt.apply_gradients([(tf.constant(gw, tf.float32), w), (tf.constant(gb, tf.float32), b)])

    ew, eb, vw, vb = w0.copy(), b0.copy(), np.zeros_like(w0), np.zeros_like(b0)
    for gw, gb in grads:
        vw = 0.6 * vw + gw
        u = gw + 0.6 * vw
        ew = ew * 2.0 / np.linalg.norm(ew)  # sqrt(4 output channels) / |w|
        # PyTorch's (out, in, kh, kw) filter as a matrix: one row per output channel
        rows = np.transpose(u, (3, 2, 0, 1)).reshape(4, -1)
        step = _orthogonalised_by_svd(rows).reshape(4, 2, 3, 3).transpose(2, 3, 1, 0)
        ew = ew - 0.1 * 2.0 * step
        vb = 0.9 * vb + gb
        eb = eb - 0.1 * (gb + 0.9 * vb)
    np.testing.assert_allclose(w.numpy(), ew, rtol=0, atol=2e-5)
    np.testing.assert_allclose(b.numpy(), eb, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def data():
    return synthetic(256, 64, learnable=True, seed=5)


def _after_steps(data, n, **overrides):
    cfg = recipe("airbench94", width=4, batch_size=64, seed=1, **overrides)
    t = Trainer(cfg, RuntimeConfig(precision="float32", steps_per_call=n))
    prepared = t.prepare(data)
    loss = float(t.train_steps(prepared, n)[0].numpy())
    return t, loss, {v.path: v.numpy() for v in t.model.trainable_variables}


def test_the_trainer_moves_filters_by_muon_without_weight_decay_and_the_rest_by_sgd(data):
    # one step: after it, the filters' gradients would see the other weights' decay
    t, _, light = _after_steps(data, 1, muon_lr=0.24)
    _, _, heavy = _after_steps(data, 1, muon_lr=0.24, weight_decay=0.05)
    _, _, sgd = _after_steps(data, 1)
    filters = [v.path for v in t.muon_variables]
    assert len(filters) == 6 and all(len(light[p].shape) == 4 for p in filters)
    for p in filters:  # decay does not reach Muon's filters; Muon moves them its own way
        np.testing.assert_allclose(heavy[p], light[p], rtol=1e-5, atol=1e-6)
        assert np.abs(light[p] - sgd[p]).max() > 1e-3, p
    others = [p for p in light if p not in filters and np.abs(light[p]).max() > 0]
    assert others and any(np.abs(heavy[p] - light[p]).max() > 1e-4 for p in others)


def test_muon_trains_the_net_and_is_a_technique_ablate_can_switch_off(data):
    # 40 steps is the whole run here (9.9 epochs of 4 batches). Measured: the first step's
    # summed loss 148.4, steps 33-40 at 133.0 each (SGD alone: 123.0); a step of the wrong
    # sign ends at 147.4 (checked); the step's form is the hand test's job above.
    first = _after_steps(data, 1, muon_lr=0.24)[1]
    late = (_after_steps(data, 40, muon_lr=0.24)[1] - _after_steps(data, 32, muon_lr=0.24)[1]) / 8
    assert np.isfinite(late) and late < 0.95 * first, (first, late)
    on = recipe("airbench94", muon_lr=0.24)
    assert on.replace(**FAST_TECHNIQUES["muon"]) != on
    assert recipe("airbench94").replace(**FAST_TECHNIQUES["muon"]) == recipe("airbench94")


def test_muon_on_a_model_without_filters_is_one_clear_error():
    def dense_only(policy):
        image = keras.Input((32, 32, 3))
        x = keras.layers.Flatten(dtype=policy)(image)
        return keras.Model(image, keras.layers.Dense(10, dtype="float32")(x))

    with pytest.raises(ConfigError, match="muon_lr.*no trainable conv filters"):
        Trainer(recipe("davidnet", batch_size=64, muon_lr=0.1),
                RuntimeConfig(precision="float32"), model=dense_only)
