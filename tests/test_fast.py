"""The `fast` recipe's techniques, each in isolation."""

import keras
import numpy as np
import tensorflow as tf

from fastcifar.config import FAST_TECHNIQUES, RuntimeConfig, recipe
from fastcifar.data import synthetic
from fastcifar.davidnet import davidnet
from fastcifar.whitening import fit_whitening
from fastcifar.train import Trainer


def test_whitening_layer_has_identity_covariance_on_its_patches():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 32, 32, 3)).astype(np.float32)
    x = tf.constant(base + 0.8 * np.roll(base, 1, axis=1) + 0.5 * base[..., :1])  # correlated
    m = davidnet(4, whiten=True)
    fit_whitening(m, x, eps=1e-4)
    layer = m.get_layer("whiten")
    assert not layer.trainable and layer.kernel.shape == (3, 3, 3, 27)
    out = keras.Model(m.input, layer.output)(x).numpy()[:, 1:-1, 1:-1].reshape(-1, 27)
    np.testing.assert_allclose(np.cov(out.T), np.eye(27), atol=2e-3)
    raw = tf.image.extract_patches(x, [1, 3, 3, 1], [1] * 4, [1] * 4, "VALID").numpy()
    assert np.abs(np.cov(raw.reshape(-1, 27).T) - np.eye(27)).max() > 0.3  # it was not white


def test_bias_lr_scaling_changes_exactly_the_bias_updates():
    ds = synthetic(128, 20, learnable=True)
    updates = {}
    for k in (1.0, 64.0):
        tr = Trainer(recipe("davidnet", width=4, batch_size=32, weight_decay=5e-4,
                            frozen_bn_scale=True, bias_lr_scale=k),
                     RuntimeConfig(precision="float32", xla=False))
        dd = tr.prepare(ds)
        tr.step.assign(4)
        w0 = [v.numpy().copy() for v in tr.model.trainable_variables]
        tr.train_steps(dd, 1)
        updates[k] = [(v.path, v.numpy() - a) for v, a in zip(tr.model.trainable_variables, w0)]
    biases = 0
    for (name, d1), (_, d64) in zip(updates[1.0], updates[64.0]):
        if name.endswith("beta"):
            biases += 1
            # first step from zero velocity: dw = -lr (1 + mu) (k g + k wd B b / k) and the
            # biases start at 0, so the decay term vanishes: exactly 64 times the update
            assert np.abs(d1).max() > 0
            np.testing.assert_allclose(d64, 64 * d1, rtol=1e-4, atol=1e-9)
        else:
            np.testing.assert_allclose(d64, d1, rtol=1e-5, atol=1e-8)
    assert biases == 8
    assert not any(n.endswith("gamma") for n, _ in updates[1.0])  # frozen scale


def test_davidnet_tricks_is_each_technique_switched_on_and_trains():
    cfg = recipe("davidnet_tricks")
    assert cfg.epochs == 10 and cfg.label_smoothing == 0.2 and cfg.whiten
    assert cfg.bias_lr_scale == 64 and cfg.ema > 0 and cfg.tta == "flip_translate"
    for name, off in FAST_TECHNIQUES.items():
        assert (cfg.replace(**off) != cfg) == (name not in ("lookahead", "muon")), name
    ds = synthetic(1024, 96, learnable=True, seed=2)
    tr = Trainer(recipe("davidnet_tricks", width=4, batch_size=32, epochs=2),
                 RuntimeConfig(precision="float32", xla=False, eval_batch_size=96))
    res = tr.fit(ds)
    # chance is 0.1; 64 steps with an EMA of decay 0.99 lag the live weights, and a
    # width-4 net's trajectory is sensitive to the last bit of its inputs: a loose bar
    assert res.final_test_acc > 0.3 and res.history[-1]["train_acc"] > 0.9, res.history
    # fit() whitened the first layer on its sample of the training set: on those patches
    # the layer's outputs have covariance diag(lambda / (lambda + eps)), eps = 1e-2, with
    # lambda the eigenvalues of the patches' covariance (computed here with numpy)
    from numpy.lib.stride_tricks import sliding_window_view

    sample = tr.whitening_sample(len(ds.x_train)).numpy()
    x = ((ds.x_train[sample] - ds.x_train.reshape(-1, 3).mean(0))
         / ds.x_train.reshape(-1, 3).std(0)).astype(np.float32)
    patches = sliding_window_view(x, (3, 3), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    lam = np.linalg.eigvalsh(np.cov(patches.reshape(-1, 27).astype(np.float64).T, bias=True))
    out = keras.Model(tr.model.input, tr.model.get_layer("whiten").output)(x)
    out = np.asarray(out, np.float64)[:, 1:-1, 1:-1].reshape(-1, 27)
    np.testing.assert_allclose(np.cov(out.T, bias=True), np.diag(lam / (lam + 1e-2)),
                               atol=0.02)


def test_whitening_is_fitted_on_a_random_sample_not_the_first_images():
    """An image folder is decoded class by class: the first N images are a few classes.
    The sample must span the whole training set, the same one for the same seed."""
    n, take = 2000, 400
    tr = Trainer(recipe("davidnet_tricks", width=4, batch_size=32),
                 RuntimeConfig(precision="float32"))
    sample = tr.whitening_sample(n, take).numpy()
    assert len(set(sample.tolist())) == take and sample.max() < n
    sorted_labels = np.repeat(np.arange(10), n // 10)  # like a folder: class by class
    counts = np.bincount(sorted_labels[sample], minlength=10)
    assert counts.min() >= 20 and counts.max() <= 60, counts  # ~40 per class, not 10 classes x 0
    np.testing.assert_array_equal(sample, tr.whitening_sample(n, take).numpy())
    # and fit_whitening uses that sample: whitened on a class-sorted set, the layer is white
    # on the sample's patches, not on the first `take` images' (two classes only)
    from fastcifar.data import make_dataset

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), n // 10)
    tint = rng.uniform(0, 255, (10, 3))[labels][:, None, None, :]
    images = np.clip(tint + rng.normal(0, 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    ds = make_dataset(images, labels, images[:10], labels[:10], "sorted")
    dd = tr.prepare(ds)
    tr.fit_whitening(dd, n_images=take)
    kernel = tr.model.get_layer("whiten").kernel.numpy().reshape(27, 27)
    x = (images - ds.x_train.reshape(-1, 3).mean(0)) / ds.x_train.reshape(-1, 3).std(0)

    def whiteness(subset):
        from numpy.lib.stride_tricks import sliding_window_view

        p = sliding_window_view(x[subset], (3, 3), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
        cov = np.cov(p.reshape(-1, 27).T, bias=True)
        lam = np.linalg.eigvalsh(cov)
        return np.abs(kernel.T @ cov @ kernel - np.diag(lam / (lam + 1e-2))).max()

    assert whiteness(sample) < 0.02
    assert whiteness(np.arange(take)) > 0.2  # the first `take` images would differ
    other = Trainer(recipe("davidnet_tricks", width=4, batch_size=32, seed=1),
                    RuntimeConfig(precision="float32")).whitening_sample(n, take).numpy()
    assert len(set(sample.tolist()) & set(other.tolist())) < take // 2


def test_bench_ablate_prints_a_row_per_technique(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "fastcifar.cli", "bench", "ablate", "--recipe",
         "davidnet_tricks",
         "--budget-epochs", "1", "--data", "learnable:256", "--width", "4", "--batch-size",
         "64", "--precision", "float32", "--json", str(tmp_path / "ab.json"), "--quiet"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "ab.json").read_text())
    names = [row["variant"] for row in r["ablation"]]
    # each technique but lookahead and Muon, which davidnet_tricks does not use
    assert names[0] == "all techniques" and len(names) == len(FAST_TECHNIQUES) - 1
    assert all(0 <= row["final_test_acc_mean"] <= 1 for row in r["ablation"])
    assert "without whitening" in out.stdout and "vs all (pp)" in out.stdout
