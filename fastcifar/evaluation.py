"""Evaluation on the device: every test image once, in whole batches per replica, through
the test-time views, with the weights evaluation uses (the moving average under `ema`)."""

from __future__ import annotations

import contextlib
import math

import tensorflow as tf

from . import augment
from .techniques import MovingAverage


def eval_loop(engine, x, y, w, mean, std, n_batches):
    out = engine.placement.run_and_sum(engine._replica_eval,
                                       (x, y, w, mean, std, n_batches))
    return out[0], out[1], out[2]


def eval_shard(engine, x, y, w, mean, std, n_batches):
    """Sums of loss, hits and weights over the first `n_batches` eval batches of this
    replica's shard of the test set (all of them, except when compiling)."""
    eval_batch = engine.eval_batch
    batches = x.shape[0] // eval_batch
    x = tf.reshape(x, [batches, eval_batch] + list(x.shape[1:]))
    y, w = tf.reshape(y, [batches, eval_batch]), tf.reshape(w, [batches, eval_batch])
    loss_sum, hits, count = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
    for i in tf.range(n_batches):
        logits = tta_logits(engine, engine.normalise(x[i], mean, std))
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(y[i], logits)
        hit = tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), y[i]), tf.float32)
        loss_sum += tf.reduce_sum(loss * w[i])
        hits += tf.reduce_sum(hit * w[i])
        count += tf.reduce_sum(w[i])
    return tf.stack([loss_sum, hits, count])


def tta_logits(engine, x):
    """Logits averaged over the test-time views (`augment.tta_views`) with airbench's
    weights (`augment.TTA_WEIGHTS`); with `tta_fraction` < 1, only for the least confident
    part of the batch (`least_confident`), the rest keeping their plain logits."""
    mode, fraction = engine.config.tta, engine.config.tta_fraction
    model = lambda v: engine.model(v, training=False)
    if mode == "none" or fraction >= 1:
        return views_mean(model, x, mode)
    plain = model(x)
    chosen = least_confident(plain, fraction)
    viewed = views_mean(model, tf.gather(x, chosen), mode)
    return tf.tensor_scatter_nd_update(plain, chosen[:, None], tf.cast(viewed, plain.dtype))


def views_mean(model, x, mode: str):
    views = augment.tta_views(x, mode)
    weights = augment.TTA_WEIGHTS[mode]
    return tf.add_n([w * model(v) for w, v in zip(weights, views)])


def least_confident(logits, fraction: float):
    """Indices of the ceil(fraction x batch) rows whose top softmax probability is lowest:
    where the test-time views can still change the answer (cifar10-speedrun spends them
    only there). Selected within the batch, so a prediction depends on its batch."""
    n = logits.shape[0] if logits.shape[0] is not None else tf.shape(logits)[0]
    k = (math.ceil(fraction * n) if isinstance(n, int)
         else tf.cast(tf.math.ceil(fraction * tf.cast(n, tf.float32)), tf.int32))
    confidence = tf.reduce_max(tf.nn.softmax(tf.cast(logits, tf.float32)), axis=-1)
    return tf.math.top_k(-confidence, k=k, sorted=False).indices


def evaluate(engine, data) -> dict:
    """Test loss and accuracy over every test image once."""
    with evaluated_weights(engine):
        batches = engine.placement.copies(data.x_test)[0].shape[0] // engine.eval_batch
        loss, hits, count = (t.numpy() for t in engine._eval_fn(
            data.x_test, data.y_test, data.w_test, data.mean, data.std,
            tf.constant(batches, tf.int32)))
    return {"test_loss": float(loss / count), "test_acc": float(hits / count),
            "count": int(count)}


@contextlib.contextmanager
def evaluated_weights(engine):
    """Within the block the model holds the weights evaluation uses (the moving average
    with `ema`, else the live ones)."""
    average = next((t for t in engine.techniques if isinstance(t, MovingAverage)), None)
    if average is not None:
        average.swap()
    try:
        yield engine.model
    finally:
        if average is not None:
            average.swap()
