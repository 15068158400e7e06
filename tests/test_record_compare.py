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


def _fastcifar(path, acc, train_seconds, load_seconds, epochs, cpu="Test CPU 9000"):
    """The fields of a `fastcifar bench accuracy --json` result the table reads."""
    path.write_text(json.dumps({
        "config": {"epochs": epochs, "recipe": "fast"},
        "metrics": {"final_test_acc": acc, "load_seconds": load_seconds},
        "runs": [{"seed": 0, "final_test_acc": acc, "train_seconds": train_seconds}],
        "environment": {"cpu_model": cpu, "cpu_count": 2, "tensorflow": "2.21.0",
                        "git_commit": "abcdef0123"},
        "runtime": {"precision": "float32", "xla": False}}))


def _original(path, acc, seconds, epochs):
    """The reference script's --json: a list of runs."""
    path.write_text(json.dumps([{"tta_val_acc": acc, "seconds": seconds, "epochs": epochs}]))


@pytest.fixture
def folder(tmp_path):
    # original: seeds 0-3; fast: seeds 1-3 (unequal counts and variances, so Welch's df is
    # not the pooled test's; pairs by seed, not by position; walls' ratios unlike the rule's)
    for seed, acc, secs in ((0, 0.80, 200.0), (1, 0.82, 220.0), (2, 0.81, 210.0),
                            (3, 0.83, 230.0)):
        _original(tmp_path / f"orig_e2_s{seed}.json", acc, secs, 2)
    # rule seconds = train_seconds less loading: 88, 168, 115
    for seed, acc, train, load in ((1, 0.83, 95.0, 7.0), (2, 0.86, 173.0, 5.0),
                                   (3, 0.85, 120.0, 5.0)):
        _fastcifar(tmp_path / f"fast_e2_s{seed}.json", acc, train, load, 1.75)
    (tmp_path / "walls.txt").write_text(
        "orig_e2_s0 rc=0 wall=240.000\nfast_e2_s1 rc=0 wall=110.000\n"
        "orig_e2_s1 rc=0 wall=250.000\nfast_e2_s2 rc=0 wall=200.000\n"
        "orig_e2_s2 rc=0 wall=260.000\nfast_e2_s3 rc=0 wall=160.000\n"
        "orig_e2_s3 rc=0 wall=270.000\n")
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
    assert orig[2:5] == ["2", "80.00, 82.00, 81.00, 83.00", "81.50 ± 1.29"]
    assert fast[2:5] == ["1.75", "83.00, 86.00, 85.00", "84.67 ± 1.53"]
    # Welch: variances of the means 2.333/3 and 1.667/4, se 1.0929, df 3.96 -> the table's
    # df 3 (t 3.182; pooled would be df 5): 3.167 -+ 3.478
    assert fast[5] == "+3.17 (-0.31, +6.64)"
    assert fast[6:8] == ["88.0, 168.0, 115.0", "123.7"]
    # by seed: 88/220, 168/210, 115/230 = 0.4, 0.8, 0.5: geometric mean 0.5429 (the
    # arithmetic one is 0.567); logs' sd 0.3536, se 0.2041, t(2) 4.303 -> 0.23 .. 1.31
    assert fast[8] == "0.54x (0.23, 1.31)"
    # cold walls by seed: 110/250, 200/260, 160/270
    assert fast[9:11] == ["156.7", "0.59x (0.29, 1.17)"]
    assert orig[6:11] == ["200.0, 220.0, 210.0, 230.0", "215.0", "1.00x", "255.0", "1.00x"]


def test_one_seed_gets_no_interval_and_a_mixed_folder_names_every_machine(rc, tmp_path):
    _original(tmp_path / "orig_e8_s0.json", 0.90, 700.0, 8)
    _fastcifar(tmp_path / "fast_e8_s0.json", 0.91, 505.0, 5.0, 8)
    _fastcifar(tmp_path / "fast_e8_s1.json", 0.93, 405.0, 5.0, 8)  # its original failed
    _fastcifar(tmp_path / "fast_e4_s0.json", 0.88, 305.0, 5.0, 4, cpu="Other CPU 1")
    lines = rc.table(str(tmp_path)).splitlines()
    assert "Other CPU 1 (2 CPUs)" in lines[0] and "Test CPU 9000 (2 CPUs)" in lines[0]
    fast = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert fast[:2] == ["8", "fastcifar fast"]
    # accuracy: both of fast's seeds (92 - 90); time: the one pair, 500 / 700
    assert fast[5] == "+2.00" and fast[8] == "0.71x"


def test_the_table_command_prints_it(folder):
    out = subprocess.run([sys.executable, SCRIPT, "table", str(folder)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 2 | fastcifar fast | 1.75 |" in out.stdout
