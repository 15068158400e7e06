"""TensorFlow's C++ start-up lines (oneDNN, CUDA probing, absl), hidden wherever fastcifar
is imported from: they go to file descriptor 2 while TensorFlow loads, before any logging
setting applies. `FASTCIFAR_TF_LOGS=1` shows them. Imports no TensorFlow."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys


@contextlib.contextmanager
def hidden_stderr_fd():
    """File descriptor 2 pointed at /dev/null (Python's own sys.stderr is untouched, so a
    Python error raised inside still prints once the block ends)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with fd 2 hidden, then put back in place."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with hidden_stderr_fd():
            self.loader.exec_module(module)
            module.__loader__ = module.__spec__.loader = self.loader
            module.config.list_physical_devices()  # device probing prints too


class QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as Python would, and loads it quietly; once."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_finder = QuietTensorFlow()


def install() -> None:
    if (os.environ.get("FASTCIFAR_TF_LOGS") != "1" and "tensorflow" not in sys.modules
            and _finder not in sys.meta_path):
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
