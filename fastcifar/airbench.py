"""airbench94's net (Keller Jordan, `legacy/airbench94.py`), in the Keras Functional API."""

from __future__ import annotations

import keras
from keras import layers

from .layers import (ACTIVATIONS, BatchNorm, Bias, Conv2D, DiracUniform, UnitStdUniform,
                     activation_layer, torch_uniform)


def airbench94(width: int = 64, dropout: float = 0.0, precision: str = "float32",
               seed: int = 0, num_classes: int = 10, image_size: int = 32,
               activation: str = "gelu", frozen_bn_scale: bool = True,
               whiten: bool = True, sync_bn: bool = False, muon_head: bool = False
               ) -> keras.Model:
    """airbench94's net (Keller Jordan): a 2x2 whitening conv with 24 outputs and a bias,
    GELU, three groups conv-pool-BN-act-conv-BN-act of widths c, 4c, 4c (64/256/256),
    Dirac-initialised convs, BatchNorm eps 1e-12 with running-statistics momentum 0.6,
    a 3x3 max-pool, a linear layer without bias, logits x 1/9. Without `whiten` the first
    conv is an ordinary trainable one. `muon_head`: airbench94_muon's head instead, its
    weights scaled to unit std and the logits divided by the width it reads (4c)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    dtype = keras.DTypePolicy(precision)
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))
    act = lambda x, name: activation_layer(activation, dtype, name)(x)
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Conv2D(AIRBENCH_WHITEN_CHANNELS, 2, padding="valid", use_bias=not whiten,
                      trainable=not whiten, kernel_initializer=torch_uniform(next(seeds)),
                      dtype=dtype, name="whiten")(inp)
    if whiten:
        x = Bias(dtype=dtype, name="whiten_bias")(x)
    x = act(x, "whiten_act")

    def bn(x, name):
        return BatchNorm(momentum=0.6, epsilon=1e-12, scale=not frozen_bn_scale, dtype=dtype,
                         synchronized=sync_bn, name=name)(x)

    for i, filters in enumerate((width, 4 * width, 4 * width), start=1):
        name = f"group{i}"
        x = Conv2D(filters, 3, padding="same", use_bias=False,
                   kernel_initializer=DiracUniform(next(seeds)), dtype=dtype,
                   name=f"{name}_conv1")(x)
        x = layers.MaxPooling2D(2, dtype=dtype, name=f"{name}_pool")(x)
        x = act(bn(x, f"{name}_bn1"), f"{name}_act1")
        if dropout:
            x = layers.Dropout(dropout, seed=next(seeds), dtype=dtype, name=f"{name}_drop")(x)
        x = Conv2D(filters, 3, padding="same", use_bias=False,
                   kernel_initializer=DiracUniform(next(seeds)), dtype=dtype,
                   name=f"{name}_conv2")(x)
        x = act(bn(x, f"{name}_bn2"), f"{name}_act2")
    x = layers.MaxPooling2D(3, dtype=dtype, name="pool")(x)
    x = layers.Flatten(dtype=dtype, name="flatten")(x)
    head_init = (UnitStdUniform if muon_head else torch_uniform)(next(seeds))
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=head_init,
                     dtype=dtype, name="linear")(x)
    out = layers.Rescaling(1 / (4 * width) if muon_head else 1 / 9, dtype="float32",
                           name="logits")(x)
    return keras.Model(inp, out, name=f"airbench94{'_muon' if muon_head else ''}_c{width}")


def airbench94_muon(width: int = 64, dropout: float = 0.0, precision: str = "float32",
                    seed: int = 0, **kwargs) -> keras.Model:
    """airbench94_muon's net (`airbench94_muon.py`): airbench94's, with its head."""
    return airbench94(width, dropout, precision, seed, muon_head=True, **kwargs)


AIRBENCH_WHITEN_CHANNELS = 24  # 2x2 patches of 3 channels: 12 eigenvectors and negatives

# net -> (builder, whitening: images fitted on, eps)
