"""Data parallelism on TensorFlow's own engine (`tf.distribute`), chosen at run time.

`auto` is one device (TensorFlow's default strategy: the same code path with one replica).
`mirrored` is `MirroredStrategy` over local GPUs, or over logical CPU devices where there
is no GPU, so the multi-replica path runs and is tested on any machine. `multiworker` is
`MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG` (see `fastcifar.cluster`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from .cluster import parse_tf_config
from .config import RuntimeConfig, TrainConfig
from .errors import ConfigError, PeerError
from .util import content_hash


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
    peers = parse_tf_config(os.environ.get("TF_CONFIG"))  # one-line errors; TF reads it too
    if config.replicas > 1 and not tf.config.list_physical_devices("GPU"):
        raise ConfigError(f"invalid replicas={config.replicas}: a CPU-only worker runs one "
                          "replica under 'multiworker'; drop --replicas or use 'mirrored'")
    # A bounded wait per collective: a peer that stops mid-run becomes an error here too
    # (TensorFlow's own heartbeats usually report it sooner).
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(runtime.peer_timeout))
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:
        lines = str(getattr(e, "message", e)).strip().splitlines()
        address = peers.workers[peers.rank]
        raise ConfigError(f"cannot start this worker's server at {address} "
                          f"({type(e).__name__}: {lines[0][:160] if lines else ''}); is the "
                          f"port in use, or the address not this host's? Fix TF_CONFIG") \
            from None


class Placement:
    """Where the trainer's tensors live and how a step runs: one device, or the replicas
    of a `tf.distribute` strategy. The trainer asks this object and never branches on
    the replica count itself; on one device every method is the plain operation."""

    def __init__(self, strategy: tf.distribute.Strategy, device: str):
        self.strategy = strategy
        self.distributed = is_distributed(strategy)
        self.devices = replica_devices(strategy) if self.distributed else [device]
        self.count = strategy.num_replicas_in_sync

    def scope(self):
        """Where state is created: the strategy's devices, or the one device."""
        return self.strategy.scope() if self.distributed else tf.device(self.devices[0])

    def per_replica(self, make):
        """`make(replica_id, num_replicas)` on every replica's device."""
        if not self.distributed:
            with tf.device(self.devices[0]):
                return tf.identity(make(0, 1))
        return per_replica(self.strategy, make)

    def first(self, value):
        """The first local copy of a per-replica value (the value itself on one device)."""
        return local_value(self.strategy, value) if self.distributed else value

    def copies(self, value) -> list:
        """Every local copy of a per-replica value."""
        return list(self.strategy.experimental_local_results(value))

    def run_and_sum(self, fn, args):
        """`fn(*args)` on every replica; its result vector summed over the replicas."""
        out = self.strategy.run(fn, args=args)
        if not self.distributed:
            return out
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)


def replica_slice(global_batch: int):
    """(offset, size) of this replica's share of a global batch, inside a replica step."""
    ctx = tf.distribute.get_replica_context()
    size = global_batch // ctx.num_replicas_in_sync
    return tf.cast(ctx.replica_id_in_sync_group, tf.int64) * size, size


@contextlib.contextmanager
def peer_errors(native_log: Optional[str] = None):
    """A lost multi-worker peer (TensorFlow aborts the collectives) becomes one PeerError."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError) as e:
        lines = str(e.message).splitlines()
        first = next((line.strip() for line in lines
                      if "unhealthy" in line or "abort" in line.lower()
                      or "deadline" in line.lower()),
                     lines[0] if lines else type(e).__name__)
        raise PeerError(f"lost contact with a worker peer ({type(e).__name__}: {first}); "
                        f"check every worker's log and restart all of them"
                        + (f" (TensorFlow's log: {native_log})" if native_log else "")
                        ) from None


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


def replica_local_variable(initial, name: str, dtype=None, shape=None) -> tf.Variable:
    """State every replica computes identically by construction (step counter, augmentation
    tables, weight averages): each keeps its own copy and no update crosses devices.
    Read from outside a replica it is the first replica's; assigned, every copy's.
    `shape` may leave dimensions open (None) for state sized by the data."""
    return tf.Variable(initial, dtype=dtype, trainable=False, name=name, shape=shape,
                       synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def weights_checksum(model) -> str:
    """sha256 over every weight as float32, in model order: equal on every worker of a
    correct data-parallel run."""
    return content_hash(*[np.asarray(v.numpy(), np.float32) for v in model.weights])[:16]


def distance_moved(a: list, b: list, start: list) -> float:
    """How far apart two runs' weights `a` and `b` ended, relative to how far `a` moved
    from `start` (weights as lists of arrays)."""
    gap = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b)))
    return float(gap / np.sqrt(sum(np.sum((x - s) ** 2) for x, s in zip(a, start))))


def check_xla(xla: bool, placement: "Placement", strategy: str) -> None:
    """XLA across replicas needs GPUs: on logical CPU devices TensorFlow cannot compile a
    step that applies gradients (it takes another path than on GPUs, and fails)."""
    if xla and placement.distributed and any("GPU" not in d.upper()
                                             for d in placement.devices):
        raise ConfigError(f"invalid xla=True with strategy={strategy!r} on CPU devices: "
                          "TensorFlow cannot compile a step that applies gradients across "
                          "CPU replicas; drop --xla (XLA with tf.distribute needs GPUs)")
