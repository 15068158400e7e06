"""The techniques that act in the update, each a named piece the step calls in order:
`gradients` before the optimizer applies them, `after_update` once it has. A recipe switches
one on through its setting; the step itself has no branch per technique.

Muon is the optimizer's own rule for the conv filters (`optim.TutorialNesterov`), chosen
per variable when the trainer builds it (`muon_variables`), so it appears here only by
name. Adding a technique: a class here, its setting in `fastcifar.config`, one line in
`techniques_for`.
"""

from __future__ import annotations

import tensorflow as tf


def _named(prefix: str, source) -> str:
    """A shadow's own name, after the weight it follows ("ema/group1_conv1/kernel")."""
    return f"{prefix}/{getattr(source, 'path', None) or source.name.split(':')[0]}"


def steps_of(epochs, epoch_steps):
    """ceil(epochs x steps per epoch) as a float64 tensor, rounded to 6 decimals first as
    `Engine.total_steps_for` rounds: in float32, 0.3 x 50 is 15.000001, whose ceiling
    would be one step too many."""
    x = tf.convert_to_tensor(epochs, tf.float64) * tf.cast(epoch_steps, tf.float64)
    return tf.math.ceil(tf.round(x * 1e6) / 1e6)


class Technique:
    """Does nothing; a technique overrides what it changes."""

    name = "none"

    def variables(self) -> list:
        """State the technique keeps (snapshot with the rest)."""
        return []

    def gradients(self, grads: list, variables: list) -> list:
        return grads

    def after_update(self) -> None:
        pass


class BiasLearningRate(Technique):
    """BatchNorm biases at `bias_lr_scale` x the learning rate (the bag of tricks' 64x):
    momentum SGD is linear in the gradient, so scaling the gradient scales the rate. Their
    weight decay is divided by the same factor in the loss (`Engine.decayed`)."""

    name = "bias_lr_scale"

    def __init__(self, scales: list):
        self.scales = scales

    def gradients(self, grads, variables):
        return [g * scale if scale != 1.0 else g for g, scale in zip(grads, self.scales)]


class WhiteningBiasFreeze(Technique):
    """From step ceil(`epochs` x steps per epoch) on, the whitening bias does not move at
    all (as a PyTorch parameter with requires_grad off): no gradient, no decay, and its
    momentum emptied, so no step is taken from what it held. For whole epochs that is
    airbench94's `epoch < whiten_bias_epochs`; a fraction (the descendants' 0.19) ends
    part way through the epoch instead of being rounded up to the whole first epoch."""

    name = "whitening_bias_freeze"

    def __init__(self, engine, bias, epochs: float):
        self.engine, self.bias, self.epochs = engine, bias, epochs

    def gradients(self, grads, variables):
        end = steps_of(self.epochs, self.engine.epoch_steps)
        training = tf.cast(tf.cast(self.engine.step, tf.float64) < end, tf.float32)
        velocity = self.engine.inner_optimizer().velocity(self.bias)
        velocity.assign(velocity * tf.cast(training, velocity.dtype))
        return [g * tf.cast(training, g.dtype) if v is self.bias else g
                for g, v in zip(grads, variables)]


class MovingAverage(Technique):
    """A float32 moving average of every weight and BatchNorm statistic, which evaluation
    uses (`swap` exchanges it with the live weights). Warmed up as TensorFlow's
    ExponentialMovingAverage(num_updates): early on the average follows the weights, so
    short runs are not evaluated near their initial state."""

    name = "ema"

    def __init__(self, engine, decay: float):
        self.engine, self.decay = engine, decay
        self.shadow = [engine.local_variable(tf.cast(v, tf.float32), _named("ema", v))
                       for v in engine.ema_sources()]

    def variables(self):
        return self.shadow

    def after_update(self):
        n = tf.cast(self.engine.step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for average, v in zip(self.shadow, self.engine.ema_sources()):
            average.assign(decay * average + (1.0 - decay) * tf.cast(v, average.dtype))

    def swap(self) -> None:
        """Exchange the live weights with their average (twice undoes it), on the device."""
        for average, v in zip(self.shadow, self.engine.ema_sources()):
            live = tf.identity(v)
            v.assign(tf.identity(average))
            average.assign(live)


class Lookahead(Technique):
    """airbench's lookahead: every 5 steps the average moves toward the weights with decay
    0.95^5 (step/total)^3 and the weights are set to it; at the last step the weights take
    the average."""

    name = "lookahead"

    def __init__(self, engine):
        self.engine = engine
        self.shadow = [engine.local_variable(tf.cast(v, tf.float32), _named("lookahead", v))
                       for v in engine.ema_sources()]

    def variables(self):
        return self.shadow

    def _pull(self, decay):
        for average, v in zip(self.shadow, self.engine.ema_sources()):
            average.assign(decay * average + (1.0 - decay) * tf.cast(v, tf.float32))
            v.assign(tf.cast(average, v.dtype))
        return tf.constant(0)

    def after_update(self):
        step, total = self.engine.step, self.engine.total_steps
        progress = tf.cast(step, tf.float32) / tf.cast(total, tf.float32)
        tf.cond(tf.equal(step % 5, 0), lambda: self._pull(0.95 ** 5 * progress ** 3),
                lambda: tf.constant(0))
        tf.cond(tf.equal(step, total), lambda: self._pull(tf.constant(1.0)),
                lambda: tf.constant(0))


def techniques_for(engine) -> list:
    """The pieces `engine.config` switches on, in the order the step applies them."""
    cfg, out = engine.config, []
    if cfg.bias_lr_scale != 1.0:
        out.append(BiasLearningRate(engine.lr_scales))
    if engine.whiten_bias is not None:
        out.append(WhiteningBiasFreeze(engine, engine.whiten_bias, cfg.whiten_bias_epochs))
    if cfg.ema:
        out.append(MovingAverage(engine, cfg.ema))
    if cfg.lookahead:
        out.append(Lookahead(engine))
    return out
