"""The Python examples of docs/training.md run as written, in order, in one namespace.

Only what cannot run here is swapped, at the seams a reader would expect: CIFAR-10 (no
download here) becomes 384 generated learnable images in the official format, and the
recipes are shrunk (width 4, batch 32, at most 2 epochs, a tenth of the rate) so the whole page runs in about
a minute. The text of each example is executed unchanged."""

import csv
import os
import re

import numpy as np
import pytest

import fastcifar
from fastcifar import config as config_mod
from fastcifar import data as data_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "training.md")
SMALL = "learnable:384"


def blocks():
    text = open(PAGE, encoding="utf-8").read()
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.fixture()
def shrunk(monkeypatch, tmp_path):
    real_recipe, real_load = config_mod.recipe, data_mod.load
    from fastcifar.run import run_training as real_run

    def recipe(name, **overrides):
        # batch 32 on 384 images: a tenth of the rate keeps a user's net (the last example,
        # no BatchNorm before its first add) from diverging in 24 noisy steps
        lr = real_recipe(name).lr_peak / 10
        overrides.update(width=4, batch_size=32, lr_peak=lr,
                         epochs=min(overrides.get("epochs", 2), 2))
        return real_recipe(name, **overrides)

    def load_data(spec="cifar10", quiet=True):
        return real_load(SMALL if spec == "cifar10" else spec, quiet=quiet)

    def run_training(config, *args, data="cifar10", **kw):
        return real_run(config, *args, data=SMALL if data == "cifar10" else data, **kw)

    def keras_cifar10():
        ds = real_load(SMALL)  # the official arrays' format: uint8 images, (N, 1) labels
        return ((ds.x_train, ds.y_train.reshape(-1, 1).astype(np.uint8)),
                (ds.x_test, ds.y_test.reshape(-1, 1).astype(np.uint8)))

    import keras

    # the names the page imports exist in the package; only their values are swapped
    assert {"recipe", "load_data", "run_training", "Trainer"} <= set(fastcifar.__all__)
    monkeypatch.setattr(fastcifar, "recipe", recipe)
    monkeypatch.setattr(fastcifar, "load_data", load_data)
    monkeypatch.setattr(fastcifar, "run_training", run_training)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", keras_cifar10)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_page_has_the_examples_this_test_runs():
    found = blocks()
    assert len(found) == 6, len(found)
    assert "save_saved_model" in found[0] and "EarlyStopping" in found[3]


def test_the_training_page_runs_as_written(shrunk):
    ns = {}
    for i, code in enumerate(blocks()[:5]):
        exec(compile(code, f"{PAGE} block {i + 1}", "exec"), ns)
        if i == 0:
            assert 0.0 <= ns["result"]["metrics"]["final_test_acc"] <= 1.0  # run_training
            assert os.path.exists("model.keras") and os.path.exists("run.json")
            assert os.path.isdir("served")
        if i == 1:
            assert tuple(ns["logits"].shape) == (10, 10)
        if i == 2:
            assert len(ns["result"].history) == 2  # 2 epochs through tf.data
        if i == 3:
            rows = list(csv.DictReader(open("epochs.csv")))
            assert len(rows) == len(ns["result"].history) and "val_accuracy" in rows[0]
    logits = ns["logits"].numpy()
    assert logits.shape == (10, 10) and np.all(np.isfinite(logits))
    assert ns["names"] == list(fastcifar.load_data("cifar10").classes)


def test_your_own_model_example_runs_as_written(shrunk):
    ns = {}
    exec(compile(blocks()[5], f"{PAGE} block 6", "exec"), ns)
    assert 0.0 <= ns["result"].final_test_acc <= 1.0
    assert len(ns["result"].history) == 2
