"""How often the regression gate cries wolf, and how often it catches a real slowdown.

One pool of interleaved processes, each `fastcifar bench step` with the example workflow's
settings (`--width 32 --batch-size 128 --steps 2 --reps 7`): every round runs the base,
a planted ~5% slowdown and a planted ~10% slowdown, in rotating order. The slowdowns are
real: `FASTCIFAR_PLANTED_SLOWDOWN` adds matrix products inside the compiled step (a
benchmark-only switch); the pool measures what they actually cost.

Trials are gate-sized runs resampled from the pool:
- interleaved rule (`fastcifar bench step --baseline`): K rounds, base vs candidate
  processes of the same rounds (A/A: base of round i vs base of round i+1);
- old sequential rule (`fastcifar compare base.json candidate.json --normalize`): one base
  process against one candidate process, the spreads rule, at 10% and 5%.
Resampled trials overlap; the disjoint trials (each round used once) are reported too.
Note that the fingerprint (`fastcifar.fingerprint`) sees every planted slowdown exactly
(its FLOPs grow): the rates here are of the timing rule alone.

    python benchmarks/gate_power.py --rounds 60 --out gate-power/      # ~50 min, 2 cores
    python benchmarks/gate_power.py --analyse gate-power/               # tables again
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

from fastcifar.abtest import judge
from fastcifar.compare import compare
from fastcifar.util import cpu_info

WORKFLOW = ["--width", "32", "--batch-size", "128", "--steps", "2", "--reps", "7"]
VARIANTS = {"base": "", "slow5": "0.05", "slow10": "0.11"}


def run_pool(out: str, rounds: int, budget_s: float) -> None:
    os.makedirs(out, exist_ok=True)
    names = list(VARIANTS)
    t0 = time.perf_counter()
    for r in range(rounds):
        if time.perf_counter() - t0 > budget_s:
            print(f"budget reached after {r} rounds", flush=True)
            break
        order = names[r % 3:] + names[:r % 3]  # rotate: no variant always first
        for name in order:
            path = os.path.join(out, f"r{r:03d}_{name}.json")
            if os.path.exists(path):
                continue
            env = dict(os.environ)
            env.pop("FASTCIFAR_PLANTED_SLOWDOWN", None)
            if VARIANTS[name]:
                env["FASTCIFAR_PLANTED_SLOWDOWN"] = VARIANTS[name]
            subprocess.run([sys.executable, "-m", "fastcifar.cli", "bench", "step", *WORKFLOW,
                            "--json", path, "--quiet"], env=env, check=True)
        print(f"round {r + 1}/{rounds} done, {time.perf_counter() - t0:.0f} s", flush=True)


def load_pool(out: str) -> dict:
    pool = {}
    for f in sorted(os.listdir(out)):
        if f.endswith(".json") and f.startswith("r"):
            r, name = f[:-5].split("_", 1)
            pool.setdefault(int(r[1:]), {})[name] = os.path.join(out, f)
    return {r: v for r, v in pool.items() if len(v) == len(VARIANTS)}


def median_ms(path: str) -> float:
    with open(path) as f:
        return json.load(f)["metrics"]["step_ms"]["median"]


def interleaved_trials(pool: dict, k: int, candidate: str, trials: int, threshold: float,
                       rng: random.Random) -> tuple:
    """(caught, trials, disjoint caught, disjoint trials) for the interleaved rule."""
    rounds = sorted(pool)
    if candidate == "base":  # A/A: base of round i against base of round i+1
        usable = [r for r in rounds if r + 1 in pool]
        side = lambda r: (median_ms(pool[r]["base"]), median_ms(pool[r + 1]["base"]))
    else:
        usable = rounds
        side = lambda r: (median_ms(pool[r]["base"]), median_ms(pool[r][candidate]))
    values = {r: side(r) for r in usable}

    def caught(chosen) -> bool:
        base = [values[r][0] for r in chosen]
        cand = [values[r][1] for r in chosen]
        return judge(base, cand, paired=True, threshold=threshold)["slower"]

    hits = sum(caught(rng.sample(usable, k)) for _ in range(trials))
    step = 2 if candidate == "base" else 1  # A/A uses rounds i and i+1: skip one
    disjoint_rounds = usable[::step]
    groups = [disjoint_rounds[i:i + k] for i in range(0, len(disjoint_rounds) - k + 1, k)]
    return hits, trials, sum(caught(g) for g in groups), len(groups)


def _timing_only(path: str, tmp: str) -> str:
    """A copy of a result without its fingerprint: the planted work adds FLOPs, which the
    fingerprint always catches; these rates are of the timing rule."""
    with open(path) as f:
        result = json.load(f)
    result["metrics"].pop("fingerprint", None)
    copy = os.path.join(tmp, os.path.basename(path))
    with open(copy, "w") as f:
        json.dump(result, f)
    return copy


def sequential_trials(pool: dict, candidate: str, threshold: float) -> tuple:
    """(caught, trials) for the old rule: `compare base.json cand.json --normalize`."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix="gate-power-")
    caught = n = 0
    for r in sorted(pool):
        if candidate == "base":
            if r + 1 not in pool:
                continue
            pair = (pool[r]["base"], pool[r + 1]["base"])
        else:
            pair = (pool[r]["base"], pool[r][candidate])
        code, _ = compare(*(_timing_only(p, tmp) for p in pair), max_regression=threshold,
                          normalize=True)
        caught += code == 1
        n += 1
    return caught, n


def analyse(out: str, ks=(5, 8, 10, 12), trials: int = 400, threshold: float = 0.05) -> dict:
    pool = load_pool(out)
    rng = random.Random(0)
    base = [median_ms(p["base"]) for p in pool.values()]
    seconds = []
    for p in pool.values():
        for path in p.values():
            with open(path) as f:
                seconds.append(json.load(f)["metrics"]["compile_seconds"])
    planted = {name: statistics.median(median_ms(pool[r][name]) / median_ms(pool[r]["base"])
                                       for r in pool) - 1
               for name in VARIANTS if name != "base"}
    stamps = sorted(os.path.getmtime(path) for p in pool.values() for path in p.values())
    process_s = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    report = {"rounds": len(pool), "cpu": cpu_info().get("model", "unknown CPU"), "threshold": threshold,
              "base_step_ms": {"median": statistics.median(base), "min": min(base),
                               "max": max(base)},
              "planted_measured": planted, "seconds_per_process": process_s,
              "interleaved": {}, "sequential": {}}
    for k in ks:
        rows = {}
        for cand in VARIANTS:
            hits, n, dhits, dn = interleaved_trials(pool, k, cand, trials, threshold, rng)
            rows[cand] = {"caught": hits, "trials": n, "disjoint_caught": dhits,
                          "disjoint_trials": dn}
        report["interleaved"][f"{k} rounds"] = {
            "ci_minutes": 2 * k * process_s / 60, **rows}
    for thr in (0.10, 0.05):
        report["sequential"][f"{thr:.0%}"] = {
            "ci_minutes": 2 * process_s / 60,
            **{cand: dict(zip(("caught", "trials"), sequential_trials(pool, cand, thr)))
               for cand in VARIANTS}}
    return report


def table(report: dict) -> str:
    p = report["planted_measured"]
    lines = [f"{report['rounds']} rounds on {report['cpu']}; base step "
             f"{report['base_step_ms']['median']:.1f} ms (median; {report['base_step_ms']['min']:.1f}"
             f"-{report['base_step_ms']['max']:.1f} over processes); planted slowdowns "
             f"measured: {100 * p['slow5']:+.1f}% and {100 * p['slow10']:+.1f}% (median "
             f"per-round ratio); {report['seconds_per_process']:.1f} s per process",
             "",
             f"| gate | CI minutes | false alarms (A/A) | {100 * p['slow5']:+.1f}% caught "
             f"| {100 * p['slow10']:+.1f}% caught |",
             "|---|---|---|---|---|"]
    rate = lambda r, c: f"{r[c]['caught']}/{r[c]['trials']}"
    for name, r in report["interleaved"].items():
        disjoint = lambda c: f" ({r[c]['disjoint_caught']}/{r[c]['disjoint_trials']} disjoint)"
        lines.append(f"| interleaved, {name}, {report['threshold']:.0%} | "
                     f"{r['ci_minutes']:.1f} | {rate(r, 'base')}{disjoint('base')} | "
                     f"{rate(r, 'slow5')}{disjoint('slow5')} | "
                     f"{rate(r, 'slow10')}{disjoint('slow10')} |")
    for name, r in report["sequential"].items():
        lines.append(f"| old sequential, --max-regression {name} --normalize | "
                     f"{r['ci_minutes']:.1f} | {rate(r, 'base')} | {rate(r, 'slow5')} | "
                     f"{rate(r, 'slow10')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--budget", type=float, default=85 * 60, help="seconds for the pool")
    ap.add_argument("--out", default="gate-power")
    ap.add_argument("--analyse", metavar="DIR", help="only analyse an existing pool")
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    out = args.analyse or args.out
    if not args.analyse:
        run_pool(out, args.rounds, args.budget)
    report = analyse(out, threshold=args.threshold)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
