"""A faithful TF 2.x port of the DavidNet tutorial's trainer, kept as the speed baseline.

What it keeps from the tutorial: eager execution (no tf.function), subclassed models, a
per-image `tf.data` pipeline (map random_crop + random_flip, shuffle, batch, prefetch 1),
float32, summed cross-entropy, Nesterov momentum with the learning rate outside the
velocity, the `np.interp` schedule divided by the batch size. Its weight-decay line is kept
too, bug included: `g += v * wd * B` rebinds a local name and changes nothing.
What it changes: TF1's `MomentumOptimizer` no longer exists, so the same update comes from
`fastcifar.optim.TutorialNesterov`. Use it to measure what fastcifar buys, never to train.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from ..layers import torch_uniform
from ..optim import TutorialNesterov


class ConvBN(keras.Model):
    def __init__(self, c, dropout):
        super().__init__()
        self.conv = keras.layers.Conv2D(c, 3, padding="same", use_bias=False,
                                        kernel_initializer=torch_uniform())
        self.bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
        self.drop = keras.layers.Dropout(dropout)

    def call(self, x, training=False):
        return tf.nn.relu(self.bn(self.drop(self.conv(x), training=training),
                                  training=training))


class ResBlk(keras.Model):
    def __init__(self, c, dropout, res=False):
        super().__init__()
        self.conv_bn = ConvBN(c, dropout)
        self.pool = keras.layers.MaxPooling2D()
        self.res = res
        if res:
            self.res1 = ConvBN(c, dropout)
            self.res2 = ConvBN(c, dropout)

    def call(self, x, training=False):
        h = self.pool(self.conv_bn(x, training=training))
        if self.res:
            h = h + self.res2(self.res1(h, training=training), training=training)
        return h


class DavidNet(keras.Model):
    def __init__(self, c=64, dropout=0.05, weight=0.125):
        super().__init__()
        self.init_conv_bn = ConvBN(c, dropout)
        self.blk1 = ResBlk(c * 2, dropout, res=True)
        self.blk2 = ResBlk(c * 4, dropout)
        self.blk3 = ResBlk(c * 8, dropout, res=True)
        self.pool = keras.layers.GlobalMaxPooling2D()
        self.linear = keras.layers.Dense(10, kernel_initializer=torch_uniform(), use_bias=False)
        self.weight = weight

    def call(self, x, y, training=False):
        h = self.pool(self.blk3(self.blk2(self.blk1(self.init_conv_bn(x, training=training),
                                                    training=training), training=training),
                                training=training))
        h = self.linear(h) * self.weight
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(logits=h, labels=y)
        loss = tf.reduce_sum(ce)
        correct = tf.reduce_sum(tf.cast(tf.math.equal(tf.argmax(h, axis=1, output_type=tf.int32),
                                                      y), tf.float32))
        return loss, correct


class TutorialTrainer:
    """The tutorial's loop, step by step, so it can be timed like the fast trainer."""

    def __init__(self, width=64, batch_size=512, epochs=24, lr_peak=0.4, weight_decay=5e-4,
                 dropout=0.05, seed=0):
        self.batch_size, self.epochs, self.lr_peak = batch_size, epochs, lr_peak
        self.weight_decay, self.seed = weight_decay, seed
        self.model = DavidNet(width, dropout)
        self.global_step = 0
        self.opt = TutorialNesterov(learning_rate=self._lr, momentum=0.9)

    def prepare(self, x_train, y_train):
        """As the tutorial: normalise and pad on the host, float32. Kept as one TensorFlow
        constant (not also as numpy, which `from_tensor_slices` would copy each epoch)."""
        from ..data import channel_stats

        mean, std = channel_stats(x_train)
        x = (x_train.astype(np.float32) - mean) / std
        x = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
        self.x_train, self.y_train = tf.constant(x), tf.constant(y_train.astype(np.int32))
        self.batches_per_epoch = len(x) // self.batch_size + 1

    def _lr(self):
        t = self.global_step / self.batches_per_epoch
        lr = np.interp([t], [0, (self.epochs + 1) // 5, self.epochs], [0, self.lr_peak, 0])[0]
        return lr / self.batch_size

    def epoch_dataset(self):
        aug = lambda x, y: (tf.image.random_flip_left_right(tf.image.random_crop(x, [32, 32, 3])),
                            y)
        return (tf.data.Dataset.from_tensor_slices((self.x_train, self.y_train)).map(aug)
                .shuffle(int(self.x_train.shape[0]), seed=self.seed).batch(self.batch_size)
                .prefetch(1))

    def step(self, x, y):
        with tf.GradientTape() as tape:
            loss, correct = self.model(x, y, training=True)
        var = self.model.trainable_variables
        grads = tape.gradient(loss, var)
        for g, v in zip(grads, var):
            g += v * self.weight_decay * self.batch_size  # the tutorial's no-op, kept as is
        self.opt.apply_gradients(zip(grads, var))
        self.global_step += 1
        return loss, correct

    def time_steps(self, n_steps: int) -> float:
        """Seconds for `n_steps` steps of the tutorial's loop, pipeline included. The first
        call fills the 50,000-image shuffle buffer and builds the model: not timed."""
        if getattr(self, "_it", None) is None:
            self._it = iter(self.epoch_dataset().repeat())
            self.step(*next(self._it))
        t0 = time.perf_counter()
        for _ in range(n_steps):
            x, y = next(self._it)
            loss, _ = self.step(x, y)
        float(loss.numpy())
        return time.perf_counter() - t0


class TutorialProcess:
    """The tutorial's loop in a process of its own, timed on request. Compared in one
    process, its tf.data threads (prefetching the next batch), its 3 GB of host data and
    shuffle buffer, and the shared allocator and thread pools slow whatever it alternates
    with; in its own process only one of the two runs at a time."""

    def __init__(self, data: str, width: int = 64, batch_size: int = 512, seed: int = 0):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, data, width, batch_size, seed),
                                 daemon=True, name="fastcifar-tutorial")
        self._proc.start()
        child.close()
        status, detail = self._receive()
        if status != "ready":
            self.close()
            raise RuntimeError(f"the tutorial's process failed to start: {detail}")

    def _receive(self):
        if not self._conn.poll(3600):
            raise RuntimeError("the tutorial's process did not answer within an hour")
        return self._conn.recv()

    def time_steps(self, n_steps: int) -> float:
        """Seconds for `n_steps` steps of the tutorial's loop (as `TutorialTrainer`)."""
        self._conn.send(n_steps)
        status, value = self._receive()
        if status != "seconds":
            raise RuntimeError(f"the tutorial's process failed: {value}")
        return value

    def peak_rss_bytes(self):
        """The tutorial process' peak resident memory so far (Linux), or None."""
        from ..util import peak_rss_bytes

        return peak_rss_bytes(self._proc.pid)

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve(conn, data: str, width: int, batch_size: int, seed: int) -> None:
    """The child side of `TutorialProcess`: build, take the untimed first step, then time
    steps until told to stop."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from ..data import load

        ds = load(data)
        trainer = TutorialTrainer(width=width, batch_size=batch_size, seed=seed)
        trainer.prepare(ds.x_train, ds.y_train)
        del ds
        trainer.time_steps(1)  # builds the model, fills the shuffle buffer: not timed
        conn.send(("ready", None))
        while True:
            n = conn.recv()
            if n is None:
                break
            conn.send(("seconds", trainer.time_steps(n)))
    except (EOFError, KeyboardInterrupt):
        pass
    except Exception as e:  # reported to the parent as one line
        conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
    finally:
        conn.close()
