"""Your own model: a builder named on the command line (`package.module:function`) or
passed from Python, called with the precision policy, and checked to be a model fastcifar
can train (one batch of 32x32x3 images in, one row of logits per image out, runnable under
the policy), with one-line errors for everything that is not.
"""

from __future__ import annotations

import importlib
import inspect

import keras
import numpy as np
import tensorflow as tf

from .errors import ConfigError, gist

def call_builder(builder, precision: str, num_classes: int):
    """A user's builder called with the policy, and with the class count as `classes=` or
    `num_classes=` if it has a parameter of that name (by name: a second positional
    parameter may mean something else)."""
    try:
        names = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        names = {}
    kwargs = {name: num_classes for name in ("classes", "num_classes") if name in names}
    name = getattr(builder, "__name__", "the builder")
    try:
        return builder(precision, **kwargs)
    except SystemExit as e:  # sys.exit() in a user's code is not the command's exit
        raise ConfigError(f"building the model with {name}() called sys.exit({e.code!r}); "
                          f"a builder must return a keras.Model") from None
    except Exception as e:  # e.g. a layer with no kernel for this dtype, failing as Keras traces it
        raise ConfigError(f"building the model with {name}() under {precision} failed "
                          f"({type(e).__name__}: {gist(e)}); a layer that cannot run in the "
                          f"policy's dtype can be given dtype='float32'") from None


def load_builder(spec: str):
    """`package.module:function` -> the function; one-line errors for what is missing."""
    module_name, _, function = spec.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".") + [function]):
        raise ConfigError(f"invalid net={spec!r}: write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"invalid net={spec!r}: cannot import {module_name} ({e}); put it "
                          f"on PYTHONPATH") from None
    except SystemExit as e:  # sys.exit() at import is not the command's exit
        raise ConfigError(f"invalid net={spec!r}: importing {module_name} called "
                          f"sys.exit({e.code!r}); a module of builders must not exit") from None
    except Exception as e:  # the user's module itself fails: a syntax error, a raise
        raise ConfigError(f"invalid net={spec!r}: importing {module_name} failed "
                          f"({type(e).__name__}: {gist(e)})") from None
    builder = getattr(module, function, None)
    if not callable(builder):
        raise ConfigError(f"invalid net={spec!r}: {module_name} has no function {function!r}")
    return builder


def check_model(model, num_classes: int, precision: str, run: bool = True) -> None:
    """What a model must be to train here: one input of 32x32x3 images, one output of
    `num_classes` logits per image, and (`run`) runnable under the precision policy."""
    if not isinstance(model, keras.Model):
        raise ConfigError(f"the model is a {type(model).__name__}, not a keras.Model")
    try:
        inputs, outputs = model.inputs or [], model.outputs or []
    except (AttributeError, ValueError):  # subclassed, or a Sequential never given an Input
        raise ConfigError(f"the model {model.name!r} has no defined input: build it on "
                          f"keras.Input((32, 32, 3)) (functional or Sequential)") from None
    if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != (32, 32, 3):
        shapes = [tuple(i.shape) for i in inputs]
        raise ConfigError(f"the model's input is {shapes}, not one (None, 32, 32, 3) image "
                          f"batch: build it on keras.Input((32, 32, 3))")
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[-1] != num_classes:
        shapes = [tuple(o.shape) for o in outputs]
        raise ConfigError(f"the model's output is {shapes}, not one (None, {num_classes}) "
                          f"batch of logits: end in Dense({num_classes}) without softmax (a builder "
                          f"gets the count through a parameter named classes or num_classes)")
    if not run:
        return
    try:
        dtype = keras.DTypePolicy(precision).compute_dtype
        logits = model(tf.zeros([2, 32, 32, 3], dtype), training=False)
    except SystemExit as e:  # sys.exit() in a user's layer is not the command's exit
        raise ConfigError(f"the model called sys.exit({e.code!r}) when run: a model must "
                          f"return logits") from None
    except Exception as e:  # a layer that cannot run in this dtype, a broken graph
        raise ConfigError(f"the model does not run under {precision} "
                          f"({type(e).__name__}: {gist(e)}); build it "
                          f"with the policy the builder receives") from None
    if not np.all(np.isfinite(np.asarray(tf.cast(logits, tf.float32)))):
        raise ConfigError(f"the model's logits on zeros are not finite under {precision}")


def network_for(config, runtime, model=None, distributed: bool = False):
    """(the net, the filter gradient it uses): the config's net, a user's builder called
    with the precision policy, or a user's model, checked up front so a mismatch is one
    line, not a failed trace."""
    from .layers import use_matmul_filter_grad
    from .nets import NETS, build

    if model is None:
        net = build(config, runtime.precision)
    elif isinstance(model, keras.Model):
        if distributed:
            raise ConfigError("a model passed to Trainer(model=...) under a distribution "
                              "strategy must be created in its scope: pass a builder, "
                              "model=lambda policy: make_model(policy)")
        net = model
    elif callable(model):
        net = call_builder(model, runtime.precision, config.num_classes)
    else:
        raise ConfigError(f"invalid model={model!r}: pass a keras.Model or a function of the "
                          f"precision policy that returns one")
    check_model(net, config.num_classes, runtime.precision, run=model is not None)
    if config.whiten and (model is not None or config.net not in NETS):
        raise ConfigError("invalid whiten=True: the whitening layer belongs to the built-in "
                          "nets; use --no-whiten with your own model")
    # nothing the matmul form applies to (a user's keras Conv2D layers): say so in results
    applies = use_matmul_filter_grad(net, runtime.conv_grad == "matmul")
    return net, runtime.conv_grad if applies else "library"
