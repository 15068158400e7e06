"""DavidNet (ResNet-9) as the tutorial defines it, in the Keras Functional API.

Only built-in Keras layers and initializers, so a model saves to `.keras` and loads back without
`safe_mode=False`. The dtype policy is passed per layer: building a model never touches
Keras' global policy.
"""

from __future__ import annotations

import keras
from keras import layers


def torch_uniform(seed=None) -> keras.initializers.Initializer:
    """uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default that the tutorial copies.
    VarianceScaling's uniform limit is sqrt(3 * scale / fan_in): scale 1/3 gives exactly that
    bound, as a built-in Keras class that saves and loads with no custom objects."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in",
                                              distribution="uniform", seed=seed)


def _conv_bn(x, filters, dropout, dtype, seed, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer=torch_uniform(seed), dtype=dtype,
                      name=f"{name}_conv")(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seed, dtype=dtype, name=f"{name}_drop")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=dtype,
                                  name=f"{name}_bn")(x)
    return layers.ReLU(dtype=dtype, name=f"{name}_relu")(x)


def davidnet(width: int = 64, dropout: float = 0.0, precision: str = "float32",
             seed: int = 0, num_classes: int = 10, image_size: int = 32) -> keras.Model:
    """prep -> [2c, pool, res] -> [4c, pool] -> [8c, pool, res] -> max -> dense -> x0.125."""
    dtype = keras.DTypePolicy(precision)
    seeds = iter(range(seed * 1000, seed * 1000 + 1000))
    c = width
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = _conv_bn(inp, c, dropout, dtype, next(seeds), "prep")

    def block(x, filters, residual, name):
        x = _conv_bn(x, filters, dropout, dtype, next(seeds), name)
        x = layers.MaxPooling2D(2, dtype=dtype, name=f"{name}_pool")(x)
        if residual:
            r = _conv_bn(x, filters, dropout, dtype, next(seeds), f"{name}_res1")
            r = _conv_bn(r, filters, dropout, dtype, next(seeds), f"{name}_res2")
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


def conv_layers(model: keras.Model) -> list:
    return [l for l in model.layers if isinstance(l, layers.Conv2D)]
