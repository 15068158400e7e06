"""The compiled engine: the state a run carries, one training step, the multi-step call.

A step reads top to bottom: `_batch` picks this step's images by the epoch's permutation
and augments them, `_update` computes the loss, lets each technique (`fastcifar.techniques`)
adjust the gradients, applies them and lets each technique act after the update. Each
compiled call runs `steps_per_call` steps in an on-device loop; nothing per image touches
the host.

Every step runs as a `tf.distribute` replica function. With one device (strategy `auto`)
that is TensorFlow's default strategy and one replica; with `mirrored`/`multiworker` every
device holds the whole training set and replica r takes rows [r*b, (r+1)*b) of each global
batch of B = R*b permuted indices. Losses are sums over the replica's images, gradients are
summed across replicas, and the L2 term is split R ways: R replicas at b compute the
gradient of one device at B. Where the tensors live is `fastcifar.distribute.Placement`'s
business, not the engine's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from . import augment, compiling, devicedata, distribute, evaluation
from .config import RuntimeConfig, TrainConfig, check_batch_split, check_budget
from .errors import ConfigError
from .usernet import network_for
from .optim import l2_penalty, make_optimizer, schedule_factor
from .runtime import ResolvedRuntime, apply_determinism, resolve
from .serving import standardize
from .techniques import steps_of, techniques_for


class Engine:
    """State, step and compiled calls for one config on one placement. `Trainer` adds the
    run loop and serving on top."""

    def __init__(self, config: TrainConfig = TrainConfig(),
                 runtime: RuntimeConfig = RuntimeConfig(),
                 strategy: Optional[tf.distribute.Strategy] = None, model=None):
        self.config = config.validate()
        self.runtime_config = runtime.validate()
        # first: MultiWorkerMirroredStrategy must exist before TensorFlow initialises
        self.strategy = strategy or distribute.make_strategy(config, runtime)
        self.strategy_name = (type(strategy).__name__ if strategy is not None
                              and config.strategy == "auto" else config.strategy)
        self.runtime: ResolvedRuntime = resolve(runtime)
        self.placement = distribute.Placement(self.strategy, self.runtime.device)
        self.replicas = self.placement.count
        self.distributed = self.placement.distributed
        check_batch_split(config.batch_size, self.replicas)
        distribute.check_xla(self.runtime.xla, self.placement, config.strategy)
        apply_determinism(self.runtime.deterministic)
        self.compute_dtype = tf.as_dtype(keras.DTypePolicy(self.runtime.precision).compute_dtype)
        from .nets import NETS

        self.user_model = model is not None or self.config.net not in NETS
        self.loss_scaling = self.runtime.precision == "mixed_float16"
        with self.placement.scope():
            self.model, conv_grad = network_for(self.config, self.runtime, model,
                                                self.distributed)
            self.runtime = dataclasses.replace(self.runtime, conv_grad=conv_grad)
            self._choose_variables()
            self._make_state()
            self.optimizer = make_optimizer(self)
            self.techniques = techniques_for(self)
        self.data: Optional[devicedata.DeviceData] = None  # the last data `prepare` put there
        self.class_names: Optional[list] = None  # of the data `prepare` put there
        self.eval_batch = runtime.eval_batch_size  # per test set: `compile`/`prepare` set it
        self.compile_seconds = 0.0
        self.planted_matmuls = _planted_matmuls(self.model, config.batch_size)
        self._compiled_for: Optional[tuple] = None  # (n_train, n_test) compiled by `compile`
        self._make_functions()

    # --- construction -------------------------------------------------------------------
    def _choose_variables(self) -> None:
        """Which variables take which rule: BatchNorm betas at `bias_lr_scale` (their decay
        divided by it), Muon's conv filters (no decay), the whitening bias (frozen later)."""
        cfg, trainable = self.config, self.model.trainable_variables
        whiten_bias = lambda v: cfg.whiten_bias_linear and "whiten_bias" in str(
            getattr(v, "path", v.name))
        self.lr_scales = [cfg.bias_lr_scale if _is_bias(v) or whiten_bias(v) else 1.0
                          for v in trainable]
        self.muon_variables = [v for v in trainable if len(v.shape) == 4] if cfg.muon_lr \
            else []
        if cfg.muon_lr and not self.muon_variables:
            raise ConfigError(f"invalid muon_lr={cfg.muon_lr}: the model has no trainable "
                              f"conv filters; drop --muon-lr")
        muon = {id(v) for v in self.muon_variables}
        self.decayed = [(v, k) for v, k in zip(trainable, self.lr_scales) if id(v) not in muon]
        self.whiten_bias = next((v for v in trainable
                                 if "whiten_bias" in str(getattr(v, "path", v.name))), None)

    def local_variable(self, value, name: str, dtype=None, shape=None):
        return distribute.replica_local_variable(value, name, dtype, shape=shape)

    def _make_state(self) -> None:
        local = self.local_variable
        self.step = local(0, "step", tf.int64)  # advances on every step, skipped or not
        # steps per epoch and in all, for the training set being used (set by `prepare`/
        # `compile`; a fractional `epochs` ends part-way through an epoch)
        self.epoch_steps = local(0, "epoch_steps", tf.int64)
        self.total_steps = local(0, "total_steps", tf.int64)
        # the current epoch's augmentation table and order, sized by the training set
        self.table = local(tf.zeros([0, augment.TABLE_COLUMNS]), "aug_table",
                           shape=tf.TensorShape([None, augment.TABLE_COLUMNS]))
        self.perm = local(tf.zeros([0], tf.int64), "perm", shape=tf.TensorShape([None]))
        self.table_epoch = local(-1, "table_epoch", tf.int64)  # the epoch they hold

    def _make_functions(self) -> None:
        """One device: XLA compiles the whole multi-step loop. Several: it compiles each
        replica's step (all-reduces included, GPUs only) inside a plain loop."""
        xla_loop = self.runtime.xla and not self.distributed
        xla_replica = self.runtime.xla and self.distributed
        jit = lambda fn: tf.function(fn, jit_compile=True) if xla_replica else fn
        self._replica_train = jit(self._train_step)
        self._replica_eval = jit(functools.partial(evaluation.eval_shard, self))
        self._train_fn = tf.function(self._train_loop, jit_compile=xla_loop)
        self._eval_fn = tf.function(functools.partial(evaluation.eval_loop, self),
                                    jit_compile=xla_loop)
        # its own function: Keras' predict would split the batch across replicas
        self._predict_fn = tf.function(lambda x: self.tta_logits(x))
        self._peek_fn = tf.function(lambda *args: self.strategy.run(self._batch, args=args))

    def describe_runtime(self) -> dict:
        """The resolved runtime plus how the work is spread, for result files."""
        d = self.runtime.to_dict()
        d.update(strategy=self.strategy_name, replicas=self.replicas,
                 replica_devices=list(self.placement.devices))
        return d

    def inner_optimizer(self):
        return getattr(self.optimizer, "inner_optimizer", self.optimizer)

    # --- schedule -------------------------------------------------------------------------
    def steps_per_epoch(self, n_train: int) -> int:
        """Static batch shapes: the remainder of each epoch is dropped."""
        return n_train // self.config.batch_size

    def total_steps_for(self, n_train: int, epochs: Optional[float] = None) -> int:
        """Steps of a run of `epochs` (default: the recipe's) over `n_train` images."""
        epochs = self.config.epochs if epochs is None else epochs
        return math.ceil(round(epochs * self.steps_per_epoch(n_train), 6))

    def lr_factor(self):
        """The schedule at the current step, as a fraction of the peak: computed once per
        step; each rate below is a constant times it."""
        cfg = self.config
        return schedule_factor(self.step, self.total_steps, cfg.peak_fraction,
                               start=cfg.lr_start, end=cfg.lr_end)

    def learning_rate(self):
        """The per-example learning rate at the current step (the optimizer reads this):
        the loss is a sum over the batch, so the rate is lr_peak / batch at the peak."""
        return self.lr_factor() * self.rate_per_summed_loss()

    def rate_per_summed_loss(self) -> float:
        """The peak rate a step applies to the summed loss's gradient: lr_peak over the
        batch it is quoted for (`lr_batch`; the run's own batch when 0)."""
        return self.config.lr_peak / (self.config.lr_batch or self.config.batch_size)

    def muon_learning_rate(self):
        """Muon's rate on the same schedule: muon_lr at the peak (its update is a
        normalised direction, not a sum over the batch)."""
        return self.lr_factor() * self.config.muon_lr

    def whiten_bias_learning_rate(self):
        """airbench94_muon's whitening bias (`whiten_bias_linear`): the peak rate, falling
        linearly to 0 at step ceil(whiten_bias_epochs x steps per epoch), off the recipe's
        schedule (its bias_lr_scale is applied to the gradient, as for the other biases)."""
        end = tf.cast(steps_of(self.config.whiten_bias_epochs, self.epoch_steps), tf.float32)
        left = tf.maximum(1.0 - tf.cast(self.step, tf.float32) / end, 0.0)
        return left * self.rate_per_summed_loss()

    def check_budget(self, n_train: int) -> int:
        """Steps per epoch on `n_train` images, refusing a batch larger than the set or a
        run of less than one step (one line each, before any work)."""
        return check_budget(self.config, n_train)

    def _use_sets_of(self, n_train: int, n_test: int) -> None:
        """Size the schedule, the epoch table and the evaluation batch for these sets
        (here, outside the compiled step: XLA cannot change a variable's shape)."""
        self.epoch_steps.assign(self.check_budget(n_train))
        self.total_steps.assign(self.total_steps_for(n_train))
        self.eval_batch = devicedata.eval_batch_for(self.runtime_config.eval_batch_size,
                                                    n_test, self.replicas)
        if int(tf.shape(self.perm)[0]) != n_train:
            self.table.assign(tf.zeros([n_train, augment.TABLE_COLUMNS]))
            self.perm.assign(tf.zeros([n_train], tf.int64))
            self.table_epoch.assign(-1)

    # --- data ---------------------------------------------------------------------------
    def prepare(self, ds) -> devicedata.DeviceData:
        """Statistics, padding and upload, once, on the training device(s)."""
        self._use_sets_of(len(ds.x_train), len(ds.x_test))
        self.data = devicedata.upload(self, ds)
        self.class_names = list(getattr(ds, "classes", ()) or ()) or None
        return self.data

    def normalise(self, x, mean, std):
        """uint8 images -> (x - mean) / std in the compute dtype (normalised ones: a cast)."""
        if x.dtype == tf.uint8:
            x = standardize(x, mean, std)
        return tf.cast(x, self.compute_dtype)

    # --- one step, top to bottom ------------------------------------------------------------
    def _train_step(self, x_all, y_all, mean, std):
        """One replica's share of one global step (the whole step on one device)."""
        _, images, labels = self._batch(x_all, y_all, mean, std)
        return self._update(images, labels)

    def _batch(self, x_all, y_all, mean, std):
        """This replica's slice of the global batch at `self.step`: (example indices,
        augmented images, labels). What an example sees depends on (seed, epoch, example)
        only, through the epoch table, which is refilled whenever the step's epoch is not
        the one it holds: a call may start at any step."""
        cfg = self.config
        with tf.name_scope("augment"):  # a scope the profile groups by (`profiling`)
            epoch = self.step // self.epoch_steps
            step_in_epoch = self.step % self.epoch_steps
            tf.cond(tf.not_equal(epoch, self.table_epoch),
                    lambda: self._new_epoch(epoch, x_all.shape[0]), lambda: tf.constant(0))
            offset, size = distribute.replica_slice(cfg.batch_size)
            start = step_in_epoch * cfg.batch_size + offset
            idx = tf.slice(self.perm, tf.reshape(start, [1]), [size])
            images = augment.augment(tf.gather(x_all, idx), tf.gather(self.table, idx),
                                     lambda x: self.normalise(x, mean, std),
                                     pad=cfg.crop_padding, do_flip=cfg.flip,
                                     cutout_size=cfg.cutout)
            return idx, images, tf.gather(y_all, idx)

    def _new_epoch(self, epoch, n_train: int):
        table, perm = augment.epoch_table(self.config.seed, epoch, n_train,
                                          self.config.alternating_flip)
        self.table.assign(table)
        self.perm.assign(perm)
        self.table_epoch.assign(epoch)
        return tf.constant(0)

    def _update(self, images, labels):
        """Loss, gradients, the techniques around one optimizer step; returns [loss, hits]."""
        cfg = self.config
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss_sum = tf.reduce_sum(cross_entropy(labels, logits, cfg.label_smoothing))
            if self.planted_matmuls:
                loss_sum += _planted_work(self.planted_matmuls, self.step, loss_sum.dtype)
            # every replica adds 1/R of the penalty: the summed gradient holds it once
            penalty = l2_penalty([v for v, _ in self.decayed], cfg.weight_decay,
                                 cfg.batch_size, [k for _, k in self.decayed])
            loss = loss_sum + penalty / self.replicas
            if self.loss_scaling:
                loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        if self.loss_scaling and self.replicas > 1:
            grads = _agree_on_overflow(tf.distribute.get_replica_context(), grads)
        with tf.name_scope("optimizer"):  # a scope the profile groups by (`profiling`)
            for technique in self.techniques:
                grads = technique.gradients(grads, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
            self.step.assign_add(1)
            for technique in self.techniques:
                technique.after_update()
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), labels),
                                     tf.float32))
        return tf.stack([loss_sum, hits])

    def _train_loop(self, x_all, y_all, mean, std, n_steps):
        loss_sum = tf.constant(0.0)
        hits = tf.constant(0.0)
        for _ in tf.range(n_steps):
            out = self.placement.run_and_sum(self._replica_train, (x_all, y_all, mean, std))
            loss_sum += out[0]
            hits += out[1]
        return loss_sum, hits

    def train_steps(self, data: devicedata.DeviceData, n_steps: int):
        """Run `n_steps` steps in one compiled call; returns (summed loss, correct)."""
        return self._train_fn(data.x_train, data.y_train, data.mean, data.std,
                              tf.constant(n_steps, tf.int32))

    def peek_batch(self, data: devicedata.DeviceData) -> list:
        """What the next step trains on, without training: per replica, (example indices,
        augmented images, labels) as numpy arrays. Refills the epoch table if the step is
        in another epoch, as the step itself would."""
        out = self._peek_fn(data.x_train, data.y_train, data.mean, data.std)
        return list(zip(*[[t.numpy() for t in self.placement.copies(part)] for part in out]))

    # --- evaluation (`fastcifar.evaluation`) -------------------------------------------------
    def tta_logits(self, x):
        return evaluation.tta_logits(self, x)

    def evaluate_prepared(self, data: devicedata.DeviceData) -> dict:
        """Over every test image once; with `ema`, using the averaged weights."""
        return evaluation.evaluate(self, data)

    def evaluated_weights(self):
        """Within the block the model holds the weights evaluation uses."""
        return evaluation.evaluated_weights(self)

    # --- state ------------------------------------------------------------------------------
    @property
    def ema_variables(self) -> list:
        return [v for t in self.techniques if t.name == "ema" for v in t.variables()]

    @property
    def lookahead_variables(self) -> list:
        return [v for t in self.techniques if t.name == "lookahead" for v in t.variables()]

    def ema_sources(self) -> list:
        """Weights and BatchNorm statistics: everything the averaged model evaluates with."""
        return [v for v in self.model.weights
                if str(getattr(v.dtype, "name", v.dtype)).startswith("float")]

    def state_variables(self) -> list:
        """Everything a step may change: weights, BN statistics, dropout RNG, optimizer
        slots and loss scale, step counter, augmentation tables, the techniques' state."""
        candidates = (list(self.model.variables) + list(self.optimizer.variables)
                      + [self.step, self.table, self.perm, self.table_epoch]
                      + [v for t in self.techniques for v in t.variables()])
        seen, out = set(), []
        for v in candidates:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def snapshot(self) -> list:
        return [np.array(v.numpy()) for v in self.state_variables()]

    def restore(self, snap: list) -> None:
        for v, value in zip(self.state_variables(), snap):
            v.assign(value)

    # --- compiling --------------------------------------------------------------------------
    def compile(self, n_train: int, n_test: int) -> float:
        """Compile train and eval for these set sizes, leaving no trace (`compiling`)."""
        return compiling.compile_engine(self, n_train, n_test)

    def _compile_on(self, dummy: devicedata.DeviceData) -> float:
        """One training step and one evaluation on `dummy`: seconds (the seam where a
        compiler failure shows)."""
        t0 = time.perf_counter()
        out = self._train_fn(dummy.x_train, dummy.y_train, dummy.mean, dummy.std,
                             tf.constant(1, tf.int32))
        # one eval batch: the trip count is an argument, so this compiles the whole loop
        ev = self._eval_fn(dummy.x_test, dummy.y_test, dummy.w_test, dummy.mean, dummy.std,
                           tf.constant(1, tf.int32))
        float(out[0].numpy()) + float(ev[0].numpy())
        return time.perf_counter() - t0


PLANTED_SIZE = 256  # the planted matrix products are PLANTED_SIZE^3 each


def _planted_matmuls(model, batch_size: int) -> int:
    """Benchmark-only (`benchmarks/gate_power.py`): `FASTCIFAR_PLANTED_SLOWDOWN=0.05` adds
    matrix products worth 5% of the step's FLOPs to every step, a real slowdown inside the
    compiled step for measuring what the regression gate catches. Never set by fastcifar."""
    share = os.environ.get("FASTCIFAR_PLANTED_SLOWDOWN")
    if not share:
        return 0
    from .flops import train_flops

    try:
        fraction = float(share)
    except ValueError:
        raise ConfigError(f"invalid FASTCIFAR_PLANTED_SLOWDOWN={share!r}: a fraction of the "
                          f"step's FLOPs, e.g. 0.05") from None
    if not (math.isfinite(fraction) and 0 <= fraction <= 10):
        raise ConfigError(f"invalid FASTCIFAR_PLANTED_SLOWDOWN={share!r}: use 0 to 10")
    per_matmul = 2 * PLANTED_SIZE ** 3
    return max(1, round(fraction * train_flops(model) * batch_size / per_matmul)) \
        if fraction else 0


def _planted_work(n: int, step, dtype):
    """`n` chained float32 matrix products seeded by the step counter (so XLA cannot fold
    them into a constant), added to the loss at a weight of 0 that XLA cannot prove: the
    gradients are unchanged, the work is done."""
    x = tf.fill([PLANTED_SIZE, PLANTED_SIZE], 1.0 + tf.cast(step % 7, tf.float32) * 1e-3)
    w = tf.eye(PLANTED_SIZE) * (1.0 / (1.0 + 1e-6 * tf.cast(step % 3, tf.float32)))
    for _ in range(n):
        x = tf.matmul(x, w)
    return tf.cast(tf.reduce_mean(x) * 1e-30, dtype)


def _agree_on_overflow(ctx, grads):
    """Loss scaling skips a step whose gradients overflowed. Keras decides that from the
    first replica's gradients before they are summed; make every replica see an overflow
    if any replica had one, so all skip (and halve the scale) together."""
    bad = tf.add_n([tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32))
                    for g in grads if g is not None])
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    poison = tf.where(bad > 0, tf.constant(float("nan")), tf.constant(1.0))
    return [None if g is None else g * tf.cast(poison, g.dtype) for g in grads]


def _is_bias(v) -> bool:
    return str(getattr(v, "path", v.name)).endswith("beta")


def cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Per-example cross-entropy; with smoothing, against one-hot targets mixed with the
    uniform distribution (Keras 3's sparse loss has no smoothing)."""
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    classes = logits.shape[-1]
    target = tf.one_hot(labels, classes) * (1.0 - label_smoothing) + label_smoothing / classes
    return tf.nn.softmax_cross_entropy_with_logits(target, logits)
