"""The data as the compiled step reads it: normalised statistics computed once, the training
set reflect-padded once and resident on every training device, the test set split into
equal shards of whole evaluation batches. Nothing here runs per step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .data import Dataset, channel_stats
from .errors import ConfigError


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


def eval_batch_for(requested: int, n_test: int, replicas: int) -> int:
    """Test images per evaluation batch: never more than a replica's share of the test
    set (a larger batch would be padding)."""
    return min(requested, -(-n_test // replicas))


def test_shards(placement, x_test: np.ndarray, y_test: np.ndarray, eval_batch: int):
    """Pad the test set with zero-weight images to R equal shards of whole eval batches;
    replica r gets shard r, so every test image is counted exactly once."""
    count, replicas = len(x_test), placement.count
    padding = (-count) % (eval_batch * replicas)
    x = np.concatenate([x_test, np.zeros((padding, 32, 32, 3), np.uint8)])
    y = np.concatenate([y_test, np.zeros(padding, np.int32)]).astype(np.int32)
    w = np.concatenate([np.ones(count, np.float32), np.zeros(padding, np.float32)])
    shard = len(x) // replicas
    split = lambda a: placement.per_replica(lambda r, n: a[r * shard:(r + 1) * shard])
    return split(x), split(y), split(w)


def upload(engine, ds: Dataset) -> DeviceData:
    """Statistics, padding and upload, once, on the training device(s)."""
    if ds.num_classes != engine.config.num_classes:
        raise ConfigError(f"the data has {ds.num_classes} classes but the net has "
                          f"{engine.config.num_classes} outputs: set num_classes="
                          f"{ds.num_classes} (the command line does)")
    pad = engine.config.crop_padding
    # exact, and without a float copy of the set (a float32 mean over 10^8 pixels is off
    # in the third decimal; the allocator would keep the copy resident)
    mean, std = (tf.constant(v) for v in channel_stats(ds.x_train))
    with tf.device(engine.runtime.device if not engine.distributed else "/CPU:0"):
        x = tf.convert_to_tensor(ds.x_train)
        if engine.runtime.data_layout == "compute":
            x = tf.cast((tf.cast(x, tf.float32) - mean) / std, engine.compute_dtype)
        if pad:
            x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        y = tf.constant(ds.y_train, tf.int32)
    x_test, y_test, w_test = test_shards(engine.placement, ds.x_test, ds.y_test,
                                         engine.eval_batch)
    on_each = engine.placement.per_replica
    return DeviceData(on_each(lambda r, n: x), on_each(lambda r, n: y), x_test, y_test,
                      w_test, mean, std, len(ds.x_train), len(ds.x_test))


def zeros_like_data(engine, n_train: int, n_test: int) -> DeviceData:
    """Zeros of the real shapes and dtypes: compiles exactly what real data will run."""
    pad = engine.config.crop_padding
    dtype = tf.uint8 if engine.runtime.data_layout == "uint8" else engine.compute_dtype
    x_test, y_test, w_test = test_shards(engine.placement,
                                         np.zeros((n_test, 32, 32, 3), np.uint8),
                                         np.zeros(n_test, np.int32), engine.eval_batch)
    side = 32 + 2 * pad
    on_each = engine.placement.per_replica
    return DeviceData(on_each(lambda r, n: tf.zeros([n_train, side, side, 3], dtype)),
                      on_each(lambda r, n: tf.zeros([n_train], tf.int32)),
                      x_test, y_test, w_test, tf.zeros([3]), tf.ones([3]), n_train, n_test)
