"""Benchmarks: compiled step time, speed-up over the tutorial, seconds-to-target, ablation.

Each `*_benchmark` function returns a complete result dict (`fastcifar.results` schema);
the command line only prints and writes it. Timing rules (README, "Benchmarks"):
compilation is done and timed first and reported apart (`compile_seconds`); every timed
call is synchronised by fetching its result; variants are compared side by side in one
process, alternating, as paired ratios.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Callable, Optional

from . import results
from .config import FAST_TECHNIQUES, RuntimeConfig, TrainConfig
from .errors import ConfigError, TrainingDiverged, gist
from .profiling import profile_steps, top_ops
from .util import peak_rss_bytes, process_age_seconds, summarize


def _quiet(*_args) -> None:
    pass


def calibrate_machine(size: int = 512, repeats: int = 7) -> dict:
    """numpy BLAS matmul GFLOP/s: independent of TensorFlow, so dividing throughput by it
    discounts a slower or busier machine but not a TensorFlow/oneDNN/cuDNN regression."""
    import numpy as np

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


def conv_peak(model, device: str, precision: str, batch: int, repeats: int = 3) -> dict:
    """The ceiling a step is measured against (`fraction_of_peak`): the best FLOP/s of the
    model's own convolutions, each shape timed alone at the step's batch size in the
    compute dtype, forward and both backward convolutions (input and filter gradients)."""
    import tensorflow as tf

    from .layers import conv_layers

    dtype = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16,
             "mixed_float16": tf.float16}[precision]
    shapes = sorted({(layer.input.shape[1], layer.input.shape[2], layer.kernel_size[0],
                      layer.input.shape[-1], layer.filters) for layer in conv_layers(model)})
    rows = []
    with tf.device(device):
        for h, w, k, cin, cout in shapes:
            # seeded (stateless): op determinism (--deterministic) refuses unseeded ops
            normal = lambda shape, i: tf.random.stateless_normal(shape, seed=[h * 1000 + cin, i])
            x = tf.cast(normal([batch, h, w, cin], 0), dtype)
            kernel = tf.cast(normal([k, k, cin, cout], 1) * 0.01, dtype)
            dy = tf.cast(normal([batch, h, w, cout], 2), dtype)
            ops = {
                "forward": lambda: tf.nn.conv2d(x, kernel, 1, "SAME"),
                "input gradient": lambda: tf.nn.conv2d_transpose(dy, kernel, x.shape, 1,
                                                                 "SAME"),
                "filter gradient": lambda: tf.compat.v1.nn.conv2d_backprop_filter(
                    x, kernel.shape, dy, [1, 1, 1, 1], "SAME"),
            }
            flops = 2 * batch * h * w * k * k * cin * cout
            for name, op in ops.items():
                timed = tf.function(lambda op=op: tf.reduce_sum(tf.cast(op()[0], tf.float32)))
                timed().numpy()
                seconds = statistics.median(time_calls(lambda: timed().numpy(), repeats))
                rows.append({"shape": f"{k}x{k} {cin}->{cout} {h}x{w}", "op": name,
                             "flops_per_sec": flops / seconds})
    best = max(rows, key=lambda r: r["flops_per_sec"])
    return {"flops_per_sec": best["flops_per_sec"], "dtype": precision, "batch": batch,
            "best": f"{best['op']} {best['shape']}", "measured": rows}


@contextlib.contextmanager
def _failed_on_divergence(command: str, config: TrainConfig, runtime: RuntimeConfig, ds,
                          **extra):
    """A run that diverges inside the block leaves the error carrying its failed result
    (`status: failed`), which the command line writes to `--json`: a benchmark of a
    diverged run is a failure, never a number."""
    try:
        yield
    except TrainingDiverged as e:
        from .runtime import environment

        e.result = results.failed(command, config.to_dict(), runtime.to_dict(),
                                  environment(), ds.identity(), e, e.history,
                                  runtime_config=runtime.to_dict(), **extra)
        raise


def _with_classes_of(config: TrainConfig, ds) -> TrainConfig:
    """The net's head follows the data (100 outputs for CIFAR-100)."""
    if ds.num_classes != config.num_classes:
        return config.replace(num_classes=ds.num_classes)
    return config


def time_calls(call: Callable[[], float], reps: int) -> list:
    """Seconds per call; `call` must synchronise (fetch its result) before returning."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def compiled_call(config: TrainConfig, runtime: RuntimeConfig, ds, steps: int):
    """A trainer compiled for `ds`'s shapes (compile seconds returned apart), its step
    counter a quarter into the schedule (lr > 0), and a call that runs `steps` steps and
    synchronises by fetching the loss. One untimed real call is made first (allocations)."""
    from .train import Trainer

    trainer = Trainer(config, runtime.replace(steps_per_call=steps))
    compile_s = trainer.compile(len(ds.x_train), len(ds.x_test))
    data = trainer.prepare(ds)
    trainer.step.assign(trainer.total_steps_for(data.n_train) // 4)

    def call() -> float:
        loss = float(trainer.train_steps(data, steps)[0].numpy())
        if not math.isfinite(loss):  # a diverged step is not a measurement of a step
            raise TrainingDiverged(f"training diverged: the loss is {loss} in {steps} "
                                   f"timed steps (lr peak {config.lr_peak}); lower --lr-peak "
                                   f"or --weight-decay", int(trainer.step.numpy()))
        return loss

    call()
    return trainer, call, compile_s


def time_steps(config: TrainConfig, runtime: RuntimeConfig, ds, steps: int, reps: int,
               monitor=None, profile_dir: Optional[str] = None):
    """Compile (timed apart), then `reps` synchronised calls of `steps` steps each.
    Returns (one sweep row, the compiled call for reuse, or None after out-of-memory)."""
    import tensorflow as tf

    from .fingerprint import of_engine, tracing_count
    from .flops import train_flops
    from .runtime import peak_memory_bytes, resolve

    resolved = resolve(runtime)
    try:
        if resolved.device_kind == "GPU":
            tf.config.experimental.reset_memory_stats(resolved.device.lstrip("/"))
        trainer, call, compile_s = compiled_call(config, runtime, ds, steps)
        traced = tracing_count(trainer)
        window = monitor.window("steady") if monitor is not None else contextlib.nullcontext()
        with window as w:
            secs = time_calls(call, reps)
        retraces = tracing_count(trainer) - traced
        fingerprint = of_engine(trainer, trainer.data, steps)
        fingerprint["retraces"] = retraces
        if profile_dir:
            profiled = top_ops(profile_dir, profile_steps(call, profile_dir))
    except tf.errors.ResourceExhaustedError as e:
        return {"batch_size": config.batch_size, "error": f"out of memory: {gist(e)}"}, None
    images_per_sec = [steps * config.batch_size / s for s in secs]
    flops_per_image = train_flops(trainer.model)
    peak = conv_peak(trainer.model, trainer.runtime.device, trainer.runtime.precision,
                     config.batch_size)
    achieved = flops_per_image * statistics.median(images_per_sec)
    fraction = achieved / peak["flops_per_sec"]
    row = {
        "batch_size": config.batch_size,
        "images_per_sec": statistics.median(images_per_sec),
        "images_per_sec_spread": summarize(images_per_sec),
        "step_ms": {**summarize(1000 * s / steps for s in secs),
                    "samples": [1000 * s / steps for s in secs]},
        "compile_seconds": compile_s,
        "flops_per_image": flops_per_image,
        "achieved_flops_per_sec": achieved,
        "peak_flops_per_sec": peak["flops_per_sec"],
        # above 1 the microbenchmark did not find the ceiling: an error, not a result
        "fraction_of_peak": fraction if fraction <= 1 else None,
        "peak": {k: peak[k] for k in ("dtype", "batch", "best")},
        "peak_memory_bytes": peak_memory_bytes(trainer.runtime.device),
        "host_peak_rss_bytes": peak_rss_bytes(),
        "runtime": trainer.describe_runtime(),
        "fingerprint": fingerprint,
    }
    if profile_dir:
        row["top_ops"] = profiled
    if fraction > 1:
        row["peak_error"] = (f"achieved {achieved / 1e9:.0f} GFLOP/s exceeds the measured "
                             f"conv peak {peak['flops_per_sec'] / 1e9:.0f} GFLOP/s: the peak "
                             f"is underestimated, so no fraction is reported")
    if monitor is not None:
        from .monitor import headline

        row["utilization"] = headline(monitor.result([w]))
    return row, call


def tutorial_speedup(config: TrainConfig, runtime: RuntimeConfig, data: str, steps: int,
                     pairs: int, fast_call=None) -> dict:
    """Fast trainer (A) against the tutorial's eager loop (B, in its own process:
    `TutorialProcess`), alternating A B A B; the speed-up is the median/min/max of the
    pairwise throughput ratios. `fast_call`: an already compiled call from `time_steps`
    (else one is built)."""
    from . import data as data_mod
    from .baselines.tutorial import TutorialProcess

    fast = fast_call or compiled_call(config, runtime, data_mod.load(data), steps)[1]
    ratios, fast_ips, tutorial_ips = [], [], []
    with TutorialProcess(data, width=config.width, batch_size=config.batch_size,
                         seed=config.seed) as tutorial:
        for _ in range(pairs):
            a = steps * config.batch_size / time_calls(fast, 1)[0]
            b = steps * config.batch_size / tutorial.time_steps(steps)
            fast_ips.append(a)
            tutorial_ips.append(b)
            ratios.append(a / b)
        tutorial_memory = tutorial.peak_rss_bytes()
    speedup = summarize(ratios)
    return {"speedup_vs_tutorial": speedup, "speedup_vs_seed": speedup,
            "tutorial_images_per_sec": summarize(tutorial_ips),
            "fast_images_per_sec": summarize(fast_ips),
            "tutorial_peak_rss_bytes": tutorial_memory}


# --- the three benchmarks, each returning its result ------------------------------------

def step_benchmark(config: TrainConfig, runtime: RuntimeConfig, data: str = "synthetic",
                   batch_sizes: tuple = (), steps: int = 2, reps: int = 5,
                   compare: Optional[str] = None, pairs: int = 3,
                   profile_dir: Optional[str] = None, say=_quiet) -> dict:
    """Steady-state step time at each batch size (the first is the headline), optionally
    paired against the tutorial's loop. Out-of-memory is a row, not a crash."""
    from . import data as data_mod
    from .monitor import Monitor
    from .runtime import environment

    ds = data_mod.load(data)
    config = _with_classes_of(config, ds)
    batch_sizes = tuple(batch_sizes) or (config.batch_size,)
    calibration = calibrate_machine()
    sweep, calls = [], {}
    with _failed_on_divergence("bench", config, runtime, ds, benchmark="step"), \
            Monitor(interval=0.1, source="auto") as monitor:
        for batch in batch_sizes:
            cfg = config.replace(batch_size=batch)
            if batch > len(ds.x_train):
                sweep.append({"batch_size": batch, "error": f"batch larger than the "
                              f"{len(ds.x_train)} training images"})
                continue
            say(f"bench step: width {cfg.width}, batch {batch}, {steps} steps x {reps} calls")
            row, calls[batch] = time_steps(
                cfg, runtime, ds, steps, reps, monitor=monitor,
                profile_dir=profile_dir if batch == batch_sizes[0] else None)
            sweep.append(row)
            if "error" in row:
                say(f"  batch {batch}: {row['error']}")
                continue
            peak = (f"{row['fraction_of_peak']:.1%} of peak" if row["fraction_of_peak"]
                    is not None else "fraction of peak: none (" + row["peak_error"] + ")")
            say(f"  {row['images_per_sec']:.1f} img/s, step {row['step_ms']['median']:.1f} ms "
                f"(p10 {row['step_ms']['p10']:.1f}, p90 {row['step_ms']['p90']:.1f}), "
                f"{peak}, compile {row['compile_seconds']:.1f} s")
    ok = [row for row in sweep if "error" not in row]
    if not ok:
        raise ConfigError("every configuration failed: " + "; ".join(
            f"batch {row['batch_size']}: {row['error']}" for row in sweep))
    head = ok[0]
    metrics = {k: head[k] for k in ("images_per_sec", "images_per_sec_spread", "step_ms",
                                    "compile_seconds", "flops_per_image",
                                    "achieved_flops_per_sec", "peak_flops_per_sec",
                                    "fraction_of_peak", "peak_memory_bytes",
                                    "host_peak_rss_bytes", "fingerprint")}
    for key in ("peak_error", "top_ops"):
        if key in head:
            metrics[key] = head[key]
    metrics["utilization"] = head.get("utilization")
    if compare == "tutorial":
        say(f"comparing with the tutorial's loop ({pairs} alternating pairs)")
        metrics.update(tutorial_speedup(config.replace(batch_size=head["batch_size"]),
                                        runtime, data, steps, pairs,
                                        fast_call=calls.get(head["batch_size"])))
    return results.build("bench", config.to_dict(), head["runtime"], environment(),
                         ds.identity(), metrics, benchmark="step", sweep=sweep,
                         calibration=calibration,
                         runtime_config=runtime.replace(steps_per_call=steps).to_dict(),
                         benchmark_settings={"steps": steps, "reps": reps,
                                             "batch_sizes": list(batch_sizes),
                                             "compare": compare, "pairs": pairs},
                         timing="step_ms: one synchronised call of `steps` steps / steps; "
                                "compile_seconds measured apart, first real call untimed")


def accuracy_benchmark(config: TrainConfig, runtime: RuntimeConfig, data: str = "cifar10",
                       runs: int = 1, target_declared: bool = False, quiet: bool = True,
                       say=_quiet) -> dict:
    """Seconds-to-target over `runs` seeds (config.seed, +1, ...); the clock includes
    loading the data."""
    from . import data as data_mod
    from .runtime import environment
    from .train import Trainer

    t0 = time.perf_counter()
    ds = data_mod.load(data, quiet=quiet)
    config = _with_classes_of(config, ds)
    load_seconds = time.perf_counter() - t0
    if ds.name != "cifar10" and not target_declared:
        raise ConfigError(f"data {ds.name} is not CIFAR-10: declare the accuracy to reach "
                          f"with --target (e.g. --target 0.80)")
    per_run = []
    for i in range(runs):
        cfg = config.replace(seed=config.seed + i)
        trainer = Trainer(cfg, runtime)
        trainer.compile(len(ds.x_train), len(ds.x_test))  # untimed, state restored
        with _failed_on_divergence("bench", cfg, runtime, ds, benchmark="accuracy",
                                   runs=per_run):
            res = trainer.fit(ds, quiet=quiet)
        curve = [[load_seconds + h["seconds"], h["test_acc"]] for h in res.history
                 if h["test_acc"] is not None]
        reached = (None if res.seconds_to_target is None
                   else load_seconds + res.seconds_to_target)
        per_run.append({"seed": cfg.seed, "final_test_acc": res.final_test_acc,
                        "seconds_to_target": reached, "curve": curve,
                        "train_seconds": load_seconds + res.train_seconds,
                        "wall_seconds_since_start": process_age_seconds()})
        say(f"run {i + 1}/{runs} (seed {cfg.seed}): final {res.final_test_acc:.4f}, "
            + (f"target {cfg.target:.2%} at {reached:.1f} s" if reached is not None
               else f"target {cfg.target:.2%} not reached"))
        described = trainer.describe_runtime()
    accs = [r["final_test_acc"] for r in per_run]
    reached = [r["seconds_to_target"] for r in per_run if r["seconds_to_target"] is not None]
    metrics = {
        "final_test_acc": statistics.mean(accs),
        "final_test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "fraction_reaching_target": len(reached) / len(per_run),
        "seconds_to_target": median_time_to_target([r["seconds_to_target"] for r in per_run]),
        "curve": per_run[0]["curve"],
        "load_seconds": load_seconds,
        # the first run, cold: process start to its final accuracy (imports, loading,
        # compiling, training, evaluation), beside the clock rule's seconds
        "cold_wall_seconds": per_run[0]["wall_seconds_since_start"],
    }
    return results.build("bench", config.to_dict(), described, environment(), ds.identity(),
                         metrics, benchmark="accuracy", runs=per_run,
                         runtime_config=runtime.to_dict(),
                         benchmark_settings={"runs": runs},
                         calibration=calibrate_machine(), timing=ACCURACY_TIMING,
                         note=None if ds.name == "cifar10" else
                         f"not CIFAR-10: dataset {ds.name}, target declared by the user")


ACCURACY_TIMING = ("clock: loading the data, normalising, padding, uploading it, training, "
                   "and every evaluation each run made (the final one included); "
                   "compilation excluded (done first on dummy data, state restored). "
                   "seconds_to_target: the median over all runs, a run that missed the "
                   "target counting as slower than any that reached it (null when half "
                   "or more missed)")


def median_time_to_target(times: list) -> Optional[float]:
    """The median over all runs, a miss (None) counting as slower than any hit; None when
    the median run missed. A candidate that misses more often cannot look faster."""
    ordered = sorted(times, key=lambda t: (t is None, t or 0.0))
    n = len(ordered)
    middle = ordered[(n - 1) // 2:n // 2 + 1]  # one value (odd n) or two (even n)
    if any(t is None for t in middle):
        return None
    return sum(middle) / len(middle)


def ablation_benchmark(config: TrainConfig, runtime: RuntimeConfig, data: str = "cifar10",
                       budget_epochs: Optional[int] = None, seeds: int = 1,
                       quiet: bool = True, say=_quiet, variants=(),
                       switch_off: bool = True) -> dict:
    """The recipe, then once per technique switched off, then once per set of changed
    values in `variants` (`--set`): same seeds, same epoch budget (unless a variant
    changes `epochs`: its own budget)."""
    from . import data as data_mod
    from .runtime import environment
    from .train import Trainer

    budget = budget_epochs or config.epochs
    ds = data_mod.load(data, quiet=quiet)
    config = _with_classes_of(config, ds)
    techniques = {name: off for name, off in FAST_TECHNIQUES.items()
                  if switch_off and config.replace(**off) != config}  # what it switched on
    rows_wanted = {"all techniques": {},
                   **{f"without {k}": v for k, v in techniques.items()},
                   **{"with " + ", ".join(f"{k}={v}" for k, v in changes.items()): changes
                      for changes in variants}}
    rows = []
    for name, off in rows_wanted.items():
        accs, secs = [], []
        for s in range(seeds):
            cfg = config.replace(**{"epochs": budget, "seed": config.seed + s, **off})
            with _failed_on_divergence("bench", cfg, runtime, ds, benchmark="ablate",
                                       variant=name, ablation=rows):
                res = Trainer(cfg, runtime).fit(ds, quiet=True)
            accs.append(res.final_test_acc)
            secs.append(res.train_seconds)
        rows.append({"variant": name, "switched_off": dict(off), "changed": dict(off),
                     "final_test_acc_mean": statistics.mean(accs),
                     "final_test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "accs": accs, "seconds_median": statistics.median(secs)})
        say(f"{name:<34} acc {rows[-1]['final_test_acc_mean']:.4f} +- "
            f"{rows[-1]['final_test_acc_std']:.4f}  {rows[-1]['seconds_median']:.1f} s")
    return results.build("bench", config.to_dict(), runtime.to_dict(), environment(),
                         ds.identity(), {"final_test_acc": rows[0]["final_test_acc_mean"]},
                         benchmark="ablate", ablation=rows, budget_epochs=budget,
                         runtime_config=runtime.to_dict(),
                         seeds=seeds, calibration=calibrate_machine())


def ablation_table(result: dict) -> list:
    """The ablation result as printable lines: one row per variant, against the first."""
    rows = result["ablation"]
    base = rows[0]["final_test_acc_mean"]
    lines = [f"recipe {result['config']['recipe']}, {result['budget_epochs']} epochs, "
             f"{result['seeds']} seed(s), data {result['dataset']['name']}",
             f"{'variant':<34} {'final acc (mean)':>16} {'vs all (pp)':>12} {'seconds':>8}"]
    for row in rows:
        lines.append(f"{row['variant']:<34} {100 * row['final_test_acc_mean']:>15.2f}% "
                     f"{100 * (row['final_test_acc_mean'] - base):>+12.2f} "
                     f"{row['seconds_median']:>8.1f}")
    return lines
