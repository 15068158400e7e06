"""Run a training call exported by `fastcifar export-step` on any XLA backend, through JAX.

    python benchmarks/xla_step.py DIR [--backend gpu] [--calls 20] [--warmup 3] [--json out.json]

No TensorFlow here: the HLO module is converted to StableHLO by jaxlib
(`xla_client._xla.mlir.hlo_to_stablehlo`, a private API: tried with jaxlib 0.10.2),
compiled by the backend's PJRT client and executed; each call's outputs are fed
back as the next call's inputs (the manifest says which output updates which parameter).
Inputs come from the export's `inputs.npz`, or, without it (or with `--random`), from the
manifest's shapes and a seed: the data as random images and labels, each variable as its
starting values' mean and spread.

Prints (and with `--json` writes) ms per training step (median, p10, p90 over the timed
calls, each synchronised by fetching its loss), images/s, the backend and device, the
compile seconds (apart), the loss of the first call, and the fraction of peak: the
export's FLOP count per second over the speed of a large matrix product in the step's
dtype, measured in the same run. `--outputs PATH.npz` saves the first call's outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def fail(message: str) -> None:
    print(f"xla_step: error: {message}", file=sys.stderr)
    sys.exit(2)


def load_jax(needs_x64: bool):
    try:
        import jax
        from jax._src.lib import xla_client
    except ImportError as e:
        fail(f"JAX is not installed ({e}): pip install 'jax==0.10.2' (or the version "
             f"matching your accelerator)")
    convert = getattr(getattr(xla_client._xla, "mlir", None), "hlo_to_stablehlo", None)
    if convert is None:
        fail(f"this jaxlib ({jax.__version__}) has no xla_client._xla.mlir.hlo_to_stablehlo, "
             f"which converts the exported module; use jaxlib 0.10.2, the version tried")
    if needs_x64:
        jax.config.update("jax_enable_x64", True)  # the step counters are int64
    return jax, xla_client, convert


def fill(manifest: dict, seed: int) -> list:
    """Every parameter from the manifest alone: images and labels at random, each
    variable like its starting values (mean and spread), scalars as they were."""
    rng = np.random.default_rng(seed)
    out = []
    for p in manifest["parameters"]:
        shape, dtype = p["shape"], p["dtype"]
        np_dtype = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
        if p["name"] == "x_train":
            value = rng.integers(0, 256, shape, dtype=np.uint8).astype(np_dtype)
        elif p["name"] == "y_train":
            value = rng.integers(0, manifest["num_classes"], shape).astype(np_dtype)
        elif p["name"] == "mean":
            value = np.full(shape, 120.0, np_dtype)
        elif p["name"] == "std":
            value = np.full(shape, 64.0, np_dtype)
        elif p.get("init") == "value":
            value = np.full(shape, p["value"], np_dtype)
        elif p.get("init") == "ones":
            value = np.ones(shape, np_dtype)
        elif p.get("init") == "normal":
            value = rng.normal(p["mean"], p["std"], shape).astype(np_dtype)
        elif p.get("init") == "arange":
            value = np.arange(int(np.prod(shape))).reshape(shape).astype(np_dtype)
        else:
            value = np.zeros(shape, np_dtype)
        out.append(value)
    return out


def matmul_flops_per_sec(jax, device, dtype: str, size: int, repeats: int = 5) -> float:
    """The speed of a large matrix product in `dtype` on `device` (FLOP/s, best of
    `repeats`): the peak the step is measured against."""
    key = jax.random.PRNGKey(0)
    a = jax.device_put(jax.random.normal(key, (size, size)).astype(dtype), device)
    b = jax.device_put(jax.random.normal(key, (size, size)).astype(dtype), device)
    product = jax.jit(lambda x, y: x @ y)
    product(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def run(folder: str, backend: str = "cpu", calls: int = 10, warmup: int = 2, seed: int = 0,
        random_inputs: bool = False, outputs_path: str = None, matmul_size: int = 0) -> dict:
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    jax, xla_client, convert = load_jax(manifest["needs_x64"])
    try:
        device = jax.devices(backend)[0]
    except RuntimeError as e:
        fail(f"no {backend} device for JAX ({e})")
    with open(os.path.join(folder, manifest["hlo"]), "rb") as f:
        module = convert(f.read())
    t0 = time.perf_counter()
    executable = device.client.compile_and_load(
        module, xla_client.DeviceList((device,)), xla_client.CompileOptions())
    compile_seconds = time.perf_counter() - t0
    npz = os.path.join(folder, manifest.get("inputs_npz") or "inputs.npz")
    if os.path.exists(npz) and not random_inputs:
        with np.load(npz) as z:
            values = [z[f"p{i}"] for i in range(len(manifest["parameters"]))]
        source = "inputs.npz"
    else:
        values = fill(manifest, seed)
        source = f"generated from the manifest (seed {seed})"
    buffers = [jax.device_put(v, device) for v in values]
    feed_back = {int(o): p for o, p in manifest["feed_back"].items()}

    def call(buffers):
        outs = executable.execute(buffers)
        loss = float(np.asarray(outs[0]))  # fetching the loss synchronises the call
        nxt = list(buffers)
        for o, p in feed_back.items():
            nxt[p] = outs[o]
        return outs, loss, nxt

    first_outputs, first_loss, buffers = call(buffers)
    if outputs_path:
        np.savez(outputs_path, **{f"o{i}": np.asarray(o) for i, o in enumerate(first_outputs)})
    for _ in range(warmup):
        _, _, buffers = call(buffers)
    seconds = []
    for _ in range(calls):
        t = time.perf_counter()
        _, loss, buffers = call(buffers)
        seconds.append(time.perf_counter() - t)
    steps, images = manifest["steps_per_call"], manifest["images_per_call"]
    step_ms = sorted(1000 * s / steps for s in seconds)
    q = lambda p: float(np.percentile(step_ms, p))
    dtype = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(
        manifest["runtime"]["precision"], "float32")
    size = matmul_size or (8192 if backend != "cpu" else 1024)
    peak = matmul_flops_per_sec(jax, device, dtype, size)
    achieved = manifest["flops_per_call"] / statistics.median(seconds)
    return {"backend": backend, "device": str(device.device_kind),
            "jax": jax.__version__, "inputs": source, "calls": calls, "warmup": warmup,
            "compile_seconds": compile_seconds, "first_call_loss": first_loss,
            "last_call_loss": loss,
            "step_ms": {"median": q(50), "p10": q(10), "p90": q(90)},
            "images_per_sec": images / statistics.median(seconds),
            "flops_per_call": manifest["flops_per_call"], "achieved_flops_per_sec": achieved,
            "matmul_peak": {"dtype": dtype, "size": size, "flops_per_sec": peak},
            "fraction_of_peak": achieved / peak,
            "timing": "ms per step = a synchronised call / steps_per_call, after warm-up; "
                      "compile apart; the compiled step only (no TensorFlow runtime)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--backend", default="cpu", help="cpu, gpu or cuda (default cpu)")
    ap.add_argument("--calls", type=int, default=10, help="timed calls")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random", action="store_true", help="ignore inputs.npz")
    ap.add_argument("--outputs", help="save the first call's outputs to this .npz")
    ap.add_argument("--matmul-size", type=int, default=0)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.folder, "manifest.json")):
        fail(f"{args.folder} holds no manifest.json: export with `fastcifar export-step DIR`")
    result = run(args.folder, args.backend, args.calls, args.warmup, args.seed, args.random,
                 args.outputs, args.matmul_size)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
