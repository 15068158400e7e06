"""fastcifar against the record script (airbench94_muon), on one machine and one data set.

For each budget and seed, one process after the other, never two at once: fastcifar's
`fast`, fastcifar's `airbench94_muon` at the original's budget, then the original adapted
for the CPU (`benchmarks/reference/airbench94_muon_cpu.py`, run by the interpreter of a
throwaway virtualenv with torch). Interleaving puts the machine's drift on both sides.

Two clocks, both stated:
- rule seconds: each side's own timing rule (whitening + training + final TTA evaluation;
  fastcifar's also counts its data preparation, not loading or compiling);
- cold wall: process start to final accuracy, what a user waits (imports, reading the
  images, compiling, training, evaluation; the original also spends untimed per-epoch
  evaluations, which its script always runs).

    python benchmarks/record_compare.py run --data cifar10-jpeg/ --torch-python venv/bin/python \\
        --budgets 2,4 --seeds 0,1,2 --out record/          # ~2 h on a 2-core CPU
    python benchmarks/record_compare.py run ... --budgets 8 --seeds 0 --sides fast,orig \
        --out record/                                      # the full budget, one seed each
    python benchmarks/record_compare.py table record/       # the tables again

`fast` may train fewer epochs than the original's budget: `--fast-epochs 2:1.5,4:3/3.5` says
how many for each budget (several, separated by /, each its own row).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "reference", "airbench94_muon_cpu.py")

# two-sided 95% quantiles of Student's t, by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: float) -> float:
    """The quantile for the largest tabulated df not above `df` (conservative)."""
    usable = [d for d in T95 if d <= max(1.0, df)]
    return T95[max(usable)]


def fastcifar_cmd(recipe: str, epochs: float, seed: int, data: str, out: str,
                  extra=()) -> list:
    return [sys.executable, "-m", "fastcifar.cli", "bench", "accuracy", "--recipe", recipe,
            "--epochs", str(epochs), "--runs", "1", "--seed", str(seed), "--target", "0.5",
            "--eval-every", "0", "--data", data, "--quiet", "--json", out, *extra]


def timed(cmd: list, log: str) -> tuple:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    return rc, time.perf_counter() - t0


def run(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    fast_epochs = dict(part.split(":") for part in args.fast_epochs.split(",") if part)
    for budget in args.budgets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            counts = fast_epochs.get(budget, budget).split("/")
            jobs = [
                (f"{side}_e{budget}_s{seed}", fastcifar_cmd(
                    "fast", epochs, seed, args.data,
                    os.path.join(args.out, f"{side}_e{budget}_s{seed}.json")))
                for epochs in counts
                for side in ["fast" if len(counts) == 1 else f"fast-{epochs}"]
            ] + [
                (f"fcmuon_e{budget}_s{seed}", fastcifar_cmd(
                    "airbench94_muon", budget, seed, args.data,
                    os.path.join(args.out, f"fcmuon_e{budget}_s{seed}.json"))),
                (f"orig_e{budget}_s{seed}", [
                    args.torch_python, REFERENCE, "--data", args.data, "--epochs", budget,
                    "--seeds", str(seed), "--json",
                    os.path.join(args.out, f"orig_e{budget}_s{seed}.json")]),
            ]
            jobs = [(n, c) for n, c in jobs if n.split("_")[0].split("-")[0] in args.sides.split(",")]
            for name, cmd in jobs:
                rc, wall = timed(cmd, os.path.join(args.out, name + ".log"))
                with open(os.path.join(args.out, "walls.txt"), "a") as f:
                    f.write(f"{name} rc={rc} wall={wall:.3f}\n")
                print(f"{name}: rc={rc}, {wall:.0f} s", flush=True)


def read(folder: str) -> dict:
    """(side, budget) -> {seed: (accuracy, rule seconds, cold wall seconds)}"""
    walls = {}
    path = os.path.join(folder, "walls.txt")
    if os.path.exists(path):
        for line in open(path):
            parts = dict(p.split("=", 1) for p in line.split()[1:])
            walls[line.split()[0]] = float(parts["wall"])
    out: dict = {}
    for f in sorted(glob.glob(os.path.join(folder, "*_e*_s*.json"))):
        name = os.path.basename(f)[:-5]
        side, budget, seed = name.rsplit("_", 2)
        budget, seed = budget[1:], int(seed[1:])
        data = json.load(open(f))
        if isinstance(data, list):  # the original's list of runs
            acc, secs = data[0]["tta_val_acc"], data[0]["seconds"]
            epochs = data[0]["epochs"]
        else:
            m, first = data["metrics"], data["runs"][0]
            acc, secs = first["final_test_acc"], first["train_seconds"] - m["load_seconds"]
            epochs = data["config"]["epochs"]
        out.setdefault((side, budget), {})[seed] = (acc, secs, walls.get(name, math.nan),
                                                    epochs)
    return out


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def welch(a, b):
    """Difference of means a - b with its 95% interval (Welch)."""
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ma - mb, ma - mb, ma - mb
    df = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if len(a) > 1 else 0)
                           + (vb ** 2 / (len(b) - 1) if len(b) > 1 else 0) or 1e-30)
    h = t95(df) * se
    return ma - mb, ma - mb - h, ma - mb + h


def paired_ratio(a: dict, b: dict):
    """Geometric mean of a/b over shared seeds, with the 95% interval of paired log ratios."""
    seeds = sorted(set(a) & set(b))
    logs = [math.log(a[s] / b[s]) for s in seeds]
    m = statistics.mean(logs)
    if len(logs) < 2:
        return math.exp(m), math.nan, math.nan
    h = t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(m), math.exp(m - h), math.exp(m + h)


def machine(folder: str) -> str:
    """Where fastcifar's runs were measured, from their own JSON: a figure needs its CPU."""
    seen = set()
    for f in sorted(glob.glob(os.path.join(folder, "*_e*_s*.json"))):
        data = json.load(open(f))
        if isinstance(data, dict):
            env, rt = data.get("environment", {}), data.get("runtime", {})
            seen.add(f"{env.get('cpu_model')} ({env.get('cpu_count')} CPUs), TensorFlow "
                     f"{env.get('tensorflow')}, {rt.get('precision')}, XLA "
                     f"{'on' if rt.get('xla') else 'off'}, fastcifar at "
                     f"{str(env.get('git_commit'))[:7]}")
    return "; ".join(sorted(seen)) or "unknown (no fastcifar run in this folder)"


def table(folder: str) -> str:
    runs = read(folder)
    lines = [f"Machine: {machine(folder)}", "",
             "| budget | run | epochs | accuracy % per seed | mean ± std | vs original, pp "
             "(95% interval) | rule s per seed | mean | vs original (95% interval) | cold "
             "wall s, mean | vs original |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"orig": "original airbench94_muon", "fcmuon": "fastcifar airbench94_muon",
             "fast": "fastcifar fast"}
    for budget in sorted({b for _, b in runs}, key=float):
        base = runs.get(("orig", budget), {})
        for side in ("orig", "fcmuon", "fast", *sorted({s for s, b in runs
                                                         if b == budget} - set(names),
                                                        key=lambda s: s.split("-")[-1])):
            got = runs.get((side, budget))
            if not got:
                continue
            seeds = sorted(got)
            accs = [100 * got[s][0] for s in seeds]
            secs = [got[s][1] for s in seeds]
            walls = [got[s][2] for s in seeds]
            m, sd = mean_std(accs)
            row = [budget, names.get(side, "fastcifar fast" if side.startswith("fast")
                                     else side), f"{got[seeds[0]][3]:g}",
                   ", ".join(f"{a:.2f}" for a in accs), f"{m:.2f} ± {sd:.2f}"]
            if side == "orig" or not base:
                row += ["", ", ".join(f"{s:.1f}" for s in secs),
                        f"{statistics.mean(secs):.1f}", "1.00x" if side == "orig" else "",
                        f"{statistics.mean(walls):.1f}", "1.00x" if side == "orig" else ""]
            else:
                d, lo, hi = welch(accs, [100 * base[s][0] for s in sorted(base)])
                r, rlo, rhi = paired_ratio({s: got[s][1] for s in seeds},
                                           {s: base[s][1] for s in base})
                w, wlo, whi = paired_ratio({s: got[s][2] for s in seeds},
                                           {s: base[s][2] for s in base})
                few = len(seeds) < 2 or len(base) < 2  # no interval from one seed
                row += [f"{d:+.2f}" + ("" if few else f" ({lo:+.2f}, {hi:+.2f})"),
                        ", ".join(f"{s:.1f}" for s in secs), f"{statistics.mean(secs):.1f}",
                        f"{r:.2f}x" + ("" if few else f" ({rlo:.2f}, {rhi:.2f})"),
                        f"{statistics.mean(walls):.1f}",
                        f"{w:.2f}x" + ("" if few else f" ({wlo:.2f}, {whi:.2f})")]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--torch-python", required=True,
                   help="interpreter of a virtualenv with torch, numpy and pillow")
    r.add_argument("--budgets", default="2,4")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--fast-epochs", default="", help="e.g. 2:1.5,4:3")
    r.add_argument("--sides", default="fast,fcmuon,orig",
                   help="which of fast, fcmuon (airbench94_muon), orig to run")
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("folder")
    args = p.parse_args(argv)
    if args.cmd == "run":
        run(args)
        print(table(args.out))
    else:
        print(table(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
