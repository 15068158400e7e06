"""Training throughput at 1 and 2 replicas, side by side: one device, `mirrored` (per-replica
and synchronised BatchNorm) and `multiworker` with two worker processes on 127.0.0.1.

Each variant is a real `fastcifar train` run; rounds alternate the variants so drift hits
all of them alike. The number is `metrics.images_per_sec` (steady-state training: compile,
evaluation and data preparation excluded), with the median and range over the rounds and
the ratio to one device.

    python benchmarks/distributed_throughput.py --width 32 --batch-size 512 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

VARIANTS = {
    "one device": ["--strategy", "auto"],
    "mirrored, 2 replicas": ["--strategy", "mirrored", "--replicas", "2"],
    "mirrored, 2 replicas, sync BN": ["--strategy", "mirrored", "--replicas", "2", "--sync-bn"],
    "multiworker, 2 processes": ["--strategy", "multiworker"],
}


def run_variant(extra, common, out_dir, name):
    cmd = [sys.executable, "-m", "fastcifar.cli", "train", *common, *extra, "--quiet"]
    path = os.path.join(out_dir, f"{name}.json")
    env = dict(os.environ)
    if "multiworker" in extra:
        from fastcifar.cluster import free_local_addresses, tf_config

        workers = free_local_addresses(2)
        procs = [subprocess.Popen(cmd + ["--json", path],
                                  env=dict(env, TF_CONFIG=tf_config(workers, i)))
                 for i in range(2)]
        codes = [p.wait() for p in procs]
    else:
        env.pop("TF_CONFIG", None)
        codes = [subprocess.call(cmd + ["--json", path], env=env)]
    if any(codes):
        raise SystemExit(f"variant {name!r} failed with exit codes {codes}")
    with open(path) as f:
        r = json.load(f)
    return r["metrics"]["images_per_sec"], r["metrics"]["final_test_acc"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--data", default="synthetic:8192")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default=";".join(VARIANTS), help="names joined by ;")
    a = p.parse_args()
    names = [v.strip() for v in a.variants.split(";")]
    common = ["--data", a.data, "--width", str(a.width), "--batch-size", str(a.batch_size),
              "--epochs", str(a.epochs)]
    speeds = {n: [] for n in names}
    accs = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            for i, n in enumerate(names):
                ips, acc = run_variant(VARIANTS[n], common, d, f"r{r}v{i}")
                speeds[n].append(ips)
                accs[n].append(acc)
                print(f"round {r + 1}: {n}: {ips:.1f} img/s", flush=True)
    base = statistics.median(speeds[names[0]])
    print(f"\n{a.data}, width {a.width}, batch {a.batch_size} (global), {a.epochs} epochs, "
          f"{a.rounds} rounds; steady-state training img/s (compile and evaluation excluded)")
    print("| variant | img/s median (min-max) | vs one device | final test acc |")
    print("|---|---|---|---|")
    for n in names:
        s = speeds[n]
        print(f"| {n} | {statistics.median(s):.1f} ({min(s):.1f}-{max(s):.1f}) | "
              f"{statistics.median(s) / base:.2f}x | {statistics.median(accs[n]):.4f} |")


if __name__ == "__main__":
    main()
