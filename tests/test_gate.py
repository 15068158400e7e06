"""The regression gate's statistics on fixed recorded samples, the fingerprint of the
compiled call, and interleaved A/B runs of two real processes."""

import json
import math
import os
import subprocess
import sys

import pytest

from fastcifar import abtest, fingerprint

# median step times (ms) of 6 processes of `bench step --width 32 --batch-size 128
# --steps 2 --reps 7`, recorded on a 2-core AMD EPYC
RECORDED = [186.25, 184.31, 183.75, 186.37, 185.02, 188.69]
TINY = ["--data", "synthetic:256", "--width", "4", "--batch-size", "32", "--steps", "1",
        "--reps", "2"]


def run(*args, env=None, timeout=600):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastcifar.cli", *args], capture_output=True,
                          text=True, env=e, timeout=timeout)


# --- the statistics, by hand ------------------------------------------------------------

def test_mann_whitney_matches_a_hand_computation():
    # every candidate above every baseline: U = 9, mean 4.5, variance 3*3/12*7 = 5.25,
    # z = (9 - 4.5 - 0.5) / sqrt(5.25) = 1.7457, one-sided p = 0.04043
    assert abtest.mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(0.04043, abs=1e-4)
    # ties: U = 2 + 3 + 3 = 8; tie term (27-3) + (8-2) = 30; variance 9/12*(7 - 30/30) = 4.5
    # z = (8 - 4.5 - 0.5) / sqrt(4.5) = 1.4142, p = 0.07865
    assert abtest.mann_whitney_greater([1, 2, 2], [2, 3, 3]) == pytest.approx(0.07865, abs=1e-4)
    # the candidate faster: p near 1
    assert abtest.mann_whitney_greater([4, 5, 6], [1, 2, 3]) > 0.95


def test_a_constant_ratio_has_that_ratio_and_a_zero_width_interval():
    r = abtest.ratio_interval(RECORDED, [1.1 * x for x in RECORDED], paired=True)
    assert r["median"] == pytest.approx(1.1) and r["low"] == pytest.approx(1.1) \
        and r["high"] == pytest.approx(1.1)
    # unpaired: ratio of medians, (185.02+186.25)/2 = 185.635 on both sides times 1.1
    u = abtest.ratio_interval(RECORDED, [1.1 * x for x in RECORDED], paired=False)
    assert u["median"] == pytest.approx(1.1)
    assert u["low"] < 1.1 < u["high"]  # each side resampled alone: a real width


def test_identical_samples_pass_and_a_2x_slowdown_fails():
    same = abtest.judge(RECORDED, list(RECORDED), paired=True, threshold=0.05)
    assert same["step_ms_ratio"]["median"] == pytest.approx(1.0) and not same["slower"]
    double = abtest.judge(RECORDED, [2 * x for x in RECORDED], paired=True, threshold=0.05)
    assert double["slower"] and double["step_ms_ratio"]["low"] > 1.9
    assert double["mann_whitney_p"] < 0.01
    # the A/A noise of these samples, shuffled against each other, does not fail
    aa = abtest.judge(RECORDED[:3], RECORDED[3:], paired=True, threshold=0.05)
    assert not aa["slower"]


def test_a_slowdown_under_the_threshold_or_inside_the_noise_passes():
    # 3% slower everywhere: significant, but under a 5% threshold
    small = abtest.judge(RECORDED, [1.03 * x for x in RECORDED], paired=True, threshold=0.05)
    assert small["step_ms_ratio"]["low"] > 1 and not small["slower"]
    # 10% slower on average but one round the other way: the interval reaches below 1
    mixed = [x * f for x, f in zip(RECORDED, (1.3, 0.8, 1.3, 0.8, 1.3, 0.8))]
    j = abtest.judge(RECORDED, mixed, paired=True, threshold=0.05)
    assert j["step_ms_ratio"]["low"] < 1 and not j["slower"]


def test_two_rounds_can_never_fail_and_say_so():
    assert not abtest.can_reject(2, 2) and abtest.can_reject(3, 3)
    j = abtest.judge(RECORDED[:2], [3 * x for x in RECORDED[:2]], paired=True, threshold=0.05)
    assert not j["slower"] and j["min_detectable_slowdown"] is None
    assert "too few rounds" in abtest.verdict_line(j)


def test_the_detectable_slowdown_shrinks_with_a_narrower_interval():
    wide = {"log_se": 0.05}
    narrow = {"log_se": 0.01}
    # max(log(1.05) + 0.8416*se, 2.8016*se): wide -> exp(0.1401)-1 = 15.0%
    assert abtest.min_detectable(wide, 0.05, 5, 5) == pytest.approx(math.expm1(0.14008),
                                                                    rel=1e-3)
    # narrow: the threshold dominates: exp(log 1.05 + 0.008416) - 1 = 5.89%
    assert abtest.min_detectable(narrow, 0.05, 5, 5) == pytest.approx(
        math.expm1(math.log(1.05) + 0.008416), rel=1e-3)


def test_each_side_runs_the_users_arguments_without_the_ab_ones():
    argv = ["bench", "step", "--width", "8", "--baseline", "/x/python", "--rounds=3",
            "--json", "out.json", "--quiet", "--budget", "60", "--steps", "2",
            "--max-regression", "5%"]
    assert abtest.side_argv(argv) == ["--width", "8", "--steps", "2"]


# --- the fingerprint --------------------------------------------------------------------

HLO = """HloModule m, entry_computation_layout={(f32[8,32,32,3]{3,2,1,0}, f32[3,3,3,16]{3,2,1,0}, f32[64,10]{1,0})->(f32[], f32[8,10]{1,0})}

ENTRY %main (x: f32[8,32,32,3], w: f32[3,3,3,16], d: f32[64,10]) -> (f32[], f32[8,10]) {
  %x = f32[8,32,32,3]{3,2,1,0} parameter(0)
  %w = f32[3,3,3,16]{3,2,1,0} parameter(1)
  %c = f32[8,32,32,16]{3,2,1,0} convolution(f32[8,32,32,3]{3,2,1,0} %x, f32[3,3,3,16]{3,2,1,0} %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %h = bf16[8,32,32,16]{3,2,1,0} convert(f32[8,32,32,16]{3,2,1,0} %c)
  %t = bf16[8,16,32,32]{3,2,1,0} transpose(bf16[8,32,32,16]{3,2,1,0} %h), dimensions={0,3,1,2}
  %r = f32[8,64]{1,0} reshape(f32[8,32,32,16]{3,2,1,0} %c)
  %d = f32[64,10]{1,0} parameter(2)
  %o = f32[8,10]{1,0} dot(f32[8,64]{1,0} %r, f32[64,10]{1,0} %d), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %s = f32[] constant(0)
  ROOT %tuple = (f32[], f32[8,10]{1,0}) tuple(f32[] %s, f32[8,10]{1,0} %o)
}
"""


def test_the_fingerprint_counts_a_hand_written_module():
    fp = fingerprint.from_hlo(HLO)
    conv = 2 * (8 * 32 * 32 * 16) * (3 * 3 * 3)  # 2 x outputs x (3x3 window x 3 inputs)
    dot = 2 * (8 * 10) * 64
    assert fp["flops"] == conv + dot == 7_088_128
    assert fp["ops"] == {"convolution": 1, "dot": 1, "convert": 1, "transpose": 1,
                         "copy": 0, "custom-call": 0}
    assert fp["parameter_bytes"] == 4 * (8 * 32 * 32 * 3 + 3 * 3 * 3 * 16 + 64 * 10)
    assert fp["output_bytes"] == 4 * (1 + 80)


@pytest.fixture(scope="module")
def engines():
    from fastcifar import data
    from fastcifar.config import RuntimeConfig, TrainConfig
    from fastcifar.train import Trainer

    ds = data.load("synthetic:128")
    cfg = TrainConfig(width=4, batch_size=32, epochs=1)
    rt = RuntimeConfig()
    trainer = Trainer(cfg, rt)
    return ds, cfg, rt, trainer, fingerprint.of_engine(trainer, trainer.prepare(ds), 1)


def test_the_fingerprint_of_a_real_step_counts_its_flops_by_hand(engines):
    from fastcifar.flops import davidnet_forward_flops

    _, cfg, _, trainer, fp = engines
    # forward + input gradient + filter gradient of every conv and the head: 3x forward
    assert fp["flops_per_step"] == 3 * davidnet_forward_flops(4) * 32
    assert fp["convolution"] > 0 and fp["trainable_parameters"] == sum(
        math.prod(v.shape) for v in trainer.model.trainable_variables)


def test_a_cast_planted_in_the_step_is_caught_by_the_fingerprint(engines, monkeypatch):
    import tensorflow as tf

    from fastcifar.engine import Engine
    from fastcifar.train import Trainer

    ds, cfg, rt, _, fp = engines
    original = Engine.normalise
    monkeypatch.setattr(Engine, "normalise", lambda self, x, m, s: tf.cast(
        tf.cast(original(self, x, m, s), tf.float64), self.compute_dtype))
    planted = Trainer(cfg, rt)
    fp2 = fingerprint.of_engine(planted, planted.prepare(ds), 1)
    assert fp2["convert"] == fp["convert"] + 2  # there and back
    assert fp2["flops_per_step"] == fp["flops_per_step"]
    assert fingerprint.regressions(fp, fp2) == [("convert", fp["convert"], fp["convert"] + 2)]
    assert fingerprint.regressions(fp, fp) == []


def test_the_planted_slowdown_switch_adds_flops_and_keeps_the_gradients(engines, monkeypatch):
    from fastcifar.train import Trainer

    ds, cfg, rt, trainer, fp = engines
    monkeypatch.setenv("FASTCIFAR_PLANTED_SLOWDOWN", "0.5")
    slow = Trainer(cfg, rt)
    assert slow.planted_matmuls == round(0.5 * fp["flops_per_step"] / (2 * 256 ** 3))
    fp2 = fingerprint.of_engine(slow, slow.prepare(ds), 1)
    assert fp2["flops_per_step"] == fp["flops_per_step"] + slow.planted_matmuls * 2 * 256 ** 3
    # same weights, same batch: the planted work changes no number the step computes
    slow.model.set_weights(trainer.model.get_weights())
    data_a, data_b = trainer.prepare(ds), slow.prepare(ds)
    trainer.step.assign(2)  # past the schedule's start: the rate is not 0
    slow.step.assign(2)
    before = [w.copy() for w in trainer.model.get_weights()]
    loss_a = float(trainer.train_steps(data_a, 1)[0])
    loss_b = float(slow.train_steps(data_b, 1)[0])
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for a, b in zip(trainer.model.get_weights(), slow.model.get_weights()):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    trainer.model.set_weights(before)


# --- real processes: the step benchmark, the gate, the A/B command -----------------------

@pytest.fixture(scope="module")
def step_result(tmp_path_factory):
    d = tmp_path_factory.mktemp("gate")
    out = run("bench", "step", *TINY, "--json", str(d / "a.json"), "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    return d / "a.json"


def test_a_step_result_carries_its_samples_and_fingerprint(step_result):
    m = json.loads(step_result.read_text())["metrics"]
    assert len(m["step_ms"]["samples"]) == 2
    assert m["step_ms"]["median"] == pytest.approx(sum(m["step_ms"]["samples"]) / 2)
    assert m["fingerprint"]["retraces"] == 0
    assert m["fingerprint"]["flops_per_step"] == m["flops_per_image"] * 32


@pytest.mark.parametrize("field,value,row", [
    ("convert", 1, "hlo convert"), ("transpose", 1, "hlo transpose"),
    ("flops_per_step", 1000, "hlo flops_per_step"), ("retraces", 1, "hlo retraces")])
def test_compare_fails_on_any_growth_in_the_counts(step_result, tmp_path, field, value, row):
    r = json.loads(step_result.read_text())
    r["metrics"]["fingerprint"][field] += value
    cur = tmp_path / "cur.json"
    cur.write_text(json.dumps(r))
    out = run("compare", str(step_result), str(cur), "--max-regression", "50%")
    assert out.returncode == 1, out.stdout + out.stderr
    failing = [line for line in out.stdout.splitlines() if "FAIL" in line]
    assert len(failing) == 1 and failing[0].startswith(row), out.stdout


def _paired(step_result, path, base, cand):
    r = json.loads(step_result.read_text())
    fp = r["metrics"]["fingerprint"]
    r["ab"] = {"rounds": len(base), "baseline": {"step_ms_rounds": base, "fingerprint": fp},
               "candidate": {"step_ms_rounds": cand, "fingerprint": fp}}
    path.write_text(json.dumps(r))
    return path


def test_compare_on_one_paired_result_gates_on_its_interval(step_result, tmp_path):
    same = _paired(step_result, tmp_path / "same.json", RECORDED, RECORDED)
    out = run("compare", str(same), "--max-regression", "5%")
    assert out.returncode == 0 and "paired rounds" in out.stdout, out.stdout + out.stderr
    slow = _paired(step_result, tmp_path / "slow.json", RECORDED, [2 * x for x in RECORDED])
    out = run("compare", str(slow), "--max-regression", "5%")
    assert out.returncode == 1 and "FAIL (95% interval" in out.stdout, out.stdout
    # a plain result alone is not a paired one
    out = run("compare", str(step_result))
    assert out.returncode == 2 and "not an interleaved A/B result" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_ab_runs_alternating_processes_and_writes_a_paired_result(tmp_path):
    out = run("bench", "step", *TINY, "--baseline", sys.executable, "--rounds", "3",
              "--json", str(tmp_path / "ab.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "ab.json").read_text())
    assert r["ab"]["rounds"] == 3 and len(r["ab"]["baseline"]["step_ms_rounds"]) == 3
    assert r["ab"]["baseline_python"] == os.path.abspath(sys.executable)
    assert [line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("round")] \
        == ["round 1", "round 2", "round 3"]
    assert "candidate/baseline step time" in out.stdout and "80% of the time" in out.stdout
    gate = run("compare", str(tmp_path / "ab.json"), "--max-regression", "50%")
    assert gate.returncode == 0, gate.stdout + gate.stderr


@pytest.mark.parametrize("extra,needle", [
    (["--baseline", "/no/such/python"], "no such executable"),
    (["--baseline", sys.executable, "--rounds", "1"], "at least 2"),
    (["--baseline", sys.executable, "--budget", "-1"], "invalid --budget"),
    (["--baseline", sys.executable, "--compare", "tutorial"], "drop --compare"),
])
def test_ab_refuses_bad_input_in_one_line(extra, needle):
    out = run("bench", "step", *TINY, *extra)
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_ab_refuses_two_installations_that_ran_different_settings(tmp_path):
    # a "base installation" whose command appends a different width
    other = tmp_path / "python"
    other.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\" --width 8\n")
    other.chmod(0o755)
    out = run("bench", "step", *TINY, "--baseline", str(other), "--rounds", "2")
    assert out.returncode == 2 and "different settings" in out.stderr \
        and "width 8 vs 4" in out.stderr, out.stderr
