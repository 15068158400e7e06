"""benchmarks/record_compare.py's table: the numbers the README's side-by-side table quotes,
checked against a hand computation on result files written in each side's own format."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "record_compare.py")


@pytest.fixture(scope="module")
def rc():
    spec = importlib.util.spec_from_file_location("record_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fastcifar(path, acc, train_seconds, load_seconds, epochs):
    """The fields of a `fastcifar bench accuracy --json` result the table reads."""
    path.write_text(json.dumps({
        "config": {"epochs": epochs, "recipe": "fast"},
        "metrics": {"final_test_acc": acc, "load_seconds": load_seconds},
        "runs": [{"seed": 0, "final_test_acc": acc, "train_seconds": train_seconds}],
        "environment": {"cpu_model": "Test CPU 9000", "cpu_count": 2, "tensorflow": "2.21.0",
                        "git_commit": "abcdef0123"},
        "runtime": {"precision": "float32", "xla": False}}))


def _original(path, acc, seconds, epochs):
    """The reference script's --json: a list of runs."""
    path.write_text(json.dumps([{"tta_val_acc": acc, "seconds": seconds, "epochs": epochs}]))


@pytest.fixture
def folder(tmp_path):
    # original: 80% and 82% in 200 s and 220 s; fast: 83% and 85% in 100 s and 132 s
    # (train_seconds less the loading seconds, which the rule does not count)
    _original(tmp_path / "orig_e2_s0.json", 0.80, 200.0, 2)
    _original(tmp_path / "orig_e2_s1.json", 0.82, 220.0, 2)
    _fastcifar(tmp_path / "fast_e2_s0.json", 0.83, 105.0, 5.0, 1.75)
    _fastcifar(tmp_path / "fast_e2_s1.json", 0.85, 139.0, 7.0, 1.75)
    (tmp_path / "walls.txt").write_text(
        "fast_e2_s0 rc=0 wall=120.000\norig_e2_s0 rc=0 wall=240.000\n"
        "fast_e2_s1 rc=0 wall=150.000\norig_e2_s1 rc=0 wall=250.000\n")
    return tmp_path


def _rows(text):
    return {cells[1]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| 2 "))}


def test_the_table_gives_welch_intervals_and_paired_time_ratios(rc, folder):
    text = rc.table(str(folder))
    assert text.splitlines()[0] == ("Machine: Test CPU 9000 (2 CPUs), TensorFlow 2.21.0, "
                                    "float32, XLA off, fastcifar at abcdef0")
    rows = _rows(text)
    orig, fast = rows["original airbench94_muon"], rows["fastcifar fast"]
    assert orig[2:5] == ["2", "80.00, 82.00", "81.00 ± 1.41"]
    assert fast[2:5] == ["1.75", "83.00, 85.00", "84.00 ± 1.41"]
    # Welch: difference 3, se sqrt(2/2 + 2/2) = 1.414, df 2, t 4.303 -> +-6.085
    assert fast[5] == "+3.00 (-3.09, +9.09)"
    assert fast[6:8] == ["100.0, 132.0", "116.0"]
    # ratios 0.5 and 0.6: geometric mean 0.548; logs' sd 0.1289, se 0.0912, t(1) 12.706
    # -> exp(-0.6020 -+ 1.1583) = 0.17 .. 1.74
    assert fast[8] == "0.55x (0.17, 1.74)"
    # cold walls 120/240 and 150/250: ratios 0.5 and 0.6 again
    assert fast[9:11] == ["135.0", "0.55x (0.17, 1.74)"]
    assert orig[8] == "1.00x" and orig[9] == "245.0"


def test_one_seed_gets_no_interval(rc, tmp_path):
    _original(tmp_path / "orig_e8_s0.json", 0.90, 700.0, 8)
    _fastcifar(tmp_path / "fast_e8_s0.json", 0.91, 505.0, 5.0, 8)
    fast = [c.strip() for c in rc.table(str(tmp_path)).splitlines()[-1].strip("|").split("|")]
    assert fast[5] == "+1.00" and fast[8] == "0.71x"


def test_the_table_command_prints_it(folder):
    out = subprocess.run([sys.executable, SCRIPT, "table", str(folder)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 2 | fastcifar fast | 1.75 |" in out.stdout
