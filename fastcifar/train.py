"""`Trainer`: the compiled, device-resident trainer, as a user imports it.

Three pieces, each in its own module: the engine (`fastcifar.engine`: state, one step, the
multi-step compiled call), the run loop (`fastcifar.loop`: epochs, evaluation, history,
clock) and serving (`fastcifar.serving`: predict, export, save). The training set's
per-channel statistics are computed once, the set is reflect-padded once and lives on the
device (`fastcifar.devicedata`); nothing per image touches the host.
"""

from __future__ import annotations

from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from . import loop, serving
from .data import Dataset
from .devicedata import DeviceData
from .engine import Engine, cross_entropy  # noqa: F401  (part of this module's interface)
from .loop import FitResult
from .whitening import fit_whitening, whitening_sample

__all__ = ["Trainer", "FitResult", "DeviceData", "cross_entropy"]


class Trainer(Engine):
    """`Trainer(config).fit(dataset)`: a fast, faithful baseline (DavidNet, airbench94), or
    any Keras model on the same fast path: `Trainer(config, model=builder)` where
    `builder(precision)` returns a model from 32x32x3 images to logits (or a built model,
    on one device)."""

    def fit(self, data, validation_data=None, epochs: Optional[float] = None,
            quiet: bool = True, on_epoch: Optional[Callable[[dict], None]] = None,
            monitor=None, on_progress: Optional[Callable[[], None]] = None,
            callbacks=None) -> FitResult:
        """Train and evaluate; see `fastcifar.loop.fit` for the clock.

        `data`: a `Dataset` (`fastcifar.load_data`), or the training images as `(x, y)`
        numpy arrays or a `tf.data.Dataset` of (image, label) with the test images in
        `validation_data` (or `data=((x_train, y_train), (x_test, y_test))`): checked up
        front, materialised once on the device. `callbacks`: Keras callbacks, run at
        epoch boundaries (never inside the compiled call), with the epoch's numbers in
        `logs` under Keras' names too."""
        ds = self._dataset(data, validation_data)
        return loop.fit(self, ds, epochs, quiet, on_epoch, monitor, on_progress, callbacks)

    def evaluate(self, data, validation_data=None) -> dict:
        """Test loss and accuracy over every test image exactly once (`data` as `fit`
        takes it: the training images give the normalisation statistics)."""
        ds = self._dataset(data, validation_data)
        self.compile(len(ds.x_train), len(ds.x_test))
        return self.evaluate_prepared(self.prepare(ds))

    def _dataset(self, data, validation_data) -> Dataset:
        from .data import as_dataset
        from .errors import ConfigError

        ds = as_dataset(data, validation_data)
        if ds.num_classes > self.config.num_classes:
            raise ConfigError(f"the data has {ds.num_classes} classes, the net "
                              f"{self.config.num_classes} outputs: build the trainer with "
                              f"recipe(..., num_classes={ds.num_classes})")
        return ds

    def whitening_sample(self, n_train: int, n_images: int = 10000):
        """Indices of the training images the whitening is fitted on (`whitening`)."""
        return whitening_sample(self.config.seed, n_train, n_images)

    def fit_whitening(self, data: DeviceData, n_images: Optional[int] = None) -> None:
        """Whiten the first layer on `n_images` unaugmented training images (the net's
        own count by default: davidnet 10,000, airbench94 5,000)."""
        from .nets import NETS

        spec = NETS[self.config.net]
        pad = self.config.crop_padding
        x = tf.gather(self.placement.first(data.x_train),
                      self.whitening_sample(data.n_train, n_images or spec.whitening_images))
        x = x[:, pad:x.shape[1] - pad, pad:x.shape[2] - pad] if pad else x
        fit_whitening(self.model, tf.cast(self.normalise(x, data.mean, data.std), tf.float32),
                      spec.whitening_eps)

    def predict(self, images: np.ndarray, mean=None, std=None) -> np.ndarray:
        """float32 logits for uint8 NHWC images, exactly as evaluation computes them."""
        return serving.predict(self, images, mean, std)

    def export(self, mean=None, std=None) -> keras.Model:
        """The evaluated model as one Keras model from pixels to logits."""
        return serving.export(self, mean, std)

    def save(self, path: str, mean=None, std=None) -> None:
        """The evaluated model as a `.keras` file that `fastcifar evaluate` reproduces."""
        serving.save(self, path, mean, std)

    def save_saved_model(self, folder: str, mean=None, std=None) -> None:
        """The evaluated model as a TensorFlow SavedModel (TF Serving, TFLite, any TF
        runtime): `tf.saved_model.load(folder).serve(pixels)` gives the logits the
        `.keras` file gives (float32 pixels 0-255 in, normalisation, averaged weights and
        test-time views inside); `.class_names` holds the class names."""
        serving.save_saved_model(self, folder, mean, std)
