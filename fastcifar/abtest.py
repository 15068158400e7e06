"""Interleaved A/B step benchmarks and the statistics that judge them.

`fastcifar bench step --baseline PYTHON` runs the same step benchmark in alternating
processes, the baseline installation's interpreter then this one, round after round, so
that whatever the machine does meanwhile (another job, a thermal limit, a noisy neighbour)
falls on both sides alike. Each process contributes one number, its median step time;
round i pairs baseline i with candidate i.

The judgement does not assume normal noise: the ratio candidate/baseline is the geometric
mean of the per-round ratios, its 95% interval a bootstrap over rounds (paired) or over
each side's processes (unpaired), and a one-sided Mann-Whitney U test says how surprising
the candidate's slower processes would be if nothing had changed. The gate fails when the
whole interval lies above 1 and the ratio exceeds the threshold. The smallest slowdown a
run could have caught (80% of the time) follows from the interval's width: more rounds,
a narrower interval, a smaller detectable slowdown.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

from .errors import UserError

Z_95 = 1.959964  # two-sided 95%
Z_80 = 0.841621  # one-sided 80% power


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def mann_whitney_greater(base: list, cand: list) -> float:
    """One-sided p-value that `cand`'s values tend to exceed `base`'s (normal approximation
    with tie correction and continuity correction; U counts pairs cand > base, ties 1/2)."""
    n1, n2 = len(base), len(cand)
    if n1 < 1 or n2 < 1:
        raise ValueError("Mann-Whitney needs at least one value on each side")
    u = sum((c > b) + 0.5 * (c == b) for c in cand for b in base)
    n = n1 + n2
    pooled = sorted(base + cand)
    ties, i = 0, 0
    while i < n:
        j = i
        while j < n and pooled[j] == pooled[i]:
            j += 1
        t = j - i
        ties += t ** 3 - t
        i = j
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 0.5
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return _normal_sf(z)


def _geomean(values: list) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def ratio_interval(base: list, cand: list, paired: bool, resamples: int = 4000,
                   seed: int = 0, confidence: float = 0.95) -> dict:
    """Ratio candidate/baseline (>1: the candidate is slower) with a percentile-bootstrap
    interval. Paired: geometric mean of per-round ratios, rounds resampled. Unpaired:
    ratio of the medians, each side resampled on its own."""
    if any(not (v > 0 and math.isfinite(v)) for v in base + cand):
        raise ValueError("step times must be positive finite numbers")
    rng = random.Random(seed)
    if paired:
        if len(base) != len(cand) or len(base) < 2:
            raise ValueError("paired samples need the same number of rounds, at least 2")
        ratios = [c / b for b, c in zip(base, cand)]
        estimate = _geomean(ratios)
        boots = [_geomean([rng.choice(ratios) for _ in ratios]) for _ in range(resamples)]
    else:
        if len(base) < 2 or len(cand) < 2:
            raise ValueError("unpaired samples need at least 2 values on each side")
        estimate = statistics.median(cand) / statistics.median(base)
        boots = [statistics.median([rng.choice(cand) for _ in cand])
                 / statistics.median([rng.choice(base) for _ in base])
                 for _ in range(resamples)]
    boots.sort()
    tail = (1 - confidence) / 2
    low = boots[int(math.floor(tail * (resamples - 1)))]
    high = boots[int(math.ceil((1 - tail) * (resamples - 1)))]
    # the spread of log(ratio) the interval implies, for the detectable slowdown
    se = (math.log(high) - math.log(low)) / (2 * Z_95)
    return {"median": estimate, "low": low, "high": high, "log_se": se,
            "rounds" if paired else "samples": [len(base), len(cand)]}


ALPHA = 0.05  # the Mann-Whitney test's level


def can_reject(n_base: int, n_cand: int) -> bool:
    """Whether samples this size can reach p < ALPHA at all (every candidate slower than
    every baseline): 2 rounds cannot, 3 can."""
    return mann_whitney_greater(list(range(n_base)),
                                [n_base + i for i in range(n_cand)]) < ALPHA


def min_detectable(interval: dict, threshold: float, n_base: int, n_cand: int):
    """The slowdown the rule catches 80% of the time with this run's spread: the ratio
    must clear both 1 + threshold and the interval's half-width by the power margin.
    None when the run is too short for the test to reject at all."""
    if not can_reject(n_base, n_cand):
        return None
    se = interval["log_se"]
    need = max(math.log1p(threshold) + Z_80 * se, (Z_95 + Z_80) * se)
    return math.expm1(need)


def slower(interval: dict, p_value: float, threshold: float) -> bool:
    """The gate's rule: the whole interval above 1, the ratio above 1 + threshold, and
    the rank test significant (which a bootstrap over very few rounds is not enough for)."""
    return interval["low"] > 1.0 and interval["median"] > 1.0 + threshold \
        and p_value < ALPHA


def judge(base: list, cand: list, paired: bool, threshold: float) -> dict:
    interval = ratio_interval(base, cand, paired)
    p = mann_whitney_greater(base, cand)
    return {"step_ms_ratio": {k: interval[k] for k in ("median", "low", "high")},
            "mann_whitney_p": p,
            "min_detectable_slowdown": min_detectable(interval, threshold, len(base),
                                                      len(cand)),
            "slower": slower(interval, p, threshold), "threshold": threshold}


def verdict_line(j: dict) -> str:
    r = j["step_ms_ratio"]
    head = (f"candidate/baseline step time {r['median']:.3f}x "
            f"(95% interval {r['low']:.3f}-{r['high']:.3f}, Mann-Whitney p "
            f"{j['mann_whitney_p']:.3g})")
    if j["slower"]:
        said = f"SLOWER by more than {j['threshold']:.0%}"
    elif r["low"] > 1:
        said = f"slower, but by less than the {j['threshold']:.0%} threshold"
    else:
        said = "no slowdown shown"
    md = j["min_detectable_slowdown"]
    return (f"{head}: {said}; " + (f"this run would catch a slowdown of {md:.1%} or more "
                                   f"80% of the time" if md is not None else
                                   "too few rounds to show any slowdown (use 3 or more)"))


# --- running the two installations ----------------------------------------------------

DROPPED = {"--baseline": 1, "--rounds": 1, "--budget": 1, "--json": 1, "--profile": 1,
           "--quiet": 0, "--max-regression": 1}


def side_argv(argv: list) -> list:
    """The `bench step` arguments each side runs: the user's, less the A/B ones and the
    outputs (each side writes its own result to a temporary file)."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in DROPPED:
            skip = DROPPED[name] if "=" not in arg else 0
            continue
        out.append(arg)
    if out[:2] == ["bench", "step"]:
        out = out[2:]
    elif out[:1] == ["bench"]:
        out = out[1:]
    return out


def check_interpreter(python: str) -> str:
    """The baseline's interpreter must exist and run; returns its absolute path."""
    path = python if os.sep in python else (__import__("shutil").which(python) or python)
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise UserError(f"--baseline {python}: no such executable; pass the Python of the "
                        f"base installation, e.g. ../base/.venv/bin/python")
    return os.path.abspath(path)


def run_side(python: str, argv: list, timeout: Optional[float] = None) -> dict:
    """One process of `python -m fastcifar.cli bench step ARGV`; its result. Run with
    PYTHONSAFEPATH so that the working directory's own `fastcifar/` (the candidate's
    checkout) is not imported by the baseline's interpreter."""
    from .results import read_json

    with tempfile.TemporaryDirectory(prefix="fastcifar-ab-") as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(os.environ, PYTHONSAFEPATH="1")
        cmd = [python, "-m", "fastcifar.cli", "bench", "step", *argv, "--json", out, "--quiet"]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"{python}: the benchmark took over {timeout:.0f} s; lower "
                            f"--reps or raise --budget") from None
        if done.returncode != 0 or not os.path.exists(out):
            lines = [l for l in (done.stderr or "").strip().splitlines() if l.strip()]
            raise UserError(f"{python} -m fastcifar.cli bench step failed (exit "
                            f"{done.returncode}): {lines[-1] if lines else 'no output'}; "
                            f"is fastcifar installed for that interpreter?")
        return read_json(out)


def _round_median(result: dict) -> float:
    return float(result["metrics"]["step_ms"]["median"])


def check_same(base: dict, cand: dict) -> None:
    """Both sides must have run the same benchmark on the same data and settings."""
    from .compare import differences

    if base.get("dataset", {}).get("sha256") != cand.get("dataset", {}).get("sha256"):
        raise UserError("the two installations loaded different data; give both the same "
                        "--data")
    diff = differences(base, cand)
    if diff:
        raise UserError(f"the two installations ran different settings ({'; '.join(diff)}): "
                        f"their defaults differ; pass each setting explicitly")


def interleaved(baseline: str, argv: list, rounds: int, budget: Optional[float],
                threshold: float, say: Callable[[str], None]) -> dict:
    """Alternate baseline and candidate processes for `rounds` rounds (or until the next
    round would pass `budget` seconds, at least 2 rounds); the paired result."""
    from . import results

    baseline = check_interpreter(baseline)
    args = side_argv(argv)
    sides = {"baseline": baseline, "candidate": sys.executable}
    runs = {"baseline": [], "candidate": []}
    t0, per_round = time.perf_counter(), 0.0
    for i in range(rounds):
        elapsed = time.perf_counter() - t0
        if budget is not None and i >= 2 and elapsed + per_round > budget:
            say(f"time budget reached after {i} rounds ({elapsed:.0f} s)")
            break
        for name, python in sides.items():
            runs[name].append(run_side(python, args))
        if i == 0:
            check_same(runs["baseline"][0], runs["candidate"][0])
        per_round = (time.perf_counter() - t0) / (i + 1)
        say(f"round {i + 1}: baseline {_round_median(runs['baseline'][-1]):.1f} ms, "
            f"candidate {_round_median(runs['candidate'][-1]):.1f} ms per step")
    base = [_round_median(r) for r in runs["baseline"]]
    cand = [_round_median(r) for r in runs["candidate"]]
    judged = judge(base, cand, paired=True, threshold=threshold)
    head = runs["candidate"][-1]
    metrics = {k: v for k, v in head["metrics"].items()
               if k in ("images_per_sec", "flops_per_image", "fingerprint",
                        "host_peak_rss_bytes", "compile_seconds")}
    from .util import summarize

    batch = head["config"]["batch_size"]
    metrics.update(step_ms={**summarize(cand), "samples": cand},
                   images_per_sec=statistics.median(1000 * batch / c for c in cand),
                   **{k: judged[k] for k in ("step_ms_ratio", "mann_whitney_p",
                                             "min_detectable_slowdown")})
    ab = {"baseline_python": baseline, "candidate_python": sys.executable,
          "rounds": len(base), "order": "baseline then candidate, each round",
          "argv": args, "threshold": threshold, "slower": judged["slower"],
          "seconds": time.perf_counter() - t0,
          "baseline": {"step_ms_rounds": base,
                       "fingerprint": runs["baseline"][-1]["metrics"].get("fingerprint"),
                       "environment": runs["baseline"][-1].get("environment")},
          "candidate": {"step_ms_rounds": cand,
                        "fingerprint": head["metrics"].get("fingerprint")}}
    extra = {k: head[k] for k in ("sweep", "calibration", "runtime_config",
                                  "benchmark_settings") if k in head}
    return results.build("bench", head["config"], head["runtime"], head["environment"],
                         head["dataset"], metrics, benchmark="step", ab=ab, **extra,
                         timing="interleaved A/B: each process's median step time is one "
                                "sample; step_ms_ratio is the geometric mean of the "
                                "per-round ratios, its interval a bootstrap over rounds")
