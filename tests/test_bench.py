"""Benchmarks, the regression gate and FLOP counting, on tiny real runs."""

import json
import os
import subprocess
import sys

import pytest

from fastcifar import flops
from fastcifar.davidnet import davidnet

STEP = ["bench", "step", "--data", "synthetic:256", "--width", "4", "--batch-size", "32",
        "--steps", "2", "--reps", "3", "--quiet"]


def run(*args, cwd=None, env=None, timeout=600):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastcifar.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=timeout)


def test_flops_per_layer_match_a_hand_count():
    # c = 64, 2 FLOPs per multiply-add, written out layer by layer:
    hand = {
        "prep_conv": 2 * 32 * 32 * 9 * 3 * 64,            # 3.5M
        "layer1_conv": 2 * 32 * 32 * 9 * 64 * 128,        # 151M
        "layer1_res1_conv": 2 * 16 * 16 * 9 * 128 * 128,  # 75.5M
        "layer1_res2_conv": 2 * 16 * 16 * 9 * 128 * 128,
        "layer2_conv": 2 * 16 * 16 * 9 * 128 * 256,       # 151M
        "layer3_conv": 2 * 8 * 8 * 9 * 256 * 512,         # 151M
        "layer3_res1_conv": 2 * 4 * 4 * 9 * 512 * 512,    # 75.5M
        "layer3_res2_conv": 2 * 4 * 4 * 9 * 512 * 512,
        "linear": 2 * 512 * 10,
    }
    assert dict(flops.per_layer(davidnet(64))) == hand
    assert sum(hand.values()) == 758_523_904
    assert flops.train_flops(davidnet(64)) == 3 * 758_523_904  # ~2.3 GFLOP per image
    assert flops.forward_flops(davidnet(4)) == (2 * 1024 * 9 * 3 * 4 + 2 * 1024 * 9 * 4 * 8
                                                + 2 * 2 * 256 * 9 * 8 * 8
                                                + 2 * 256 * 9 * 8 * 16 + 2 * 64 * 9 * 16 * 32
                                                + 2 * 2 * 16 * 9 * 32 * 32 + 2 * 32 * 10)


def test_conv_peak_times_every_conv_shape_of_the_model_three_ways():
    from fastcifar.bench import conv_peak

    peak = conv_peak(davidnet(4), "/CPU:0", "float32", batch=8, repeats=1)
    shapes = {r["shape"] for r in peak["measured"]}
    # prep 3->4, layer1 4->8, res 8->8, layer2 8->16, layer3 16->32, res 32->32
    assert shapes == {"3x3 3->4 32x32", "3x3 4->8 32x32", "3x3 8->8 16x16",
                      "3x3 8->16 16x16", "3x3 16->32 8x8", "3x3 32->32 4x4"}
    assert sorted({r["op"] for r in peak["measured"]}) == ["filter gradient", "forward",
                                                          "input gradient"]
    assert len(peak["measured"]) == 18
    assert peak["flops_per_sec"] == max(r["flops_per_sec"] for r in peak["measured"]) > 0


def test_a_fraction_of_peak_above_one_is_reported_as_an_error(monkeypatch):
    from fastcifar import bench
    from fastcifar.config import RuntimeConfig, recipe
    from fastcifar.data import synthetic

    monkeypatch.setattr(bench, "conv_peak", lambda *a, **k: {
        "flops_per_sec": 1.0, "dtype": "float32", "batch": 32, "best": "none"})
    row, _ = bench.time_steps(recipe("tutorial", width=4, batch_size=32),
                              RuntimeConfig(precision="float32"), synthetic(128, 10), 1, 1)
    assert row["fraction_of_peak"] is None and "exceeds the measured conv peak" in \
        row["peak_error"]


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    a = run(*STEP, "--json", str(d / "a.json"), "--compare", "tutorial", "--pairs", "2",
            "--profile", str(d / "trace"))
    b = run(*STEP, "--json", str(d / "b.json"))
    return d, a, b


def test_bench_step_result_schema(step_results):
    d, a, _ = step_results
    assert a.returncode == 0, a.stderr[-3000:]
    r = json.loads((d / "a.json").read_text())
    assert r["benchmark"] == "step" and r["schema_version"] == 1
    m = r["metrics"]
    assert m["images_per_sec"] > 0 and m["compile_seconds"] > 0
    assert m["step_ms"]["p10"] <= m["step_ms"]["median"] <= m["step_ms"]["p90"]
    assert m["flops_per_image"] == flops.train_flops(davidnet(4))
    # a fraction, or none with the reason (a step faster than the measured ceiling)
    assert 0 < m["fraction_of_peak"] <= 1 if m["fraction_of_peak"] is not None \
        else "exceeds the measured conv peak" in m["peak_error"]
    s = m["speedup_vs_tutorial"]
    assert s["min"] <= s["median"] <= s["max"] and s["count"] == 2
    assert m["speedup_vs_seed"] == s  # the old name, kept for one release
    assert r["calibration"]["gflops"] > 0
    assert r["metric_info"]["step_ms"] == {"unit": "ms", "better": "lower"}
    assert m["utilization"]["source"] == "cpu"


def test_profile_trace_names_the_training_step(step_results):
    d, a, _ = step_results
    assert a.returncode == 0
    traces = list((d / "trace").rglob("*.xplane.pb"))
    assert traces, list((d / "trace").rglob("*"))
    assert any(b"_train_loop" in p.read_bytes() for p in traces)


def test_compare_same_commit_passes(step_results):
    d, a, b = step_results
    assert b.returncode == 0, b.stderr[-2000:]
    # two live timings while the suite's other process runs: seen 54% apart on one CI run,
    # so the threshold is the widest allowed; the counted signals are still gated exactly
    out = run("compare", str(d / "a.json"), str(d / "b.json"), "--max-regression", "95%")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "images_per_sec" in out.stdout


def _with_metrics(src, dst, **changes):
    r = json.loads(src.read_text())
    for k, v in changes.items():
        r["metrics"][k] = v
    dst.write_text(json.dumps(r))
    return dst


def test_compare_fails_on_a_real_regression_only_outside_noise(step_results, tmp_path):
    d, _, _ = step_results
    base = d / "a.json"
    r = json.loads(base.read_text())
    ips = r["metrics"]["images_per_sec"]
    slow = _with_metrics(base, tmp_path / "slow.json", images_per_sec=ips / 2,
                         images_per_sec_spread={"p10": ips / 2.1, "p90": ips / 1.9},
                         step_ms={k: v * 2 for k, v in r["metrics"]["step_ms"].items()
                                  if k in ("median", "p10", "p90")})
    out = run("compare", str(base), str(slow))
    assert out.returncode == 1 and "FAIL" in out.stdout
    # worse by more than the threshold but the spreads overlap: noise, not a failure
    noisy = _with_metrics(base, tmp_path / "noisy.json", images_per_sec=ips * 0.8,
                          images_per_sec_spread={"p10": ips * 0.3, "p90": ips * 1.5})
    out = run("compare", str(base), str(noisy))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "images_per_sec" in out.stdout and "within noise" in out.stdout


def test_normalize_discounts_a_slower_machine(step_results, tmp_path):
    d, _, _ = step_results
    base = d / "a.json"
    r = json.loads(base.read_text())
    ips = r["metrics"]["images_per_sec"]
    r["metrics"]["images_per_sec"] = ips / 2
    r["metrics"]["images_per_sec_spread"] = {"p10": ips / 2.05, "p90": ips / 1.95}
    r["metrics"]["step_ms"] = {k: v * 2 for k, v in r["metrics"]["step_ms"].items()}
    r["calibration"]["gflops"] /= 2  # the whole machine is half as fast
    slow_machine = tmp_path / "slowmachine.json"
    slow_machine.write_text(json.dumps(r))
    assert run("compare", str(base), str(slow_machine)).returncode == 1
    out = run("compare", str(base), str(slow_machine), "--normalize")
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r.update(schema_version=99), "schema"),
    (lambda r: r.update(benchmark="accuracy"), "different benchmarks"),
    (lambda r: r["dataset"].update(sha256="0" * 64), "different dataset"),
    (lambda r: r["metrics"].pop("images_per_sec"), "lacks metric"),
])
def test_compare_unusable_input_exits_2(step_results, tmp_path, mutate, needle):
    d, _, _ = step_results
    r = json.loads((d / "a.json").read_text())
    mutate(r)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(r))
    out = run("compare", str(d / "a.json"), str(other))
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def _accuracy_result(step_json, path, fraction, seconds, acc=0.90, std=0.005):
    r = json.loads(step_json.read_text())
    r["benchmark"] = "accuracy"
    r["metrics"] = {"final_test_acc": acc, "final_test_acc_std": std,
                    "fraction_reaching_target": fraction, "seconds_to_target": seconds}
    path.write_text(json.dumps(r))
    return path


def test_compare_gates_on_the_share_of_runs_reaching_the_target(step_results, tmp_path):
    d, _, _ = step_results
    base = _accuracy_result(d / "a.json", tmp_path / "base.json", 1.0, 100.0)
    # the runs that reached it were faster, but one run in three missed: a regression
    fewer = _accuracy_result(d / "a.json", tmp_path / "fewer.json", 2 / 3, 80.0)
    out = run("compare", str(base), str(fewer))
    assert out.returncode == 1 and "fewer runs reach the target" in out.stdout, out.stdout
    missed = _accuracy_result(d / "a.json", tmp_path / "missed.json", 1 / 3, None)
    out = run("compare", str(base), str(missed))
    assert out.returncode == 1 and "target no longer reached" in out.stdout, out.stdout
    same = _accuracy_result(d / "a.json", tmp_path / "same.json", 1.0, 99.0)
    assert run("compare", str(base), str(same)).returncode == 0


def _mutated(step_json, path, mutate):
    r = json.loads(step_json.read_text())
    mutate(r)
    path.write_text(json.dumps(r))
    return path


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["metrics"].update(images_per_sec=float("nan")), "not a finite number"),
    (lambda r: r["metrics"]["step_ms"].update(median="fast"), "not a finite number"),
    (lambda r: r.update(metrics=[1, 2, 3]), "'metrics' is not an object"),
    (lambda r: r["config"].update(width=16), "different configurations (width "),
    (lambda r: r["runtime_config"].update(precision="mixed_float16"), "precision"),
    (lambda r: r.update(status="failed", error="diverged"), "failed run (diverged)"),
])
def test_compare_refuses_what_it_cannot_compare(step_results, tmp_path, mutate, needle):
    d, _, _ = step_results
    bad = _mutated(d / "a.json", tmp_path / "bad.json", mutate)
    for args in ((d / "a.json", bad), (bad, d / "a.json")):  # either way round
        out = run("compare", *map(str, args))
        assert out.returncode == 2 and needle in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_compare_mismatched_configs_with_force_shows_the_difference(step_results, tmp_path):
    d, _, _ = step_results
    wide = _mutated(d / "a.json", tmp_path / "wide.json", lambda r: r["config"].update(width=16))
    out = run("compare", str(d / "a.json"), str(wide), "--force")
    assert out.returncode in (0, 1) and "configurations differ: width 4 vs 16" in out.stdout


def test_compare_refuses_bad_thresholds_deep_json_and_normalized_gpus(step_results, tmp_path):
    d, _, _ = step_results
    out = run("compare", str(d / "a.json"), str(d / "b.json"), "--max-acc-drop", "nan")
    assert out.returncode == 2 and "--max-acc-drop" in out.stderr
    out = run("compare", str(d / "a.json"), str(d / "b.json"), "--max-regression", "nan%")
    assert out.returncode == 2 and "threshold" in out.stderr, out.stderr
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    out = run("compare", str(d / "a.json"), str(deep))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    gpu = lambda r: r["runtime"].update(device_kind="GPU")
    a = _mutated(d / "a.json", tmp_path / "ga.json", gpu)
    b = _mutated(d / "a.json", tmp_path / "gb.json", gpu)
    assert run("compare", str(a), str(b)).returncode == 0  # the same numbers
    out = run("compare", str(a), str(b), "--normalize")
    assert out.returncode == 2 and "says nothing about a GPU" in out.stderr, out.stderr


def test_bench_bad_input(tmp_path):
    for args, needle in ((["bench", "nonsense"], "invalid choice"),
                         (["bench", "step", "--batch-size", "a,b"], "--batch-size"),
                         (["bench", "step", "--json", "/no/dir/x.json"], "does not exist"),
                         (["compare", "missing.json", "also.json"], "no such result")):
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 2 and needle in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_accuracy_on_other_data_needs_a_declared_target(tmp_path):
    out = run("bench", "accuracy", "--data", "learnable:256", "--width", "4", cwd=tmp_path)
    assert out.returncode == 2 and "--target" in out.stderr


def test_bench_accuracy_reports_seconds_to_target(tmp_path):
    out = run("bench", "accuracy", "--data", "learnable:1024", "--width", "4",
              "--batch-size", "32", "--epochs", "2", "--target", "0.3", "--runs", "2",
              "--precision", "float32", "--json", str(tmp_path / "acc.json"), "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "acc.json").read_text())
    m = r["metrics"]
    assert r["benchmark"] == "accuracy" and len(r["runs"]) == 2
    assert [run["seed"] for run in r["runs"]] == [0, 1]
    assert len(m["curve"]) == 2 and m["curve"][0][0] < m["curve"][1][0]
    assert 0 <= m["fraction_reaching_target"] <= 1
    reached = []
    for one in r["runs"]:
        accs = [a for _, a in one["curve"]]
        if one["seconds_to_target"] is not None:  # the first epoch at or above the target
            first = next(i for i, a in enumerate(accs) if a >= 0.3)
            assert one["seconds_to_target"] == one["curve"][first][0]
            reached.append(one["seconds_to_target"])
        else:
            assert max(accs) < 0.3
    assert m["fraction_reaching_target"] == len(reached) / 2
    # the median over both runs, a miss slower than any hit: with a miss, no time
    if len(reached) == 2:
        assert m["seconds_to_target"] == pytest.approx(sum(reached) / 2)
    else:
        assert m["seconds_to_target"] is None
    assert "not CIFAR-10" in r["note"] and r["dataset"]["name"] == "learnable:1024"
    assert "compilation excluded" in r["timing"] and "every evaluation" in r["timing"]


def test_median_time_to_target_counts_a_miss_as_slowest():
    from fastcifar.bench import median_time_to_target as median

    assert median([30.0, 10.0, 20.0]) == 20.0
    assert median([10.0, None, 30.0]) == 30.0  # hits 10, 30 and a miss: the middle is 30
    assert median([None, 5.0, None]) is None  # most runs missed
    assert median([10.0, None]) is None and median([10.0, 20.0]) == 15.0


def test_pytest_benchmark_suite_runs(tmp_path):
    """Smoke run of benchmarks/ with timing disabled: it must collect and execute."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTCIFAR_BENCH_WIDTH="4", FASTCIFAR_BENCH_BATCH="32")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          os.path.join(root, "benchmarks"), "--benchmark-disable"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout


def test_report_renders_a_png_from_real_results(step_results, tmp_path):
    d, _, _ = step_results
    train_json = tmp_path / "train.json"
    out = run("train", "--data", "learnable:512", "--width", "4", "--batch-size", "64",
              "--epochs", "2", "--quiet", "--json", str(train_json),
              "--profile", str(tmp_path / "trace"))
    assert out.returncode == 0, out.stderr[-2000:]
    traces = list((tmp_path / "trace").rglob("*.xplane.pb"))
    assert traces and any(b"_train_loop" in p.read_bytes() for p in traces)
    png = tmp_path / "report.png"
    out = run("report", str(train_json), str(d / "a.json"), "-o", str(png))
    assert out.returncode == 0, out.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import struct

    width, height = struct.unpack(">II", data[16:24])
    assert width >= 1000 and height >= 300  # three panels side by side
    bad = run("report", str(d / "a.json"), "-o", str(tmp_path / "r.jpg"))
    assert bad.returncode == 2 and "must end in .png" in bad.stderr


def test_doctor_passes_on_this_machine(tmp_path):
    out = run("doctor", "--json", str(tmp_path / "doctor.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    r = json.loads((tmp_path / "doctor.json").read_text())
    names = [c["check"] for c in r["checks"]]
    assert len(names) == 6 and all(c["status"] == "pass" for c in r["checks"])
    assert "scale 2^40 -> 2^39" in r["checks"][0]["detail"]
    assert "weights after the step apart by" in r["checks"][1]["detail"]  # XLA vs graph
    assert "2 logical CPU devices" in r["checks"][5]["detail"]


def test_ctrl_c_during_a_benchmark_leaves_no_result_file(tmp_path):
    import signal
    import time

    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    p = subprocess.Popen([sys.executable, "-m", "fastcifar.cli", "bench", "step", "--data",
                          "synthetic:2048", "--width", "16", "--batch-size", "256", "--reps",
                          "50", "--json", str(tmp_path / "r.json")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    try:
        deadline = time.time() + 120
        line = ""
        while "bench step:" not in line and time.time() < deadline:
            line = p.stdout.readline()  # started benchmarking
        time.sleep(2)
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=300)  # generous: a loaded CI machine is slow
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            raise AssertionError("no exit 300 s after Ctrl-C; stderr: " + err[-2000:])
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_doctor_compares_the_weights_after_the_step_not_only_the_loss():
    """A broken backward pass or update leaves the loss alone: the check must see it."""
    import numpy as np

    from fastcifar.doctor import _run, _same_step

    start = [np.zeros(4, np.float32)]
    run_a = (start, 2.0, [np.ones(4, np.float32)])
    ok, detail = _same_step("graph", run_a, "XLA", (start, 2.0, [np.full(4, 1.5, np.float32)]),
                            1e-3, 1e-2)
    assert not ok and "apart by 5.0e-01 of the distance moved" in detail
    ok, _ = _same_step("graph", run_a, "XLA", (start, 2.0, [np.full(4, 1.001, np.float32)]),
                       1e-3, 1e-2)
    assert ok
    skipped = _run("data-parallel", lambda ds, rt: (None, "skipped: one GPU"), None, None)
    assert skipped["status"] == "skipped"


def _changed(value, s):
    """Another value of setting `s` (validity does not matter to the gate)."""
    if s.choices:
        return next(c for c in s.choices if c != value)
    if value is None:
        return True if s.type is bool else "/CPU:1" if s.type is str else 0.5
    if s.type is bool:
        return not value
    if s.type is str:
        return "airbench94" if value == "davidnet" else value + "_other"
    return value + 1 if s.type is int else value * 0.5 + 0.01


def test_every_setting_takes_part_in_the_gate_unless_declared_otherwise(step_results,
                                                                        tmp_path, capsys):
    """Walk every declared setting: a pair of results differing only in it is refused
    (exit 2, naming it) unless its declaration says why it may differ."""
    from fastcifar import cli
    from fastcifar.config import RuntimeConfig, TrainConfig, settings

    d, _, _ = step_results
    base = json.loads((d / "a.json").read_text())
    checked = 0
    for section, cls in (("config", TrainConfig), ("runtime_config", RuntimeConfig)):
        for s in settings(cls):
            assert s.name in base[section], (section, s.name)  # every setting is recorded
            other = json.loads(json.dumps(base))
            other[section][s.name] = _changed(base[section][s.name], s)
            (tmp_path / "other.json").write_text(json.dumps(other))
            code = cli.main(["compare", str(d / "a.json"), str(tmp_path / "other.json"),
                             "--max-regression", "99%"])
            err = capsys.readouterr().err
            if s.not_compared:
                assert code == 0, (s.name, err)
            else:
                assert code == 2 and f"{s.name} " in err, (s.name, err)
                checked += 1
    assert checked >= 30


def test_a_real_run_of_another_net_and_steps_is_refused_by_the_gate(step_results, tmp_path):
    d, _, _ = step_results
    other = run("bench", "step", "--data", "synthetic:256", "--width", "4", "--batch-size",
                "32", "--steps", "3", "--reps", "2", "--quiet", "--net", "airbench94",
                "--json", str(tmp_path / "ab.json"))
    assert other.returncode == 0, other.stderr[-2000:]
    r = json.loads((tmp_path / "ab.json").read_text())
    assert r["runtime_config"]["steps_per_call"] == 3 and r["benchmark_settings"]["steps"] == 3
    for args in ((d / "a.json", tmp_path / "ab.json"), (tmp_path / "ab.json", d / "a.json")):
        out = run("compare", *map(str, args))
        assert out.returncode == 2, out.stdout + out.stderr  # either way round
        assert "net 'davidnet' vs 'airbench94'" in out.stderr or \
            "net 'airbench94' vs 'davidnet'" in out.stderr, out.stderr
        assert "steps_per_call" in out.stderr


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r["metrics"].update(images_per_sec=None, step_ms=None), "nothing to compare"),
    (lambda r: r.pop("status"), "status None"),
    (lambda r: r.update(status="crashed"), "status 'crashed'"),
    (lambda r: r.pop("runtime_config"), "does not record the runtime settings"),
])
def test_the_gate_refuses_results_that_measured_nothing(step_results, tmp_path, capsys,
                                                        mutate, needle):
    from fastcifar import cli

    d, _, _ = step_results
    bad = _mutated(d / "a.json", tmp_path / "bad.json", mutate)
    both = bad if needle == "nothing to compare" else d / "a.json"
    assert cli.main(["compare", str(both), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_what_auto_resolved_differently_is_shown_and_timed_not_refused(step_results,
                                                                        tmp_path, capsys):
    from fastcifar import cli

    d, _, _ = step_results
    other = _mutated(d / "a.json", tmp_path / "o.json",
                     lambda r: r["runtime"].update(precision="float32", conv_grad="library"))
    code = cli.main(["compare", str(d / "a.json"), str(other), "--max-regression", "99%"])
    out = capsys.readouterr().out
    assert code == 0 and "auto resolved differently" in out and "conv_grad" in out, out


def test_a_ctrl_c_swallowed_by_a_gc_callback_prints_no_traceback(capsys, monkeypatch):
    """Python cannot raise out of a garbage-collection hook or a finaliser, so a Ctrl-C
    landing there is 'ignored' with a traceback; the stop is recorded anyway, so the CLI
    drops that print (and only that one)."""
    import gc

    from fastcifar import cli

    class RaisesWhenCollected:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    monkeypatch.setattr(sys, "unraisablehook", cli._quiet_unraisable)
    RaisesWhenCollected(KeyboardInterrupt())
    gc.collect()
    assert capsys.readouterr().err == ""
    RaisesWhenCollected(ValueError("a real problem"))
    gc.collect()
    assert "a real problem" in capsys.readouterr().err
