"""From Python the way a Keras user works: Keras callbacks, numpy arrays and tf.data,
a SavedModel read back in a fresh process, folders of any number of classes, and the hints
a new user needs (help defaults, quiet import, early refusals, BatchNorm momentum)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from fastcifar.config import RuntimeConfig, recipe
from fastcifar.data import DataError, as_dataset, load, synthetic
from fastcifar.train import Trainer

RT = RuntimeConfig(precision="float32", xla=False)


def run(*args, env=None, timeout=600, cwd=None):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastcifar.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout, cwd=cwd)


def _tiny(epochs=2, **kw):
    return recipe("davidnet", width=4, batch_size=64, epochs=epochs, seed=3, **kw)


@pytest.fixture(scope="module")
def small():
    return synthetic(256, 64, learnable=True, seed=8)


# --- callbacks -----------------------------------------------------------------------------

class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls, self.logs, self.models = [], [], []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"epoch_begin {epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch}")
        self.logs.append(dict(logs))
        self.models.append(self.model)

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def test_a_callback_sees_each_epochs_numbers_under_keras_names(small):
    trainer = Trainer(_tiny(epochs=3), RT.replace(eval_every=1))
    rec = Recorder()
    res = trainer.fit(small, callbacks=[rec])
    assert rec.calls == ["train_begin", "epoch_begin 0", "epoch_end 0", "epoch_begin 1",
                         "epoch_end 1", "epoch_begin 2", "epoch_end 2", "train_end"]
    assert all(m is trainer.model for m in rec.models)
    for row, logs in zip(res.history, rec.logs):
        assert logs["loss"] == row["train_loss"] and logs["accuracy"] == row["train_acc"]
        assert logs["val_loss"] == row["test_loss"] and logs["val_accuracy"] == row["test_acc"]
        assert logs["learning_rate"] == row["lr"] and logs["seconds"] == row["seconds"]


def test_keras_early_stopping_stops_the_run(small, tmp_path):
    # the schedule peaks at 5/24 of the run (20 steps: step 4.2), so the rate logged after
    # epoch 1 (step 4) is the highest: Keras' EarlyStopping, patience 0, stops after epoch 2
    stop = keras.callbacks.EarlyStopping(monitor="learning_rate", mode="max", patience=0)
    ckpt = keras.callbacks.ModelCheckpoint(str(tmp_path / "last.keras"))
    csv = keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))
    res = Trainer(_tiny(epochs=5), RT).fit(small, callbacks=[stop, ckpt, csv])
    assert len(res.history) == 2 and res.stopped_early
    assert res.final_test_acc == res.history[-1]["test_acc"] is not None  # evaluated on stop
    assert (tmp_path / "last.keras").stat().st_size > 0
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert len(lines) == 3 and "val_accuracy" in lines[0]


def test_a_callback_that_is_not_a_keras_callback_is_refused(small):
    with pytest.raises(TypeError, match="keras.callbacks.Callback"):
        Trainer(_tiny(), RT).fit(small, callbacks=[lambda *a: None])


# --- data a user holds ---------------------------------------------------------------------

def _write_tree(root, ds, classes):
    """The dataset as PNG files, named so the folder lists them in the arrays' order."""
    order = {}
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        idx = np.argsort(y, kind="stable")
        order[split] = idx
        for rank, i in enumerate(idx):
            d = root / split / classes[y[i]]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{rank:05d}.png").write_bytes(tf.io.encode_png(x[i]).numpy())
    return order


def _weights_after(data, validation_data=None):
    t = Trainer(_tiny(epochs=1), RT)
    t.fit(data, validation_data=validation_data)
    return [w.copy() for w in t.model.get_weights()]


def test_arrays_and_tf_data_train_to_the_weights_a_folder_of_the_same_images_gives(
        small, tmp_path):
    classes = tuple(f"c{i:02d}" for i in range(10))
    order = _write_tree(tmp_path / "tree", small, classes)
    folder = load(str(tmp_path / "tree"))
    xtr, ytr = small.x_train[order["train"]], small.y_train[order["train"]]
    xte, yte = small.x_test[order["test"]], small.y_test[order["test"]]
    np.testing.assert_array_equal(folder.x_train, xtr)  # the same images in the same order
    expected = _weights_after(folder)
    from_arrays = _weights_after(((xtr, ytr), (xte, yte)))
    from_tf_data = _weights_after(
        tf.data.Dataset.from_tensor_slices((xtr, ytr)).batch(50),
        validation_data=tf.data.Dataset.from_tensor_slices((xte, yte)))
    as_floats = _weights_after((xtr.astype(np.float32) / 255, ytr[:, None]),
                               validation_data=(xte.astype(np.float32) / 255, yte))
    for got in (from_arrays, from_tf_data, as_floats):
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("x,y,needle", [
    (np.zeros((8, 28, 28, 3), np.uint8), np.zeros(8, int), r"shape \(N, 32, 32, 3\)"),
    (np.full((8, 32, 32, 3), -0.5, np.float32), np.zeros(8, int), "raw pixels"),
    (np.zeros((8, 32, 32, 3), np.uint8), np.eye(10)[np.zeros(8, int)], "one-hot"),
    (np.zeros((8, 32, 32, 3), np.uint8), np.zeros(7, int), "vector of 8"),
    (np.zeros((8, 32, 32, 3), np.uint8), np.full(8, 0.5), "integer class indices"),
])
def test_arrays_are_checked_up_front(x, y, needle):
    with pytest.raises(DataError, match=needle):
        as_dataset((x, y), validation_data=(np.zeros((2, 32, 32, 3), np.uint8), [0, 1]))


def test_labels_beyond_the_nets_outputs_are_one_clear_error():
    x = np.zeros((64, 32, 32, 3), np.uint8)
    y = np.arange(64) % 12
    from fastcifar.errors import ConfigError

    with pytest.raises(ConfigError, match="12 classes.*num_classes=12"):
        Trainer(_tiny(), RT).fit((x, y), validation_data=(x[:8], y[:8]))


# --- SavedModel ------------------------------------------------------------------------------

def test_the_saved_model_reloaded_in_a_fresh_process_gives_the_reported_accuracy(tmp_path):
    # davidnet_tricks: the averaged (EMA) weights and 6 test-time views are what it serves
    out = run("train", "--data", "learnable:512", "--width", "8", "--batch-size", "64",
              "--epochs", "2", "--recipe", "davidnet_tricks", "--quiet",
              "--json", str(tmp_path / "r.json"), "--saved-model", str(tmp_path / "served"),
              "--save", str(tmp_path / "m.keras"), "--precision", "float32")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    reported = metrics["final_test_acc"]
    script = (
        "import json, sys, numpy as np, tensorflow as tf, keras, fastcifar.serving\n"
        "from fastcifar.data import load\n"
        "ds = load('learnable:512')\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "logits = m.serve(tf.constant(ds.x_test, tf.float32)).numpy()\n"
        "names = [n.decode() for n in m.class_names[0].numpy()]\n"
        "k = keras.models.load_model(sys.argv[2])(ds.x_test.astype('float32')).numpy()\n"
        "p = tf.nn.log_softmax(tf.constant(logits, tf.float64)).numpy()\n"
        "loss = float(-p[np.arange(len(p)), ds.y_test].mean())\n"
        "print(json.dumps({'acc': float((logits.argmax(-1) == ds.y_test).mean()),\n"
        "                  'loss': loss,\n"
        "                  'shape': list(logits.shape), 'names': names,\n"
        "                  'vs_keras': float(np.abs(logits - k).max() / np.abs(k).max())}))\n")
    fresh = subprocess.run([sys.executable, "-c", script, str(tmp_path / "served"),
                            str(tmp_path / "m.keras")],
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    got = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert got["shape"] == [102, 10]
    assert abs(got["acc"] - reported) <= 1 / 102, (got, reported)  # one image at most
    assert got["names"][:2] == ["airplane", "automobile"]
    assert got["vs_keras"] < 1e-5, got  # the same served function as the .keras file
    # the evaluated (averaged) weights: the served loss is the one the run reported
    assert got["loss"] == pytest.approx(metrics["final_test_loss"], rel=1e-3), got


def test_an_existing_saved_model_folder_is_refused_before_training(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "keep.txt").write_text("mine")
    out = run("train", "--data", "learnable:256", "--width", "4", "--epochs", "1",
              "--saved-model", str(tmp_path / "served"))
    assert out.returncode == 2 and "already exists" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert (tmp_path / "served" / "keep.txt").read_text() == "mine"


# --- classes ----------------------------------------------------------------------------------

def test_a_20_class_folder_trains_a_20_way_head_and_keeps_its_names(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"kind{i:02d}" for i in range(20)]
    for split, per in (("train", 6), ("test", 2)):
        for c in classes:
            d = tmp_path / "tree" / split / c
            d.mkdir(parents=True)
            for i in range(per):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                (d / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    out = run("train", "--data", str(tmp_path / "tree"), "--width", "4", "--batch-size", "40",
              "--epochs", "1", "--quiet", "--json", str(tmp_path / "r.json"),
              "--save", str(tmp_path / "m.keras"), "--precision", "float32")
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["config"]["num_classes"] == 20 and r["dataset"]["classes"] == classes
    import fastcifar.serving  # noqa: F401  (registers the layers)

    m = keras.models.load_model(str(tmp_path / "m.keras"), compile=False, safe_mode=True)
    assert m.output.shape[-1] == 20 and m.get_layer("class_names").names == classes


def test_a_folder_with_one_class_is_refused(tmp_path):
    for split in ("train", "test"):
        d = tmp_path / split / "only"
        d.mkdir(parents=True)
        (d / "0.png").write_bytes(tf.io.encode_png(np.zeros((32, 32, 3), np.uint8)).numpy())
    with pytest.raises(DataError, match="at least 2 classes"):
        load(str(tmp_path))


# --- hints -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["train"], ["bench", "step"], ["bench", "accuracy"],
                                     ["bench", "ablate"], ["evaluate"], ["export-step"],
                                     ["compare"], ["report"], ["info"], ["doctor"]])
def test_every_help_shows_defaults_and_an_example(command):
    from fastcifar.cli import build_parser

    parser = build_parser()
    sub = parser
    for word in command:
        sub = next(a for a in sub._actions
                   if isinstance(a, __import__("argparse")._SubParsersAction)).choices[word]
    text = sub.format_help()
    assert "examples:\n  fastcifar " + command[0] in text, text
    if command == ["bench", "step"]:
        assert "steps per timed call (default: 2)" in text.replace("\n", " ").replace("  ", " ")
        assert "(default: 5)" in text


def test_a_batch_larger_than_a_small_folder_is_refused_before_decoding(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "tree" / split / c
            d.mkdir(parents=True)
            (d / "0.png").write_bytes(tf.io.encode_png(np.zeros((32, 32, 3), np.uint8)).numpy())
    out = run("train", "--data", str(tmp_path / "tree"), "--batch-size", "64",
              env={"FASTCIFAR_DATA": str(tmp_path / "cache")})
    assert out.returncode == 2 and "larger than the 2 training images" in out.stderr
    assert "decoding" not in out.stdout and out.stdout.strip() == ""
    assert not (tmp_path / "cache" / "folders").exists()  # nothing was decoded


def test_a_user_batchnorm_that_cannot_settle_is_named(small):
    def builder(policy):
        image = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(4, 3, dtype=policy)(image)
        x = keras.layers.BatchNormalization(momentum=0.99, name="slow_bn", dtype=policy)(x)
        x = keras.layers.GlobalAveragePooling2D(dtype=policy)(x)
        return keras.Model(image, keras.layers.Dense(10, dtype="float32")(x))

    with pytest.warns(UserWarning, match=r"'slow_bn'.*momentum 0.99.*300 steps.*has 4"):
        Trainer(_tiny(epochs=1), RT, model=builder).fit(small)


def test_importing_fastcifar_prints_nothing_of_tensorflows_start_up():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", "from fastcifar import Trainer, recipe; "
                          "import fastcifar.train; print('ok')"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert out.stderr.strip() == "", out.stderr
