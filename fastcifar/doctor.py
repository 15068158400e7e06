"""`fastcifar doctor`: check, on the user's own machine, what this project's CI cannot.

On a GPU: float16 training with an injected overflow (step skipped, scale halved, step
counter still advancing), the XLA-compiled step against the uncompiled one on the same
batch, the monitor's NVML device matched to the TensorFlow device by PCI bus id, and the
achieved fraction of the conv peak, and the data-parallel step (`mirrored` over every GPU,
with XLA when there are two or more: the path CI cannot run) against one device. On a CPU:
the same checks that apply, the data-parallel one over two logical CPU devices.
"""

from __future__ import annotations

import time
import traceback

import numpy as np


def _check(name, fn):
    t0 = time.perf_counter()
    try:
        ok, detail = fn()
        status = "pass" if ok else "FAIL"
    except Exception as e:  # a check that crashes is a failed check, with its reason
        status, detail = "FAIL", f"{type(e).__name__}: {e}".splitlines()[0][:300]
        detail += " | " + traceback.format_exc().strip().splitlines()[-1][:200]
    return {"check": name, "status": status, "detail": detail,
            "seconds": round(time.perf_counter() - t0, 1)}


def _trainer(precision, xla, width=8, batch=32, seed=0):
    from .config import RuntimeConfig, recipe
    from .train import Trainer

    return Trainer(recipe("davidnet", width=width, batch_size=batch, seed=seed),
                   RuntimeConfig(precision=precision, xla=xla, steps_per_call=1,
                                 eval_batch_size=50))


def _loss_of_first_step(tr, data):
    tr.step.assign(tr.steps_per_epoch(data.n_train))
    return float(tr.train_steps(data, 1)[0].numpy()) / tr.config.batch_size


def run_checks() -> dict:
    """Every check on this machine; returns a `doctor` result (schema of fastcifar.results)."""
    import tensorflow as tf

    from . import results as results_mod
    from .config import RuntimeConfig
    from .data import synthetic
    from .runtime import environment, resolve

    if not tf.config.list_physical_devices("GPU"):
        from .distribute import split_cpu

        split_cpu(2)  # for the data-parallel check; before TensorFlow initialises
    resolved = resolve(RuntimeConfig())
    device_kind = resolved.device_kind
    ds = synthetic(256, 50, learnable=True)
    results = []

    def overflow():
        tr = _trainer("mixed_float16", xla=device_kind == "GPU")
        dd = tr.prepare(ds)
        tr.step.assign(8)
        w0 = [v.numpy().copy() for v in tr.model.trainable_variables]
        tr.optimizer.dynamic_scale.assign(2.0 ** 40)  # float16 gradients overflow
        tr.train_steps(dd, 1)
        same = all(np.array_equal(a, v.numpy()) for a, v in zip(w0, tr.model.trainable_variables))
        scale = float(tr.optimizer.dynamic_scale.numpy())
        step = int(tr.step.numpy())
        ok = same and scale == 2.0 ** 39 and step == 9
        return ok, (f"weights unchanged={same}, scale 2^40 -> 2^{np.log2(scale):.0f}, "
                    f"step counter 8 -> {step}")

    def xla_matches():
        losses = {}
        for xla in (False, True):
            tr = _trainer("float32", xla=xla, seed=1)
            losses[xla] = _loss_of_first_step(tr, tr.prepare(ds))
        diff = abs(losses[True] - losses[False]) / max(abs(losses[False]), 1e-6)
        return diff < 1e-3, (f"loss XLA {losses[True]:.5f} vs graph {losses[False]:.5f} "
                             f"(rel diff {diff:.1e}) on the same batch")

    def mixed_matches():
        prec = "mixed_float16" if device_kind == "GPU" else "mixed_bfloat16"
        losses = {}
        for p in ("float32", prec):
            tr = _trainer(p, xla=False, seed=2)
            losses[p] = _loss_of_first_step(tr, tr.prepare(ds))
        diff = abs(losses[prec] - losses["float32"]) / max(abs(losses["float32"]), 1e-6)
        tol = 0.02 if prec == "mixed_float16" else 0.05
        return diff < tol, (f"loss {prec} {losses[prec]:.4f} vs float32 "
                            f"{losses['float32']:.4f} (rel diff {diff:.1e}, tolerance {tol})")

    def nvml_mapping():
        from .bench import nvml_indices
        from .monitor import Monitor

        rt = resolved
        if rt.device_kind != "GPU":
            m = Monitor(interval=0.05)
            return True, (f"no GPU: monitor source {m.source_name} "
                          f"({m.why_not_nvml or 'NVML usable'})")
        idx = nvml_indices([rt.device])[0]
        if idx is None:
            return False, f"{rt.device} could not be matched to an NVML device by PCI bus id"
        name = Monitor(interval=0.05, gpu_indices=[idx]).source.names[0]
        return True, f"{rt.device} ({rt.device_name}) = NVML device {idx} ({name})"

    def fraction_of_peak():
        from .bench import time_steps
        from .config import recipe

        width, batch = (64, 512) if device_kind == "GPU" else (32, 128)
        big = synthetic(4 * batch, 100)
        r, _ = time_steps(recipe("tutorial", width=width, batch_size=batch), RuntimeConfig(),
                          big, steps=2, reps=3)
        if "error" in r:
            return False, r["error"]
        f = r["fraction_of_peak"]
        return f > 0.05, (f"{f:.1%} of the dense conv peak at width {width}, batch {batch} "
                          f"({r['images_per_sec']:.0f} img/s, {r['runtime']['precision']}, "
                          f"XLA {'on' if r['runtime']['xla'] else 'off'})")

    def data_parallel():
        import tensorflow as tf

        from .config import TrainConfig
        from .distribute import distance_moved
        from .train import Trainer

        n_gpu = len(tf.config.list_physical_devices("GPU"))
        replicas = n_gpu if n_gpu >= 2 else 2
        if n_gpu == 1:
            return True, "skipped: one GPU (the mirrored step needs two or more devices)"
        xla = n_gpu >= 2
        rt = RuntimeConfig(precision="float32", xla=xla, steps_per_call=3, eval_batch_size=50)
        big = synthetic(4 * 64 * replicas, 50, learnable=True)
        moved = {}
        for strategy in ("auto", "mirrored"):
            cfg = TrainConfig(width=8, epochs=2, batch_size=64 * replicas, dropout=0.0,
                              sync_bn=True, strategy=strategy,
                              replicas=replicas if strategy == "mirrored" else 0)
            tr = Trainer(cfg, rt)
            w0 = [v.numpy() for v in tr.model.trainable_variables]
            tr.train_steps(tr.prepare(big), 3)
            moved[strategy] = [v.numpy() for v in tr.model.trainable_variables]
        gap = distance_moved(moved["auto"], moved["mirrored"], w0)
        where = f"{replicas} GPUs, XLA on" if n_gpu >= 2 else "2 logical CPU devices, XLA off"
        # float noise, amplified by max-pool routing, stays ~1e-4; per-replica BN gives ~1e-1
        return gap < 1e-2, (f"mirrored ({where}, sync BN) vs one device after 3 steps: "
                                  f"weights differ by {gap:.1e} of the distance moved")

    results.append(_check("float16 overflow: step skipped, scale halved", overflow))
    results.append(_check("XLA step computes the same loss", xla_matches))
    results.append(_check("mixed precision computes the same loss", mixed_matches))
    results.append(_check("monitor: NVML device = TF device (PCI bus id)", nvml_mapping))
    results.append(_check("achieved fraction of peak", fraction_of_peak))
    results.append(_check("data-parallel step = one-device step", data_parallel))
    failed = sum(c["status"] != "pass" for c in results)
    return results_mod.build("doctor", {}, resolved.to_dict(), environment(), {},
                             {"passed": len(results) - failed, "failed": failed},
                             checks=results)
