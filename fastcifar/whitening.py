"""The frozen whitening first layer (the bag of tricks' 3x3 PCA patches; airbench's 2x2
patches and their negatives), fitted to a fixed random sample of the training images."""

from __future__ import annotations

import keras
import tensorflow as tf

from . import augment

WHITENING_KEY = 0x57A1E  # the hash "epoch" of the whitening sample: no training epoch


def whitening_sample(seed: int, n_train: int, n_images: int):
    """Indices of the training images the whitening is fitted on: a fixed random sample
    (from the seed), never the first N, which an image folder fills class by class."""
    keys = augment.hash_bits(seed, WHITENING_KEY, n_train, 1)[:, 0]
    return tf.argsort(keys, stable=True)[:min(n_images, n_train)]


def fit_whitening(model: keras.Model, images, eps: float = 1e-2) -> None:
    """Set the frozen `whiten` conv from the patches of `images` (normalised, NHWC, on the
    device): W = V diag(1/sqrt(lambda + eps)) over the eigenvectors V of their covariance.
    A kernel with k*k*3 outputs (davidnet, 3x3) takes the centred covariance; one with
    twice that (airbench94, 2x2) takes the uncentred one and both W and -W, largest
    eigenvalue first, as airbench does."""
    layer = model.get_layer("whiten")
    k, outputs = layer.kernel.shape[0], layer.kernel.shape[-1]
    size = k * k * 3
    patches = whitening_patches(images, k)
    if outputs == size:
        patches = patches - tf.reduce_mean(patches, axis=0)
    cov = tf.matmul(patches, patches, transpose_a=True) / tf.cast(tf.shape(patches)[0],
                                                                   tf.float32)
    eigval, eigvec = tf.linalg.eigh(tf.cast(cov, tf.float64))
    w = eigvec / tf.sqrt(eigval + eps)[None, :]
    if outputs == 2 * size:
        w = tf.reverse(w, axis=[1])  # largest eigenvalue first
        w = tf.concat([w, -w], axis=1)
    layer.kernel.assign(tf.reshape(tf.cast(w, tf.float32), [k, k, 3, outputs]))


def whitening_patches(images, k: int = 3):
    """[N*(32-k+1)^2, k*k*3] float32: every valid k x k patch, ordered (row, col,
    channel) to match a conv kernel's [kh, kw, cin] layout."""
    x = tf.cast(images, tf.float32)
    p = tf.image.extract_patches(x, [1, k, k, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
    return tf.reshape(p, [-1, k * k * 3])
