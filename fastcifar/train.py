"""The compiled, device-resident trainer.

The training set's per-channel statistics are computed once, the set is reflect-padded
once and lives on the device; each compiled call runs `steps_per_call` steps in an
on-device loop: gather the batch by the epoch's permutation, augment it, step. Nothing
per image touches the host.

Every step runs as a `tf.distribute` replica function. With one device (strategy `auto`)
that is TensorFlow's default strategy and one replica; with `mirrored`/`multiworker` every
device holds the whole training set and replica r takes rows [r*b, (r+1)*b) of each global
batch of B = R*b permuted indices. Losses are sums over the replica's images, gradients are
summed across replicas, and the L2 term is split R ways: R replicas at b compute the
gradient of one device at B.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from . import augment, cluster, distribute
from .config import ConfigError, RuntimeConfig, TrainConfig
from .data import Dataset
from .model import davidnet
from .optim import TutorialNesterov, l2_penalty, lr_tensor
from .runtime import Resolved, apply_determinism, resolve


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
    train_seconds: float = 0.0
    prep_seconds: float = 0.0
    compile_seconds: float = 0.0
    images_per_sec: float = 0.0
    steps_per_epoch: int = 0
    utilization: Optional[dict] = None  # monitor result over the training windows


class Trainer:
    """`Trainer(config).fit(dataset)`: a fast, faithful DavidNet baseline."""

    def __init__(self, config: TrainConfig = TrainConfig(),
                 runtime: RuntimeConfig = RuntimeConfig(),
                 strategy: Optional[tf.distribute.Strategy] = None):
        self.config = config.validate()
        self.runtime_config = runtime.validate()
        # first: MultiWorkerMirroredStrategy must exist before TensorFlow initialises
        self.strategy = strategy or distribute.make_strategy(config, runtime)
        self.strategy_name = (type(strategy).__name__ if strategy is not None
                              and config.strategy == "auto" else config.strategy)
        self.distributed = distribute.is_distributed(self.strategy)
        self.replicas = self.strategy.num_replicas_in_sync
        self.rt: Resolved = resolve(runtime)
        if config.batch_size % self.replicas:
            raise ConfigError(f"invalid batch_size={config.batch_size}: it does not split "
                              f"evenly across {self.replicas} replicas; use a multiple of "
                              f"{self.replicas}")
        devices = distribute.replica_devices(self.strategy) if self.distributed else []
        if self.rt.xla and any("GPU" not in d.upper() for d in devices):
            raise ConfigError(f"invalid xla=True with strategy={config.strategy!r} on CPU "
                              "devices: TensorFlow cannot compile a step that applies "
                              "gradients across CPU replicas; drop --xla (XLA with "
                              "tf.distribute needs GPUs)")
        apply_determinism(self.rt.deterministic)
        self.compute_dtype = tf.as_dtype(keras.DTypePolicy(self.rt.precision).compute_dtype)
        self._n_train: Optional[int] = None
        self._train_fn = None
        self._eval_fn = None
        self._predict_fn = None
        self.compile_seconds = 0.0
        with self._placement():
            self.model = davidnet(config.width, config.dropout, self.rt.precision, config.seed,
                                  activation=config.activation,
                                  frozen_bn_scale=config.frozen_bn_scale,
                                  whiten=config.whiten, sync_bn=config.sync_bn)
            # BatchNorm betas: learning rate x bias_lr_scale, weight decay / bias_lr_scale
            self.lr_scales = [config.bias_lr_scale if _is_bias(v) else 1.0
                              for v in self.model.trainable_variables]
            self.step = distribute.replica_local_variable(0, "step", tf.int64)
            inner = TutorialNesterov(learning_rate=self._learning_rate,
                                     momentum=config.momentum)
            # The loss is a sum over the batch, B times a mean: start the scale B times
            # lower than Keras' 2**15 so the first steps are not all skipped as overflows.
            initial_scale = max(2.0 ** (15 - int(np.log2(config.batch_size))), 1.0)
            self.optimizer = (keras.optimizers.LossScaleOptimizer(inner,
                                                                  initial_scale=initial_scale)
                              if self.rt.precision == "mixed_float16" else inner)
            self.optimizer.build(self.model.trainable_variables)
            # weight averaging (EMA): a float32 shadow of every weight and BN statistic
            self.ema_variables = ([distribute.replica_local_variable(
                tf.cast(v, tf.float32), "ema") for v in self._ema_sources()]
                if config.ema else [])

    def _placement(self):
        """Where state is created: the strategy's devices, or the one chosen device."""
        return self.strategy.scope() if self.distributed else tf.device(self.rt.device)

    def _per_replica(self, make):
        """`make(replica_id, num_replicas)` on every replica's device (plain on one)."""
        if not self.distributed:
            with tf.device(self.rt.device):
                return tf.identity(make(0, 1))
        return distribute.per_replica(self.strategy, make)

    def _local(self, value):
        return distribute.local_value(self.strategy, value) if self.distributed else value

    def describe_runtime(self) -> dict:
        """The resolved runtime plus how the work is spread, for result files."""
        d = self.rt.to_dict()
        d.update(strategy=self.strategy_name, replicas=self.replicas,
                 replica_devices=(distribute.replica_devices(self.strategy)
                                  if self.distributed else [self.rt.device]))
        return d

    # --- schedule ---------------------------------------------------------------------
    def steps_per_epoch(self, n_train: int) -> int:
        """Static batch shapes: the remainder of each epoch is dropped."""
        return n_train // self.config.batch_size

    def _learning_rate(self):
        c = self.config
        return lr_tensor(self.step, self._steps_per_epoch, c.epochs, c.peak_fraction,
                         c.lr_peak, c.batch_size)

    # --- data -------------------------------------------------------------------------
    def prepare(self, ds: Dataset) -> DeviceData:
        """Statistics, padding and upload, once, on the training device(s)."""
        p = self.config.crop_padding
        with tf.device(self.rt.device if not self.distributed else "/CPU:0"):
            x = tf.convert_to_tensor(ds.x_train)
            xf = tf.cast(x, tf.float32)
            mean = tf.reduce_mean(xf, axis=[0, 1, 2])
            std = tf.sqrt(tf.reduce_mean(tf.square(xf - mean), axis=[0, 1, 2]))
            del xf
            if self.rt.data_layout == "compute":
                x = tf.cast((tf.cast(x, tf.float32) - mean) / std, self.compute_dtype)
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT") if p else x
            y = tf.constant(ds.y_train, tf.int32)
        x_test, y_test, w_test = self._test_shards(ds.x_test, ds.y_test)
        return DeviceData(self._per_replica(lambda r, n: x), self._per_replica(lambda r, n: y),
                          x_test, y_test, w_test, mean, std, len(ds.x_train), len(ds.x_test))

    def _test_shards(self, x_test: np.ndarray, y_test: np.ndarray):
        """Pad the test set with zero-weight images to R equal shards of whole eval
        batches; replica r gets shard r, so every test image is counted exactly once."""
        eb, R, m = self.runtime_config.eval_batch_size, self.replicas, len(x_test)
        pad_m = (-m) % (eb * R)
        x = np.concatenate([x_test, np.zeros((pad_m, 32, 32, 3), np.uint8)])
        y = np.concatenate([y_test, np.zeros(pad_m, np.int32)]).astype(np.int32)
        w = np.concatenate([np.ones(m, np.float32), np.zeros(pad_m, np.float32)])
        k = len(x) // R
        shard = lambda a: self._per_replica(lambda r, n: a[r * k:(r + 1) * k])
        return shard(x), shard(y), shard(w)

    def _dummy(self, n_train: int, n_test: int) -> DeviceData:
        """Zeros of the real shapes and dtypes: compiles exactly what real data will run."""
        p = self.config.crop_padding
        dtype = tf.uint8 if self.rt.data_layout == "uint8" else self.compute_dtype
        x_test, y_test, w_test = self._test_shards(np.zeros((n_test, 32, 32, 3), np.uint8),
                                                   np.zeros(n_test, np.int32))
        return DeviceData(
            self._per_replica(lambda r, n: tf.zeros([n_train, 32 + 2 * p, 32 + 2 * p, 3], dtype)),
            self._per_replica(lambda r, n: tf.zeros([n_train], tf.int32)),
            x_test, y_test, w_test, tf.zeros([3]), tf.ones([3]), n_train, n_test)

    def _normalise(self, x, mean, std):
        if x.dtype == tf.uint8:
            x = (tf.cast(x, tf.float32) - mean) / std
        return tf.cast(x, self.compute_dtype)

    # --- compiled functions ------------------------------------------------------------
    def _build(self, n_train: int) -> None:
        if self._n_train == n_train:
            return
        c = self.config
        spe = self.steps_per_epoch(n_train)
        if spe < 1:
            raise ConfigError(f"invalid batch_size={c.batch_size}: larger than the "
                              f"{n_train} training images; lower --batch-size")
        self._n_train, self._steps_per_epoch = n_train, spe
        with self._placement():
            self.table = distribute.replica_local_variable(
                tf.zeros([n_train, augment.TABLE_COLUMNS]), "aug_table")
            self.perm = distribute.replica_local_variable(
                tf.zeros([n_train], tf.int64), "perm")
        # One device: XLA compiles the whole multi-step loop. Several: it compiles each
        # replica's step (all-reduces included, GPUs only) inside a plain loop.
        xla_loop = self.rt.xla and not self.distributed
        xla_replica = self.rt.xla and self.distributed
        self._replica_train = (tf.function(self._train_step, jit_compile=True) if xla_replica
                               else self._train_step)
        self._replica_eval = (tf.function(self._eval_shard, jit_compile=True) if xla_replica
                              else self._eval_shard)
        self._train_fn = tf.function(self._train_loop, jit_compile=xla_loop)
        self._eval_fn = tf.function(self._eval_loop, jit_compile=xla_loop)

    def _train_step(self, x_all, y_all, mean, std):
        """One replica's share of one global step (the whole step on one device)."""
        c, B = self.config, self.config.batch_size
        ctx = tf.distribute.get_replica_context()
        R = ctx.num_replicas_in_sync
        b = B // R
        spe = self._steps_per_epoch
        epoch, k = self.step // spe, self.step % spe

        def new_epoch():
            u, perm = augment.epoch_table(c.seed, epoch, self._n_train, c.alternating_flip)
            self.table.assign(u)
            self.perm.assign(perm)
            return tf.constant(0)

        tf.cond(tf.equal(k, 0), new_epoch, lambda: tf.constant(0))
        rid = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        idx = tf.slice(self.perm, tf.reshape(k * B + rid * b, [1]), [b])
        u = tf.gather(self.table, idx)
        xb = augment.augment(tf.gather(x_all, idx), u, c.crop_padding, c.flip, c.cutout)
        xb = augment.apply_cutout(self._normalise(xb, mean, std), u, c.cutout)
        yb = tf.gather(y_all, idx)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(xb, training=True)
            ce = tf.reduce_sum(cross_entropy(yb, logits, c.label_smoothing))
            # every replica adds 1/R of the penalty: the summed gradient has it once
            loss = ce + l2_penalty(variables, c.weight_decay, B, self.lr_scales) / R
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        if R > 1 and isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            grads = _agree_on_overflow(ctx, grads)
        if c.bias_lr_scale != 1.0:  # momentum SGD is linear in g: this scales the lr
            grads = [g * k if k != 1.0 else g for g, k in zip(grads, self.lr_scales)]
        self.optimizer.apply_gradients(zip(grads, variables))
        self.step.assign_add(1)
        if self.ema_variables:
            # warm-up as in TF's ExponentialMovingAverage(num_updates): early on the average
            # follows the weights, so short runs are not evaluated near their initial state
            n = tf.cast(self.step, tf.float32)
            d = tf.minimum(self.config.ema, (1.0 + n) / (10.0 + n))
            for e, v in zip(self.ema_variables, self._ema_sources()):
                e.assign(d * e + (1.0 - d) * tf.cast(v, e.dtype))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), yb),
                                        tf.float32))
        return tf.stack([ce, correct])

    def _train_loop(self, x_all, y_all, mean, std, n_steps):
        loss_sum = tf.constant(0.0)
        correct = tf.constant(0.0)
        for _ in tf.range(n_steps):
            out = self._sum_over_replicas(
                self.strategy.run(self._replica_train, args=(x_all, y_all, mean, std)))
            loss_sum += out[0]
            correct += out[1]
        return loss_sum, correct

    def _sum_over_replicas(self, value):
        """One all-reduce of a small vector of per-replica sums."""
        if not self.distributed:
            return value
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    def _eval_loop(self, x, y, w, mean, std):
        out = self._sum_over_replicas(
            self.strategy.run(self._replica_eval, args=(x, y, w, mean, std)))
        return out[0], out[1], out[2]

    def _eval_shard(self, x, y, w, mean, std):
        """Sums of loss, hits and weights over this replica's shard of the test set."""
        eb = self.runtime_config.eval_batch_size
        nb = x.shape[0] // eb
        x = tf.reshape(x, [nb, eb] + list(x.shape[1:]))
        y, w = tf.reshape(y, [nb, eb]), tf.reshape(w, [nb, eb])
        loss_sum, correct, count = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for i in tf.range(nb):
            logits = self.tta_logits(self._normalise(x[i], mean, std))
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y[i], logits)
            hit = tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), y[i]), tf.float32)
            loss_sum += tf.reduce_sum(ce * w[i])
            correct += tf.reduce_sum(hit * w[i])
            count += tf.reduce_sum(w[i])
        return tf.stack([loss_sum, correct, count])

    def tta_logits(self, x):
        """Mean logits over the test-time views: the image, its mirror, and with
        `flip_translate` both shifted by one pixel each way (6 views, as airbench)."""
        views = tta_views(x, self.config.tta)
        return tf.add_n([self.model(v, training=False) for v in views]) / len(views)

    # --- state ------------------------------------------------------------------------
    def state_variables(self) -> list:
        """Everything a step may change: weights, BN statistics, dropout RNG, optimizer
        slots and loss scale, step counter, augmentation tables."""
        vs = (list(self.model.variables) + list(self.optimizer.variables) + [self.step]
              + list(self.ema_variables))
        if self._n_train is not None:
            vs += [self.table, self.perm]
        seen, out = set(), []
        for v in vs:
            key = id(v)
            if key not in seen:
                seen.add(key)
                out.append(v)
        return out

    def snapshot(self) -> list:
        return [np.array(v.numpy()) for v in self.state_variables()]

    def restore(self, snap: list) -> None:
        for v, value in zip(self.state_variables(), snap):
            v.assign(value)

    # --- public API -------------------------------------------------------------------
    def compile(self, n_train: int, n_test: int) -> float:
        """Trace and compile train and eval on dummy data of the real shapes, then put every
        piece of state back: compilation leaves no trace. Returns seconds spent (0 if the
        functions were already compiled for these shapes)."""
        self._build(n_train)
        key = (n_train, n_test)
        if getattr(self, "_compiled_key", None) == key:
            return 0.0
        dummy = self._dummy(n_train, n_test)
        snap = self.snapshot()
        t0 = time.perf_counter()
        out = self._train_fn(dummy.x_train, dummy.y_train, dummy.mean, dummy.std,
                             tf.constant(1, tf.int32))
        ev = self._eval_fn(dummy.x_test, dummy.y_test, dummy.w_test, dummy.mean, dummy.std)
        float(out[0].numpy()) + float(ev[0].numpy())
        self.compile_seconds = time.perf_counter() - t0
        cluster.heartbeat()
        self.restore(snap)
        self._compiled_key = key
        return self.compile_seconds

    def train_steps(self, dd: DeviceData, n_steps: int):
        """Run `n_steps` steps in one compiled call; returns (summed loss, correct)."""
        self._build(dd.n_train)
        return self._train_fn(dd.x_train, dd.y_train, dd.mean, dd.std,
                              tf.constant(n_steps, tf.int32))

    def fit_whitening(self, dd: DeviceData, n_images: int = 10000) -> None:
        """PCA-whiten the first layer on up to `n_images` unaugmented training images."""
        from .model import fit_whitening

        p = self.config.crop_padding
        x = self._local(dd.x_train)[:n_images]
        x = x[:, p:x.shape[1] - p, p:x.shape[2] - p] if p else x
        fit_whitening(self.model, tf.cast(self._normalise(x, dd.mean, dd.std), tf.float32))

    def _ema_sources(self) -> list:
        """Weights and BatchNorm statistics: everything the averaged model evaluates with."""
        return [v for v in self.model.weights
                if str(getattr(v.dtype, "name", v.dtype)).startswith("float")]

    def swap_ema(self) -> None:
        """Exchange the live weights with their moving average (call twice to undo), on
        the device: no round trip through the host at every evaluation."""
        for e, v in zip(self.ema_variables, self._ema_sources()):
            live = tf.identity(v)
            v.assign(tf.identity(e))
            e.assign(live)

    def evaluate_prepared(self, dd: DeviceData) -> dict:
        """Over every test image once; with `ema`, using the averaged weights."""
        self._build(dd.n_train)
        if self.ema_variables:
            self.swap_ema()
        try:
            loss, correct, count = (t.numpy() for t in self._eval_fn(
                dd.x_test, dd.y_test, dd.w_test, dd.mean, dd.std))
        finally:
            if self.ema_variables:
                self.swap_ema()
        return {"test_loss": float(loss / count), "test_acc": float(correct / count),
                "count": int(count)}

    def fit(self, ds: Dataset, epochs: Optional[int] = None, quiet: bool = True,
            on_epoch=None, monitor=None) -> FitResult:
        """Train; the clock covers preparing the data and training, not compilation (done
        first on dummy data) and not the per-epoch evaluation. A started
        `fastcifar.monitor.Monitor` gets one window per epoch's training phase."""
        import contextlib

        from tqdm import tqdm

        c = self.config
        epochs = c.epochs if epochs is None else epochs
        self.compile(len(ds.x_train), len(ds.x_test))
        t0 = time.perf_counter()
        dd = self.prepare(ds)
        if c.whiten:  # fitted on the device from training images: counted as training time
            self.fit_whitening(dd)
        for x in self.strategy.experimental_local_results(dd.x_train):
            x[0, 0, 0, 0].numpy()  # every upload is done before the clock reads
        prep = time.perf_counter() - t0
        spe = self.steps_per_epoch(dd.n_train)
        spc = self.runtime_config.steps_per_call
        result = FitResult(prep_seconds=prep, compile_seconds=self.compile_seconds, steps_per_epoch=spe)
        elapsed, train_only = prep, 0.0
        windows = []
        for epoch in range(1, epochs + 1):
            bar = tqdm(total=spe, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False,
                       disable=quiet)
            loss_sum = correct = 0.0
            t_epoch = time.perf_counter()
            done = 0
            window = (monitor.window(f"epoch {epoch}") if monitor is not None
                      else contextlib.nullcontext())
            with window as w, bar:  # the bar is cleared even when a step raises
                while done < spe:
                    n = min(spc, spe - done)
                    ls, cr = self.train_steps(dd, n)
                    loss_sum += float(ls.numpy())
                    correct += float(cr.numpy())
                    done += n
                    bar.update(n)
                    cluster.heartbeat()
            if w is not None:
                windows.append(w)
            dt = time.perf_counter() - t_epoch
            elapsed += dt
            train_only += dt
            ev = self.evaluate_prepared(dd)
            cluster.heartbeat()
            images = spe * c.batch_size
            row = {"epoch": epoch, "train_loss": loss_sum / images, "train_acc": correct / images,
                   "test_loss": ev["test_loss"], "test_acc": ev["test_acc"],
                   "seconds": elapsed, "epoch_seconds": dt, "images_per_sec": images / dt,
                   "lr": float(self._learning_rate().numpy()) * c.batch_size}
            result.history.append(row)
            if (result.seconds_to_target is None and c.target is not None
                    and ev["test_acc"] >= c.target):
                result.seconds_to_target = elapsed
            if on_epoch is not None:
                on_epoch(row)
        if result.history:
            last = result.history[-1]
            result.final_test_acc, result.final_test_loss = last["test_acc"], last["test_loss"]
        result.train_seconds = elapsed
        if monitor is not None:
            result.utilization = monitor.result(windows)
        result.images_per_sec = (epochs * spe * c.batch_size / train_only) if train_only else 0.0
        self._last_data = dd
        return result

    def evaluate(self, ds: Dataset) -> dict:
        """Test loss and accuracy over every test image exactly once."""
        self.compile(len(ds.x_train), len(ds.x_test))
        dd = self.prepare(ds)
        self._last_data = dd
        return self.evaluate_prepared(dd)

    def predict(self, images: np.ndarray, mean=None, std=None) -> np.ndarray:
        """float32 logits for uint8 NHWC images, normalised with the training statistics."""
        if mean is None:
            dd = getattr(self, "_last_data", None)
            if dd is None:
                raise RuntimeError("predict needs the training statistics: call fit() first "
                                   "or pass mean and std")
            mean, std = dd.mean, dd.std
        if self._predict_fn is None:  # own function: Keras' predict would split the batch
            self._predict_fn = tf.function(lambda x: self.model(x, training=False))
        out = []
        with tf.device(self.rt.device if not self.distributed else
                       distribute.replica_devices(self.strategy)[0]):
            for i in range(0, len(images), 1000):
                x = self._normalise(tf.constant(images[i:i + 1000]),
                                    tf.constant(mean, tf.float32), tf.constant(std, tf.float32))
                out.append(self._predict_fn(x).numpy())
        return np.concatenate(out) if out else np.zeros((0, 10), np.float32)

    def save(self, path: str) -> None:
        """`.keras` file, written to a temporary name first so no half file is left."""
        save_model(self.model, path)


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


def tta_views(x, mode: str) -> list:
    if mode == "none":
        return [x]
    flipped = tf.reverse(x, axis=[2])
    views = [x, flipped]
    if mode == "flip_translate":
        p = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        pf = tf.reverse(p, axis=[2])
        h, w = x.shape[1], x.shape[2]
        for src in (p, pf):
            views += [src[:, 0:h, 0:w], src[:, 2:h + 2, 2:w + 2]]
    return views


def cross_entropy(labels, logits, label_smoothing: float = 0.0):
    """Per-example cross-entropy; with smoothing, against one-hot targets mixed with the
    uniform distribution (Keras 3's sparse loss has no smoothing)."""
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    k = logits.shape[-1]
    target = tf.one_hot(labels, k) * (1.0 - label_smoothing) + label_smoothing / k
    return tf.nn.softmax_cross_entropy_with_logits(target, logits)


def save_model(model: keras.Model, path: str) -> None:
    if not str(path).endswith(".keras"):
        raise ConfigError(f"invalid save path {path!r}: it must end in .keras")
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=d)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
