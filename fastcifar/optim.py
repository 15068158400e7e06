"""The tutorial's optimisation: its Nesterov form, its schedule, its (intended) L2.

Keras 3 `SGD(nesterov=True)` keeps the learning rate inside the velocity; the tutorial's
TF1 `MomentumOptimizer(use_nesterov=True)`, like PyTorch, keeps it outside. The two differ
when the rate changes every step, as it does here, so the few lines are written out.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="fastcifar")
class TutorialNesterov(keras.optimizers.Optimizer):
    """v <- mu*v + g ;  w <- w - lr*(g + mu*v)   (TF1 MomentumOptimizer / PyTorch SGD)."""

    def __init__(self, learning_rate=0.01, momentum=0.9, name="tutorial_nesterov", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._velocities = [self.add_variable_from_reference(v, "velocity") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        mu = ops.cast(self.momentum, variable.dtype)
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(v, mu * v + g)
        self.assign_sub(variable, lr * (g + mu * v))

    def get_config(self):
        config = super().get_config()
        config["momentum"] = self.momentum
        return config


def schedule_points(epochs: int, peak_fraction: float, lr_peak: float):
    """Knots of the piecewise-linear schedule, in epochs: 0 -> peak -> 0."""
    return [0.0, epochs * peak_fraction, float(epochs)], [0.0, lr_peak, 0.0]


def lr_numpy(step, steps_per_epoch: int, epochs: int, peak_fraction: float, lr_peak: float,
             batch_size: int):
    """Reference: the tutorial's `np.interp` schedule divided by the batch size."""
    xs, ys = schedule_points(epochs, peak_fraction, lr_peak)
    return np.interp(np.asarray(step) / steps_per_epoch, xs, ys) / batch_size


def lr_tensor(step, steps_per_epoch: int, epochs: int, peak_fraction: float, lr_peak: float,
              batch_size: int):
    """The same schedule as a float32 tensor of the int64 step counter (compiles in XLA)."""
    (x0, x1, x2), (_, peak, _) = schedule_points(epochs, peak_fraction, lr_peak)
    t = tf.cast(step, tf.float32) / tf.cast(steps_per_epoch, tf.float32)
    up = t / x1 if x1 > 0 else tf.ones_like(t)
    down = (x2 - t) / (x2 - x1)
    lr = peak * tf.where(t < x1, up, down)
    return tf.clip_by_value(lr, 0.0, peak) / float(batch_size)


def l2_penalty(variables, weight_decay: float, batch_size: int, scales=None):
    """1/2 * wd * B * sum(w^2): coupled L2 through the loss, so its gradient wd*B*w is
    scaled and unscaled with the rest (added after `scale_loss` it would be divided away).
    `scales[i]` divides the decay of variable i (biases with a raised learning rate)."""
    if not weight_decay:
        return tf.constant(0.0, tf.float32)
    scales = scales or [1.0] * len(variables)
    total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) / k
                      for v, k in zip(variables, scales)])
    return 0.5 * weight_decay * batch_size * total
