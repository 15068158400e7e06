"""Runtime choices kept apart from the model: device, precision, XLA, determinism.

`auto` picks what was measured fastest: on NVIDIA GPUs with compute capability >= 7.0,
mixed_float16 + XLA; on CPUs, mixed_bfloat16 where oneDNN's bf16 convolutions are fast
(AMX_BF16, or AVX512_BF16 on AMD) and float32 otherwise, with XLA off (slower than oneDNN
on CPUs: see the README).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from .config import RuntimeConfig
from .errors import ConfigError
from .util import cpu_info


@dataclass(frozen=True)
class ResolvedRuntime:
    device: str          # TF device name, e.g. "/GPU:0" or "/CPU:0"
    device_kind: str     # "GPU" or "CPU"
    device_name: str     # human-readable model
    precision: str
    xla: bool
    data_layout: str     # "uint8" or "compute"
    deterministic: bool
    why: str             # why `auto` chose as it did
    conv_grad: str = "library"  # "library" or "matmul" (small-map filter gradients)

    def to_dict(self) -> dict:
        return {"device": self.device, "device_kind": self.device_kind,
                "device_name": self.device_name, "precision": self.precision, "xla": self.xla,
                "data_layout": self.data_layout, "deterministic": self.deterministic,
                "conv_grad": self.conv_grad, "replicas": 1, "why": self.why}


def import_tensorflow_quietly() -> None:
    """TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) goes to fd 2 before any
    logging setting applies; hide it unless FASTCIFAR_TF_LOGS=1, so errors stay one line."""
    import sys

    if os.environ.get("FASTCIFAR_TF_LOGS") == "1" or "tensorflow" in sys.modules:
        return
    from .quiet import hidden_stderr_fd

    with hidden_stderr_fd():
        import tensorflow as tf

        tf.config.list_physical_devices()


def cpu_devices() -> int:
    """TensorFlow's CPU devices: one, or the logical devices the CPU was split into
    (`distribute.split_cpu`), counted without initialising TensorFlow."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    return len(tf.config.get_logical_device_configuration(cpu) or [None])


def cpu_precision(info: dict) -> tuple:
    """`auto`'s precision on a CPU and why, from its vendor and flags. bf16 pays only where
    oneDNN has a fast bf16 convolution. Measured (docs/how-it-is-fast.md): an Intel Xeon
    with AMX_BF16 and an AMD EPYC with AVX512_BF16 run mixed_bfloat16 faster than float32,
    an Intel Xeon with AVX512_BF16 but no AMX at 0.66x float32's speed."""
    flags = info["flags"]
    if "amx_bf16" in flags:
        return "mixed_bfloat16", "CPU with AMX_BF16 -> mixed_bfloat16"
    if "avx512_bf16" in flags and info.get("vendor") == "AuthenticAMD":
        return "mixed_bfloat16", "AMD CPU with AVX512_BF16 -> mixed_bfloat16"
    if "avx512_bf16" in flags:
        return "float32", ("CPU with AVX512_BF16, no AMX, not AMD -> float32 (measured: "
                           "bf16 at 0.66x float32's speed on an Intel Xeon without AMX)")
    return "float32", "CPU without AVX512_BF16 or AMX_BF16 -> float32"


def gpu_compute_capability(device) -> tuple:
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(device)
    return tuple(details.get("compute_capability") or (0, 0))


def resolve(config: RuntimeConfig) -> ResolvedRuntime:
    """Turn `auto` into concrete choices for this machine, and say why."""
    import tensorflow as tf

    config.validate()
    want = config.device
    gpus = tf.config.list_physical_devices("GPU")
    use_gpu = bool(gpus) and (want is None or "GPU" in want.upper())
    if want is not None and "GPU" in want.upper() and not gpus:
        raise ConfigError(f"invalid device={want!r}: no GPU is visible to TensorFlow; "
                          f"use /CPU:0 or install a CUDA build")
    if use_gpu:
        idx = int(want.split(":")[-1]) if want and ":" in want else 0
        if idx >= len(gpus):
            raise ConfigError(f"invalid device={want!r}: only {len(gpus)} GPU(s) visible")
        dev = gpus[idx]
        details = tf.config.experimental.get_device_details(dev)
        name = details.get("device_name", "GPU")
        cc = tuple(details.get("compute_capability") or (0, 0))
        fast16 = cc >= (7, 0)
        auto_precision = "mixed_float16" if fast16 else "float32"
        auto_xla = True
        why = (f"GPU compute capability {cc[0]}.{cc[1]}: "
               + ("tensor cores -> mixed_float16 + XLA" if fast16
                  else "no fast fp16 -> float32 + XLA"))
        device, kind = f"/GPU:{idx}", "GPU"
    else:
        cpus = cpu_devices()
        idx = int(want.split(":")[-1]) if want and ":" in want else 0
        if idx >= cpus:
            raise ConfigError(f"invalid device={want!r}: this machine has {cpus} CPU "
                              f"device(s) for TensorFlow, /CPU:0"
                              + (f" to /CPU:{cpus - 1}" if cpus > 1 else "")
                              + "; the CPU's cores all serve /CPU:0")
        cpu = cpu_info()
        name = cpu["model"]
        auto_precision, why = cpu_precision(cpu)
        auto_xla = False
        why += "; XLA off (slower than oneDNN on CPU)"
        device, kind = f"/CPU:{idx}", "CPU"
    precision = auto_precision if config.precision == "auto" else config.precision
    xla = auto_xla if config.xla is None else bool(config.xla)
    # Measured (README): on CPU the uint8 set + normalise-in-step is as fast as a
    # pre-normalised copy and needs half the memory; on GPU the cast is free too.
    layout = "uint8" if config.data_layout == "auto" else config.data_layout
    # Measured (README): oneDNN's filter gradient is slow on small maps, cuDNN's is not
    # known to be; the matmul form is the same sum
    conv_grad = (("matmul" if kind == "CPU" else "library") if config.conv_grad == "auto"
                 else config.conv_grad)
    return ResolvedRuntime(device, kind, name, precision, xla, layout, config.deterministic,
                           why, conv_grad)


def apply_determinism(enabled: bool) -> None:
    """Op determinism is process-wide in TensorFlow: only ever switched on, on request."""
    if enabled:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def environment() -> dict:
    """What a reader needs to reproduce or discount a number."""
    import sys

    import keras
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    cpu = cpu_info()
    env = {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": __import__("numpy").__version__,
        "platform": platform.platform(),
        "cpu_model": cpu["model"],
        "cpu_vendor": cpu["vendor"],
        "cpu_bf16_flags": sorted(cpu["flags"] & {"avx512_bf16", "amx_bf16", "amx_tile"}),
        "cpu_count": os.cpu_count(),
        "tf_build": {k: build.get(k) for k in ("is_cuda_build", "cuda_version", "cudnn_version")},
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in tf.config.list_physical_devices("GPU")],
        "git_commit": _git_commit(),
    }
    return env


def describe_machine() -> str:
    """`fastcifar info`: versions, devices, and what `auto` picks here and why."""
    import tensorflow as tf

    from . import __version__

    env, resolved = environment(), resolve(RuntimeConfig())
    lines = [f"fastcifar {__version__}"]
    lines += [f"  {key.replace('_build', ' build'):<22} {env[key]}"
              for key in ("python", "tensorflow", "keras", "numpy", "platform", "cpu_model",
                          "cpu_count", "tf_build", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS")]
    lines += ["devices:"] + [f"  {device.name} ({device.device_type})"
                             for device in tf.config.list_physical_devices()]
    lines += [f"auto picks: {resolved.precision}, XLA {'on' if resolved.xla else 'off'}, "
              f"data layout {resolved.data_layout}, small-map filter gradients by "
              f"{resolved.conv_grad}, on {resolved.device} "
              f"({resolved.device_name})", f"  why: {resolved.why}"]
    return "\n".join(lines)


def _git_commit():
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def pci_bus_id(tf_device: str):
    """The PCI bus id TensorFlow reports for a GPU such as "/GPU:0", or None."""
    from tensorflow.python.client import device_lib

    want = tf_device.upper().replace("/PHYSICAL_DEVICE", "").lstrip("/")
    for d in device_lib.list_local_devices():
        if d.device_type == "GPU" and d.name.upper().endswith(want):
            desc = d.physical_device_desc or ""
            for part in desc.split(","):
                key, _, value = part.partition(":")
                if key.strip() == "pci bus id":
                    return value.strip()
    return None


def peak_memory_bytes(tf_device: str):
    """TensorFlow's own peak allocation on the device (NVML's "used" is what the allocator
    reserved, most of the card). None where TF does not track it (CPU)."""
    import tensorflow as tf

    if "GPU" not in tf_device.upper():
        return None  # the CPU allocator keeps no statistics by default (reads 0)
    try:
        return int(tf.config.experimental.get_memory_info(tf_device.lstrip("/"))["peak"])
    except (ValueError, KeyError, RuntimeError, tf.errors.OpError):
        return None
