"""fastcifar: DavidNet on CIFAR-10, compiled, device-resident, and measured honestly.

Importing the package imports no TensorFlow: `Trainer` and friends load on first use, and
`fastcifar.monitor` works where TensorFlow is absent. The one thing it changes: when
TensorFlow is first imported, its C++ start-up lines are hidden (`fastcifar.quiet`;
`FASTCIFAR_TF_LOGS=1` shows them).
"""

from . import quiet as _quiet

_quiet.install()

__version__ = "0.1.0"

_LAZY = {
    "Trainer": ("fastcifar.train", "Trainer"),
    "FitResult": ("fastcifar.train", "FitResult"),
    "TrainConfig": ("fastcifar.config", "TrainConfig"),
    "RuntimeConfig": ("fastcifar.config", "RuntimeConfig"),
    "recipe": ("fastcifar.config", "recipe"),
    "RECIPES": ("fastcifar.config", "RECIPES"),
    "load_data": ("fastcifar.data", "load"),
    "Dataset": ("fastcifar.data", "Dataset"),
    "davidnet": ("fastcifar.davidnet", "davidnet"),
    "run_training": ("fastcifar.run", "run_training"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastcifar' has no attribute {name!r}")
