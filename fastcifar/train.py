"""The compiled, device-resident trainer.

The training set's per-channel statistics are computed once, the set is reflect-padded
once and lives on the device; each compiled call runs `steps_per_call` steps in an
on-device loop. A step reads top to bottom: `_batch` picks this step's images by the
epoch's permutation and augments them, `_update` computes the loss and applies it.
Nothing per image touches the host.

Every step runs as a `tf.distribute` replica function. With one device (strategy `auto`)
that is TensorFlow's default strategy and one replica; with `mirrored`/`multiworker` every
device holds the whole training set and replica r takes rows [r*b, (r+1)*b) of each global
batch of B = R*b permuted indices. Losses are sums over the replica's images, gradients are
summed across replicas, and the L2 term is split R ways: R replicas at b compute the
gradient of one device at B. Where the tensors live is `fastcifar.distribute.Placement`'s
business, not the trainer's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from . import augment, distribute
from .config import RuntimeConfig, TrainConfig
from .data import Dataset, channel_stats
from .errors import ConfigError, TrainingDiverged, gist
from .model import NETS, build, inference_model, standardize, use_matmul_filter_grad
from .optim import TutorialNesterov, l2_penalty, lr_tensor
from .runtime import ResolvedRuntime, apply_determinism, resolve
from .util import atomic_path

WHITENING_KEY = 0x57A1E  # the hash "epoch" of the whitening sample: no training epoch


@dataclass
class DeviceData:
    """Everything the compiled functions read, already on the device."""

    # Per replica under a distribution strategy: the training set is copied to every
    # replica, the test set is split into equal shards.
    x_train: tf.Tensor   # [N, 32+2p, 32+2p, 3], uint8 or compute dtype (normalised)
    y_train: tf.Tensor   # [N] int32
    x_test: tf.Tensor    # [M'/R, 32, 32, 3]: M' = M padded with zeros to a multiple of R*eval batch
    y_test: tf.Tensor    # [M'/R] int32
    w_test: tf.Tensor    # [M'/R] float32, 1 for real test images, 0 for padding
    mean: tf.Tensor      # [3] float32
    std: tf.Tensor       # [3] float32
    n_train: int
    n_test: int


@dataclass
class FitResult:
    history: list = field(default_factory=list)
    final_test_acc: float = 0.0
    final_test_loss: float = 0.0
    seconds_to_target: Optional[float] = None
    train_seconds: float = 0.0   # the whole clock: preparation, training, evaluations
    prep_seconds: float = 0.0
    eval_seconds: float = 0.0
    compile_seconds: float = 0.0
    images_per_sec: float = 0.0
    steps_per_epoch: int = 0
    utilization: Optional[dict] = None  # monitor result over the training windows


class Trainer:
    """`Trainer(config).fit(dataset)`: a fast, faithful baseline (DavidNet, airbench94), or
    any Keras model on the same fast path: `Trainer(config, model=builder)` where
    `builder(precision)` returns a model from 32x32x3 images to logits (or a built model,
    on one device)."""

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
        self._check_placement()
        apply_determinism(self.runtime.deterministic)
        self.compute_dtype = tf.as_dtype(keras.DTypePolicy(self.runtime.precision).compute_dtype)
        self.loss_scaling = self.runtime.precision == "mixed_float16"

        with self.placement.scope():
            self.model = self._model_from(model)
            # BatchNorm betas: learning rate x bias_lr_scale, weight decay / bias_lr_scale
            self.lr_scales = [config.bias_lr_scale if _is_bias(v) else 1.0
                              for v in self.model.trainable_variables]
            # Muon (--muon-lr): the conv filters; they take no weight decay
            self.muon_variables = ([v for v in self.model.trainable_variables
                                    if len(v.shape) == 4] if config.muon_lr else [])
            if config.muon_lr and not self.muon_variables:
                raise ConfigError(f"invalid muon_lr={config.muon_lr}: the model has no "
                                  f"trainable conv filters; drop --muon-lr")
            muon = {id(v) for v in self.muon_variables}
            self.decayed = [(v, k) for v, k in zip(self.model.trainable_variables,
                                                   self.lr_scales) if id(v) not in muon]
            local = distribute.replica_local_variable
            self.step = local(0, "step", tf.int64)  # advances on every step, skipped or not
            # steps per epoch and in all, for the training set being used (set by
            # `prepare`/`compile`; a fractional `epochs` ends part-way through an epoch)
            self.epoch_steps = local(0, "epoch_steps", tf.int64)
            self.total_steps = local(0, "total_steps", tf.int64)
            # the current epoch's augmentation table and order, sized by the training set
            self.table = local(tf.zeros([0, augment.TABLE_COLUMNS]), "aug_table",
                               shape=tf.TensorShape([None, augment.TABLE_COLUMNS]))
            self.perm = local(tf.zeros([0], tf.int64), "perm", shape=tf.TensorShape([None]))
            self.table_epoch = local(-1, "table_epoch", tf.int64)  # the epoch they hold
            self.optimizer = self._make_optimizer()
            # weight averaging (EMA): a float32 shadow of every weight and BN statistic
            self.ema_variables = [local(tf.cast(v, tf.float32), "ema")
                                  for v in self.ema_sources()] if config.ema else []
            # lookahead (airbench): the same kind of shadow, pulled in every 5 steps
            self.lookahead_variables = [local(tf.cast(v, tf.float32), "lookahead")
                                        for v in self.ema_sources()] if config.lookahead else []
        # airbench94's whitening bias trains for `whiten_bias_epochs`, then is frozen
        self.whiten_bias = next((v for v in self.model.trainable_variables
                                 if "whiten_bias" in str(getattr(v, "path", v.name))), None)

        self.data: Optional[DeviceData] = None  # the last data `prepare` put on the device
        self.eval_batch = runtime.eval_batch_size  # per test set: `_test_shards` sets it
        self.compile_seconds = 0.0
        self._compiled_for: Optional[tuple] = None  # (n_train, n_test) compiled by `compile`
        self._make_functions()

    def _make_functions(self) -> None:
        """One device: XLA compiles the whole multi-step loop. Several: it compiles each
        replica's step (all-reduces included, GPUs only) inside a plain loop."""
        xla_loop = self.runtime.xla and not self.distributed
        xla_replica = self.runtime.xla and self.distributed
        jit = lambda fn: tf.function(fn, jit_compile=True) if xla_replica else fn
        self._replica_train = jit(self._train_step)
        self._replica_eval = jit(self._eval_shard)
        self._train_fn = tf.function(self._train_loop, jit_compile=xla_loop)
        self._eval_fn = tf.function(self._eval_loop, jit_compile=xla_loop)
        # its own function: Keras' predict would split the batch across replicas
        self._predict_fn = tf.function(lambda x: self.tta_logits(x))
        self._peek_fn = tf.function(lambda *args: self.strategy.run(self._batch, args=args))

    def _model_from(self, model) -> keras.Model:
        """The net: the config's, a user's builder called with the precision policy, or a
        user's model; checked up front so a mismatch is one line, not a failed trace."""
        if model is None:
            net = build(self.config, self.runtime.precision)
        elif isinstance(model, keras.Model):
            if self.distributed:
                raise ConfigError("a model passed to Trainer(model=...) under a distribution "
                                  "strategy must be created in its scope: pass a builder, "
                                  "model=lambda policy: make_model(policy)")
            net = model
        elif callable(model):
            from .model import call_builder

            net = call_builder(model, self.runtime.precision, self.config.num_classes)
        else:
            raise ConfigError(f"invalid model={model!r}: pass a keras.Model or a function of "
                              f"the precision policy that returns one")
        check_model(net, self.config.num_classes, self.runtime.precision,
                    run=model is not None)  # built-in nets are known to run
        if not use_matmul_filter_grad(net, self.runtime.conv_grad == "matmul"):
            # nothing it applies to (e.g. a user's keras Conv2D layers): say so in results
            self.runtime = dataclasses.replace(self.runtime, conv_grad="library")
        if self.config.whiten and (model is not None or self.config.net not in NETS):
            raise ConfigError("invalid whiten=True: the whitening layer belongs to the "
                              "built-in nets; use --no-whiten with your own model")
        return net

    def _check_placement(self) -> None:
        if self.config.batch_size % self.replicas:
            raise ConfigError(f"invalid batch_size={self.config.batch_size}: it does not "
                              f"split evenly across {self.replicas} replicas; use a multiple "
                              f"of {self.replicas}")
        if (self.runtime.xla and self.distributed
                and any("GPU" not in d.upper() for d in self.placement.devices)):
            raise ConfigError(f"invalid xla=True with strategy={self.config.strategy!r} on "
                              "CPU devices: TensorFlow cannot compile a step that applies "
                              "gradients across CPU replicas; drop --xla (XLA with "
                              "tf.distribute needs GPUs)")

    def _make_optimizer(self):
        cfg = self.config
        # Muon's rate follows the same schedule: muon_lr x (the SGD rate / its peak)
        inner = TutorialNesterov(learning_rate=self.learning_rate, momentum=cfg.momentum,
                                 muon=[v.path for v in self.muon_variables],
                                 muon_lr_ratio=cfg.muon_lr * cfg.batch_size / cfg.lr_peak,
                                 muon_momentum=cfg.muon_momentum)
        optimizer = inner
        if self.loss_scaling:
            # The loss is a sum over the batch, B times a mean: start the scale B times
            # lower than Keras' 2**15 so the first steps are not all skipped as overflows.
            initial_scale = max(2.0 ** (15 - int(np.log2(self.config.batch_size))), 1.0)
            optimizer = keras.optimizers.LossScaleOptimizer(inner, initial_scale=initial_scale)
        optimizer.build(self.model.trainable_variables)
        return optimizer

    def describe_runtime(self) -> dict:
        """The resolved runtime plus how the work is spread, for result files."""
        d = self.runtime.to_dict()
        d.update(strategy=self.strategy_name, replicas=self.replicas,
                 replica_devices=list(self.placement.devices))
        return d

    # --- schedule ---------------------------------------------------------------------
    def steps_per_epoch(self, n_train: int) -> int:
        """Static batch shapes: the remainder of each epoch is dropped."""
        return n_train // self.config.batch_size

    def total_steps_for(self, n_train: int, epochs: Optional[float] = None) -> int:
        """Steps of a run of `epochs` (default: the recipe's) over `n_train` images."""
        epochs = self.config.epochs if epochs is None else epochs
        return math.ceil(round(epochs * self.steps_per_epoch(n_train), 6))

    def learning_rate(self):
        """The per-example learning rate at the current step (the optimizer reads this)."""
        cfg = self.config
        return lr_tensor(self.step, self.total_steps, cfg.peak_fraction, cfg.lr_peak,
                         cfg.batch_size, start=cfg.lr_start, end=cfg.lr_end)

    def check_budget(self, n_train: int) -> int:
        """Steps per epoch on `n_train` images, refusing a batch larger than the set or a
        run of less than one step (one line each, before any work)."""
        steps = self.steps_per_epoch(n_train)
        if steps < 1:
            raise ConfigError(f"invalid batch_size={self.config.batch_size}: larger than the "
                              f"{n_train} training images; lower --batch-size")
        if self.total_steps_for(n_train) < 1:
            raise ConfigError(f"invalid epochs={self.config.epochs}: less than one step "
                              f"({steps} steps make an epoch here); use at least "
                              f"--epochs {1 / steps:.6g}")
        return steps

    def _use_training_set_of(self, n_train: int) -> None:
        """Size the schedule and the epoch table for a training set of `n_train` images
        (here, outside the compiled step: XLA cannot change a variable's shape)."""
        steps = self.check_budget(n_train)
        self.epoch_steps.assign(steps)
        self.total_steps.assign(self.total_steps_for(n_train))
        if int(tf.shape(self.perm)[0]) != n_train:
            self.table.assign(tf.zeros([n_train, augment.TABLE_COLUMNS]))
            self.perm.assign(tf.zeros([n_train], tf.int64))
            self.table_epoch.assign(-1)

    # --- data -------------------------------------------------------------------------
    def prepare(self, ds: Dataset) -> DeviceData:
        """Statistics, padding and upload, once, on the training device(s)."""
        if ds.num_classes != self.config.num_classes:
            raise ConfigError(f"the data has {ds.num_classes} classes but the net has "
                              f"{self.config.num_classes} outputs: set num_classes="
                              f"{ds.num_classes} (the command line does)")
        self._use_training_set_of(len(ds.x_train))
        pad = self.config.crop_padding
        # exact, and without a float copy of the set (a float32 mean over 10^8 pixels is
        # off in the third decimal; the allocator would keep the copy resident)
        mean, std = (tf.constant(v) for v in channel_stats(ds.x_train))
        with tf.device(self.runtime.device if not self.distributed else "/CPU:0"):
            x = tf.convert_to_tensor(ds.x_train)
            if self.runtime.data_layout == "compute":
                x = tf.cast((tf.cast(x, tf.float32) - mean) / std, self.compute_dtype)
            if pad:
                x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
            y = tf.constant(ds.y_train, tf.int32)
        x_test, y_test, w_test = self._test_shards(ds.x_test, ds.y_test)
        on_each = self.placement.per_replica
        self.data = DeviceData(on_each(lambda r, n: x), on_each(lambda r, n: y),
                               x_test, y_test, w_test, mean, std, len(ds.x_train),
                               len(ds.x_test))
        return self.data

    def _test_shards(self, x_test: np.ndarray, y_test: np.ndarray):
        """Pad the test set with zero-weight images to R equal shards of whole eval
        batches; replica r gets shard r, so every test image is counted exactly once."""
        count = len(x_test)
        # never more padding than test images: a batch above the shard is the shard
        self.eval_batch = eval_batch = min(self.runtime_config.eval_batch_size,
                                           -(-count // self.replicas))
        padding = (-count) % (eval_batch * self.replicas)
        x = np.concatenate([x_test, np.zeros((padding, 32, 32, 3), np.uint8)])
        y = np.concatenate([y_test, np.zeros(padding, np.int32)]).astype(np.int32)
        w = np.concatenate([np.ones(count, np.float32), np.zeros(padding, np.float32)])
        shard = len(x) // self.replicas
        split = lambda a: self.placement.per_replica(
            lambda r, n: a[r * shard:(r + 1) * shard])
        return split(x), split(y), split(w)

    def _dummy(self, n_train: int, n_test: int) -> DeviceData:
        """Zeros of the real shapes and dtypes: compiles exactly what real data will run."""
        pad = self.config.crop_padding
        dtype = tf.uint8 if self.runtime.data_layout == "uint8" else self.compute_dtype
        x_test, y_test, w_test = self._test_shards(np.zeros((n_test, 32, 32, 3), np.uint8),
                                                   np.zeros(n_test, np.int32))
        side = 32 + 2 * pad
        on_each = self.placement.per_replica
        return DeviceData(on_each(lambda r, n: tf.zeros([n_train, side, side, 3], dtype)),
                          on_each(lambda r, n: tf.zeros([n_train], tf.int32)),
                          x_test, y_test, w_test, tf.zeros([3]), tf.ones([3]), n_train, n_test)

    def normalise(self, x, mean, std):
        """uint8 images -> (x - mean) / std in the compute dtype (normalised ones: a cast)."""
        if x.dtype == tf.uint8:
            x = standardize(x, mean, std)
        return tf.cast(x, self.compute_dtype)

    # --- one step, top to bottom -------------------------------------------------------
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
        """Loss, gradients, one optimizer step, the weight average; returns [loss, hits]."""
        cfg = self.config
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss_sum = tf.reduce_sum(cross_entropy(labels, logits, cfg.label_smoothing))
            # every replica adds 1/R of the penalty: the summed gradient holds it once
            penalty = l2_penalty([v for v, _ in self.decayed], cfg.weight_decay,
                                 cfg.batch_size, [k for _, k in self.decayed])
            loss = loss_sum + penalty / self.replicas
            if self.loss_scaling:
                loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        if self.loss_scaling and self.replicas > 1:
            grads = _agree_on_overflow(tf.distribute.get_replica_context(), grads)
        if cfg.bias_lr_scale != 1.0:  # momentum SGD is linear in g: this scales the lr
            grads = [g * scale if scale != 1.0 else g
                     for g, scale in zip(grads, self.lr_scales)]
        with tf.name_scope("optimizer"):  # a scope the profile groups by (`profiling`)
            if self.whiten_bias is not None:
                grads = self._freeze_whiten_bias(variables, grads)
            self.optimizer.apply_gradients(zip(grads, variables))
            self.step.assign_add(1)
            self._update_ema()
            self._update_lookahead()
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), labels),
                                     tf.float32))
        return tf.stack([loss_sum, hits])

    def _freeze_whiten_bias(self, variables, grads):
        """From epoch `whiten_bias_epochs` on, the whitening bias does not move at all (as
        a PyTorch parameter with requires_grad off): no gradient, no decay, and its momentum
        emptied, so no step is taken from what it held."""
        epoch = self.step // self.epoch_steps
        training = tf.cast(tf.cast(epoch, tf.float32) < self.config.whiten_bias_epochs,
                           tf.float32)
        velocity = self._inner_optimizer().velocity(self.whiten_bias)
        velocity.assign(velocity * tf.cast(training, velocity.dtype))
        return [g * tf.cast(training, g.dtype) if v is self.whiten_bias else g
                for g, v in zip(grads, variables)]

    def _inner_optimizer(self):
        return getattr(self.optimizer, "inner_optimizer", self.optimizer)

    def _update_lookahead(self) -> None:
        """airbench's lookahead: every 5 steps the average moves toward the weights with
        decay 0.95^5 (step/total)^3 and the weights are set to it; at the last step the
        weights take the average."""
        if not self.lookahead_variables:
            return
        step = self.step
        progress = tf.cast(step, tf.float32) / tf.cast(self.total_steps, tf.float32)

        def pull(decay):
            for average, v in zip(self.lookahead_variables, self.ema_sources()):
                average.assign(decay * average + (1.0 - decay) * tf.cast(v, tf.float32))
                v.assign(tf.cast(average, v.dtype))
            return tf.constant(0)

        tf.cond(tf.equal(step % 5, 0), lambda: pull(0.95 ** 5 * progress ** 3),
                lambda: tf.constant(0))
        tf.cond(tf.equal(step, self.total_steps), lambda: pull(tf.constant(1.0)),
                lambda: tf.constant(0))

    def _update_ema(self) -> None:
        if not self.ema_variables:
            return
        # warm-up as in TF's ExponentialMovingAverage(num_updates): early on the average
        # follows the weights, so short runs are not evaluated near their initial state
        n = tf.cast(self.step, tf.float32)
        decay = tf.minimum(self.config.ema, (1.0 + n) / (10.0 + n))
        for average, v in zip(self.ema_variables, self.ema_sources()):
            average.assign(decay * average + (1.0 - decay) * tf.cast(v, average.dtype))

    def _train_loop(self, x_all, y_all, mean, std, n_steps):
        loss_sum = tf.constant(0.0)
        hits = tf.constant(0.0)
        for _ in tf.range(n_steps):
            out = self.placement.run_and_sum(self._replica_train, (x_all, y_all, mean, std))
            loss_sum += out[0]
            hits += out[1]
        return loss_sum, hits

    # --- evaluation --------------------------------------------------------------------
    def _eval_loop(self, x, y, w, mean, std, n_batches):
        out = self.placement.run_and_sum(self._replica_eval,
                                         (x, y, w, mean, std, n_batches))
        return out[0], out[1], out[2]

    def _eval_shard(self, x, y, w, mean, std, n_batches):
        """Sums of loss, hits and weights over the first `n_batches` eval batches of this
        replica's shard of the test set (all of them, except when compiling)."""
        eval_batch = self.eval_batch
        batches = x.shape[0] // eval_batch
        x = tf.reshape(x, [batches, eval_batch] + list(x.shape[1:]))
        y, w = tf.reshape(y, [batches, eval_batch]), tf.reshape(w, [batches, eval_batch])
        loss_sum, hits, count = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for i in tf.range(n_batches):
            logits = self.tta_logits(self.normalise(x[i], mean, std))
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y[i], logits)
            hit = tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), y[i]), tf.float32)
            loss_sum += tf.reduce_sum(loss * w[i])
            hits += tf.reduce_sum(hit * w[i])
            count += tf.reduce_sum(w[i])
        return tf.stack([loss_sum, hits, count])

    def tta_logits(self, x):
        """Logits averaged over the test-time views (`augment.tta_views`) with airbench's
        weights (`augment.TTA_WEIGHTS`)."""
        views = augment.tta_views(x, self.config.tta)
        weights = augment.TTA_WEIGHTS[self.config.tta]
        return tf.add_n([w * self.model(v, training=False) for w, v in zip(weights, views)])

    # --- state ------------------------------------------------------------------------
    def state_variables(self) -> list:
        """Everything a step may change: weights, BN statistics, dropout RNG, optimizer
        slots and loss scale, step counter, augmentation tables, weight average."""
        candidates = (list(self.model.variables) + list(self.optimizer.variables)
                      + [self.step, self.table, self.perm, self.table_epoch]
                      + list(self.ema_variables) + list(self.lookahead_variables))
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

    def ema_sources(self) -> list:
        """Weights and BatchNorm statistics: everything the averaged model evaluates with."""
        return [v for v in self.model.weights
                if str(getattr(v.dtype, "name", v.dtype)).startswith("float")]

    def swap_ema(self) -> None:
        """Exchange the live weights with their moving average (call twice to undo), on
        the device: no round trip through the host at every evaluation."""
        for average, v in zip(self.ema_variables, self.ema_sources()):
            live = tf.identity(v)
            v.assign(tf.identity(average))
            average.assign(live)

    # --- public API -------------------------------------------------------------------
    def compile(self, n_train: int, n_test: int) -> float:
        """Trace and compile train and eval on dummy data of the real shapes, then put every
        piece of state back: compilation leaves no trace. Returns seconds spent (0 if the
        functions were already compiled for these shapes). If XLA chosen by `auto` cannot
        compile the step (e.g. a cuDNN without usable conv configs), falls back to the
        uncompiled step with one warning line and says why in `runtime.why`; an XLA asked
        for explicitly fails with one line naming the cause."""
        self._use_training_set_of(n_train)
        if self._compiled_for == (n_train, n_test):
            return 0.0
        dummy = self._dummy(n_train, n_test)
        snap = self.snapshot()
        try:
            self.compile_seconds = self._compile_on(dummy)
        except tf.errors.OpError as e:
            if not self.runtime.xla or isinstance(e, tf.errors.ResourceExhaustedError):
                raise
            self.restore(snap)
            self._xla_failed(e)
            self.compile_seconds = self._compile_on(dummy)
        self.restore(snap)
        self._compiled_for = (n_train, n_test)
        return self.compile_seconds

    def _compile_on(self, dummy: DeviceData) -> float:
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

    def _xla_failed(self, error: Exception) -> None:
        lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()
                 if line.strip()]
        cause = f"{type(error).__name__}: {lines[0] if lines else 'no message'}"[:300]
        if self.runtime_config.xla:
            raise ConfigError(f"XLA could not compile the training step on "
                              f"{self.runtime.device} ({cause}); run with --no-xla, or "
                              f"update CUDA/cuDNN") from None
        why = f"{self.runtime.why}; XLA failed to compile ({cause}): uncompiled step instead"
        self.runtime = dataclasses.replace(self.runtime, xla=False, why=why)
        sys.stderr.write(f"fastcifar: warning: XLA could not compile the training step "
                         f"({cause}); running it uncompiled (runtime.why says so)\n")
        self._make_functions()

    def train_steps(self, data: DeviceData, n_steps: int):
        """Run `n_steps` steps in one compiled call; returns (summed loss, correct)."""
        return self._train_fn(data.x_train, data.y_train, data.mean, data.std,
                              tf.constant(n_steps, tf.int32))

    def whitening_sample(self, n_train: int, n_images: int = 10000):
        """Indices of the training images the whitening is fitted on: a fixed random
        sample (from the seed), never the first N, which an image folder fills class by
        class."""
        keys = augment.hash_bits(self.config.seed, WHITENING_KEY, n_train, 1)[:, 0]
        return tf.argsort(keys, stable=True)[:min(n_images, n_train)]

    def fit_whitening(self, data: DeviceData, n_images: Optional[int] = None) -> None:
        """Whiten the first layer on `n_images` unaugmented training images (the net's
        own count by default: davidnet 10,000, airbench94 5,000)."""
        from .model import fit_whitening

        _, default_images, eps = NETS[self.config.net]
        pad = self.config.crop_padding
        x = tf.gather(self.placement.first(data.x_train),
                      self.whitening_sample(data.n_train, n_images or default_images))
        x = x[:, pad:x.shape[1] - pad, pad:x.shape[2] - pad] if pad else x
        fit_whitening(self.model, tf.cast(self.normalise(x, data.mean, data.std), tf.float32),
                      eps)

    def evaluate_prepared(self, data: DeviceData) -> dict:
        """Over every test image once; with `ema`, using the averaged weights."""
        with self.evaluated_weights():
            batches = self.placement.copies(data.x_test)[0].shape[0] // self.eval_batch
            loss, hits, count = (t.numpy() for t in self._eval_fn(
                data.x_test, data.y_test, data.w_test, data.mean, data.std,
                tf.constant(batches, tf.int32)))
        return {"test_loss": float(loss / count), "test_acc": float(hits / count),
                "count": int(count)}

    def fit(self, ds: Dataset, epochs: Optional[float] = None, quiet: bool = True,
            on_epoch: Optional[Callable[[dict], None]] = None, monitor=None,
            on_progress: Optional[Callable[[], None]] = None) -> FitResult:
        """Train and evaluate. The clock (`seconds`, `seconds_to_target`) covers preparing
        the data, training, and every evaluation the run makes (`eval_every`; the final one
        always), because those certify the accuracy it reports; compilation is done first
        on dummy data, timed apart (`compile_seconds`). A started
        `fastcifar.monitor.Monitor` gets one window per epoch's training phase.
        `on_progress()` is called after compiling, every compiled call and every evaluation
        (a supervisor's heartbeat)."""
        cfg = self.config
        epochs = cfg.epochs if epochs is None else epochs
        every = self.runtime_config.eval_every
        progress = on_progress or (lambda: None)
        self.compile(len(ds.x_train), len(ds.x_test))
        progress()
        t0 = time.perf_counter()
        data = self.prepare(ds)
        if cfg.whiten:  # fitted on the device from training images: counted as training time
            self.fit_whitening(data)
        for x in self.placement.copies(data.x_train):
            x[0, 0, 0, 0].numpy()  # every upload is done before the clock reads
        steps_per_epoch = self.steps_per_epoch(data.n_train)
        total = self.total_steps_for(data.n_train, epochs)
        n_epochs = math.ceil(total / steps_per_epoch)
        result = FitResult(prep_seconds=time.perf_counter() - t0,
                           compile_seconds=self.compile_seconds,
                           steps_per_epoch=steps_per_epoch)
        elapsed, train_only, trained, windows = result.prep_seconds, 0.0, 0, []
        for epoch in range(1, n_epochs + 1):
            steps = min(steps_per_epoch, total - (epoch - 1) * steps_per_epoch)
            images = steps * cfg.batch_size
            window = (monitor.window(f"epoch {epoch}") if monitor is not None
                      else contextlib.nullcontext())
            with window as w:
                loss_sum, hits, seconds = self._train_epoch(
                    data, steps, f"epoch {epoch}/{n_epochs}", quiet, progress, result.history)
            windows += [w] if w is not None else []
            elapsed += seconds
            utilization = _main_utilization(w)
            train_only += seconds
            trained += images
            row = {"epoch": epoch, "train_loss": loss_sum / images, "train_acc": hits / images,
                   "test_loss": None, "test_acc": None, "epoch_seconds": seconds,
                   "eval_seconds": 0.0, "images_per_sec": images / seconds,
                   "utilization_pct": utilization,
                   "lr": float(self.learning_rate().numpy()) * cfg.batch_size}
            if epoch == n_epochs or (every and epoch % every == 0):
                t_eval = time.perf_counter()
                ev = self.evaluate_prepared(data)
                row.update(test_loss=ev["test_loss"], test_acc=ev["test_acc"],
                           eval_seconds=time.perf_counter() - t_eval)
                elapsed += row["eval_seconds"]
                result.eval_seconds += row["eval_seconds"]
                progress()
                if (result.seconds_to_target is None and cfg.target is not None
                        and ev["test_acc"] >= cfg.target):
                    result.seconds_to_target = elapsed
            row["seconds"] = elapsed
            result.history.append(row)
            if on_epoch is not None:
                on_epoch(row)
        if result.history:
            last = result.history[-1]
            result.final_test_acc, result.final_test_loss = last["test_acc"], last["test_loss"]
        result.train_seconds = elapsed
        if monitor is not None:
            result.utilization = monitor.result(windows)
        result.images_per_sec = trained / train_only if train_only else 0.0
        return result

    def _train_epoch(self, data: DeviceData, steps_per_epoch: int, label: str, quiet: bool,
                     progress, history: list = ()):
        """One epoch of `steps_per_epoch` steps in compiled calls; returns (summed loss,
        hits, seconds). A loss that is not finite (read from the fetch every call makes
        anyway) stops the run: float16 loss-scale skips keep the loss finite, so they never
        trigger this."""
        from tqdm import tqdm

        steps_per_call = self.runtime_config.steps_per_call
        loss_sum = hits = 0.0
        done = 0
        t0 = time.perf_counter()
        # the bar is cleared even when a step raises
        with tqdm(total=steps_per_epoch, desc=label, unit="step", leave=False,
                  disable=quiet) as bar:
            while done < steps_per_epoch:
                n = min(steps_per_call, steps_per_epoch - done)
                call_loss, call_hits = self.train_steps(data, n)
                loss = float(call_loss.numpy())
                if not np.isfinite(loss):
                    step = int(self.step.numpy())
                    raise TrainingDiverged(
                        f"training diverged: the loss is {loss} in the {n} steps up to "
                        f"step {step} (lr peak {self.config.lr_peak}); lower --lr-peak or "
                        f"--weight-decay", step, history)
                loss_sum += loss
                hits += float(call_hits.numpy())
                done += n
                bar.update(n)
                progress()
        return loss_sum, hits, time.perf_counter() - t0

    def evaluate(self, ds: Dataset) -> dict:
        """Test loss and accuracy over every test image exactly once."""
        self.compile(len(ds.x_train), len(ds.x_test))
        return self.evaluate_prepared(self.prepare(ds))

    def peek_batch(self, data: DeviceData) -> list:
        """What the next step trains on, without training: per replica, (example indices,
        augmented images, labels) as numpy arrays. Refills the epoch table if the step is
        in another epoch, as the step itself would."""
        out = self._peek_fn(data.x_train, data.y_train, data.mean, data.std)
        return list(zip(*[[t.numpy() for t in self.placement.copies(part)] for part in out]))

    @contextlib.contextmanager
    def evaluated_weights(self):
        """Within the block the model holds the weights evaluation uses (the moving
        average with `ema`, else the live ones)."""
        if self.ema_variables:
            self.swap_ema()
        try:
            yield self.model
        finally:
            if self.ema_variables:
                self.swap_ema()

    def predict(self, images: np.ndarray, mean=None, std=None) -> np.ndarray:
        """float32 logits for uint8 NHWC images, exactly as evaluation computes them: the
        training statistics, the evaluated weights (`ema`), the test-time views (`tta`)."""
        if mean is None:
            if self.data is None:
                raise RuntimeError("predict needs the training statistics: call fit() first "
                                   "or pass mean and std")
            mean, std = self.data.mean, self.data.std
        out = []
        with self.evaluated_weights(), tf.device(self.placement.devices[0]):
            for i in range(0, len(images), 1000):
                x = self.normalise(tf.constant(images[i:i + 1000]),
                                   tf.constant(mean, tf.float32), tf.constant(std, tf.float32))
                out.append(self._predict_fn(x).numpy())
        return (np.concatenate(out) if out
                else np.zeros((0, self.config.num_classes), np.float32))

    def export(self, mean=None, std=None) -> keras.Model:
        """The evaluated model as one Keras model from pixels to logits (normalisation and
        test-time views included), sharing this trainer's variables."""
        if mean is None:
            if self.data is None:
                raise RuntimeError("export needs the training statistics: call fit() first "
                                   "or pass mean and std")
            mean, std = self.data.mean, self.data.std
        return inference_model(self.model, np.asarray(mean, np.float64).tolist(),
                               np.asarray(std, np.float64).tolist(), self.config.tta)

    def save(self, path: str, mean=None, std=None) -> None:
        """The evaluated model (`export`, with the averaged weights under `ema`) as a
        `.keras` file, written to a temporary name first so no half file is left. Loading
        it and calling it on pixels reproduces evaluation (`fastcifar evaluate`)."""
        with self.evaluated_weights():
            save_model(self.export(mean, std), path)


def _main_utilization(window) -> Optional[float]:
    """The median of a monitor window's main metric (kernel-busy %, or process CPU %)."""
    summary = getattr(window, "summary", None) or {}
    key = next((k for k in summary if k.endswith("kernel_busy_pct")), None) \
        or ("process_cpu_pct" if "process_cpu_pct" in summary else None)
    return summary[key]["median"] if key and summary[key] else None


def check_model(model, num_classes: int, precision: str, run: bool = True) -> None:
    """What a model must be to train here: one input of 32x32x3 images, one output of
    `num_classes` logits per image, and (`run`) runnable under the precision policy."""
    if not isinstance(model, keras.Model):
        raise ConfigError(f"the model is a {type(model).__name__}, not a keras.Model")
    try:
        inputs, outputs = model.inputs or [], model.outputs or []
    except (AttributeError, ValueError):  # subclassed, or a Sequential never given an Input
        raise ConfigError(f"the model {model.name!r} has no defined input: build it on "
                          f"keras.Input((32, 32, 3)) (functional or Sequential)") from None
    if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != (32, 32, 3):
        shapes = [tuple(i.shape) for i in inputs]
        raise ConfigError(f"the model's input is {shapes}, not one (None, 32, 32, 3) image "
                          f"batch: build it on keras.Input((32, 32, 3))")
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[-1] != num_classes:
        shapes = [tuple(o.shape) for o in outputs]
        raise ConfigError(f"the model's output is {shapes}, not one (None, {num_classes}) "
                          f"batch of logits: end in Dense({num_classes}) without softmax (a builder "
                          f"gets the count through a parameter named classes or num_classes)")
    if not run:
        return
    try:
        dtype = keras.DTypePolicy(precision).compute_dtype
        logits = model(tf.zeros([2, 32, 32, 3], dtype), training=False)
    except SystemExit as e:  # sys.exit() in a user's layer is not the command's exit
        raise ConfigError(f"the model called sys.exit({e.code!r}) when run: a model must "
                          f"return logits") from None
    except Exception as e:  # a layer that cannot run in this dtype, a broken graph
        raise ConfigError(f"the model does not run under {precision} "
                          f"({type(e).__name__}: {gist(e)}); build it "
                          f"with the policy the builder receives") from None
    if not np.all(np.isfinite(np.asarray(tf.cast(logits, tf.float32)))):
        raise ConfigError(f"the model's logits on zeros are not finite under {precision}")


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


def save_model(model: keras.Model, path: str) -> None:
    if not str(path).endswith(".keras"):
        raise ConfigError(f"invalid save path {path!r}: it must end in .keras")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
