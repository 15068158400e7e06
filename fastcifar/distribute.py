"""Data parallelism on TensorFlow's own engine (`tf.distribute`), chosen at run time.

`auto` is one device (TensorFlow's default strategy: the same code path with one replica).
`mirrored` is `MirroredStrategy` over local GPUs, or over logical CPU devices where there
is no GPU, so the multi-replica path runs and is tested on any machine. `multiworker` is
`MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG` (see `fastcifar.cluster`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from .cluster import heartbeat, parse_tf_config
from .config import ConfigError, RuntimeConfig, TrainConfig


def split_cpu(n: int) -> None:
    """Make the CPU appear as `n` logical devices. Must run before TensorFlow initialises
    (before the first tensor, variable or model is created)."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0]) or []
    if len(current) >= n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        have = max(len(current), 1)
        raise ConfigError(f"cannot split the CPU into {n} devices: TensorFlow is already "
                          f"initialised with {have}; call fastcifar.distribute.split_cpu({n}) "
                          f"before creating any tensor or model") from None


def local_devices(replicas: int) -> list:
    """The first `replicas` GPUs (0 = all), or as many logical CPU devices (split here if
    TensorFlow has not initialised yet)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        n = replicas or len(gpus)
        if n > len(gpus):
            raise ConfigError(f"invalid replicas={replicas}: only {len(gpus)} GPU(s) are "
                              f"visible; lower --replicas")
        return [f"/GPU:{i}" for i in range(n)]
    n = replicas or 1
    split_cpu(n)
    return [f"/CPU:{i}" for i in range(n)]


def make_strategy(config: TrainConfig, runtime: RuntimeConfig) -> tf.distribute.Strategy:
    if config.strategy == "auto":
        return tf.distribute.get_strategy()
    if config.strategy == "mirrored":
        devices = local_devices(config.replicas)
        # CPU devices: ring all-reduce on the host (NCCL needs GPUs)
        ops = (None if devices[0].startswith("/GPU")
               else tf.distribute.ReductionToOneDevice(reduce_to_device="/CPU:0"))
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=ops)
    parse_tf_config(os.environ.get("TF_CONFIG"))  # one-line errors; TensorFlow reads it too
    if config.replicas > 1 and not tf.config.list_physical_devices("GPU"):
        raise ConfigError(f"invalid replicas={config.replicas}: a CPU-only worker runs one "
                          "replica under 'multiworker'; drop --replicas or use 'mirrored'")
    # A bounded wait per collective: a peer that stops mid-run becomes an error here too
    # (TensorFlow's own heartbeats usually report it sooner).
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(runtime.peer_timeout))
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    heartbeat("ready")  # every peer joined: the supervisor's start-up deadline is met
    return strategy


def is_distributed(strategy: tf.distribute.Strategy) -> bool:
    """False for TensorFlow's default (one-device) strategy."""
    return type(strategy).__name__ != "_DefaultDistributionStrategy"


def replica_devices(strategy: tf.distribute.Strategy) -> list:
    """This worker's replica devices, in the order of `experimental_local_results`."""
    return list(strategy.extended.worker_devices)


def per_replica(strategy: tf.distribute.Strategy, make):
    """A value per replica, `make(replica_id, num_replicas)`, placed on that replica's
    device (`experimental_distribute_values_from_function` alone leaves them on the
    first device)."""
    devices = replica_devices(strategy)

    def value_fn(ctx):
        rid = ctx.replica_id_in_sync_group
        with tf.device(devices[rid % len(devices)]):
            return tf.identity(make(rid, ctx.num_replicas_in_sync))

    return strategy.experimental_distribute_values_from_function(value_fn)


def local_value(strategy: tf.distribute.Strategy, value):
    """The first local copy of a per-replica value (the value itself on one device)."""
    return strategy.experimental_local_results(value)[0]


def replica_local_variable(initial, name: str, dtype=None) -> tf.Variable:
    """State every replica computes identically by construction (step counter, augmentation
    tables, weight averages): each keeps its own copy and no update crosses devices.
    Read from outside a replica it is the first replica's; assigned, every copy's."""
    return tf.Variable(initial, dtype=dtype, trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def weights_checksum(model) -> str:
    """sha256 over every weight as float32, in model order: equal on every worker of a
    correct data-parallel run."""
    from .data import content_hash

    return content_hash(*[np.asarray(v.numpy(), np.float32) for v in model.weights])[:16]


def distance_moved(a: list, b: list, start: list) -> float:
    """How far apart two runs' weights `a` and `b` ended, relative to how far `a` moved
    from `start` (weights as lists of arrays)."""
    gap = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b)))
    return float(gap / np.sqrt(sum(np.sum((x - s) ** 2) for x, s in zip(a, start))))
