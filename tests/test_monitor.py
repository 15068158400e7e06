"""The utilisation monitor: statistics, windows, fallbacks, errors, the real sources."""

import os
import subprocess
import sys
import threading
import time

import pytest

import fake_pynvml
from fastcifar import monitor
from fastcifar.monitor import Monitor


class Series:
    """An injected source that replays a known series, stamped at read time."""

    name = "series"

    def __init__(self, values):
        self.values = list(values)

    def read(self):
        if not self.values:
            return []
        return [(time.time(), "x", self.values.pop(0))]


def test_summary_of_a_known_series_is_exact():
    s = monitor.summarize([5, 1, 4, 2, 3, 10, 6, 7, 9, 8])
    assert s == {"mean": 5.5, "median": 5.5, "p10": 1.9, "p90": 9.1, "max": 10, "min": 1,
                 "count": 10}
    assert monitor.summarize([]) is None


def test_window_excludes_samples_outside_it():
    m = Monitor(source=Series([]))
    now = time.time()
    m.samples = [(now - 10, "x", 1000.0), (now - 5, "x", 1.0)]
    with m.window("steady") as w:
        m.samples += [(time.time(), "x", v) for v in (2.0, 4.0, 6.0)]
    m.samples.append((time.time() + 10, "x", 1000.0))
    assert w.summary["x"]["count"] == 3 and w.summary["x"]["mean"] == 4.0
    assert m.summary([w])["x"]["max"] == 6.0


def test_several_windows_aggregate_together():
    m = Monitor(source=Series([]))
    with m.window() as a:
        m.samples.append((time.time(), "x", 1.0))
    m.samples.append((time.time() + 0.001, "x", 500.0))  # between the windows
    time.sleep(0.01)
    with m.window() as b:
        m.samples.append((time.time(), "x", 3.0))
    assert m.summary([a, b])["x"]["mean"] == 2.0


def test_thread_samples_at_the_interval_and_stops_idempotently():
    m = Monitor(interval=0.02, source=Series(range(1000)))
    m.start()
    m.start()  # idempotent
    time.sleep(0.5)
    m.stop()
    m.stop()
    assert 10 <= m.reads <= 30
    assert not any(t.name == "fastcifar-monitor" for t in threading.enumerate())


def test_a_failing_source_never_raises_into_the_caller():
    class Broken:
        name = "broken"

        def read(self):
            raise RuntimeError("driver fell over")

    with Monitor(interval=0.01, source=Broken()) as m:
        time.sleep(0.05)
    assert m.errors and "driver fell over" in m.errors[0]["error"]


def test_fake_nvml_reads_driver_samples_once_each():
    nv = fake_pynvml.make(devices=2, util=70, power_mw=250_000)
    m = Monitor(interval=0.05, source="auto", pynvml=nv)
    assert m.source_name == "nvml" and m.why_not_nvml is None
    with m:
        with m.window() as w:
            time.sleep(0.6)
    s = w.summary
    assert s["gpu0.kernel_busy_pct"]["mean"] == 70 and s["gpu1.kernel_busy_pct"]["max"] == 70
    assert s["gpu0.power_w"]["median"] == 250.0
    assert s["gpu0.sm_clock_mhz"]["median"] == 1410
    # 0.6 s at one driver sample per 1/6 s: about 4 samples, not one per 50 ms read
    assert 2 <= s["gpu0.kernel_busy_pct"]["count"] <= 6
    times = [t for t, k, _ in m.samples if k == "gpu0.kernel_busy_pct"]
    assert len(times) == len(set(times))  # no driver sample read twice
    head = monitor.headline(m.result([w]))
    assert head["source"] == "nvml" and head["median"] == 70 and head["power_w"] == 250.0


@pytest.mark.parametrize("kwargs,why", [
    (dict(utilization_error=fake_pynvml.NVML_ERROR_NOT_SUPPORTED), "Not Supported"),
    (dict(devices=0), "no GPU"),
    (dict(init_error=fake_pynvml.NVML_ERROR_UNKNOWN), "no NVIDIA driver"),
])
def test_unusable_nvml_falls_back_to_cpu_and_says_why(kwargs, why):
    m = Monitor(interval=0.02, pynvml=fake_pynvml.make(**kwargs))
    assert m.source_name == "cpu"
    assert why in m.why_not_nvml
    with m:
        with m.window() as w:
            time.sleep(0.1)
    assert "process_cpu_pct" in w.summary
    assert m.result()["why_not_nvml"] == m.why_not_nvml


def test_missing_nvml_module_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    m = Monitor(interval=0.05)
    assert m.source_name == "cpu" and "not installed" in m.why_not_nvml


def test_nvml_error_mid_run_is_recorded_and_that_metric_stops():
    nv = fake_pynvml.make(fail_after=3, fail_metric="power")
    m = Monitor(interval=0.02, pynvml=nv)
    with m:
        time.sleep(0.4)
    assert len(m.errors) == 1
    err = m.errors[0]
    assert err["metric"] == "gpu0.power_w" and "Unknown" in err["error"] and err["time"] > 0
    assert nv.state["reads"]["power"] == 4  # no further attempts after the failure
    assert nv.state["reads"]["util"] > 4  # the other metrics went on
    assert m.summary()["gpu0.kernel_busy_pct"]["count"] > 0


def test_samples_not_kept_by_the_driver_are_polled():
    nv = fake_pynvml.make(samples_supported=False, util=42)
    with Monitor(interval=0.02, pynvml=nv) as m:
        time.sleep(0.15)
    assert m.summary()["gpu0.kernel_busy_pct"]["median"] == 42 and not m.errors


def test_pci_bus_id_matching_across_numbering_schemes():
    nv = fake_pynvml.make(devices=3, bus_ids=["00000000:65:00.0", "00000000:17:00.0",
                                              "00000000:B3:00.0"])
    assert monitor.nvml_index_for_pci_bus_id("0000:17:00.0", pynvml=nv) == 1
    assert monitor.nvml_index_for_pci_bus_id("0000:b3:00.0", pynvml=nv) == 2
    assert monitor.nvml_index_for_pci_bus_id("0000:01:00.0", pynvml=nv) is None
    assert monitor.normalize_pci_bus_id("00000000:3B:00.0") == \
        monitor.normalize_pci_bus_id("0000:3b:00.0")


def test_cpu_source_sees_a_busy_thread():
    stop = threading.Event()

    def spin():
        x = 0
        while not stop.is_set():
            x += 1

    m = Monitor(interval=0.05, source="cpu")
    with m:
        with m.window("idle") as idle:
            time.sleep(0.6)
        t = threading.Thread(target=spin)
        t.start()
        with m.window("busy") as busy:
            time.sleep(0.6)
        stop.set()
        t.join()
    idle_pct = idle.summary["process_cpu_pct"]["mean"]
    busy_pct = busy.summary["process_cpu_pct"]["mean"]
    import os
    one_core = 100.0 / (os.cpu_count() or 1)
    assert busy_pct > idle_pct + 0.25 * one_core, (idle_pct, busy_pct)
    assert busy.summary["rss_bytes"]["median"] > 1e6


def test_monitor_imports_without_tensorflow():
    code = ("import sys; sys.modules['tensorflow'] = None; import fastcifar.monitor as m; "
            "assert 'keras' not in sys.modules; print(m.Monitor(source='cpu').source_name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "cpu", out.stderr


def _real_gpu_present():
    """From the kernel driver's device files, not from NVML: a GPU host whose NVML is
    broken must fail the test below, not skip it."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/proc/driver/nvidia/gpus")


@pytest.mark.skipif(not _real_gpu_present(), reason="no NVIDIA GPU/driver on this machine: "
                    "the real NVML source is checked by benchmarks/gpu_monitor_check.py")
def test_real_nvml_source():
    m = Monitor(interval=0.1)
    assert m.source_name == "nvml", m.why_not_nvml
    with m:
        with m.window() as w:
            time.sleep(1.5)
    s = w.summary
    assert any(k.endswith("kernel_busy_pct") for k in s)
    assert all(0 <= v["max"] <= 100 for k, v in s.items() if k.endswith("_pct"))
    assert any(k.endswith("power_w") and v["median"] > 0 for k, v in s.items())
