"""Compiling the engine's functions before the clock starts: traced and compiled on
zeros of the real shapes, every piece of state put back afterwards, so compilation leaves
no trace. Under `auto`, XLA that cannot compile the step (e.g. a cuDNN without usable conv
configurations) falls back to the uncompiled step with one warning line; an XLA asked for
explicitly fails with one line naming the cause."""

from __future__ import annotations

import dataclasses
import sys

import tensorflow as tf

from . import devicedata
from .errors import ConfigError


def compile_engine(engine, n_train: int, n_test: int) -> float:
    """Trace and compile train and eval for sets of these sizes; returns the seconds spent
    (0 if the functions were already compiled for them)."""
    engine._use_sets_of(n_train, n_test)
    if engine._compiled_for == (n_train, n_test):
        return 0.0
    dummy = devicedata.zeros_like_data(engine, n_train, n_test)
    snap = engine.snapshot()
    try:
        engine.compile_seconds = engine._compile_on(dummy)
    except tf.errors.OpError as e:
        if not engine.runtime.xla or isinstance(e, tf.errors.ResourceExhaustedError):
            raise
        engine.restore(snap)
        xla_failed(engine, e)
        engine.compile_seconds = engine._compile_on(dummy)
    engine.restore(snap)
    engine._compiled_for = (n_train, n_test)
    return engine.compile_seconds


def xla_failed(engine, error: Exception) -> None:
    """Fail with one line (XLA asked for) or fall back to the uncompiled step (auto)."""
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()
             if line.strip()]
    cause = f"{type(error).__name__}: {lines[0] if lines else 'no message'}"[:300]
    if engine.runtime_config.xla:
        raise ConfigError(f"XLA could not compile the training step on "
                          f"{engine.runtime.device} ({cause}); run with --no-xla, or "
                          f"update CUDA/cuDNN") from None
    why = f"{engine.runtime.why}; XLA failed to compile ({cause}): uncompiled step instead"
    engine.runtime = dataclasses.replace(engine.runtime, xla=False, why=why)
    sys.stderr.write(f"fastcifar: warning: XLA could not compile the training step "
                     f"({cause}); running it uncompiled (runtime.why says so)\n")
    engine._make_functions()
