"""ResNet-18 for 32x32 images (a 3x3 stem, no max-pool), as a fastcifar model builder:

    PYTHONPATH=examples fastcifar train --net resnet18:build --epochs 10
    Trainer(recipe("davidnet"), model=resnet18.build)      # from Python

The builder receives the precision policy and passes it to every layer, so the model runs
in mixed precision; it ends in float32 logits (no softmax)."""

import keras
from keras import layers


def block(x, filters, stride, policy):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, stride, use_bias=False, dtype=policy)(x)
        shortcut = layers.BatchNormalization(dtype=policy)(shortcut)
    x = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, dtype=policy)(x)
    x = layers.ReLU(dtype=policy)(layers.BatchNormalization(dtype=policy)(x))
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, dtype=policy)(x)
    x = layers.BatchNormalization(dtype=policy)(x)
    return layers.ReLU(dtype=policy)(layers.Add(dtype=policy)([x, shortcut]))


def build(policy, classes=10):
    image = keras.Input((32, 32, 3))
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, dtype=policy)(image)
    x = layers.ReLU(dtype=policy)(layers.BatchNormalization(dtype=policy)(x))
    for filters, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
                            (512, 2), (512, 1)):
        x = block(x, filters, stride, policy)
    x = layers.GlobalAveragePooling2D(dtype=policy)(x)
    return keras.Model(image, layers.Dense(classes, dtype="float32")(x), name="resnet18")
