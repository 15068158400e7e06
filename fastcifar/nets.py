"""The built-in nets by name: where each is built, how its whitening layer is fitted, how
many weights it has. Importing this module imports no TensorFlow (the settings check a net
name and a width's memory before anything heavy loads).

Adding a built-in net: a module with its builder (the signature of `davidnet.davidnet`)
and one `NetSpec` line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Mapping

from .flops import airbench94_parameters, davidnet_parameters


@dataclass(frozen=True)
class NetSpec:
    builder: str                      # "module:function", imported when a net is built
    whitening_images: int             # training images the whitening layer is fitted on
    whitening_eps: float              # added to the patch covariance's eigenvalues
    parameters: Callable[[int, int], int]  # weights at (width, classes), by hand

    def build_function(self):
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


NETS: Mapping[str, NetSpec] = {
    "davidnet": NetSpec("fastcifar.davidnet:davidnet", 10000, 1e-2, davidnet_parameters),
    "airbench94": NetSpec("fastcifar.airbench:airbench94", 5000, 5e-4,
                          airbench94_parameters),
    "airbench94_muon": NetSpec("fastcifar.airbench:airbench94_muon", 5000, 5e-4,
                               airbench94_parameters),
}


def build(config, precision: str):
    """The network a TrainConfig names, in the precision policy given: a built-in one,
    or a user's builder named `package.module:function` (called with the policy)."""
    if config.net in NETS:
        return NETS[config.net].build_function()(
            config.width, config.dropout, precision, config.seed,
            num_classes=config.num_classes, activation=config.activation,
            frozen_bn_scale=config.frozen_bn_scale, whiten=config.whiten,
            sync_bn=config.sync_bn)
    from .usernet import call_builder, load_builder

    return call_builder(load_builder(config.net), precision, config.num_classes)
