"""A stand-in for the `pynvml` module (nvidia-ml-py), injected where no GPU exists.

It follows the real binding's names and error style: NVMLError carrying `.value`.
"""

import time
import types

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_UNKNOWN = 999
NVML_GPU_UTILIZATION_SAMPLES = 4
NVML_TOTAL_POWER_SAMPLES = 0
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    def __init__(self, value):
        self.value = value
        super().__init__({3: "Not Supported", 6: "Not Found"}.get(value, "Unknown Error"))


def make(devices=1, util=70, power_mw=250_000, utilization_error=None, fail_after=None,
         fail_metric="power", bus_ids=None, samples_supported=True, init_error=None):
    """A fresh module object. `fail_after`: reads of `fail_metric` before it starts raising."""
    m = types.ModuleType("pynvml")
    for k, v in globals().items():
        if k.startswith("NVML_") or k == "NVMLError":
            setattr(m, k, v)
    state = {"reads": {"util": 0, "power": 0}, "shutdown": 0}
    m.state = state

    def nvmlInit():
        if init_error is not None:
            raise NVMLError(init_error)

    def nvmlShutdown():
        state["shutdown"] += 1

    def handle_check(h):
        assert isinstance(h, tuple) and h[0] == "handle"

    def sample(ts, value):
        return types.SimpleNamespace(timeStamp=ts,
                                     sampleValue=types.SimpleNamespace(uiVal=value))

    def nvmlDeviceGetSamples(h, kind, last_ts):
        handle_check(h)
        name = "util" if kind == NVML_GPU_UTILIZATION_SAMPLES else "power"
        state["reads"][name] += 1
        if fail_after is not None and name == fail_metric and \
                state["reads"][name] > fail_after:
            raise NVMLError(NVML_ERROR_UNKNOWN)
        if not samples_supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        now = int(time.time() * 1e6)
        value = util if name == "util" else power_mw
        # the driver buffers one sample per 1/6 s; return those newer than last_ts
        period = 166_667
        first = (now - 1_000_000) // period * period  # a fixed grid, as a driver's clock
        out = [sample(t, value) for t in range(first, now + 1, period) if t > last_ts]
        if not out:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return 1, out

    def nvmlDeviceGetUtilizationRates(h):
        handle_check(h)
        if utilization_error is not None:
            raise NVMLError(utilization_error)
        return types.SimpleNamespace(gpu=util, memory=util // 2)

    m.nvmlInit = nvmlInit
    m.nvmlShutdown = nvmlShutdown
    m.nvmlDeviceGetCount = lambda: devices
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    m.nvmlDeviceGetName = lambda h: b"Fake GPU"
    m.nvmlDeviceGetSamples = nvmlDeviceGetSamples
    m.nvmlDeviceGetUtilizationRates = nvmlDeviceGetUtilizationRates
    m.nvmlDeviceGetPowerUsage = lambda h: power_mw
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=1 << 30, total=80 << 30)
    m.nvmlDeviceGetClockInfo = lambda h, kind: 1410
    m.nvmlDeviceGetTemperature = lambda h, kind: 55
    ids = bus_ids or [f"00000000:{0x17 + i:02X}:00.0" for i in range(devices)]
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=ids[h[1]].encode())
    return m
