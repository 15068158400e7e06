"""Benchmarks: compiled step time, speed-up over the tutorial, and a machine calibration.

Timing rules (README, "Benchmarks"): compilation is done and timed first and reported
apart (`compile_seconds`); every timed call is synchronised by fetching its result;
variants are compared side by side in one process, alternating, as paired ratios.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import numpy as np


def spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max()),
            "n": int(len(v))}


def calibrate_machine(size: int = 512, repeats: int = 7) -> dict:
    """numpy BLAS matmul GFLOP/s: independent of TensorFlow, so dividing throughput by it
    discounts a slower or busier machine but not a TensorFlow/oneDNN/cuDNN regression."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 0.05:
            a @ b
            n += 1
        rates.append(2 * size ** 3 * n / (time.perf_counter() - t0) / 1e9)
    return {"gflops": float(np.median(rates)), "method": f"numpy float32 matmul {size}^3",
            "samples": rates}


def conv_peak(device: str, dtype: str, batch: int = 64, repeats: int = 5) -> dict:
    """Dense 3x3 conv (256->256, 16x16) throughput in `dtype` on `device`: the ceiling a
    DavidNet step is measured against (`fraction_of_peak`)."""
    import tensorflow as tf

    dt = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16,
          "mixed_float16": tf.float16}[dtype]
    with tf.device(device):
        x = tf.cast(tf.random.normal([batch, 16, 16, 256]), dt)
        w = tf.cast(tf.random.normal([3, 3, 256, 256]) * 0.01, dt)

        @tf.function
        def convs(x):
            for _ in range(4):
                x = tf.nn.conv2d(x, w, 1, "SAME")
            return tf.reduce_sum(tf.cast(x[0, 0, 0], tf.float32))

        convs(x).numpy()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            convs(x).numpy()
            times.append(time.perf_counter() - t0)
    flops = 4 * 2 * batch * 16 * 16 * 9 * 256 * 256
    return {"flops_per_sec": flops / statistics.median(times), "dtype": dtype,
            "shape": f"conv3x3 256->256 16x16 batch {batch}, 4 in a row"}


def time_calls(call: Callable[[], float], reps: int) -> list:
    """Seconds per call; `call` must synchronise (fetch its result) before returning."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def compiled_call(cfg, rt_config, ds, steps: int):
    """A trainer compiled for `ds`'s shapes (compile seconds returned apart), its step
    counter a quarter into the schedule (lr > 0), and a call that runs `steps` steps and
    synchronises by fetching the loss. One untimed real call is made first (allocations)."""
    from .train import Trainer

    tr = Trainer(cfg, rt_config.replace(steps_per_call=steps))
    compile_s = tr.compile(len(ds.x_train), len(ds.x_test))
    dd = tr.prepare(ds)
    tr.step.assign(cfg.epochs * tr.steps_per_epoch(dd.n_train) // 4)

    def call() -> float:
        return float(tr.train_steps(dd, steps)[0].numpy())

    call()
    return tr, call, compile_s


def step_benchmark(cfg, rt_config, ds, steps: int, reps: int, monitor=None,
                   profile_dir: Optional[str] = None, return_call: bool = False):
    """Compile (timed apart), then `reps` synchronised calls of `steps` steps each.
    With `return_call`, also returns the compiled call so a comparison can reuse it."""
    import tensorflow as tf

    from .flops import train_flops
    from .runtime import peak_memory_bytes, resolve

    rt = resolve(rt_config)
    call = None
    try:
        if rt.device_kind == "GPU":
            tf.config.experimental.reset_memory_stats(rt.device.lstrip("/"))
        tr, call, compile_s = compiled_call(cfg, rt_config, ds, steps)
        window = monitor.window("steady") if monitor is not None else _null()
        with window as w:
            secs = time_calls(call, reps)
        if profile_dir:
            profile_steps(call, profile_dir)
    except tf.errors.ResourceExhaustedError as e:
        first = str(e).strip().splitlines()[0][:200]
        out = {"batch_size": cfg.batch_size, "error": f"out of memory: {first}"}
        return (out, None) if return_call else out
    step_ms = [1000 * s / steps for s in secs]
    ips = [steps * cfg.batch_size / s for s in secs]
    fpi = train_flops(tr.model)
    peak = conv_peak(tr.rt.device, tr.rt.precision)
    achieved = fpi * statistics.median(ips)
    out = {
        "batch_size": cfg.batch_size,
        "images_per_sec": statistics.median(ips),
        "images_per_sec_spread": spread(ips),
        "step_ms": spread(step_ms),
        "compile_seconds": compile_s,
        "flops_per_image": fpi,
        "achieved_flops_per_sec": achieved,
        "peak_flops_per_sec": peak["flops_per_sec"],
        "fraction_of_peak": achieved / peak["flops_per_sec"],
        "peak_memory_bytes": peak_memory_bytes(tr.rt.device),
        "runtime": tr.describe_runtime(),
    }
    if monitor is not None:
        from .monitor import headline

        out["utilization"] = headline(monitor.result([w]))
    return (out, call) if return_call else out


def seed_speedup(cfg, rt_config, ds, steps: int, pairs: int, fast_call=None) -> dict:
    """Fast trainer (A) against the tutorial's eager loop (B), alternating A B A B in one
    process; the speed-up is the median/min/max of the pairwise throughput ratios.
    `fast_call`: an already compiled call from `step_benchmark` (else one is built)."""
    from .baselines.tutorial import TutorialTrainer

    fast = fast_call or compiled_call(cfg, rt_config, ds, steps)[1]
    seed = TutorialTrainer(width=cfg.width, batch_size=cfg.batch_size, seed=cfg.seed)
    seed.prepare(ds.x_train, ds.y_train)
    seed.time_steps(1)  # builds the model
    ratios, a_ips, b_ips = [], [], []
    for _ in range(pairs):
        a = steps * cfg.batch_size / time_calls(fast, 1)[0]
        b = steps * cfg.batch_size / seed.time_steps(steps)
        a_ips.append(a)
        b_ips.append(b)
        ratios.append(a / b)
    return {"speedup_vs_seed": {"median": statistics.median(ratios), "min": min(ratios),
                                "max": max(ratios), "n": len(ratios)},
            "seed_images_per_sec": spread(b_ips), "fast_images_per_sec": spread(a_ips)}


def profile_steps(call: Callable[[], float], logdir: str, calls: int = 2) -> None:
    """A TensorFlow profiler trace of steady-state calls (view with TensorBoard)."""
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(calls):
            call()
    finally:
        tf.profiler.experimental.stop()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
