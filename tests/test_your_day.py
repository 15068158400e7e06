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
    start = [e.numpy().copy() for e in tr.ema_variables]
    res = tr.fit(ds)
    assert res.final_test_acc > 0.5, res.history  # chance is 0.1
    # the average moved away from the initial weights, and lags the live ones
    assert not all(np.allclose(a, e.numpy()) for a, e in zip(start, tr.ema_variables))
    assert any(not np.allclose(e.numpy(), v.numpy())
               for e, v in zip(tr.ema_variables, tr.ema_sources()))
    # flip TTA weighs an image and its mirror equally: mirrored input, same logits
    x = ds.x_test[:3]
    np.testing.assert_allclose(tr.predict(x), tr.predict(x[:, :, ::-1]), rtol=1e-4, atol=1e-4)
    assert not np.allclose(tr.predict(x), tr.predict(x[::-1]))  # and not a constant


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


def test_a_built_model_that_fails_when_run_is_refused():
    class Inverse(keras.layers.Layer):
        """Traces (its output spec is declared); fails only when run in bfloat16."""

        def call(self, x):
            m = tf.reshape(x, [-1, 3, 3]) + tf.eye(3, dtype=x.dtype)
            return tf.reshape(tf.linalg.inv(m), [-1, 9])

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, dtype=self.compute_dtype)

    image = keras.Input((32, 32, 3))
    x = keras.layers.Dense(9, dtype="mixed_bfloat16")(keras.layers.Flatten()(image))
    net = keras.Model(image, keras.layers.Dense(10, dtype="float32")(
        Inverse(dtype="mixed_bfloat16")(x)))
    with pytest.raises(ConfigError, match="does not run under mixed_bfloat16") as e:
        Trainer(recipe("davidnet", batch_size=64), RuntimeConfig(precision="mixed_bfloat16"),
                model=net)
    assert "\n" not in str(e.value)


def test_models_and_builders_the_trainer_cannot_use_are_one_line():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ConfigError, match="has no defined input.*keras.Input"):
        Trainer(recipe("davidnet", batch_size=64), RT, model=Subclassed())
    with pytest.raises(ConfigError, match="whitening layer belongs to the built-in nets"):
        Trainer(recipe("davidnet_tricks", batch_size=64), RT, model=tiny_resnet)
    seen = {}

    def seeded(policy, seed=0):  # a second parameter that is not the class count
        seen["seed"] = seed
        return tiny_resnet(policy)

    Trainer(recipe("davidnet", batch_size=64), RT, model=seeded)
    assert seen == {"seed": 0}
    tr = Trainer(recipe("davidnet", batch_size=64, num_classes=100), RT,
                 model=lambda policy, num_classes: tiny_resnet(policy, num_classes))
    assert tr.model.outputs[0].shape[-1] == 100


def test_a_builder_named_on_the_command_line_that_cannot_load_is_one_line(tmp_path,
                                                                         monkeypatch):
    from fastcifar.usernet import load_builder

    (tmp_path / "raising.py").write_text("raise RuntimeError('no GPU here, says the module')\n")
    (tmp_path / "typo.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, needle in (("raising:f", "importing raising failed (RuntimeError: no GPU here"),
                         ("typo:f", "importing typo failed (SyntaxError"),
                         (":f", "write it as package.module:function"),
                         (".m:f", "write it as package.module:function"),
                         ("no_such_module_here:f", "cannot import no_such_module_here")):
        with pytest.raises(ConfigError) as e:
            load_builder(spec)
        assert needle in str(e.value) and "\n" not in str(e.value), (spec, str(e.value))


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
    bad = run("train", "--net", "mynets:missing", "--data", "learnable:256", "--batch-size",
              "64", env=env)
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
    monkeypatch.setenv("FASTCIFAR_DATA", str(cache))  # the server is gone: the cache serves
    monkeypatch.setenv("FASTCIFAR_CIFAR100_SHA256", env["FASTCIFAR_CIFAR100_SHA256"])
    coarse = data.load("cifar100:coarse")
    np.testing.assert_array_equal(coarse.y_train, arrays["train"][2])
    assert coarse.num_classes == 20 and coarse.classes[3] == "coarse3"
    assert coarse.name.startswith("cifar100-coarse-format:")  # not the official digest
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
    written_as = {"train_loss": "train/loss", "train_acc": "train/accuracy",
                  "test_loss": "test/loss", "test_acc": "test/accuracy", "lr": "learning_rate",
                  "images_per_sec": "throughput/images_per_sec", "seconds": "time/seconds"}
    for epoch, row in enumerate(r["history"]):
        for key, tag in written_as.items():
            assert scalars[tag][epoch][1] == pytest.approx(row[key], rel=1e-6), (tag, epoch)
    utilization = [value for _, value in scalars["throughput/utilization_pct"]]
    assert all(0 < u <= 100 * os.cpu_count() for u in utilization), utilization
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
    wall = top["profiled_seconds"]
    assert wall > 0 and all(r["share_of_step"] == pytest.approx(r["seconds"] / wall)
                            for r in rows)
    for group, seconds in top["groups"].items():
        assert seconds >= sum(r["seconds"] for r in rows if r["group"] == group) - 1e-12
        assert top["group_share_of_step"][group] == pytest.approx(seconds / wall)
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
             # by the trainer's name scopes, whatever the op's type
             ("while/body/augment/Mul_2", "Mul"): "data/augmentation",
             ("augment/SelectV2", "SelectV2"): "data/augmentation",
             ("while/body/optimizer/Mul_3", "Mul"): "optimizer",
             ("while/body/model/augmented_conv/Mul", "Mul"): "elementwise",  # not a scope
             ("while/body/model/layer1_relu/Relu", "Relu"): "elementwise",
             ("while/body/model/pool/MaxPool", "MaxPool"): "pooling"}
    for (name, op_type), group in cases.items():
        assert group_of(name, op_type) == group, (name, op_type)


def test_top_ops_reads_a_trace_it_did_not_write(tmp_path):
    """A hand-made trace: two TensorFlow threads, known durations; bookkeeping ignored."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from fastcifar.profiling import top_ops

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    names = {1: "model/conv/Conv2D:Conv2D", 2: "augment/Mul:Mul",
             3: "model/bn/FusedBatchNormV3:FusedBatchNormV3", 4: "w:ReadVariableOp",
             5: "ExecutorState::Process", 6: "multiply_convert_fusion.1",
             7: "ExecuteAsyncOnStream"}
    for key, name in names.items():
        plane.event_metadata[key].id, plane.event_metadata[key].name = key, name
    for thread, events in (("tf_Compute/1", ((1, 0.5), (2, 0.25), (4, 9.0))),
                           ("tf_Compute/2", ((1, 0.25), (3, 0.125), (5, 9.0), (6, 0.0625),
                                             (7, 9.0))),
                           ("other thread", ((1, 9.0),))):
        line = plane.lines.add(name=thread)
        for key, seconds in events:
            line.events.add(metadata_id=key, duration_ps=int(seconds * 1e12))
    (tmp_path / "host.xplane.pb").write_bytes(space.SerializeToString())
    top = top_ops(str(tmp_path), profiled_seconds=2.0)
    assert [(r["type"], r["group"], r["seconds"], r["share_of_step"]) for r in top["top_ops"]] \
        == [("Conv2D", "convolution forward", 0.75, 0.375),
            ("Mul", "data/augmentation", 0.25, 0.125),
            ("FusedBatchNormV3", "BatchNorm", 0.125, 0.0625),
            ("XlaFusion", "elementwise", 0.0625, 0.03125)]  # a kernel XLA generated
    assert top["groups"] == {"convolution forward": 0.75, "data/augmentation": 0.25,
                             "BatchNorm": 0.125, "elementwise": 0.0625}
    from fastcifar.profiling import top_ops_table

    said = "\n".join(top_ops_table(top))
    assert "XlaFusion: elementwise kernels XLA compiled" in said  # why, under "XLA off"
    top["top_ops"] = top["top_ops"][:3]
    assert "XlaFusion:" not in "\n".join(top_ops_table(top))  # said only when one is shown


# --- the CI recipe -----------------------------------------------------------------------

def test_the_ci_workflow_commands_gate_an_interleaved_ab_run(tmp_path):
    import yaml

    workflow = yaml.safe_load((ROOT / "examples" / "benchmark-gate.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["benchmark"]["steps"]}
    from fastcifar import cli

    args = cli.build_parser().parse_args(
        ["bench", "step"] + steps["benchmark"]["env"]["BENCH_ARGS"].split())
    assert args.width == 32 and args.reps == 7  # the workflow's own arguments parse
    bench_lines = [line for line in steps["benchmark"]["run"].splitlines()
                   if "fastcifar bench step" in line]
    assert len(bench_lines) == 1 and "--baseline ../base/.venv/bin/python" in bench_lines[0]
    gate = steps["gate"]["run"]
    workspace, base = tmp_path / "ws", tmp_path / "base"
    shims = {workspace / ".venv" / "bin" / "fastcifar":
             f"exec {sys.executable} -m fastcifar.cli \"$@\"",
             base / ".venv" / "bin" / "python": f"exec {sys.executable} \"$@\""}
    for path, body in shims.items():  # each checkout's installed command / interpreter
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", GITHUB_WORKSPACE=str(workspace),
               AB_ROUNDS="2",
               BENCH_ARGS="--width 4 --batch-size 32 --steps 1 --reps 2 --data synthetic:256")
    bench = subprocess.run(["bash", "-ec", "\n".join(bench_lines)], cwd=workspace, env=env,
                           capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    ab = json.loads((workspace / "ab.json").read_text())
    assert ab["ab"]["rounds"] == 2 and ab["ab"]["baseline_python"].endswith("base/.venv/bin/python")
    same = subprocess.run(["bash", "-ec", gate], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=300)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "too few rounds" in same.stdout  # 2 rounds can show nothing, and says so
    # five recorded rounds, the candidate at half the speed: the gate fails the job
    ab["ab"]["baseline"]["step_ms_rounds"] = [30.1, 29.8, 30.4, 30.0, 29.9]
    ab["ab"]["candidate"]["step_ms_rounds"] = [60.3, 59.7, 60.9, 60.1, 59.6]
    (workspace / "ab.json").write_text(json.dumps(ab))
    slow = subprocess.run(["bash", "-ec", gate], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=300)
    assert slow.returncode == 1 and "REGRESSION" in slow.stdout, slow.stdout + slow.stderr
