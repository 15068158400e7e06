"""Analytic FLOP counts, per layer, so achieved FLOP/s can be compared with a peak.

A multiply-add counts as 2 FLOPs. A training step counts 3x the forward pass (forward,
gradient w.r.t. inputs, gradient w.r.t. weights): the usual convention. Only convolutions
and the dense layer are counted; BatchNorm, ReLU and pooling are memory-bound and add
well under 1%.
"""

from __future__ import annotations


def conv_flops(h: int, w: int, k: int, cin: int, cout: int) -> int:
    return 2 * h * w * k * k * cin * cout


def per_layer(model) -> list:
    """[(layer name, forward FLOPs per image)] for every Conv2D and Dense layer."""
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            cin = layer.input.shape[-1]
            k = layer.kernel_size[0] * layer.kernel_size[1]
            out.append((layer.name, 2 * h * w * k * cin * cout))
        elif isinstance(layer, keras.layers.Dense):
            out.append((layer.name, 2 * layer.input.shape[-1] * layer.units))
    return out


def forward_flops(model) -> int:
    return sum(f for _, f in per_layer(model))


def train_flops(model) -> int:
    return 3 * forward_flops(model)


def davidnet_forward_flops(width: int) -> int:
    """The same count by hand from the architecture, for checking `per_layer`."""
    c = width
    return (conv_flops(32, 32, 3, 3, c) + conv_flops(32, 32, 3, c, 2 * c)
            + 2 * conv_flops(16, 16, 3, 2 * c, 2 * c) + conv_flops(16, 16, 3, 2 * c, 4 * c)
            + conv_flops(8, 8, 3, 4 * c, 8 * c) + 2 * conv_flops(4, 4, 3, 8 * c, 8 * c)
            + 2 * 8 * c * 10)


def davidnet_parameters(width: int, num_classes: int = 10) -> int:
    """Weights of DavidNet at `width` c, by hand: 3x3 convs 3->c, c->2c, two 2c->2c,
    2c->4c, 4c->8c, two 8c->8c, the linear layer, and BatchNorm's two vectors per conv."""
    c = width
    convs = 9 * (3 * c + c * 2 * c + 2 * (2 * c) ** 2 + 2 * c * 4 * c + 4 * c * 8 * c
                 + 2 * (8 * c) ** 2)
    batchnorm = 2 * (c + 2 * c * 3 + 4 * c + 8 * c * 3)
    return convs + batchnorm + 8 * c * num_classes


def airbench94_parameters(width: int, num_classes: int = 10) -> int:
    """Trainable weights of airbench94 at widths c, 4c, 4c, by hand: the whitening bias
    (24; its 2x2 kernel is frozen), two 3x3 convs per group (24->c, c->c; c->4c, 4c->4c;
    two 4c->4c), one BatchNorm bias per conv (scales frozen), the linear layer."""
    c = width
    convs = 9 * (24 * c + c * c + c * 4 * c + 3 * (4 * c) ** 2)
    return 24 + convs + 2 * (c + 4 * c + 4 * c) + 4 * c * num_classes
