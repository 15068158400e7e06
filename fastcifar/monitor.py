"""Utilisation sampling in a background thread: NVML on NVIDIA GPUs, the OS on CPUs.

No TensorFlow here (this module must import where TensorFlow is absent). The caller opens
windows around the steady state; statistics cover only the samples inside them, so
compilation and warm-up stay out. A failing metric is recorded and dropped; the run being
watched never sees an exception from the monitor.

GPU "kernel-busy %" is NVML's utilisation: the share of each sample period in which any
kernel ran. It is not SM efficiency: one tiny kernel at a time reads as 100%.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from .util import summarize

# (unix time in seconds, metric name, value)
Sample = Tuple[float, str, float]

UNITS = {
    "kernel_busy_pct": "%", "mem_busy_pct": "%", "power_w": "W", "sm_clock_mhz": "MHz",
    "temperature_c": "C", "memory_reserved_bytes": "bytes", "process_cpu_pct": "%",
    "system_cpu_pct": "%", "rss_bytes": "bytes",
}
LABELS = {
    "kernel_busy_pct": "kernel-busy % (share of time any kernel ran; not SM efficiency)",
    "memory_reserved_bytes": "memory used: reserved by the process' allocator (TF reserves "
                             "most of the card; see peak_memory_bytes for TF's own peak)",
    "process_cpu_pct": "process CPU utilisation, % of all cores",
}


# --- sources ---------------------------------------------------------------------------

class CPUSource:
    """This process' CPU time over wall time, as a share of all cores; resident memory."""

    name = "cpu"

    def __init__(self):
        self._ncpu = os.cpu_count() or 1
        self._last = (time.time(), _process_cpu_seconds(), _system_cpu_times())

    def read(self) -> List[Sample]:
        now, cpu, sys_times = time.time(), _process_cpu_seconds(), _system_cpu_times()
        t0, cpu0, sys0 = self._last
        self._last = (now, cpu, sys_times)
        out: List[Sample] = []
        if now > t0:
            out.append((now, "process_cpu_pct", 100.0 * (cpu - cpu0) / (now - t0) / self._ncpu))
        if sys_times and sys0:
            busy = (sys_times[0] - sys0[0])
            total = (sys_times[1] - sys0[1])
            if total > 0:
                out.append((now, "system_cpu_pct", 100.0 * busy / total))
        rss = _rss_bytes()
        if rss is not None:
            out.append((now, "rss_bytes", float(rss)))
        return out

    def describe(self) -> dict:
        return {"cpu_count": self._ncpu}


def _process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _system_cpu_times():
    """(busy jiffies, total jiffies) from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts) - idle, sum(parts))


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class NVMLUnavailable(Exception):
    """Why NVML cannot be used: not installed, no driver, no device, NOT_SUPPORTED."""


def _load_pynvml(module=None):
    if module is not None:
        return module
    try:
        import pynvml  # provided by the nvidia-ml-py package
    except ImportError:
        raise NVMLUnavailable("nvidia-ml-py is not installed") from None
    return pynvml


def normalize_pci_bus_id(bus_id) -> Tuple[int, int, int, int]:
    """'0000:3B:00.0' (CUDA/TF) and '00000000:3b:00.0' (NVML) -> (domain, bus, dev, fn)."""
    if isinstance(bus_id, bytes):
        bus_id = bus_id.decode()
    s = bus_id.strip().lower()
    parts = s.split(":")
    if len(parts) == 2:
        parts = ["0"] + parts
    if len(parts) != 3 or "." not in parts[2]:
        raise ValueError(f"not a PCI bus id: {bus_id!r}")
    dev, fn = parts[2].split(".")
    return int(parts[0], 16), int(parts[1], 16), int(dev, 16), int(fn, 16)


class NVMLSource:
    """Per GPU: kernel-busy and power from the driver's buffered samples (each read once),
    the rest polled. `indices` are NVML indices (see `nvml_index_for_pci_bus_id`)."""

    name = "nvml"

    def __init__(self, indices: Optional[List[int]] = None, pynvml=None):
        nv = self.nv = _load_pynvml(pynvml)
        try:
            nv.nvmlInit()
        except Exception as e:
            raise NVMLUnavailable(f"NVML could not start (no NVIDIA driver?): {_err(e)}") \
                from None
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as e:
            raise NVMLUnavailable(f"NVML could not count devices: {_err(e)}") from None
        if count == 0:
            raise NVMLUnavailable("NVML sees no GPU")
        self.indices = list(range(count)) if indices is None else list(indices)
        self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in self.indices]
        self.names = [_str(_try(lambda h=h: nv.nvmlDeviceGetName(h), "GPU"))
                      for h in self.handles]
        try:  # MIG slices and some vGPUs report NOT_SUPPORTED here
            nv.nvmlDeviceGetUtilizationRates(self.handles[0])
        except Exception as e:
            raise NVMLUnavailable(f"GPU utilisation is {_err(e)} on {self.names[0]} "
                                  f"(a MIG slice?)") from None
        self._last_ts = {}  # (gpu, kind) -> last driver timestamp seen, microseconds
        now_us = int(time.time() * 1e6)
        for i in range(len(self.handles)):
            for kind in ("util", "power"):
                self._last_ts[(i, kind)] = now_us
        self._poll: set = set()  # (gpu, kind) whose driver keeps no samples: poll instead
        self.disabled: dict = {}  # metric key -> error text
        self.errors: List[dict] = []

    def _metric(self, key: str, fn: Callable[[], List[Sample]]) -> List[Sample]:
        if key in self.disabled:
            return []
        try:
            return fn()
        except Exception as e:
            self.disabled[key] = _err(e)
            self.errors.append({"time": time.time(), "metric": key, "error": _err(e)})
            return []

    def _samples(self, i: int, kind: str, sample_type, metric: str, scale: float,
                 fallback: Callable[[], float]) -> List[Sample]:
        """Driver-buffered samples newer than the last one seen; if the driver does not
        keep them (NOT_SUPPORTED), poll the instantaneous value instead."""
        nv, h = self.nv, self.handles[i]
        key = (i, kind)
        if key not in self._poll:
            try:
                _, samples = nv.nvmlDeviceGetSamples(h, sample_type, self._last_ts[key])
            except Exception as e:
                if not _is_not_supported(nv, e) and not _is_not_found(nv, e):
                    raise
                if _is_not_supported(nv, e):
                    self._poll.add(key)
                samples = []
            out = []
            for s in samples or []:
                ts = int(s.timeStamp)
                if ts <= self._last_ts[key]:
                    continue
                self._last_ts[key] = ts
                out.append((ts / 1e6, metric, _sample_value(s) * scale))
            if key not in self._poll:
                return out
        return [(time.time(), metric, float(fallback()) * scale)]

    def read(self) -> List[Sample]:
        nv = self.nv
        out: List[Sample] = []
        for i, h in enumerate(self.handles):
            p = f"gpu{self.indices[i]}."
            now = time.time()
            out += [(t, p + m, v) for t, m, v in self._metric(p + "kernel_busy_pct", lambda: (
                self._samples(i, "util", nv.NVML_GPU_UTILIZATION_SAMPLES, "kernel_busy_pct", 1.0,
                              lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)))]
            out += [(t, p + m, v) for t, m, v in self._metric(p + "power_w", lambda: (
                self._samples(i, "power", nv.NVML_TOTAL_POWER_SAMPLES, "power_w", 1e-3,
                              lambda: nv.nvmlDeviceGetPowerUsage(h))))]
            polled = (
                ("mem_busy_pct", lambda: nv.nvmlDeviceGetUtilizationRates(h).memory),
                ("memory_reserved_bytes", lambda: nv.nvmlDeviceGetMemoryInfo(h).used),
                ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                ("temperature_c", lambda: nv.nvmlDeviceGetTemperature(
                    h, nv.NVML_TEMPERATURE_GPU)),
            )
            for name, fn in polled:
                out += self._metric(p + name, lambda fn=fn, name=name: [
                    (now, p + name, float(fn()))])
        return out

    def describe(self) -> dict:
        return {"gpus": [{"nvml_index": i, "name": n} for i, n in zip(self.indices, self.names)]}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nv.nvmlShutdown()


def _sample_value(s) -> float:
    v = s.sampleValue
    for attr in ("uiVal", "ulVal", "ullVal", "dVal", "sllVal", "siVal"):
        if hasattr(v, attr):
            x = getattr(v, attr)
            if x:
                return float(x)
    return float(getattr(v, "uiVal", 0) or 0)


def _is_not_supported(nv, e) -> bool:
    code = getattr(nv, "NVML_ERROR_NOT_SUPPORTED", 3)
    return getattr(e, "value", None) == code


def _is_not_found(nv, e) -> bool:
    code = getattr(nv, "NVML_ERROR_NOT_FOUND", 6)
    return getattr(e, "value", None) == code  # no new samples since the timestamp


def _err(e) -> str:
    return f"{type(e).__name__}: {e}".strip()


def _str(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _try(fn, default):
    try:
        return fn()
    except Exception:
        return default


def nvml_index_for_pci_bus_id(bus_id: str, pynvml=None) -> Optional[int]:
    """The NVML index of the GPU at `bus_id` (CUDA and NVML number devices differently)."""
    nv = _load_pynvml(pynvml)
    want = normalize_pci_bus_id(bus_id)
    nv.nvmlInit()
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            info = nv.nvmlDeviceGetPciInfo(nv.nvmlDeviceGetHandleByIndex(i))
            got = getattr(info, "busId", None) or getattr(info, "busIdLegacy", "")
            if normalize_pci_bus_id(got) == want:
                return i
        return None
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()


# --- the monitor -----------------------------------------------------------------------

@dataclass
class Window:
    name: str
    start: float
    end: Optional[float] = None
    summary: dict = field(default_factory=dict)


class Monitor:
    """Background sampler. `source` is "auto" (NVML, else CPU), "nvml", "cpu", or an
    object with `read() -> [(time, metric, value)]` (the seam tests use)."""

    def __init__(self, interval: float = 0.1, source="auto", gpu_indices=None, pynvml=None):
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.interval = float(interval)
        self.why_not_nvml: Optional[str] = None
        self.source = self._pick(source, gpu_indices, pynvml)
        self.samples: List[Sample] = []
        self.windows: List[Window] = []
        self.errors: List[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.reads = 0

    def _pick(self, source, gpu_indices, pynvml):
        if not isinstance(source, str):
            return source
        if source not in ("auto", "nvml", "cpu"):
            raise ValueError(f"unknown monitor source {source!r}: auto, nvml or cpu")
        if source in ("auto", "nvml"):
            try:
                return NVMLSource(gpu_indices, pynvml=pynvml)
            except NVMLUnavailable as e:
                self.why_not_nvml = str(e)
            except Exception as e:  # a broken binding must not break the run
                self.why_not_nvml = f"NVML failed: {_err(e)}"
        else:
            self.why_not_nvml = "the CPU source was asked for (work runs on the CPU)"
        return CPUSource()

    @property
    def source_name(self) -> str:
        return getattr(self.source, "name", type(self.source).__name__)

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> "Monitor":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fastcifar-monitor",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=max(5.0, 10 * self.interval))
        self._thread = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        self._sample_once()
        while not self._stop.wait(self.interval):
            self._sample_once()
        self._sample_once()

    def _sample_once(self) -> None:
        try:
            got = self.source.read()
        except Exception as e:  # never into the caller
            self.errors.append({"time": time.time(), "metric": "*", "error": _err(e)})
            got = []
        with self._lock:
            self.samples.extend(got)
            self.reads += 1
            src_errors = getattr(self.source, "errors", None)
            if src_errors:
                self.errors.extend(src_errors)
                src_errors.clear()

    # windows ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def window(self, name: str = "window"):
        w = Window(name, time.time())
        try:
            yield w
        finally:
            w.end = time.time()
            self.windows.append(w)
            w.summary = self.summary([w])

    def summary(self, windows: Optional[List[Window]] = None) -> dict:
        """Statistics per metric over the samples inside `windows` (default: every window
        opened so far, or every sample if none was)."""
        windows = self.windows if windows is None else windows
        spans = [(w.start, w.end if w.end is not None else time.time()) for w in windows]
        with self._lock:
            picked = [(m, v) for t, m, v in self.samples
                      if not spans or any(a <= t <= b for a, b in spans)]
        by_metric: dict = {}
        for m, v in picked:
            by_metric.setdefault(m, []).append(v)
        return {m: summarize(vs) for m, vs in sorted(by_metric.items())}

    def result(self, windows: Optional[List[Window]] = None) -> dict:
        """What goes into a result JSON: the source, why NVML was not used, statistics over
        the windows, and every error with its time."""
        out = {"source": self.source_name, "interval_s": self.interval,
               "why_not_nvml": self.why_not_nvml,
               "windows_seconds": sum((w.end or time.time()) - w.start
                                      for w in (self.windows if windows is None else windows)),
               "metrics": self.summary(windows), "errors": list(self.errors),
               "units": UNITS, "labels": LABELS}
        describe = getattr(self.source, "describe", None)
        if describe:
            out["device"] = describe()
        return out


def headline(result: dict) -> dict:
    """The few numbers a reader wants first: mean/median/p10/p90 of the main utilisation
    metric (kernel-busy on GPUs, process CPU share on CPUs), power and clock."""
    metrics = result.get("metrics", {})
    main = next((k for k in metrics if k.endswith("kernel_busy_pct")), None) \
        or ("process_cpu_pct" if "process_cpu_pct" in metrics else None)
    out = {"source": result.get("source"), "metric": main,
           "why_not_nvml": result.get("why_not_nvml")}
    if main and metrics.get(main):
        s = metrics[main]
        out.update({k: s[k] for k in ("mean", "median", "p10", "p90", "count")})
    for suffix, key in (("power_w", "power_w"), ("sm_clock_mhz", "sm_clock_mhz")):
        k = next((m for m in metrics if m.endswith(suffix)), None)
        if k and metrics.get(k):
            out[key] = metrics[k]["median"]
    return out


# --- wiring to TensorFlow's devices (TensorFlow imported only when called) ---------

def nvml_indices(devices: list) -> list:
    """The NVML index of each TensorFlow GPU among `devices`, matched by PCI bus id (CUDA
    and NVML number devices differently); None where no match can be made."""
    from .runtime import pci_bus_id

    out = []
    for d in devices:
        if "GPU" not in d.upper():
            continue
        bus = pci_bus_id("/GPU:" + d.rsplit(":", 1)[-1])
        try:
            out.append(None if bus is None else nvml_index_for_pci_bus_id(bus))
        except Exception:  # NVML unusable: the monitor says why
            out.append(None)
    return out


def monitor_for(devices: list, interval: float = 0.1):
    """A utilisation monitor over the GPUs among the TensorFlow `devices`, or over the CPU
    when there are none."""
    indices = nvml_indices(devices)
    if not indices:
        return Monitor(interval=interval, source="cpu")
    return Monitor(interval=interval, gpu_indices=None if None in indices else indices)
