"""Small helpers shared by every layer: atomic writes, content hashes, summary statistics,
the CPU's identity. No TensorFlow and no numpy import at module level."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import stat
import tempfile
from typing import Iterable, Iterator, List, Optional

from .errors import UserError


# set by the command line when the user stops it (Ctrl-C, SIGTERM): no output is written
# after that, even where the interrupt itself was swallowed (raised inside a garbage
# collector callback, which Python reports and ignores)
STOP_REQUESTED: list = []


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary name beside `path` (ending in `suffix`, for writers that insist on an
    extension) to write to; renamed over `path` when the block ends without error, removed
    otherwise, so a reader never sees half a file. The file gets the permissions a plain
    `open()` would give it (umask applied)."""
    if STOP_REQUESTED:
        raise KeyboardInterrupt("stopped: nothing more is written")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastcifar-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if STOP_REQUESTED:
            raise KeyboardInterrupt("stopped: nothing more is written")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_regular(path, limit: int, what: str, error=UserError) -> bytes:
    """A regular file's bytes, refusing (with `error`) anything else, since a FIFO blocks
    forever and a device never ends, and anything above `limit` bytes, before reading.
    A missing file raises FileNotFoundError, for the caller to word."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file (a folder, FIFO or device): pass the "
                        f"{what} itself, or remove what stands in its place")
        if st.st_size > limit:
            raise error(f"{path} is {st.st_size} bytes, above the {limit}-byte limit of a "
                        f"{what}: it is not one")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 24, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    blob = b"".join(chunks)
    if len(blob) > limit:
        raise error(f"{path} grew past the {limit}-byte limit of a {what} while it was "
                    f"read: it is not one")
    return blob


def content_hash(*arrays) -> str:
    """sha256 over dtype, shape and bytes of each array: the identity of a dataset or of a
    set of weights."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.data)
    return h.hexdigest()


def percentile(sorted_values: List[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float]) -> Optional[dict]:
    """mean, median, p10, p90, min, max and count of `values` (None when empty)."""
    v = sorted(float(x) for x in values)
    if not v:
        return None
    return {"mean": sum(v) / len(v), "median": percentile(v, 50), "p10": percentile(v, 10),
            "p90": percentile(v, 90), "min": v[0], "max": v[-1], "count": len(v)}


def parse_fraction(text: str, what: str = "value") -> float:
    """'10%' or '0.1' -> 0.1. A bare number above 1 is refused: 1.5 could mean 1.5% or a
    mistake for 0.15, and a silent guess would mislabel a result."""
    text = str(text).strip()
    hint = "use a fraction like 0.93 or a percentage like 93%"
    try:
        value = float(text[:-1] if text.endswith("%") else text)
    except ValueError:
        raise UserError(f"invalid {what} {text!r}: {hint}") from None
    if text.endswith("%"):
        return value / 100
    if value > 1:
        raise UserError(f"invalid {what} {text!r}: above 1; {hint}")
    return value


def physical_memory_bytes() -> Optional[int]:
    """This machine's memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name, vendor and feature flags, from /proc/cpuinfo where there is one."""
    model, vendor, flags = None, None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model is not None and vendor is not None and flags:
                    break
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "vendor": vendor or "", "flags": flags}


def peak_rss_bytes(pid="self") -> Optional[int]:
    """A process' peak resident memory (Linux /proc VmHWM), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_age_seconds() -> Optional[float]:
    """Seconds since this process started (Linux: /proc/self/stat field 22, in clock
    ticks since boot, against /proc/uptime), or None elsewhere: the cold wall time a user
    waits, interpreter and imports included."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 overall
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return None
