"""The layers and initialisers fastcifar's nets are built from, each registered so a saved
model loads in Keras' safe mode after `import fastcifar.layers`: a BatchNorm on
TensorFlow's fused kernel, an exact GELU fused into one loop each way, a Conv2D whose small
3x3 filter gradients can be nine matrix products, airbench's Dirac initialiser and its
stand-alone bias. The dtype policy is passed per layer: nothing here touches Keras' global
policy.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


def torch_uniform(seed=None) -> keras.initializers.Initializer:
    """uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default that the tutorial copies.
    VarianceScaling's uniform limit is sqrt(3 * scale / fan_in): scale 1/3 gives exactly that
    bound, as a built-in Keras class that saves and loads with no custom objects."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in",
                                              distribution="uniform", seed=seed)


@keras.saving.register_keras_serializable(package="fastcifar")
class BatchNorm(layers.BatchNormalization):
    """Keras BatchNormalization computed by TensorFlow's fused kernel (oneDNN / cuDNN).

    Same parameters, statistics and update rule (moving = m * moving + (1 - m) * batch);
    Keras 3's own layer upcasts bfloat16/float16 activations to float32 and normalises with
    separate ops, which measured 4.5x slower for BN+ReLU forward and backward on a
    512x32x32x128 bfloat16 batch on the development CPU. Registered: a saved model loads
    after `import fastcifar.layers`.

    `synchronized=True` (sync BN under tf.distribute) normalises with the statistics of
    the global batch instead of each replica's share, at the cost of two small all-reduces
    per layer and unfused ops.
    """

    # TensorFlow's fused kernel raises epsilon to at least this; the synchronised path
    # uses the same value
    MIN_EPSILON = 1.001e-5

    def add_weight(self, *args, **kwargs):
        # Under tf.distribute a replica's update of a moving statistic is averaged over the
        # replicas (Keras leaves it at "none": each replica's copy would drift apart).
        if kwargs.get("name") in ("moving_mean", "moving_variance"):
            kwargs["aggregation"] = "mean"
        return super().add_weight(*args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf

        if (mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3)
                or keras.backend.backend() != "tensorflow"):
            return super().call(inputs, training=training, mask=mask)
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones(inputs.shape[-1])
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros(inputs.shape[-1])
        if training and self.trainable:
            ctx = tf.distribute.get_replica_context()
            # synchronized: the same path on one replica as on many, so the replica count
            # does not change the result
            if self.synchronized and ctx is not None:
                y, mean, var = self._synchronized_batch_norm(inputs, gamma, beta, ctx)
            else:
                y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                    inputs, gamma, beta, epsilon=self.epsilon, is_training=True)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + var * (1.0 - m))
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon,
            is_training=False)
        return y

    def _synchronized_batch_norm(self, x, gamma, beta, ctx):
        """Statistics over the global batch: per-replica sums all-reduced. They are summed
        in float64, so (to float32 rounding) they do not depend on how the batch is split;
        in float32 the split alone moves them by an ulp, and DavidNet's max-pools turn
        such differences into different gradients within a few steps. Returns the output
        and, like the fused kernel, the unbiased batch variance."""
        import tensorflow as tf

        # every replica holds an equal share of the global batch (the trainer checks)
        n = float(x.shape[0] * x.shape[1] * x.shape[2] * ctx.num_replicas_in_sync)
        # per-image sums in float32 (the same for an image whichever replica holds it),
        # then summed over images and replicas in float64
        xf = tf.cast(x, tf.float32)
        per_image = lambda t: tf.cast(tf.reduce_sum(t, [1, 2]), tf.float64)
        total = ((lambda t: ctx.all_reduce(tf.distribute.ReduceOp.SUM, t))
                 if ctx.num_replicas_in_sync > 1 else (lambda t: t))  # one replica: no op
        s = total(tf.reduce_sum(per_image(xf), 0))
        ss = total(tf.reduce_sum(per_image(tf.square(xf)), 0))
        mean64 = s / n
        var = tf.cast(tf.maximum(ss / n - tf.square(mean64), 0.0), tf.float32)
        mean = tf.cast(mean64, tf.float32)
        eps = max(self.epsilon, self.MIN_EPSILON)
        y = tf.nn.batch_normalization(xf, mean, var, beta, gamma, eps)
        return tf.cast(y, x.dtype), mean, var * (n / max(n - 1.0, 1.0))


ACTIVATIONS = ("relu", "celu", "gelu", "silu")
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@tf.function(jit_compile=True)
def _gelu_forward(x):
    xf = tf.cast(x, tf.float32)
    return tf.cast(0.5 * xf * tf.math.erfc(-xf * _SQRT_HALF), x.dtype)


@tf.function(jit_compile=True)
def _gelu_backward(x, dy):
    xf = tf.cast(x, tf.float32)
    slope = 0.5 * tf.math.erfc(-xf * _SQRT_HALF) + xf * _INV_SQRT_2PI * tf.exp(-0.5 * xf * xf)
    return tf.cast(tf.cast(dy, tf.float32) * slope, x.dtype)


@tf.custom_gradient
def fused_gelu(x):
    """Exact GELU, x * Phi(x), forward and backward each one fused loop. Unfused, exact
    GELU is six elementwise passes over the activation forward and backward (erfc, exp,
    products), each reading and writing memory: 22% of an airbench94 step on a CPU. Each
    half is a small XLA cluster of elementwise ops only (XLA never sees a convolution, so
    oneDNN keeps those), computed in float32 and rounded once."""
    return _gelu_forward(x), lambda dy: _gelu_backward(x, dy)


@keras.saving.register_keras_serializable(package="fastcifar")
class GELU(layers.Layer):
    """keras.activations.gelu (exact, approximate=False), computed by `fused_gelu`."""

    def call(self, x):
        return fused_gelu(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):  # no arguments of its own; Keras cannot infer that by itself
        return super().get_config()


def activation_layer(activation: str, dtype, name: str) -> layers.Layer:
    """The activation after a BatchNorm: ReLU, CELU, SiLU (x sigmoid(x), the airbench
    descendants'), or the fused exact GELU."""
    if activation == "relu":
        return layers.ReLU(dtype=dtype, name=name)
    if activation == "gelu":
        return GELU(dtype=dtype, name=name)
    return layers.Activation(activation, dtype=dtype, name=name)
# Measured on the development CPU (README, "How it is fast"; benchmarks/filter_grad.py):
# on maps of at most this many pixels a 3x3 filter gradient is faster as nine matrix
# products than oneDNN's kernel; at 15x15 and above the library is faster.
MATMUL_FILTER_GRAD_MAX_PIXELS = 64


def filter_grad_by_matmuls(x, dy, ksize: int):
    """The filter gradient of a stride-1 SAME convolution: tap (i, j) of the kernel is
    (x shifted by (i, j))^T dy, one matrix product over every example and position."""
    h, w, cin, cout = x.shape[1], x.shape[2], x.shape[3], dy.shape[-1]
    pad = ksize // 2
    xp = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = tf.reshape(dy, [-1, cout])
    taps = [tf.matmul(tf.reshape(xp[:, i:i + h, j:j + w, :], [-1, cin]), rows,
                      transpose_a=True)
            for i in range(ksize) for j in range(ksize)]
    return tf.reshape(tf.stack(taps), [ksize, ksize, cin, cout])


def _conv_with_matmul_filter_grad(x, kernel):
    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            # named, so a profile still counts these ops as convolution backward
            with tf.name_scope("conv_filter_grad"):
                dy = tf.ensure_shape(dy, x.shape[:3] + kernel.shape[3:])
                dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                                    out_backprop=dy, strides=[1, 1, 1, 1],
                                                    padding="SAME")
                dk = filter_grad_by_matmuls(x, dy, kernel.shape[0])
            return dx, tf.cast(dk, kernel.dtype)
        return tf.nn.conv2d(x, kernel, 1, "SAME"), grad
    # a tensor, not the variable (float32 policies pass the variable itself): inside,
    # custom_gradient would treat it as a captured variable
    return conv(x, tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="fastcifar")
class Conv2D(layers.Conv2D):
    """keras Conv2D whose 3x3 filter gradient, on small feature maps and when the runtime
    asks (`matmul_filter_grad`, set by the trainer: runtime `conv_grad`), is computed by
    `filter_grad_by_matmuls`. The same sum, in another order; the forward pass and the
    input gradient are the library's. Not saved with the model: a runtime choice."""

    matmul_filter_grad = False

    def _matmul_applies(self, inputs) -> bool:
        k = self.kernel_size
        return (self.matmul_filter_grad and self.padding == "same"
                and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1)
                and self.groups == 1 and self.data_format == "channels_last"
                and tuple(k) == (3, 3) and None not in inputs.shape[1:3]
                and inputs.shape[1] * inputs.shape[2] <= MATMUL_FILTER_GRAD_MAX_PIXELS)

    def convolution_op(self, inputs, kernel):
        if keras.backend.backend() == "tensorflow" and self._matmul_applies(inputs):
            return _conv_with_matmul_filter_grad(inputs, kernel)
        return super().convolution_op(inputs, kernel)


def use_matmul_filter_grad(model: keras.Model, enabled: bool) -> int:
    """Switch the filter gradient of the model's fastcifar Conv2D layers, nested ones too
    (before the step is traced); returns how many layers it applies to at their sizes."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, Conv2D):
            layer.matmul_filter_grad = enabled
            count += int(layer._matmul_applies(layer.input))
    return count


@keras.saving.register_keras_serializable(package="fastcifar")
class DiracUniform(keras.initializers.Initializer):
    """airbench's conv init: PyTorch's uniform(+-1/sqrt(fan_in)), then the first `cin`
    output filters set to the identity (a Dirac delta at the centre tap), so at the start
    each block passes its input channels through."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        import numpy as np
        import tensorflow as tf

        kh, kw, cin, cout = shape
        uniform = torch_uniform(self.seed)(shape, dtype="float32")
        n = min(cin, cout)
        identity = np.zeros(shape, np.float32)
        identity[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        first = np.zeros(shape, bool)
        first[..., :n] = True
        return tf.cast(tf.where(first, identity, uniform), dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="fastcifar")
class UnitStdUniform(keras.initializers.Initializer):
    """airbench94_muon's head init: PyTorch's uniform(+-1/sqrt(fan_in)), then divided by
    its own standard deviation (unit std)."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        import tensorflow as tf

        w = torch_uniform(self.seed)(shape, dtype="float32")
        return tf.cast(w / tf.math.reduce_std(w), dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="fastcifar")
class Bias(layers.Layer):
    """A trainable per-channel bias on its own, so the whitening conv's kernel can stay
    frozen while its bias trains (airbench94 trains it for the first 3 epochs)."""

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros",
                                    name="bias")

    def call(self, x):
        return x + self.bias

    def get_config(self):  # no arguments of its own; Keras cannot infer that by itself
        return super().get_config()


def conv_layers(model: keras.Model) -> list:
    return [l for l in model.layers if isinstance(l, layers.Conv2D)]
