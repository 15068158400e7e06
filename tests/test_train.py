"""The compiled trainer: weight decay, loss scaling, step loops, compile hygiene, eval."""

import numpy as np
import pytest
import tensorflow as tf

from fastcifar.config import RuntimeConfig, recipe
from fastcifar.data import synthetic
from fastcifar.train import Trainer

WIDTH, BATCH = 4, 32


def make_trainer(precision="float32", xla=False, **overrides):
    overrides.setdefault("epochs", 4)
    cfg = recipe("davidnet", width=WIDTH, batch_size=BATCH, **overrides)
    rt = RuntimeConfig(precision=precision, xla=xla, steps_per_call=4, eval_batch_size=64)
    return Trainer(cfg, rt)


@pytest.fixture(scope="module")
def data():
    return synthetic(256, 100, learnable=True, seed=1)


@pytest.fixture(scope="module")
def f32(data):
    """One compiled float32 trainer shared by the module."""
    tr = make_trainer()
    tr.compile(len(data.x_train), len(data.x_test))
    return tr, tr.prepare(data)


def _weights(tr):
    return [v.numpy().copy() for v in tr.model.trainable_variables]


def test_n_steps_in_one_call_equal_n_single_calls(f32):
    tr, dd = f32
    snap = tr.snapshot()
    tr.step.assign(5)  # mid-epoch, lr > 0, crosses into epoch 1 at step 8
    tr.train_steps(dd, 6)
    together = _weights(tr) + [tr.step.numpy()]
    tr.restore(snap)
    tr.step.assign(5)
    for _ in range(6):
        tr.train_steps(dd, 1)
    single = _weights(tr) + [tr.step.numpy()]
    tr.restore(snap)
    assert together[-1] == single[-1] == 11
    for a, b in zip(together, single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0], _weights(tr)[0])  # training did move the weights


def test_compile_leaves_no_trace(data):
    tr = make_trainer(dropout=0.1)  # dropout adds RNG state to restore
    tr.prepare(data)
    tr.step.assign(20)  # lr > 0 so a leaked step would move the weights
    before = tr.snapshot()
    seconds = tr.compile(len(data.x_train), len(data.x_test))
    after = tr.snapshot()
    assert seconds > 0
    assert len(before) == len(after) > 60
    paths = [getattr(v, "path", v.name) for v in tr.state_variables()]
    assert any("seed_generator" in p for p in paths)  # dropout RNG is part of the state
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # and the compiled step does change that state when run for real
    tr.train_steps(tr.prepare(data), 1)
    changed = [not np.array_equal(a, b) for a, b in zip(before, tr.snapshot())]
    assert sum(changed) > 30


def test_evaluation_counts_every_test_image_once(f32, data):
    tr, dd = f32
    assert len(data.x_test) % 64 != 0
    ev = tr.evaluate_prepared(dd)
    assert ev["count"] == len(data.x_test) == 100
    logits = tr.model(tr.normalise(tf.constant(data.x_test), dd.mean, dd.std), training=False)
    acc = np.mean(np.argmax(logits.numpy(), -1) == data.y_test)
    assert ev["test_acc"] == pytest.approx(acc, abs=1e-6)


def _one_step_delta(tr, dd, start_step):
    snap = tr.snapshot()
    tr.step.assign(start_step)
    w0 = _weights(tr)
    tr.train_steps(dd, 1)
    w1 = _weights(tr)
    tr.restore(snap)
    return w0, w1


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_weight_decay_changes_the_update_by_lr_times_wd_b_w(data, precision):
    wd = 5e-3
    deltas = {}
    for decay in (0.0, wd):
        tr = make_trainer(precision=precision, weight_decay=decay, seed=3)
        dd = tr.prepare(data)
        start = 8  # start of epoch 1: lr > 0, and the first step of a fresh velocity
        if precision == "mixed_float16":
            tr.optimizer.dynamic_scale.assign(64.0)  # a scale that does not overflow
        w0, w1 = _one_step_delta(tr, dd, start)
        tr.step.assign(start)
        lr = float(tr.learning_rate().numpy())
        deltas[decay] = (w0, w1, lr)
    w0, w1_plain, lr = deltas[0.0]
    _, w1_decay, _ = deltas[wd]
    # first Nesterov step from zero velocity: dw = -lr (1 + mu) g, and g gains wd*B*w
    expect = -lr * 1.9 * wd * BATCH
    kernel = 0  # the first conv kernel
    got = (w1_decay[kernel] - w1_plain[kernel])
    np.testing.assert_allclose(got, expect * w0[kernel], rtol=2e-2, atol=1e-7)
    assert np.abs(got).max() > 1e-5


def test_loss_scaling_skips_non_finite_steps_halves_the_scale_and_counts_the_step(data):
    tr = make_trainer(precision="mixed_float16")
    dd = tr.prepare(data)
    tr.step.assign(8)
    opt = tr.optimizer
    opt.dynamic_scale.assign(2.0 ** 40)  # overflows float16 gradients: an injected inf
    w0 = _weights(tr)
    tr.train_steps(dd, 1)
    assert opt.dynamic_scale.numpy() == 2.0 ** 39
    assert tr.step.numpy() == 9
    for a, b in zip(w0, _weights(tr)):
        np.testing.assert_array_equal(a, b)
    assert int(opt.iterations.numpy()) == 0  # the optimizer's own counter stalls
    opt.dynamic_scale.assign(2.0 ** 10)
    tr.train_steps(dd, 1)
    assert tr.step.numpy() == 10
    assert not np.array_equal(w0[0], _weights(tr)[0])


def _augmented_by_example(tr, dd, steps):
    """{example index: (augmented image, label)} over the next `steps` steps."""
    seen = {}
    for _ in range(steps):
        for idx, images, labels in tr.peek_batch(dd):
            for i, image, label in zip(idx, images, labels):
                seen[int(i)] = (image, int(label))
        tr.train_steps(dd, 1)
    return seen


def test_batch_size_does_not_change_what_an_example_sees(data):
    """Each example's augmented image in an epoch is the same at batch 32 and 64."""
    a = make_trainer(seed=5)
    b = Trainer(recipe("davidnet", width=WIDTH, batch_size=64, seed=5, epochs=4),
                RuntimeConfig(precision="float32", xla=False))
    at_32 = _augmented_by_example(a, a.prepare(data), 8)  # one epoch of 256 images
    at_64 = _augmented_by_example(b, b.prepare(data), 4)
    assert len(at_32) == len(at_64) == 256
    changed = 0
    for i, (image, label) in at_32.items():
        np.testing.assert_array_equal(image, at_64[i][0])
        assert label == at_64[i][1] == data.y_train[i]
        raw = a.normalise(tf.constant(data.x_train[i:i + 1]), a.data.mean,
                          a.data.std).numpy()[0]
        changed += not np.allclose(image, raw)  # augmented (cutout at least), not raw
    assert changed == 256


def test_a_call_started_mid_epoch_trains_on_what_a_run_from_step_0_would(data):
    """Step 5 of 8 (mid-epoch 0) and step 13 (mid-epoch 1), started cold, see exactly the
    batch a run from step 0 sees there: same examples, same crops, flips and cutouts."""
    for start in (5, 13):
        warm = make_trainer(seed=7)
        dd = warm.prepare(data)
        warm.train_steps(dd, start)  # a run from step 0 reaches `start`
        (want_idx, want_x, want_y), = warm.peek_batch(dd)
        cold = make_trainer(seed=7)
        cold_dd = cold.prepare(data)
        cold.step.assign(start)
        (idx, x, y), = cold.peek_batch(cold_dd)
        assert len(set(idx.tolist())) == BATCH  # 32 different examples, not example 0
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_allclose(x, want_x, rtol=0, atol=0)


def test_the_clock_includes_every_evaluation_and_eval_every_skips_some(data, monkeypatch):
    import time

    tr = Trainer(recipe("davidnet", width=WIDTH, batch_size=BATCH, epochs=3, target=0.05),
                 RuntimeConfig(precision="float32", steps_per_call=4, eval_batch_size=64,
                               eval_every=2))
    real = tr.evaluate_prepared

    def slow_evaluation(dd):  # an evaluation that takes at least 0.3 s
        time.sleep(0.3)
        return real(dd)

    monkeypatch.setattr(tr, "evaluate_prepared", slow_evaluation)
    res = tr.fit(data)
    rows = res.history
    assert [r["test_acc"] is not None for r in rows] == [False, True, True]  # 2, and last
    assert rows[0]["eval_seconds"] == 0
    assert rows[1]["eval_seconds"] >= 0.3 and rows[2]["eval_seconds"] >= 0.3
    assert rows[1]["seconds"] - rows[0]["seconds"] >= rows[1]["epoch_seconds"] + 0.3
    clock = res.prep_seconds
    for r in rows:
        clock += r["epoch_seconds"] + r["eval_seconds"]
        assert r["seconds"] == pytest.approx(clock, rel=1e-9)
    assert res.eval_seconds == pytest.approx(rows[1]["eval_seconds"] + rows[2]["eval_seconds"])
    assert res.train_seconds == pytest.approx(clock, rel=1e-9)
    # the target (5%) is certified by the first evaluation, at the end of epoch 2
    assert res.seconds_to_target == pytest.approx(rows[1]["seconds"], rel=1e-9)
    assert res.final_test_acc == rows[2]["test_acc"]


LEARN = [("float32", False), ("mixed_bfloat16", False)]


@pytest.mark.parametrize("precision,xla", LEARN, ids=[f"{p}-xla{int(x)}" for p, x in LEARN])
def test_learnable_synthetic_trains_well_above_chance(precision, xla):
    ds = synthetic(1024, 96, learnable=True, seed=2)  # 64 steps
    tr = make_trainer(precision=precision, xla=xla, epochs=2)
    res = tr.fit(ds)
    assert len(res.history) == 2
    assert res.final_test_acc > 0.5, res.history  # chance is 0.1
    assert res.images_per_sec > 0 and res.compile_seconds > 0


@pytest.mark.parametrize("precision,tol", [("float32", 1e-3), ("mixed_float16", 1e-2)])
def test_xla_steps_compute_what_the_uncompiled_steps_do(data, precision, tol):
    """XLA on the CPU takes ~1.3 s a step at width 4 (oneDNN ~0.05 s): instead of
    training to an accuracy, compiled steps must give the losses uncompiled steps give
    from the same start: the first 4 within rounding (float16 rounds differently in XLA's
    fusions; float32 seen up to 1.7e-4 relative, on an AMD EPYC whose oneDNN kernels round
    differently from XLA's), the next 4 within 5% (seen: 0.12% in float32, 2.2% in float16, as
    rounding differences grow through BatchNorm and max-pools)."""
    losses = {}
    for xla in (False, True):
        tr = make_trainer(precision=precision, xla=xla, seed=4)
        dd = tr.prepare(data)
        losses[xla] = [float(tr.train_steps(dd, 4)[0].numpy()) for _ in range(2)]
        if xla:
            assert tr.runtime.xla  # it really compiled with XLA
            ev = tr.evaluate_prepared(dd)
            assert ev["count"] == 100 and np.isfinite(ev["test_loss"])
    np.testing.assert_allclose(losses[True][0], losses[False][0], rtol=tol)
    np.testing.assert_allclose(losses[True][1], losses[False][1], rtol=0.05)
    assert losses[True][1] < losses[True][0] and losses[False][1] < losses[False][0]


def test_saved_model_is_the_evaluated_model(data, tmp_path):
    """With EMA and TTA, the file holds the averaged weights, the training statistics and
    the views: loading it and calling it on pixels gives evaluation's logits."""
    import keras

    tr = make_trainer(ema=0.5, tta="flip_translate", seed=6)
    dd = tr.prepare(data)
    tr.train_steps(dd, 12)
    path = tmp_path / "model.keras"
    tr.save(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    loaded = keras.models.load_model(path, safe_mode=True)
    pixels = data.x_test.astype(np.float32)
    got = loaded(pixels, training=False).numpy()
    # by hand: average weights, normalise with the training statistics, 6 views weighted
    # as airbench: the image and its mirror 1/4 each, the two translations and theirs 1/8
    hand = make_trainer(seed=6)
    hand.model.set_weights([e.numpy() for e in tr.ema_variables])
    mean = data.x_train.reshape(-1, 3).mean(0)
    std = data.x_train.reshape(-1, 3).std(0)
    x = (pixels - mean) / std
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    f = lambda v: hand.model(v.astype(np.float32), training=False).numpy()
    want = 0.25 * (f(x) + f(x[:, :, ::-1]))
    for shifted in (padded[:, :32, :32], padded[:, 2:, 2:]):
        want += 0.125 * (f(shifted) + f(shifted[:, :, ::-1]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)  # a missing view: ~0.4
    np.testing.assert_allclose(tr.predict(data.x_test), got, rtol=0, atol=1e-3)
    ev = tr.evaluate_prepared(dd)
    assert ev["test_acc"] == pytest.approx(np.mean(np.argmax(got, -1) == data.y_test))
    live = tr.model(x.astype(np.float32), training=False).numpy()
    assert np.abs(live - got).max() > 1e-2  # the live weights without TTA are another model


def test_ema_equals_the_hand_computed_average_after_3_steps(data):
    d = 0.5
    tr = make_trainer(ema=d, seed=4)
    dd = tr.prepare(data)
    tr.step.assign(8)
    sources = tr.ema_sources()
    hand = [v.numpy().astype(np.float64) for v in sources]  # starts at the initial weights
    for _ in range(3):
        tr.train_steps(dd, 1)
        n = tr.step.numpy()  # the decay warms up as min(d, (1 + n) / (10 + n)): here d
        assert min(d, (1 + n) / (10 + n)) == d
        hand = [d * h + (1 - d) * v.numpy() for h, v in zip(hand, sources)]
    for e, h in zip(tr.ema_variables, hand):
        np.testing.assert_allclose(e.numpy(), h, rtol=1e-5, atol=1e-6)
    # evaluation uses the averaged weights and leaves the live ones in place
    live = [v.numpy().copy() for v in sources]
    ev = tr.evaluate_prepared(dd)
    for v, l in zip(sources, live):
        np.testing.assert_array_equal(v.numpy(), l)
    averaged = make_trainer(seed=4)
    for v, h in zip(averaged.ema_sources(), hand):
        v.assign(h.astype(np.float32))
    x = ((data.x_test - data.x_train.reshape(-1, 3).mean(0))
         / data.x_train.reshape(-1, 3).std(0)).astype(np.float32)
    losses = {}
    for name, model in (("averaged", averaged.model), ("live", tr.model)):
        logits = model(x, training=False)
        losses[name] = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            data.y_test, logits)))
    assert ev["test_loss"] == pytest.approx(losses["averaged"], rel=1e-4)
    assert abs(losses["live"] - losses["averaged"]) > 1e-3  # the two really differ


@pytest.mark.parametrize("mode", ["flip", "flip_translate"])
def test_tta_prediction_is_the_weighted_mean_of_the_views(f32, data, mode):
    tr, dd = f32
    x = tr.normalise(tf.constant(data.x_test[:4]), dd.mean, dd.std).numpy()
    f = lambda v: tr.model(v, training=False).numpy()
    # by hand: the mirror half; with flip_translate, the one-pixel shifts up-left and
    # down-right (reflect-padded) and their mirrors the other half
    if mode == "flip":
        want = 0.5 * (f(x) + f(x[:, :, ::-1]))
    else:
        padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
        want = 0.25 * (f(x) + f(x[:, :, ::-1]))
        for shifted in (padded[:, :32, :32], padded[:, 2:, 2:]):
            want += 0.125 * (f(shifted) + f(shifted[:, :, ::-1]))
    tta = make_trainer(tta=mode)
    tta.model.set_weights(tr.model.get_weights())
    np.testing.assert_allclose(tta.tta_logits(tf.constant(x)).numpy(), want, rtol=1e-5,
                               atol=1e-6)
    single = tr.model(x, training=False).numpy()
    assert np.abs(single - want).max() > 1e-4  # the views do change the prediction


def test_least_confident_picks_the_lowest_top_probabilities():
    from fastcifar.evaluation import least_confident

    # top softmax probabilities by hand: row 0 ~1.0, row 1 1/3 (uniform), row 2 e/(e+2)
    # = 0.58, row 3 e^4/(e^4+2) = 0.96, row 4 1/2 (two tied classes)
    logits = tf.constant([[9.0, 0, 0], [1, 1, 1], [1, 0, 0], [4, 0, 0], [2, 2, -30]])
    assert sorted(least_confident(logits, 0.4).numpy()) == [1, 4]  # ceil(0.4 x 5) = 2
    assert sorted(least_confident(logits, 0.5).numpy()) == [1, 2, 4]  # ceil(2.5) = 3
    assert sorted(least_confident(logits, 0.01).numpy()) == [1]
    # the batch size known only when run (a served model)
    dynamic = tf.function(lambda z: least_confident(z, 0.4),
                          input_signature=[tf.TensorSpec([None, 3])])
    assert sorted(dynamic(logits).numpy()) == [1, 4]


def test_selective_tta_views_only_the_least_confident_images(f32, data):
    tr, dd = f32
    x = tr.normalise(tf.constant(data.x_test[:8]), dd.mean, dd.std).numpy()
    f = lambda v: tr.model(v, training=False).numpy()
    plain = f(x)
    full = 0.5 * (plain + f(x[:, :, ::-1]))
    p = np.exp(plain - plain.max(1, keepdims=True))
    top = (p / p.sum(1, keepdims=True)).max(1)
    chosen = np.argsort(top)[:2]  # 0.25 x 8 images, the lowest top probabilities
    want = plain.copy()
    want[chosen] = full[chosen]
    sel = make_trainer(tta="flip", tta_fraction=0.25)
    sel.model.set_weights(tr.model.get_weights())
    got = sel.tta_logits(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(plain[chosen] - full[chosen]).max() > 1e-4  # the views changed those
    # the served model computes the same (it views every image, then keeps the chosen)
    from fastcifar.serving import inference_model

    served = inference_model(sel.model, dd.mean.numpy(), dd.std.numpy(), "flip",
                             tta_fraction=0.25)
    np.testing.assert_allclose(served(data.x_test[:8].astype(np.float32)).numpy(), want,
                               rtol=1e-4, atol=1e-5)


def test_xla_that_cannot_compile_falls_back_under_auto_and_fails_when_asked_for(
        data, monkeypatch, capsys):
    """As TF 2.21 with some cuDNN 9 versions does on GPUs: XLA's conv autotuner finds no
    supported configs. Injected at the seam where compilation happens."""
    import dataclasses

    from fastcifar import engine as train_mod
    from fastcifar.errors import ConfigError

    real_compile, real_resolve = Trainer._compile_on, train_mod.resolve

    def autotuner_fails(self, dummy):
        if self.runtime.xla:
            raise tf.errors.InternalError(None, None, "Autotuning failed: could not find "
                                          "any supported configs\nmore detail")
        return real_compile(self, dummy)

    monkeypatch.setattr(Trainer, "_compile_on", autotuner_fails)
    # `auto` resolves to XLA on (as on a GPU)
    monkeypatch.setattr(train_mod, "resolve",
                        lambda rt: dataclasses.replace(real_resolve(rt), xla=True))
    auto = make_trainer(xla=None)
    assert auto.runtime.xla
    assert auto.compile(len(data.x_train), len(data.x_test)) > 0
    assert not auto.runtime.xla and "XLA failed to compile" in auto.runtime.why
    assert "could not find any supported configs" in auto.describe_runtime()["why"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastcifar: warning: XLA could not compile")
    loss, _ = auto.train_steps(auto.prepare(data), 2)  # and it trains, uncompiled
    assert np.isfinite(float(loss.numpy()))
    explicit = make_trainer(xla=True)
    with pytest.raises(ConfigError, match=r"XLA could not compile the training step .*"
                                          r"could not find any supported configs.*--no-xla"):
        explicit.compile(len(data.x_train), len(data.x_test))
