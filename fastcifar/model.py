"""The nets, in the Keras Functional API: DavidNet (ResNet-9) as the tutorial defines it,
and airbench94.

Only built-in Keras parts plus registered layers (fused BatchNorm and GELU, a Conv2D with a
CPU-friendly filter gradient, TTA views), so a model saves to `.keras` and loads back
without `safe_mode=False`. The dtype policy is passed per layer: building a model never
touches Keras' global policy.
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
    after `import fastcifar.model`.

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


ACTIVATIONS = ("relu", "celu", "gelu")
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
    """The activation after a BatchNorm: ReLU, CELU, or the fused exact GELU."""
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


def airbench94(width: int = 64, dropout: float = 0.0, precision: str = "float32",
               seed: int = 0, num_classes: int = 10, image_size: int = 32,
               activation: str = "gelu", frozen_bn_scale: bool = True,
               whiten: bool = True, sync_bn: bool = False) -> keras.Model:
    """airbench94's net (Keller Jordan): a 2x2 whitening conv with 24 outputs and a bias,
    GELU, three groups conv-pool-BN-act-conv-BN-act of widths c, 4c, 4c (64/256/256),
    Dirac-initialised convs, BatchNorm eps 1e-12 with running-statistics momentum 0.6,
    a 3x3 max-pool, a linear layer without bias, logits x 1/9. Without `whiten` the first
    conv is an ordinary trainable one."""
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
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=torch_uniform(next(seeds)),
                     dtype=dtype, name="linear")(x)
    out = layers.Rescaling(1 / 9, dtype="float32", name="logits")(x)
    return keras.Model(inp, out, name=f"airbench94_c{width}")


AIRBENCH_WHITEN_CHANNELS = 24  # 2x2 patches of 3 channels: 12 eigenvectors and negatives

# net -> (builder, whitening: images fitted on, eps)
NETS = {"davidnet": (davidnet, 10000, 1e-2), "airbench94": (airbench94, 5000, 5e-4)}


def build(config, precision: str) -> keras.Model:
    """The network a TrainConfig names, in the precision policy given: a built-in one,
    or a user's builder named `package.module:function` (called with the policy)."""
    if config.net in NETS:
        return NETS[config.net][0](config.width, config.dropout, precision, config.seed,
                                   num_classes=config.num_classes,
                                   activation=config.activation,
                                   frozen_bn_scale=config.frozen_bn_scale,
                                   whiten=config.whiten, sync_bn=config.sync_bn)
    return call_builder(load_builder(config.net), precision, config.num_classes)


def call_builder(builder, precision: str, num_classes: int):
    """A user's builder called with the policy, and with the class count as `classes=` or
    `num_classes=` if it has a parameter of that name (by name: a second positional
    parameter may mean something else)."""
    import inspect

    try:
        names = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        names = {}
    kwargs = {name: num_classes for name in ("classes", "num_classes") if name in names}
    from .errors import ConfigError, gist

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
    import importlib

    from .errors import ConfigError, gist

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


def fit_whitening(model: keras.Model, images, eps: float = 1e-2) -> None:
    """Set the frozen `whiten` conv from the patches of `images` (normalised, NHWC, on the
    device): W = V diag(1/sqrt(lambda + eps)) over the eigenvectors V of their covariance.
    A kernel with k*k*3 outputs (davidnet, 3x3) takes the centred covariance; one with
    twice that (airbench94, 2x2) takes the uncentred one and both W and -W, largest
    eigenvalue first, as airbench does."""
    import tensorflow as tf

    layer = model.get_layer("whiten")
    k, outputs = layer.kernel.shape[0], layer.kernel.shape[-1]
    size = k * k * 3
    patches = whitening_patches(images, k)
    if outputs == size:
        patches = patches - tf.reduce_mean(patches, axis=0)
    cov = tf.matmul(patches, patches, transpose_a=True) / tf.cast(tf.shape(patches)[0],
                                                                   tf.float32)
    eigval, eigvec = tf.linalg.eigh(tf.cast(cov, tf.float64))
    w = eigvec / tf.sqrt(eigval + eps)[None, :]
    if outputs == 2 * size:
        w = tf.reverse(w, axis=[1])  # largest eigenvalue first
        w = tf.concat([w, -w], axis=1)
    layer.kernel.assign(tf.reshape(tf.cast(w, tf.float32), [k, k, 3, outputs]))


def whitening_patches(images, k: int = 3):
    """[N*(32-k+1)^2, k*k*3] float32: every valid k x k patch, ordered (row, col,
    channel) to match a conv kernel's [kh, kw, cin] layout."""
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    p = tf.image.extract_patches(x, [1, k, k, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
    return tf.reshape(p, [-1, k * k * 3])


def standardize(x, mean, std):
    """Pixels -> (x - mean) / std in float32, with the training set's channel statistics."""
    import tensorflow as tf

    return (tf.cast(x, tf.float32) - mean) / std


@keras.saving.register_keras_serializable(package="fastcifar")
class Standardize(layers.Layer):
    """`standardize` as a layer: the statistics travel in the saved file."""

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, x):
        return standardize(x, self.mean, self.std)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="fastcifar")
class TestTimeViews(layers.Layer):
    """[B, H, W, C] -> [V*B, H, W, C]: the test-time views (`augment.tta_views`), stacked."""

    def __init__(self, mode="none", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x):
        import tensorflow as tf

        from .augment import tta_views

        return tf.concat(tta_views(x, self.mode), axis=0)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="fastcifar")
class MeanOverViews(layers.Layer):
    """[V*B, K] logits -> [B, K]: the weighted mean over the V views of each image
    (`augment.TTA_WEIGHTS`; equal weights when none are given)."""

    def __init__(self, views=1, weights=None, **kwargs):
        super().__init__(**kwargs)
        self.views = int(views)
        self.view_weights = [float(w) for w in (weights or [1.0 / self.views] * self.views)]

    def call(self, logits):
        import tensorflow as tf

        stacked = tf.reshape(logits, [self.views, -1, logits.shape[-1]])
        return tf.tensordot(tf.constant(self.view_weights, stacked.dtype), stacked, axes=1)

    def get_config(self):
        return {**super().get_config(), "views": self.views, "weights": self.view_weights}


def inference_model(network: keras.Model, mean, std, tta: str = "none") -> keras.Model:
    """Pixels (0-255) -> logits exactly as evaluation computes them: the training set's
    statistics, then the mean logits over the test-time views. Saved, it loads in Keras'
    safe mode after `import fastcifar.model`."""
    from .augment import TTA_WEIGHTS

    image = keras.Input((32, 32, 3), name="pixels")
    x = Standardize(mean, std, name="standardize")(image)
    x = TestTimeViews(tta, name="test_time_views")(x)
    logits = MeanOverViews(len(TTA_WEIGHTS[tta]), TTA_WEIGHTS[tta],
                           name="mean_over_views")(network(x))
    return keras.Model(image, logits, name=f"{network.name}_inference")


def conv_layers(model: keras.Model) -> list:
    return [l for l in model.layers if isinstance(l, layers.Conv2D)]
