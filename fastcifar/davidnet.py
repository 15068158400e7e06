"""DavidNet (ResNet-9) as the tutorial defines it, in the Keras Functional API."""

from __future__ import annotations

import keras
from keras import layers

from .layers import BatchNorm, Conv2D, activation_layer, torch_uniform, ACTIVATIONS


WHITEN_CHANNELS = 27  # 3x3 patches of 3 channels


def _conv_bn(x, filters, dropout, dtype, seed, name, activation="relu", frozen_scale=False,
             kernel_size=3, sync_bn=False):
    x = Conv2D(filters, kernel_size, padding="same", use_bias=False,
               kernel_initializer=torch_uniform(seed), dtype=dtype,
               name=f"{name}_conv")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, dtype=dtype, name=f"{name}_drop")(x)
    # frozen scale: gamma fixed at 1 (the "bag of tricks" BatchNorm); beta still learns
    x = BatchNorm(momentum=0.9, epsilon=1e-5, scale=not frozen_scale, dtype=dtype,
                  synchronized=sync_bn, name=f"{name}_bn")(x)
    return activation_layer(activation, dtype, f"{name}_{activation}")(x)


def davidnet(width: int = 64, dropout: float = 0.0, precision: str = "float32",
             seed: int = 0, num_classes: int = 10, image_size: int = 32,
             activation: str = "relu", frozen_bn_scale: bool = False,
             whiten: bool = False, sync_bn: bool = False) -> keras.Model:
    """prep -> [2c, pool, res] -> [4c, pool] -> [8c, pool, res] -> max -> dense -> x0.125.

    `whiten` replaces the prep 3x3 conv by a frozen 3x3 PCA-whitening conv (27 channels,
    fitted to the training images by `fit_whitening`) followed by a trainable 1x1 conv,
    as in "How to train your ResNet 8: bag of tricks"."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    dtype = keras.DTypePolicy(precision)
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))
    c = width
    conv_bn = lambda x, f, name, **kw: _conv_bn(x, f, dropout, dtype, next(seeds), name,
                                                 activation, frozen_bn_scale,
                                                 sync_bn=sync_bn, **kw)
    inp = keras.Input((image_size, image_size, 3), name="image")
    if whiten:
        x = layers.Conv2D(WHITEN_CHANNELS, 3, padding="same", use_bias=False,
                          trainable=False, dtype=dtype, name="whiten")(inp)
        x = conv_bn(x, c, "prep", kernel_size=1)
    else:
        x = conv_bn(inp, c, "prep")

    def block(x, filters, residual, name):
        x = conv_bn(x, filters, name)
        x = layers.MaxPooling2D(2, dtype=dtype, name=f"{name}_pool")(x)
        if residual:
            r = conv_bn(x, filters, f"{name}_res1")
            r = conv_bn(r, filters, f"{name}_res2")
            x = layers.Add(dtype=dtype, name=f"{name}_add")([x, r])
        return x

    x = block(x, 2 * c, True, "layer1")
    x = block(x, 4 * c, False, "layer2")
    x = block(x, 8 * c, True, "layer3")
    x = layers.GlobalMaxPooling2D(dtype=dtype, name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=torch_uniform(next(seeds)),
                     dtype=dtype, name="linear")(x)
    # Logits leave the model in float32 so the loss is computed in full precision.
    out = layers.Rescaling(0.125, dtype="float32", name="logits")(x)
    return keras.Model(inp, out, name=f"davidnet_c{width}")


