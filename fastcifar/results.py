"""One versioned result schema for every command, written atomically.

Readers rely on these keys (see README, "Result schema"): keep them stable, and bump
`SCHEMA_VERSION` on any change that breaks a reader.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional

from .errors import UserError, gist
from .metrics import info, undeclared
from .util import atomic_path, read_regular

SCHEMA_VERSION = 1

def build(command: str, config: dict, runtime: dict, environment: dict, dataset: dict,
          metrics: dict, history: Optional[list] = None, **extra: Any) -> dict:
    """A result of the schema. Every metric and history field must be declared in
    `fastcifar.metrics` (a ValueError otherwise: a bug, not bad input)."""
    unknown = undeclared(metrics, history)
    if unknown:
        raise ValueError(f"undeclared metric(s) {unknown}: declare them in "
                         f"fastcifar.metrics.METRICS")
    result = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "runtime": runtime,
        "environment": environment,
        "dataset": dataset,
        "metrics": metrics,
        "metric_info": info(metrics),
    }
    if history is not None:
        result["history"] = history
    result["status"] = "ok"  # "failed" for a run that did not finish (with "error")
    result.update(extra)
    return _finite(result)


def failed(command: str, config: dict, runtime: dict, environment: dict, dataset: dict,
           error: Exception, history: Optional[list] = None, **extra: Any) -> dict:
    """The record of a run that did not finish: `status: failed` and the reason, no
    metrics, so that no reader (`compare` above all) mistakes it for a measurement."""
    extra.setdefault("failed_at_step", getattr(error, "step", None))
    return build(command, config, runtime, environment, dataset, {}, history,
                 status="failed", error=str(error), **extra)


def _finite(obj):
    """JSON has no NaN/inf: write them as null rather than emit invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def check_writable(path: str, suffix: Optional[str] = None) -> None:
    """Fail before any work when an output cannot be written."""
    if not str(path).strip():
        raise UserError("empty output path: give a file name")
    if suffix and not str(path).endswith(suffix):
        raise UserError(f"invalid output path {path!r}: it must end in {suffix}")
    if os.path.lexists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise UserError(f"cannot write {path}: it exists and is not a regular file (a "
                        f"device, FIFO or dangling link); choose another path")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UserError(f"cannot write {path}: folder {d} does not exist; create it first")
    if not os.access(d, os.W_OK):
        raise UserError(f"cannot write {path}: folder {d} is not writable; choose another "
                          f"path")
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder; give a file name")


def _same_file(a: str, b: str) -> bool:
    """The same file by resolved path, or by identity (a hard link) when both exist."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: list, inputs: list = ()) -> None:
    """Every output file of a command, checked before any work: writable (`check_writable`),
    no two the same, and none of them one of the command's inputs (writing a result over
    the model or archive it was computed from would destroy the input).

    `outputs`: (flag, path, required suffix or None), path None when not asked for;
    `inputs`: (flag, path) of the files the command reads."""
    given = [(flag, path, suffix) for flag, path, suffix in outputs if path is not None]
    for flag, path, suffix in given:
        check_writable(path, suffix)
    for i, (flag, path, _) in enumerate(given):
        for other, other_path, _ in given[i + 1:]:
            if _same_file(path, other_path):
                raise UserError(f"{flag} and {other} both name {path}: give two files")
        for source, input_path in inputs:
            if input_path is None:
                continue
            inside = os.path.isdir(input_path) and os.path.realpath(path).startswith(
                os.path.join(os.path.realpath(input_path), ""))
            if inside or _same_file(path, input_path):
                where = "lies inside the input folder" if inside else "is also the input"
                raise UserError(f"{flag} {path} {where} ({source} {input_path}): writing "
                                f"it could destroy what it is computed from; choose another "
                                f"output path")


def check_folder(path: str, what: str = "a profile") -> None:
    """An output folder (a profile's, TensorBoard's), checked before any work and created
    only when it is written to: an existing file is refused, and so is a parent that is
    not a folder."""
    if not str(path).strip():
        raise UserError("empty folder path: give a folder name")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"cannot write {what} into {path}: it is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"cannot create folder {path}: {parent} is not a folder")
    target = path if os.path.isdir(path) else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {path}: {target} is not writable; pick another "
                        f"folder")


# What this process has written for the user (results, models, plots, scalars), so an
# interrupted command can say exactly what is on disk.
written: list = []


def note_written(path: str) -> None:
    written.append(str(path))


def write_json(path: str, obj: dict) -> None:
    """Temp file + rename: a reader never sees half a result, an interrupt leaves none."""
    with atomic_path(path, suffix=".json.tmp") as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    note_written(path)


MAX_RESULT_BYTES = 64 << 20  # a result is kilobytes; a long history a few megabytes


def read_json(path: str) -> dict:
    try:
        blob = read_regular(path, MAX_RESULT_BYTES, "result file")
    except FileNotFoundError:
        raise UserError(f"no such result file {path}") from None
    try:
        obj = json.loads(blob)
    except RecursionError:
        raise UserError(f"{path} is not a fastcifar result (nested too deeply to read)") \
            from None
    except ValueError as e:
        raise UserError(f"{path} is not a readable JSON result ({gist(e)})") from None
    if not isinstance(obj, dict) or obj.get("schema_version") != SCHEMA_VERSION:
        got = obj.get("schema_version") if isinstance(obj, dict) else None
        raise UserError(f"{path} is not a fastcifar result of schema {SCHEMA_VERSION} "
                          f"(schema_version={got!r}); re-run the benchmark with this version")
    return obj
