"""A TensorFlow user's day: their own model, CIFAR-100, TensorBoard, where the time goes,
and the CI recipe."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from fakes import write_cifar100_archive
from fastcifar import data
from fastcifar.config import RuntimeConfig, recipe
from fastcifar.errors import ConfigError, DataError
from fastcifar.train import Trainer

RT = RuntimeConfig(precision="float32", steps_per_call=4, eval_batch_size=50)
ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd=None, env=None, timeout=600):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastcifar.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=timeout)


def tiny_resnet(policy, classes=10):
    """A small residual net built with the policy it is given (the README's pattern)."""
    layers = keras.layers
    image = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, dtype=policy)(image)
    for filters in (8, 16):
        shortcut = layers.Conv2D(filters, 1, strides=2, dtype=policy)(x)
        x = layers.Conv2D(filters, 3, strides=2, padding="same", dtype=policy)(x)
        x = layers.BatchNormalization(dtype=policy)(x)
        x = layers.Add(dtype=policy)([layers.ReLU(dtype=policy)(x), shortcut])
    x = layers.GlobalAveragePooling2D(dtype=policy)(x)
    return keras.Model(image, layers.Dense(classes, dtype="float32")(x))


# --- bring your own model ------------------------------------------------------------

def test_your_own_model_trains_on_the_fast_path_with_ema_and_tta():
    ds = data.synthetic(1024, 96, learnable=True, seed=3)
    cfg = recipe("davidnet", epochs=2, batch_size=64, ema=0.9, tta="flip", target=None,
                 lr_peak=0.05)  # no 1/8 logit scale in this net: DavidNet's lr diverges
    tr = Trainer(cfg, RT, model=tiny_resnet)
    assert tr.model.count_params() < 5000  # it is the user's net, not DavidNet
    res = tr.fit(ds)
    assert res.final_test_acc > 0.5, res.history  # chance is 0.1
    assert tr.predict(ds.x_test[:3]).shape == (3, 10)
    # augmentation, EMA and TTA are the trainer's: the averaged weights moved too
    assert any(not np.allclose(e.numpy(), v.numpy())
               for e, v in zip(tr.ema_variables, tr.ema_sources()))


def test_your_own_model_gets_the_policy_and_runs_under_mirrored():
    cfg = recipe("davidnet", epochs=1, batch_size=64, strategy="mirrored", replicas=2,
                 target=None)
    tr = Trainer(cfg, RuntimeConfig(precision="mixed_bfloat16", eval_batch_size=50),
                 model=tiny_resnet)
    assert tr.model.layers[1].compute_dtype == "bfloat16" and tr.replicas == 2
    loss, _ = tr.train_steps(tr.prepare(data.synthetic(256, 100, learnable=True)), 2)
    assert np.isfinite(float(loss.numpy()))


@pytest.mark.parametrize("make,needle", [
    (lambda p: keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(10)]), "input is [(None, 28, 28, 1)]"),
    (lambda p: tiny_resnet(p, classes=7), "not one (None, 10) batch of logits"),
    (lambda p: "not a model", "not a keras.Model"),
])
def test_a_model_that_cannot_work_is_refused_in_one_line(make, needle):
    with pytest.raises(ConfigError) as e:
        Trainer(recipe("davidnet", batch_size=64), RT, model=make)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_model_that_cannot_run_under_the_policy_is_refused():
    class Inverse(keras.layers.Layer):
        """Builds fine; at run time TensorFlow has no bfloat16 matrix inverse."""

        def call(self, x):
            m = tf.reshape(x, [-1, 3, 3]) + tf.eye(3, dtype=x.dtype)
            return tf.reshape(tf.linalg.inv(m), [-1, 9])

    def broken(policy):
        image = keras.Input((32, 32, 3))
        x = keras.layers.Dense(9, dtype=policy)(keras.layers.Flatten(dtype=policy)(image))
        return keras.Model(image, keras.layers.Dense(10, dtype="float32")(
            Inverse(dtype=policy)(x)))

    with pytest.raises(ConfigError, match="broken.. under mixed_bfloat16 failed") as e:
        Trainer(recipe("davidnet", batch_size=64),
                RuntimeConfig(precision="mixed_bfloat16"), model=broken)
    assert "\n" not in str(e.value)
    Trainer(recipe("davidnet", batch_size=64), RT, model=broken)  # float32: it runs


def test_your_own_model_from_the_command_line(tmp_path):
    (tmp_path / "mynets.py").write_text(
        "import keras\n"
        "def small(policy):\n"
        "    image = keras.Input((32, 32, 3))\n"
        "    x = keras.layers.Conv2D(8, 3, padding='same', dtype=policy)(image)\n"
        "    x = keras.layers.GlobalAveragePooling2D(dtype=policy)(x)\n"
        "    return keras.Model(image, keras.layers.Dense(10, dtype='float32')(x))\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = run("train", "--net", "mynets:small", "--data", "learnable:256", "--batch-size",
              "64", "--epochs", "1", "--quiet", "--json", str(tmp_path / "r.json"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "r.json").read_text())["config"]["net"] == "mynets:small"
    bad = run("train", "--net", "mynets:missing", "--data", "learnable:256", env=env)
    assert bad.returncode == 2 and "has no function 'missing'" in bad.stderr


# --- CIFAR-100 ---------------------------------------------------------------------------

def test_cifar100_archive_fine_and_coarse_labels(tmp_path):
    archive, arrays = write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz")
    fine = data.load(str(archive))
    x, y, coarse = arrays["train"]
    np.testing.assert_array_equal(fine.x_train, x)
    np.testing.assert_array_equal(fine.y_train, y)
    assert fine.num_classes == 100 and fine.classes[7] == "fine7"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert fine.name == f"cifar100-format:{digest[:12]}"  # not the official file
    folder = tmp_path / "unpacked"
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    from_folder = data.load_batches_dir(folder / "cifar-100-python", mode="coarse")
    np.testing.assert_array_equal(from_folder.y_train, coarse)
    assert from_folder.num_classes == 20 and from_folder.classes[0] == "coarse0"


def test_cifar100_is_downloaded_once_verified_and_trained_100_way(tmp_path, monkeypatch):
    from test_data import _Server

    served = tmp_path / "served"
    served.mkdir()
    archive, arrays = write_cifar100_archive(served / "cifar-100-python.tar.gz",
                                             n_train=128, n_test=50)
    cache = tmp_path / "cache"
    with _Server(served) as srv:
        env = {"FASTCIFAR_DATA": str(cache),
               "FASTCIFAR_CIFAR100_URL": f"{srv.url}/cifar-100-python.tar.gz",
               "FASTCIFAR_CIFAR100_SHA256": hashlib.sha256(archive.read_bytes()).hexdigest()}
        out = run("train", "--data", "cifar100", "--width", "4", "--batch-size", "32",
                  "--epochs", "1", "--quiet", "--precision", "float32", "--json",
                  str(tmp_path / "r.json"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["config"]["num_classes"] == 100 and r["dataset"]["num_classes"] == 100
    assert r["config"]["target"] is None  # a CIFAR-10 target says nothing about CIFAR-100
    assert (cache / "cifar-100-python.tar.gz").read_bytes() == archive.read_bytes()
    with pytest.raises(DataError, match="has no 'medium' labels"):
        data.load("cifar100:medium")
    bad = run("bench", "accuracy", "--data", "cifar100", "--width", "4", env=env)
    assert bad.returncode == 2 and "--target" in bad.stderr  # must be declared


def test_a_malicious_cifar100_pickle_never_runs(tmp_path):
    import io
    import tarfile

    from fakes import malicious_batch

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in ("train", "test"):
            blob = malicious_batch(marker)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match="refusing to load"):
        data.load(str(path))
    assert not marker.exists()


# --- TensorBoard -------------------------------------------------------------------------

def _scalars(logdir: Path) -> dict:
    out = {}
    for events in logdir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return out


def test_logdir_gets_scalars_per_epoch_and_the_profile(tmp_path):
    logdir = tmp_path / "runs" / "one"
    out = run("train", "--data", "learnable:512", "--width", "4", "--batch-size", "64",
              "--epochs", "2", "--quiet", "--precision", "float32", "--logdir", str(logdir),
              "--profile", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    scalars = _scalars(logdir)
    r = json.loads((tmp_path / "r.json").read_text())
    for tag in ("train/loss", "train/accuracy", "test/loss", "test/accuracy", "learning_rate",
                "throughput/images_per_sec", "throughput/utilization_pct"):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
    assert scalars["test/accuracy"][1][1] == pytest.approx(r["metrics"]["final_test_acc"])
    assert scalars["train/loss"][0][1] == pytest.approx(r["history"][0]["train_loss"])
    assert list(logdir.rglob("*.xplane.pb"))  # the trace is in the same run folder


def test_logdir_without_tensorboard_is_one_line_before_any_work(tmp_path, monkeypatch):
    from fastcifar.errors import UserError
    from fastcifar.run import run_training

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(UserError, match="--logdir needs TensorBoard.*pip install tensorboard"):
        run_training(recipe("davidnet", width=4, epochs=1), RT, "no-such-data",
                     logdir=str(tmp_path / "tb"))  # refused before the data is looked at
    assert not (tmp_path / "tb").exists()


# --- where the time goes -----------------------------------------------------------------

def test_bench_step_profile_names_the_top_ops_by_group(tmp_path):
    out = run("bench", "step", "--data", "synthetic:256", "--width", "8", "--batch-size",
              "32", "--steps", "2", "--reps", "2", "--precision", "float32", "--profile",
              str(tmp_path / "trace"), "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    top = json.loads((tmp_path / "s.json").read_text())["metrics"]["top_ops"]
    rows = top["top_ops"]
    assert len(rows) == 10 and all(r["seconds"] > 0 for r in rows)
    assert [r["seconds"] for r in rows] == sorted((r["seconds"] for r in rows), reverse=True)
    groups = {r["group"] for r in rows}
    assert groups & {"convolution forward", "convolution backward"}, rows
    assert set(top["groups"]) >= {"convolution forward", "convolution backward", "BatchNorm",
                                  "optimizer", "data/augmentation"}
    assert "where the time goes" in out.stdout


def test_ops_are_grouped_the_way_a_person_thinks():
    from fastcifar.profiling import group_of

    cases = {("while/body/model/layer1_conv/convolution", "Conv2D"): "convolution forward",
             ("while/body/gradient_tape/layer1_conv/Conv2DBackpropFilter",
              "Conv2DBackpropFilter"): "convolution backward",
             ("while/body/model/layer1_bn/FusedBatchNormV3", "FusedBatchNormV3"): "BatchNorm",
             ("while/body/gradient_tape/bn/FusedBatchNormGradV3", "FusedBatchNormGradV3"):
                 "BatchNorm",
             ("while/body/augment/GatherV2_1", "GatherV2"): "data/augmentation",
             ("while/body/optimizer/AssignSubVariableOp", "AssignSubVariableOp"): "optimizer",
             ("while/body/model/layer1_relu/Relu", "Relu"): "elementwise",
             ("while/body/model/pool/MaxPool", "MaxPool"): "pooling"}
    for (name, op_type), group in cases.items():
        assert group_of(name, op_type) == group, (name, op_type)


# --- the CI recipe -----------------------------------------------------------------------

def test_the_ci_workflow_commands_gate_two_real_results(tmp_path):
    import yaml

    workflow = yaml.safe_load((ROOT / "examples" / "benchmark-gate.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["benchmark"]["steps"]}
    bench_line = next(line for line in steps["benchmark"]["run"].splitlines()
                      if line.startswith(".venv/bin/fastcifar bench step"))
    gate = steps["gate"]["run"]
    shim = tmp_path / ".venv" / "bin" / "fastcifar"  # the workflow's installed command
    shim.parent.mkdir(parents=True)
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m fastcifar.cli \"$@\"\n")
    shim.chmod(0o755)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               BENCH_ARGS="--width 4 --batch-size 32 --steps 2 --reps 3 --data synthetic:256")
    bench = subprocess.run(["bash", "-ec", bench_line], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    candidate = json.loads((tmp_path / "candidate.json").read_text())
    (tmp_path / "base.json").write_text(json.dumps(candidate))
    same = subprocess.run(["bash", "-ec", gate], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert same.returncode == 0, same.stdout + same.stderr
    m = candidate["metrics"]  # now a candidate at half the speed, outside the noise
    m["images_per_sec"] /= 2
    m["images_per_sec_spread"] = {k: v / 2 for k, v in m["images_per_sec_spread"].items()}
    m["step_ms"] = {k: v * 2 for k, v in m["step_ms"].items()}
    (tmp_path / "candidate.json").write_text(json.dumps(candidate))
    slow = subprocess.run(["bash", "-ec", gate], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert slow.returncode == 1 and "REGRESSION" in slow.stdout, slow.stdout + slow.stderr
