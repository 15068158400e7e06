"""The tutorial's optimisation: its Nesterov form, its schedule, its (intended) L2; and
airbench94_muon's Muon step for conv filters, as an option of the same optimizer.

Keras 3 `SGD(nesterov=True)` keeps the learning rate inside the velocity; the tutorial's
TF1 `MomentumOptimizer(use_nesterov=True)`, like PyTorch, keeps it outside. The two differ
when the rate changes every step, as it does here, so the few lines are written out.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


# Newton-Schulz coefficients of airbench94_muon (Keller Jordan): a quintic chosen for the
# steepest slope at zero; three steps give U S' V^T with S' roughly in (0.5, 1.5), not U V^T.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def newton_schulz(g, steps: int = 3, eps: float = 1e-7, dtype=tf.float32):
    """An approximate orthogonalisation of the matrix `g`: g / |g|_F, then
    X <- a X + (b A + c A^2) X with A = X X^T, on the wide orientation (fewer rows).
    Each step applies the odd polynomial a s + b s^3 + c s^5 to every singular value.
    airbench94_muon computes it in bfloat16 (`dtype`)."""
    a, b, c = NEWTON_SCHULZ
    x = tf.cast(g, dtype)
    x = x / (tf.norm(x) + eps)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = tf.transpose(x)
    for _ in range(steps):
        m = tf.matmul(x, x, transpose_b=True)
        x = a * x + tf.matmul(b * m + c * tf.matmul(m, m), x)
    return tf.transpose(x) if tall else x


@keras.saving.register_keras_serializable(package="fastcifar")
class TutorialNesterov(keras.optimizers.Optimizer):
    """v <- mu*v + g ;  w <- w - lr*(g + mu*v)   (TF1 MomentumOptimizer / PyTorch SGD).

    Variables named in `muon` (conv filters, kept in the same optimizer so loss scaling,
    replicas and state snapshots treat them like any other) take airbench94_muon's Muon
    step instead: v <- mu'*v + g ; u = g + mu'*v ; w <- w * sqrt(out)/|w| ;
    w <- w - muon_lr * newton_schulz(u as out x (kh kw in)), where `muon_learning_rate` is
    a number or a function of nothing (read once per step, like `learning_rate`)."""

    def __init__(self, learning_rate=0.01, momentum=0.9, name="tutorial_nesterov",
                 muon=(), muon_learning_rate=0.0, muon_momentum=0.6, muon_bf16=False,
                 rates=None, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.muon = tuple(muon)  # variable paths
        self.muon_learning_rate = muon_learning_rate
        self.muon_momentum = float(muon_momentum)
        self.muon_bf16 = bool(muon_bf16)
        # variable path -> its own rate (a function of nothing, read once per step), in
        # place of `learning_rate` (airbench94_muon's whitening bias)
        self.rates = dict(rates or {})

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._velocities = [self.add_variable_from_reference(v, "velocity") for v in variables]
        self._muon_index = set()
        self._rate_of = {}
        if not self.muon and not self.rates:  # plain tf.Variables have no .path
            return
        paths = [getattr(v, "path", v.name) for v in variables]
        self._muon_index = {i for i, p in enumerate(paths) if p in self.muon}
        self._rate_of = {i: self.rates[p] for i, p in enumerate(paths) if p in self.rates}
        missing = (set(self.muon) | set(self.rates)) - set(paths)
        if missing:
            raise ValueError(f"variables not among those built: {sorted(missing)}")

    def velocity(self, variable):
        """The momentum slot of `variable`."""
        return self._velocities[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        v = self._velocities[index]
        if index in self._muon_index:
            rate = self.muon_learning_rate
            self._muon_step(g, variable, v, ops.cast(rate() if callable(rate) else rate,
                                                     variable.dtype))
            return
        if index in self._rate_of:
            lr = ops.cast(self._rate_of[index](), variable.dtype)
        mu = ops.cast(self.momentum, variable.dtype)
        self.assign(v, mu * v + g)
        self.assign_sub(variable, lr * (g + mu * v))

    def _muon_step(self, g, variable, v, lr):
        mu = self.muon_momentum
        self.assign(v, mu * v + g)
        u = g + mu * v
        out = variable.shape[-1]
        w = tf.convert_to_tensor(variable)
        w = w * (out ** 0.5 / tf.maximum(tf.norm(w), 1e-12))
        update = tf.transpose(newton_schulz(tf.transpose(tf.reshape(u, [-1, out])),
                                            dtype=tf.bfloat16 if self.muon_bf16
                                            else tf.float32))
        self.assign(variable, w - lr * tf.reshape(tf.cast(update, w.dtype), variable.shape))

    def get_config(self):
        config = super().get_config()
        rate = self.muon_learning_rate
        config.update(momentum=self.momentum, muon=list(self.muon),
                      muon_learning_rate=None if callable(rate) else float(rate),
                      muon_momentum=self.muon_momentum, muon_bf16=self.muon_bf16)
        return config


def schedule_points(total_steps: float, peak_fraction: float, lr_peak: float,
                    start: float = 0.0, end: float = 0.0):
    """Knots of the piecewise-linear schedule, in steps: start*peak -> peak at
    `peak_fraction` of the run -> end*peak. The tutorial: 0 -> peak at 5/24 -> 0;
    airbench94: 0.2 -> 1.0 at 23% -> 0.07 (factors of its learning rate)."""
    return ([0.0, total_steps * peak_fraction, float(total_steps)],
            [start * lr_peak, lr_peak, end * lr_peak])


def lr_numpy(step, total_steps: float, peak_fraction: float, lr_peak: float,
             batch_size: int, start: float = 0.0, end: float = 0.0):
    """Reference: `np.interp` through the knots, divided by the batch size (the loss is a
    sum over the batch, so this is a per-example rate)."""
    xs, ys = schedule_points(total_steps, peak_fraction, lr_peak, start, end)
    return np.interp(np.asarray(step, np.float64), xs, ys) / batch_size


def schedule_factor(step, total_steps, peak_fraction: float, start: float = 0.0,
                    end: float = 0.0):
    """The schedule's shape as a float32 tensor of the int64 step counter (compiles in
    XLA): start -> 1 at `peak_fraction` of the run -> end. Every rate is a constant times
    it; `total_steps` may be a tensor."""
    t = tf.cast(step, tf.float32) / tf.cast(total_steps, tf.float32)  # progress, 0..1
    up = start + (1.0 - start) * t / peak_fraction if peak_fraction > 0 else tf.ones_like(t)
    down = 1.0 + (end - 1.0) * (t - peak_fraction) / (1.0 - peak_fraction)
    factor = tf.where(t < peak_fraction, up, tf.maximum(down, end))
    return tf.clip_by_value(factor, 0.0, 1.0)


def lr_tensor(step, total_steps, peak_fraction: float, lr_peak: float, batch_size: int,
              start: float = 0.0, end: float = 0.0):
    """The per-example rate: `schedule_factor` x lr_peak / batch_size."""
    return schedule_factor(step, total_steps, peak_fraction, start, end) \
        * (lr_peak / float(batch_size))


def l2_penalty(variables, weight_decay: float, batch_size: int, scales=None):
    """1/2 * wd * B * sum(w^2): coupled L2 through the loss, so its gradient wd*B*w is
    scaled and unscaled with the rest (added after `scale_loss` it would be divided away).
    `scales[i]` divides the decay of variable i (biases with a raised learning rate)."""
    if not weight_decay or not variables:
        return tf.constant(0.0, tf.float32)
    scales = scales or [1.0] * len(variables)
    total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) / k
                      for v, k in zip(variables, scales)])
    return 0.5 * weight_decay * batch_size * total


def make_optimizer(engine):
    """The engine's optimizer, built for its trainable variables: the tutorial's Nesterov
    (Muon for `engine.muon_variables`) on the engine's schedule, wrapped in loss scaling
    under float16."""
    cfg = engine.config
    rates = ({engine.whiten_bias.path: engine.whiten_bias_learning_rate}
             if cfg.whiten_bias_linear and engine.whiten_bias is not None else {})
    inner = TutorialNesterov(learning_rate=engine.learning_rate, momentum=cfg.momentum,
                             muon=[v.path for v in engine.muon_variables],
                             muon_learning_rate=engine.muon_learning_rate,
                             muon_momentum=cfg.muon_momentum, muon_bf16=cfg.muon_bf16,
                             rates=rates)
    optimizer = inner
    if engine.loss_scaling:
        # The loss is a sum over the batch, B times a mean: start the scale B times lower
        # than Keras' 2**15 so the first steps are not all skipped as overflows.
        initial_scale = max(2.0 ** (15 - int(np.log2(cfg.batch_size))), 1.0)
        optimizer = keras.optimizers.LossScaleOptimizer(inner, initial_scale=initial_scale)
    optimizer.build(engine.model.trainable_variables)
    return optimizer
