"""`fastcifar doctor`: check, on the user's own machine, what this project's CI cannot.

On a GPU: float16 training with an injected overflow (step skipped, scale halved, step
counter still advancing), the XLA-compiled step against the uncompiled one on the same
batch, the monitor's NVML device matched to the TensorFlow device by PCI bus id, and the
achieved fraction of the conv peak, and the data-parallel step (`mirrored` over every GPU,
with XLA when there are two or more: the path CI cannot run) against one device. On a CPU:
the same checks that apply, the data-parallel one over two logical CPU devices.

Each check is a function of (dataset, resolved runtime) returning (passed, detail);
passed is None for a check that could not run here ("skipped", never "pass").
"""

from __future__ import annotations

import time
import traceback

import numpy as np

from .errors import gist


def _trainer(precision, xla, width=8, batch=32, seed=0):
    from .config import RuntimeConfig, recipe
    from .train import Trainer

    return Trainer(recipe("davidnet", width=width, batch_size=batch, seed=seed),
                   RuntimeConfig(precision=precision, xla=xla, steps_per_call=1,
                                 eval_batch_size=50))


def _one_step(trainer, data):
    """(start weights, loss per image, weights after) of one step at the start of epoch 1
    (lr > 0): the forward pass, the backward pass and the update all show in the result."""
    trainer.step.assign(trainer.steps_per_epoch(data.n_train))
    start = [v.numpy().astype(np.float32) for v in trainer.model.trainable_variables]
    loss = float(trainer.train_steps(data, 1)[0].numpy()) / trainer.config.batch_size
    after = [v.numpy().astype(np.float32) for v in trainer.model.trainable_variables]
    return start, loss, after


def _same_step(label_a, a, label_b, b, loss_tol, weight_tol):
    """Two runs of the same step: same loss, and weights apart by less than `weight_tol` of
    the distance they moved."""
    from .distribute import distance_moved

    (start, loss_a, after_a), (_, loss_b, after_b) = a, b
    diff = abs(loss_b - loss_a) / max(abs(loss_a), 1e-6)
    gap = distance_moved(after_a, after_b, start)
    return diff < loss_tol and gap < weight_tol, (
        f"loss {label_b} {loss_b:.5f} vs {label_a} {loss_a:.5f} (rel diff {diff:.1e}, "
        f"tolerance {loss_tol}); weights after the step apart by {gap:.1e} of the distance "
        f"moved (tolerance {weight_tol})")


def check_overflow(ds, resolved):
    trainer = _trainer("mixed_float16", xla=resolved.device_kind == "GPU")
    data = trainer.prepare(ds)
    trainer.step.assign(8)
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer.optimizer.dynamic_scale.assign(2.0 ** 40)  # float16 gradients overflow
    trainer.train_steps(data, 1)
    same = all(np.array_equal(a, v.numpy())
               for a, v in zip(before, trainer.model.trainable_variables))
    scale = float(trainer.optimizer.dynamic_scale.numpy())
    step = int(trainer.step.numpy())
    return same and scale == 2.0 ** 39 and step == 9, (
        f"weights unchanged={same}, scale 2^40 -> 2^{np.log2(scale):.0f}, "
        f"step counter 8 -> {step}")


def check_xla(ds, resolved):
    runs = {}
    for xla in (False, True):
        trainer = _trainer("float32", xla=xla, seed=1)
        runs[xla] = _one_step(trainer, trainer.prepare(ds))
    return _same_step("graph", runs[False], "XLA", runs[True], 1e-3, 1e-2)


def check_mixed_precision(ds, resolved):
    mixed = "mixed_float16" if resolved.device_kind == "GPU" else "mixed_bfloat16"
    runs = {}
    for precision in ("float32", mixed):
        trainer = _trainer(precision, xla=False, seed=2)
        if precision == "mixed_float16":
            trainer.optimizer.dynamic_scale.assign(64.0)  # no overflow skip on this step
        runs[precision] = _one_step(trainer, trainer.prepare(ds))
    loss_tol = 0.02 if mixed == "mixed_float16" else 0.05
    return _same_step("float32", runs["float32"], mixed, runs[mixed], loss_tol, 0.25)


def check_nvml_mapping(ds, resolved):
    from .monitor import nvml_indices
    from .monitor import Monitor

    if resolved.device_kind != "GPU":
        monitor = Monitor(interval=0.05)
        return True, (f"no GPU: monitor source {monitor.source_name} "
                      f"({monitor.why_not_nvml or 'NVML usable'})")
    index = nvml_indices([resolved.device])[0]
    if index is None:
        return False, f"{resolved.device} could not be matched to an NVML device by PCI bus id"
    name = Monitor(interval=0.05, gpu_indices=[index]).source.names[0]
    return True, f"{resolved.device} ({resolved.device_name}) = NVML device {index} ({name})"


def check_fraction_of_peak(ds, resolved):
    from .bench import time_steps
    from .config import RuntimeConfig, recipe
    from .data import synthetic

    width, batch = (64, 512) if resolved.device_kind == "GPU" else (32, 128)
    row, _ = time_steps(recipe("tutorial", width=width, batch_size=batch), RuntimeConfig(),
                        synthetic(4 * batch, 100), steps=2, reps=3)
    if "error" in row:
        return False, row["error"]
    fraction = row["fraction_of_peak"]
    if fraction is None:
        return False, row["peak_error"]
    return fraction > 0.05, (
        f"{fraction:.1%} of the dense conv peak at width {width}, batch {batch} "
        f"({row['images_per_sec']:.0f} img/s, {row['runtime']['precision']}, "
        f"XLA {'on' if row['runtime']['xla'] else 'off'})")


def check_data_parallel(ds, resolved):
    import tensorflow as tf

    from .config import RuntimeConfig, TrainConfig
    from .data import synthetic
    from .distribute import distance_moved
    from .train import Trainer

    n_gpu = len(tf.config.list_physical_devices("GPU"))
    replicas = n_gpu if n_gpu >= 2 else 2
    if n_gpu == 1:
        return None, "skipped: one GPU (the mirrored step needs two or more devices)"
    runtime = RuntimeConfig(precision="float32", xla=n_gpu >= 2, steps_per_call=3,
                            eval_batch_size=50)
    big = synthetic(4 * 64 * replicas, 50, learnable=True)
    moved, start = {}, None
    for strategy in ("auto", "mirrored"):
        cfg = TrainConfig(width=8, epochs=2, batch_size=64 * replicas, dropout=0.0,
                          sync_bn=True, strategy=strategy,
                          replicas=replicas if strategy == "mirrored" else 0)
        trainer = Trainer(cfg, runtime)
        start = [v.numpy() for v in trainer.model.trainable_variables]
        trainer.train_steps(trainer.prepare(big), 3)
        moved[strategy] = [v.numpy() for v in trainer.model.trainable_variables]
    gap = distance_moved(moved["auto"], moved["mirrored"], start)
    where = f"{replicas} GPUs, XLA on" if n_gpu >= 2 else "2 logical CPU devices, XLA off"
    # float noise, amplified by max-pool routing, stays ~1e-4; per-replica BN gives ~1e-1
    return gap < 1e-2, (f"mirrored ({where}, sync BN) vs one device after 3 steps: "
                        f"weights differ by {gap:.1e} of the distance moved")


CHECKS = (("float16 overflow: step skipped, scale halved", check_overflow),
          ("XLA step computes the same loss", check_xla),
          ("mixed precision computes the same loss", check_mixed_precision),
          ("monitor: NVML device = TF device (PCI bus id)", check_nvml_mapping),
          ("achieved fraction of peak", check_fraction_of_peak),
          ("data-parallel step = one-device step", check_data_parallel))


def _run(name, check, ds, resolved) -> dict:
    t0 = time.perf_counter()
    try:
        ok, detail = check(ds, resolved)
        status = "skipped" if ok is None else "pass" if ok else "FAIL"
    except Exception as e:  # a check that crashes is a failed check, with its reason
        status, detail = "FAIL", f"{type(e).__name__}: {gist(e, 300)}"
        detail += " | " + traceback.format_exc().strip().splitlines()[-1][:200]
    return {"check": name, "status": status, "detail": detail,
            "seconds": round(time.perf_counter() - t0, 1)}


def run_checks() -> dict:
    """Every check on this machine; returns a `doctor` result (schema of fastcifar.results)."""
    import tensorflow as tf

    from . import results
    from .config import RuntimeConfig
    from .data import synthetic
    from .runtime import environment, resolve

    if not tf.config.list_physical_devices("GPU"):
        from .distribute import split_cpu

        split_cpu(2)  # for the data-parallel check; before TensorFlow initialises
    resolved = resolve(RuntimeConfig())
    ds = synthetic(256, 50, learnable=True)
    checks = [_run(name, check, ds, resolved) for name, check in CHECKS]
    count = lambda status: sum(c["status"] == status for c in checks)
    return results.build("doctor", {}, resolved.to_dict(), environment(), {},
                         {"passed": count("pass"), "failed": count("FAIL"),
                          "skipped": count("skipped")}, checks=checks)


def table(result: dict) -> list:
    """The doctor result as printable lines."""
    resolved = result["runtime"]
    lines = [f"fastcifar doctor on {resolved['device']} ({resolved['device_name']}); auto = "
             f"{resolved['precision']}, XLA {'on' if resolved['xla'] else 'off'}",
             f"{'check':<48} {'result':<7} {'s':>6}  detail"]
    lines += [f"{c['check']:<48} {c['status']:<7} {c['seconds']:>6}  {c['detail']}"
              for c in result["checks"]]
    failed, skipped = result["metrics"]["failed"], result["metrics"]["skipped"]
    lines.append(f"{failed} check(s) FAILED" if failed else "all checks that ran passed"
                 + (f" ({skipped} skipped)" if skipped else ""))
    return lines
