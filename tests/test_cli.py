"""The command line as a user runs it: real processes, real files."""

import json
import os
import subprocess
import sys

import pytest

TRAIN = ["train", "--data", "learnable:512", "--width", "4", "--batch-size", "64",
         "--epochs", "1", "--quiet"]


def run(*args, cwd=None, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "fastcifar.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    out = run(*TRAIN, "--json", str(d / "r.json"), "--save", str(d / "m.keras"),
              "--target", "0.2", "--seed", "3")
    return d, out


def test_train_writes_a_complete_result(trained):
    d, out = trained
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((d / "r.json").read_text())
    assert r["schema_version"] == 1 and r["command"] == "train"
    for key in ("config", "runtime", "environment", "dataset", "metrics", "history"):
        assert key in r
    m = r["metrics"]
    for key in ("images_per_sec", "final_test_acc", "seconds_to_target", "train_seconds"):
        assert key in m
    assert m["images_per_sec"] > 0 and 0 <= m["final_test_acc"] <= 1
    assert r["config"]["seed"] == 3 and r["config"]["width"] == 4 and r["config"]["target"] == 0.2
    assert r["runtime"]["precision"] in ("float32", "mixed_bfloat16")
    assert r["dataset"]["name"] == "learnable:512" and len(r["dataset"]["sha256"]) == 64
    h = r["history"][0]
    for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds",
                "images_per_sec"):
        assert key in h
    assert r["metric_info"]["images_per_sec"] == {"unit": "images/s", "better": "higher"}
    assert r["environment"]["tensorflow"].startswith("2.")
    u = m["utilization"]  # the steady-state (training-only) window
    assert u["source"] == "cpu" and u["metric"] == "process_cpu_pct"
    assert u["count"] >= 1 and 0 < u["median"] <= 100
    assert r["utilization"]["why_not_nvml"] and r["utilization"]["windows_seconds"] > 0
    assert sorted(p.name for p in d.iterdir()) == ["m.keras", "r.json"]  # no temp files


def test_saved_model_loads_safely(trained):
    import keras

    d, _ = trained
    m = keras.models.load_model(d / "m.keras")
    assert m.output_shape == (None, 10)


BAD = [
    (["train", "--epochs", "0"], "epochs"),
    (["train", "--precision", "float8"], "precision"),
    (["train", "--recipe", "nope"], "unknown recipe"),
    (["train", "--frobnicate"], "unrecognized arguments"),
    (["train", "--data", "/no/such/place"], "no such data path"),
    (["train", "--data", "synthetic:x"], "synthetic:N"),
    (["train", "--json", "/no/such/dir/r.json"], "does not exist"),
    (["train", "--save", "model.h5"], "must end in .keras"),
    (["train", "--batch-size", "-3"], "batch_size"),
    (["train", "--target", "150"], "target"),
    (["train", "--data", "synthetic:100", "--batch-size", "512", "--width", "4"],
     "larger than the"),
    (["nonsense"], "invalid choice"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_no_traceback(args, needle, tmp_path):
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fastcifar: error:") and needle in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_info_reports_what_auto_picks():
    out = run("info")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "auto picks:" in out.stdout and "why:" in out.stdout
    assert "tensorflow" in out.stdout


def test_a_saved_ema_tta_model_evaluates_to_the_reported_accuracy(tmp_path):
    """`davidnet_tricks` (EMA + 6-view TTA): the file evaluated in a fresh process gives the
    accuracy the training run reported."""
    out = run("train", "--recipe", "davidnet_tricks", "--data", "learnable:1024", "--width",
              "8",
              "--batch-size", "64", "--epochs", "2", "--quiet", "--json",
              str(tmp_path / "r.json"), "--save", str(tmp_path / "m.keras"))
    assert out.returncode == 0, out.stderr[-3000:]
    trained = json.loads((tmp_path / "r.json").read_text())["metrics"]
    ev = run("evaluate", str(tmp_path / "m.keras"), "--data", "learnable:1024", "--json",
             str(tmp_path / "e.json"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["command"] == "evaluate" and r["metrics"]["test_images"] == 204
    assert abs(r["metrics"]["final_test_acc"] - trained["final_test_acc"]) <= 0.001
    assert r["metrics"]["final_test_loss"] == pytest.approx(trained["final_test_loss"],
                                                            rel=1e-3)
    recorded = r["config"]["recorded"]
    assert recorded["test_time_views"]["mode"] == "flip_translate"
    assert len(recorded["standardize"]["mean"]) == 3 and "flip_translate" in ev.stdout


@pytest.mark.parametrize("make,needle", [
    (lambda d: d / "absent.keras", "no such model file"),
    (lambda d: (d / "junk.keras").write_bytes(b"not a zip") and d / "junk.keras",
     "cannot load"),
])
def test_evaluate_refuses_what_is_not_a_saved_model(tmp_path, make, needle):
    out = run("evaluate", str(make(tmp_path)), "--data", "learnable:64")
    assert out.returncode == 2 and needle in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1
