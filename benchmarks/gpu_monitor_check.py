"""Check fastcifar's utilisation monitor against a real NVIDIA GPU.

    python benchmarks/gpu_monitor_check.py [--seconds 5] [--interval 0.1] [--json PATH]

Loads GPU 0 with a matrix-multiply loop through whichever framework is installed
(TensorFlow, else PyTorch, JAX or CuPy), and checks that the monitor reads kernel-busy
above 80% under load and below 20% when idle, that power and SM clock rise under load,
and that the number of reads matches the sampling interval. Prints a verdict table;
exits 0 when every check passes, 1 when one fails, 2 when it cannot run (no GPU/NVML/
framework). Needs only fastcifar.monitor, not TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fastcifar.monitor import Monitor  # noqa: E402


def _loader(size: int):
    """A (framework name, step function that queues a burst of matmuls and waits)."""
    errors = []
    try:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            with tf.device("/GPU:0"):
                a = tf.random.normal([size, size])

            def step():
                with tf.device("/GPU:0"):
                    x = a
                    for _ in range(20):
                        x = tf.matmul(x, a) * 1e-3
                    x.numpy()

            return "tensorflow", step
    except Exception as e:
        errors.append(f"tensorflow: {e}")
    try:
        import torch

        if torch.cuda.is_available():
            a = torch.randn(size, size, device="cuda")

            def step():
                x = a
                for _ in range(20):
                    x = (x @ a) * 1e-3
                torch.cuda.synchronize()

            return "pytorch", step
    except Exception as e:
        errors.append(f"pytorch: {e}")
    try:
        import jax

        if any(d.platform == "gpu" for d in jax.devices()):
            a = jax.random.normal(jax.random.PRNGKey(0), (size, size))

            @jax.jit
            def burst(x):
                for _ in range(20):
                    x = (x @ a) * 1e-3
                return x

            def step():
                burst(a).block_until_ready()

            return "jax", step
    except Exception as e:
        errors.append(f"jax: {e}")
    try:
        import cupy as cp

        a = cp.random.standard_normal((size, size), dtype=cp.float32)

        def step():
            x = a
            for _ in range(20):
                x = (x @ a) * 1e-3
            cp.cuda.Stream.null.synchronize()

        return "cupy", step
    except Exception as e:
        errors.append(f"cupy: {e}")
    raise RuntimeError("no framework with a GPU found (" + "; ".join(errors) + ")")


def _load_for(step, seconds: float) -> int:
    end, n = time.time() + seconds, 0
    while time.time() < end:
        step()
        n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="check the monitor against a real GPU")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=8192, help="matrix side")
    ap.add_argument("--json", help="write the verdicts and raw summaries here")
    args = ap.parse_args(argv)

    mon = Monitor(interval=args.interval, gpu_indices=[0])
    if mon.source_name != "nvml":
        print(f"cannot check: NVML unavailable ({mon.why_not_nvml})", file=sys.stderr)
        return 2
    try:
        framework, step = _loader(args.size)
    except RuntimeError as e:
        print(f"cannot check: {e}", file=sys.stderr)
        return 2
    step()  # warm-up: context creation, kernel selection
    with mon:
        time.sleep(1.0)
        reads_before = mon.reads
        with mon.window("idle") as idle:
            time.sleep(args.seconds)
        reads_idle = mon.reads - reads_before
        load_thread = threading.Thread(target=_load_for, args=(step, args.seconds + 2.0))
        load_thread.start()
        time.sleep(1.0)  # let clocks and power ramp before the window opens
        with mon.window("load") as load:
            time.sleep(args.seconds)
        load_thread.join()
    i, l = idle.summary, load.summary

    def med(s, k):
        return (s.get(f"gpu0.{k}") or {}).get("median")

    def mean(s, k):
        return (s.get(f"gpu0.{k}") or {}).get("mean")

    expected_reads = args.seconds / args.interval
    checks = [
        ("kernel-busy under load > 80%", mean(l, "kernel_busy_pct"),
         lambda v: v is not None and v > 80),
        ("kernel-busy idle < 20%", mean(i, "kernel_busy_pct"),
         lambda v: v is not None and v < 20),
        ("power rises under load (W, load/idle)", (med(l, "power_w"), med(i, "power_w")),
         lambda v: None not in v and v[0] > v[1] * 1.2),
        ("SM clock under load >= idle (MHz)", (med(l, "sm_clock_mhz"), med(i, "sm_clock_mhz")),
         lambda v: None not in v and v[0] >= v[1]),
        (f"reads in {args.seconds:g} s at {args.interval:g} s (expect ~{expected_reads:.0f})",
         reads_idle, lambda v: 0.7 * expected_reads <= v <= 1.3 * expected_reads + 2),
        ("driver samples in the load window", (l.get("gpu0.kernel_busy_pct") or {}).get("count"),
         lambda v: v is not None and v >= 2),
        ("no NVML errors", len(mon.errors), lambda v: v == 0),
    ]
    name = mon.source.describe()["gpus"][0]["name"]
    print(f"GPU 0: {name}; load from {framework}; {args.seconds:g} s per phase")
    print(f"{'check':<52} {'value':>22}  verdict")
    ok = True
    verdicts = []
    for label, value, test in checks:
        passed = bool(test(value))
        ok &= passed
        shown = (", ".join("-" if x is None else f"{x:.0f}" for x in value)
                 if isinstance(value, tuple) else "-" if value is None else
                 f"{value:.1f}" if isinstance(value, float) else str(value))
        print(f"{label:<52} {shown:>22}  {'PASS' if passed else 'FAIL'}")
        verdicts.append({"check": label, "value": value, "pass": passed})
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"gpu": name, "framework": framework, "checks": verdicts,
                       "idle": i, "load": l, "errors": mon.errors}, f, indent=2)
        os.replace(tmp, args.json)
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
