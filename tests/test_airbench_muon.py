"""Recipe `airbench94_muon`: its numbers against the record script's (airbench94_muon.py:
batch 2000, head lr 0.67, bias lr 0.053, wd 2e-6 x batch / lr, SGD Nesterov 0.85, Muon 0.24
/ 0.6 in bfloat16, 8 epochs linear to 0, whitening bias linear to 0 over 3 epochs), each
checked by hand on a tiny net."""

import numpy as np
import pytest
import tensorflow as tf

from fastcifar.config import ConfigError, RuntimeConfig, recipe
from fastcifar.data import synthetic
from fastcifar.optim import newton_schulz
from fastcifar.train import Trainer


def test_the_recipe_holds_the_record_scripts_numbers_in_this_trainers_units():
    r = recipe("airbench94_muon")
    assert (r.batch_size, r.epochs, r.net, r.width) == (2000, 8, "airbench94_muon", 64)
    head_lr = r.lr_peak / r.batch_size  # per summed loss, as the record script's lr
    assert r.lr_batch == 2000  # and the same at any batch, as there
    assert head_lr == pytest.approx(0.67)
    assert head_lr * r.bias_lr_scale == pytest.approx(0.053)
    # coupled decay coefficient (PyTorch's weight_decay) = wd / lr of the group
    assert r.weight_decay * r.batch_size == pytest.approx(2e-6 * 2000 / 0.67)
    assert r.weight_decay * r.batch_size / r.bias_lr_scale == pytest.approx(2e-6 * 2000 / 0.053)
    assert (r.momentum, r.muon_lr, r.muon_momentum, r.muon_bf16) == (0.85, 0.24, 0.6, True)
    assert (r.peak_fraction, r.lr_start, r.lr_end) == (0.0, 1.0, 0.0)  # no warm-up
    assert (r.label_smoothing, r.lookahead, r.ema, r.tta) == (0.2, False, 0.0, "flip_translate")
    assert (r.whiten, r.whiten_bias_epochs, r.whiten_bias_linear) == (True, 3, True)
    assert (r.crop_padding, r.cutout, r.alternating_flip, r.activation) == (2, 0, True, "gelu")


@pytest.fixture(scope="module")
def muon_trainer():
    data = synthetic(44 * 16, 64, learnable=True, seed=3)  # 16 batches of 44: 16 steps/epoch
    cfg = recipe("airbench94_muon", width=4, batch_size=44, epochs=8, seed=2)
    t = Trainer(cfg, RuntimeConfig(precision="float32", xla=False))
    return t, t.prepare(data)


def test_the_schedule_is_linear_to_zero_and_the_whitening_bias_reaches_zero_at_epoch_3(
        muon_trainer):
    t, _ = muon_trainer
    total, per_epoch = int(t.total_steps.numpy()), int(t.epoch_steps.numpy())
    assert (per_epoch, total) == (16, 128)
    head = 0.67  # per summed loss at any batch: lr_peak / lr_batch, the record script's rule
    for step, factor, wb in [(0, 1.0, 1.0), (24, 1 - 24 / 128, 0.5), (64, 0.5, 0.0),
                             (48, 1 - 48 / 128, 0.0), (127, 1 / 128, 0.0)]:
        t.step.assign(step)
        assert float(t.learning_rate()) == pytest.approx(factor * head, rel=1e-5)
        assert float(t.muon_learning_rate()) == pytest.approx(0.24 * factor, rel=1e-5)
        # whitening bias: 1 - step / ceil(3 x 16) = 1 - step / 48, then 0
        assert float(t.whiten_bias_learning_rate()) == pytest.approx(wb * head, abs=1e-6)
    t.step.assign(0)


def test_one_step_moves_each_group_at_its_own_rate_and_decay(muon_trainer):
    t, data = muon_trainer
    t.step.assign(10)  # factor 1 - 10/128; whitening bias 1 - 10/48
    by_path = {v.path: v for v in t.model.trainable_variables}
    head = next(v for p, v in by_path.items() if "linear" in p)
    beta = next(v for p, v in by_path.items() if p.endswith("beta"))
    wbias = next(v for p, v in by_path.items() if "whiten_bias" in p)
    # gradients of the summed smoothed loss on exactly the batch the step will take
    _, images, labels = t.peek_batch(data)[0]
    snapshot = t.snapshot()
    with tf.GradientTape() as tape:
        logits = t.model(tf.constant(images), training=True)
        target = tf.one_hot(labels, 10) * 0.8 + 0.02
        loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(target, logits))
    g_head, g_beta, g_wb = tape.gradient(loss, [head, beta, wbias])
    t.restore(snapshot)  # the forward pass above moved the BatchNorm statistics
    before = [v.numpy().copy() for v in (head, beta, wbias)]
    t.train_steps(data, 1)
    factor = 1 - 10 / 128
    # the record script's rules at batch 44: lrs 0.67 and 0.053 per summed loss whatever
    # the batch, wd = 2e-6 x 44, each group's decay coefficient wd / its lr
    head_lr, k = 0.67, 0.053 / 0.67
    decay_head = 2e-6 * 44 / 0.67
    decay_bias = 2e-6 * 44 / 0.053
    # first step from zero momentum: w -= lr (g' + mu g') with g' = g + decay w
    for (w0, g, lr, decay), v in zip(
            [(before[0], g_head, head_lr * factor, decay_head),
             (before[1], g_beta, head_lr * k * factor, decay_bias),
             (before[2], g_wb, head_lr * k * (1 - 10 / 48), decay_bias)],
            (head, beta, wbias)):
        gp = g.numpy() + decay * w0
        np.testing.assert_allclose(v.numpy(), w0 - lr * 1.85 * gp, rtol=2e-4, atol=2e-6)
    t.restore(snapshot)


def test_muon_orthogonalises_in_bfloat16_close_to_float32():
    g = np.random.default_rng(4).standard_normal((16, 72)).astype(np.float32)
    low = newton_schulz(tf.constant(g), dtype=tf.bfloat16)
    assert low.dtype == tf.bfloat16
    high = newton_schulz(tf.constant(g)).numpy()
    low = tf.cast(low, tf.float32).numpy()
    assert np.abs(low - high).max() < 0.05 * np.abs(high).max()
    assert np.abs(low - high).max() > 0  # it did run in the lower precision


def test_the_head_has_unit_std_weights_and_divides_by_its_input_width():
    from fastcifar.airbench import airbench94, airbench94_muon

    net = airbench94_muon(width=8, seed=1)
    kernel = net.get_layer("linear").kernel.numpy()
    assert kernel.std() == pytest.approx(1.0, rel=1e-4)
    assert net.get_layer("logits").scale == pytest.approx(1 / 32)  # 4c inputs
    plain = airbench94(width=8, seed=1)
    assert plain.get_layer("logits").scale == pytest.approx(1 / 9)
    assert plain.get_layer("linear").kernel.numpy().std() < 0.5


def test_a_linear_whitening_bias_needs_its_epochs():
    with pytest.raises(ConfigError, match="whiten_bias_linear"):
        recipe("airbench94_muon", whiten_bias_epochs=0)


# --- value changes per ablation row (`bench ablate --set`) ---------------------------------

def test_set_reads_each_value_as_its_flag_does():
    from fastcifar.config import parse_overrides

    assert parse_overrides("batch_size=1536, epochs=7.59,label_smoothing=0.09") == {
        "batch_size": 1536, "epochs": 7.59, "label_smoothing": 0.09}
    assert parse_overrides("lookahead=false,activation=gelu,target=93%") == {
        "lookahead": False, "activation": "gelu", "target": 0.93}
    for bad in ("batch_size", "nonsense=1", "batch_size=big", "lookahead=maybe",
                "device=/CPU:0"):
        with pytest.raises(ConfigError, match="invalid --set"):
            parse_overrides(bad)


def test_ablate_adds_one_row_per_set_of_values(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run(
        # davidnet_tricks switches on six techniques: --only-set leaves out their rows
        [sys.executable, "-m", "fastcifar.cli", "bench", "ablate", "--recipe",
         "davidnet_tricks", "--only-set",
         "--data", "learnable:256", "--width", "4", "--batch-size", "64", "--budget-epochs",
         "1", "--set", "label_smoothing=0.1", "--set", "batch_size=32,cutout=0", "--quiet",
         "--target", "0.5", "--json", str(tmp_path / "a.json")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "a.json").read_text())["ablation"]
    assert [r["variant"] for r in rows] == ["all techniques", "with label_smoothing=0.1",
                                            "with batch_size=32, cutout=0"]
    assert rows[2]["changed"] == {"batch_size": 32, "cutout": 0}
    assert len({r["final_test_acc_mean"] for r in rows}) > 1  # different runs
    bad = subprocess.run(
        [sys.executable, "-m", "fastcifar.cli", "bench", "ablate", "--data", "learnable:256",
         "--set", "batch_size=0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "batch_size" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_the_cold_clock_counts_from_process_start():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5); "
                          "from fastcifar.util import process_age_seconds as age; print(age())"],
                         capture_output=True, text=True, timeout=60)
    assert 1.5 <= float(out.stdout) < 30, out


def test_silu_is_x_times_its_sigmoid():
    from fastcifar.layers import activation_layer

    out = activation_layer("silu", "float32", "act")(tf.constant([-1.0, 0.0, 2.0])).numpy()
    # -1 / (1 + e), 0, 2 / (1 + e^-2), by hand
    np.testing.assert_allclose(out, [-0.2689414, 0.0, 1.7615942], rtol=1e-6)
    assert recipe("airbench94_muon", activation="silu").activation == "silu"
