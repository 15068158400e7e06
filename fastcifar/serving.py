"""The model as it is served: pixels in, logits out, exactly as evaluation computes them
(the training set's statistics, the evaluated weights, the test-time views), saved to
`.keras` and read back.

A `.keras` file is a zip that anyone may hand to `fastcifar evaluate`, so it is checked
before Keras opens it. A zip declares each member's size, and Python's zip reader stops
there; a deflated member may still expand a thousandfold (a "zip bomb"), and the HDF5
weights file inside may compress its datasets once more. Keras writes `.keras` members
stored, not deflated, and HDF5 datasets uncompressed, so a genuine file expands by
nothing: any large expansion is refused, at both levels, before a byte is decompressed
for Keras.
"""

from __future__ import annotations

import io
import zipfile

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from . import layers as _registered  # noqa: F401  (the nets' layers, for loading)
from .errors import ConfigError, UserError
from .util import atomic_path, read_regular


def standardize(x, mean, std):
    """Pixels -> (x - mean) / std in float32, with the training set's channel statistics."""
    return (tf.cast(x, tf.float32) - mean) / std


@keras.saving.register_keras_serializable(package="fastcifar")
class Standardize(layers.Layer):
    """`standardize` as a layer: the statistics travel in the saved file."""

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, x):
        return standardize(x, self.mean, self.std)

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="fastcifar")
class TestTimeViews(layers.Layer):
    """[B, H, W, C] -> [V*B, H, W, C]: the test-time views (`augment.tta_views`), stacked."""

    def __init__(self, mode="none", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x):
        from .augment import tta_views

        return tf.concat(tta_views(x, self.mode), axis=0)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="fastcifar")
class MeanOverViews(layers.Layer):
    """[V*B, K] logits -> [B, K]: the weighted mean over the V views of each image
    (`augment.TTA_WEIGHTS`; equal weights when none are given)."""

    def __init__(self, views=1, weights=None, fraction=1.0, **kwargs):
        super().__init__(**kwargs)
        self.views = int(views)
        self.view_weights = [float(w) for w in (weights or [1.0 / self.views] * self.views)]
        self.fraction = float(fraction)

    def call(self, logits):
        stacked = tf.reshape(logits, [self.views, -1, logits.shape[-1]])
        mean = tf.tensordot(tf.constant(self.view_weights, stacked.dtype), stacked, axes=1)
        if self.fraction >= 1 or self.views == 1:
            return mean
        # selective TTA (`tta_fraction`): the mean only where the plain view (the first) is
        # least sure; every view is computed here, so serving pays for all of them
        from .evaluation import least_confident

        chosen = least_confident(stacked[0], self.fraction)
        return tf.tensor_scatter_nd_update(stacked[0], chosen[:, None],
                                           tf.gather(mean, chosen))

    def get_config(self):
        return {**super().get_config(), "views": self.views, "weights": self.view_weights,
                "fraction": self.fraction}


@keras.saving.register_keras_serializable(package="fastcifar")
class ClassNames(layers.Layer):
    """The logits, unchanged; the class names travel in the saved file
    (`model.get_layer("class_names").names`)."""

    def __init__(self, names=(), **kwargs):
        super().__init__(**kwargs)
        self.names = [str(n) for n in names]

    def call(self, logits):
        return logits

    def get_config(self):
        return {**super().get_config(), "names": self.names}


def inference_model(network: keras.Model, mean, std, tta: str = "none",
                    class_names=(), tta_fraction: float = 1.0) -> keras.Model:
    """Pixels (0-255) -> logits exactly as evaluation computes them: the training set's
    statistics, then the mean logits over the test-time views. Saved, it loads in Keras'
    safe mode after `import fastcifar.serving`."""
    from .augment import TTA_WEIGHTS

    image = keras.Input((32, 32, 3), name="pixels")
    x = Standardize(mean, std, name="standardize")(image)
    x = TestTimeViews(tta, name="test_time_views")(x)
    logits = MeanOverViews(len(TTA_WEIGHTS[tta]), TTA_WEIGHTS[tta], tta_fraction,
                           name="mean_over_views")(network(x))
    logits = ClassNames(class_names, name="class_names")(logits)
    return keras.Model(image, logits, name=f"{network.name}_inference")


# --- a trainer's model, served ----------------------------------------------------------

def _statistics(engine, mean, std):
    if mean is None:
        if engine.data is None:
            raise RuntimeError("the served model needs the training statistics: call fit() "
                               "first or pass mean and std")
        mean, std = engine.data.mean, engine.data.std
    return mean, std


def predict(engine, images: np.ndarray, mean=None, std=None) -> np.ndarray:
    """float32 logits for uint8 NHWC images, exactly as evaluation computes them: the
    training statistics, the evaluated weights (`ema`), the test-time views (`tta`)."""
    mean, std = _statistics(engine, mean, std)
    out = []
    with engine.evaluated_weights(), tf.device(engine.placement.devices[0]):
        for i in range(0, len(images), 1000):
            x = engine.normalise(tf.constant(images[i:i + 1000]),
                                 tf.constant(mean, tf.float32), tf.constant(std, tf.float32))
            out.append(engine._predict_fn(x).numpy())
    return (np.concatenate(out) if out
            else np.zeros((0, engine.config.num_classes), np.float32))


def export(engine, mean=None, std=None) -> keras.Model:
    """The evaluated model as one Keras model from pixels to logits (normalisation and
    test-time views included), sharing the engine's variables."""
    mean, std = _statistics(engine, mean, std)
    names = engine.class_names or [f"class{i}" for i in range(engine.config.num_classes)]
    return inference_model(engine.model, np.asarray(mean, np.float64).tolist(),
                           np.asarray(std, np.float64).tolist(), engine.config.tta, names,
                           engine.config.tta_fraction)


def save(engine, path: str, mean=None, std=None) -> None:
    """The evaluated model (`export`, with the averaged weights under `ema`) as a `.keras`
    file, written to a temporary name first so no half file is left. Loading it and
    calling it on pixels reproduces evaluation (`fastcifar evaluate`)."""
    with engine.evaluated_weights():
        save_model(export(engine, mean, std), path)


def save_saved_model(engine, folder: str, mean=None, std=None) -> None:
    """The evaluated model as a TensorFlow SavedModel in `folder` (which must not exist):
    endpoint `serve` (float32 pixels [N, 32, 32, 3] -> logits) and the variable
    `class_names`. Written beside `folder` under a temporary name, then renamed."""
    import os
    import shutil
    import tempfile

    folder = os.path.abspath(folder)
    check_new_folder(folder, "--saved-model")
    parent = os.path.dirname(folder)
    tmp = tempfile.mkdtemp(prefix=".saved-model-", dir=parent)
    try:
        with engine.evaluated_weights():
            model = export(engine, mean, std)
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("serve", model.call, input_signature=[
                tf.TensorSpec([None, 32, 32, 3], tf.float32, name="pixels")])
            names = model.get_layer("class_names").names
            archive.add_variable_collection("class_names", [tf.Variable(names, name="names")])
            archive.write_out(tmp, verbose=False)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_new_folder(folder: str, flag: str) -> None:
    """An output folder that must be new (or empty): refused in one line otherwise."""
    import os

    if os.path.lexists(folder) and not (os.path.isdir(folder) and not os.listdir(folder)):
        raise ConfigError(f"{flag} {folder} already exists; remove it or choose a new folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {folder}: cannot write in {parent}; choose a folder "
                          f"whose parent exists and is writable")


def save_model(model: keras.Model, path: str) -> None:
    if not str(path).endswith(".keras"):
        raise ConfigError(f"invalid save path {path!r}: it must end in .keras")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


# --- a saved model, read back -------------------------------------------------------------

MAX_MODEL_BYTES = 2 << 30      # a model file (and all it unpacks to); DavidNet is 26 MB
MAX_EXPANSION = 20             # unpacked bytes per stored byte, per member and per dataset
SMALL_BYTES = 1 << 20          # below this, expansion does not matter
MAX_MEMBERS = 64               # a .keras file has three


def _refuse(path: str, why: str) -> UserError:
    return UserError(f"cannot load {path} as a fastcifar model: {why}; pass a file written "
                     f"by `fastcifar train --save`")


def _expands_too_much(unpacked: int, packed: int) -> bool:
    return unpacked > SMALL_BYTES and unpacked > MAX_EXPANSION * max(packed, 1)


def check_keras_file(path: str) -> None:
    """Refuse (one line) a file that is not a regular zip of modest members: too many
    members, a member or a total above `MAX_MODEL_BYTES`, a member or an HDF5 dataset
    that would expand more than `MAX_EXPANSION` times."""
    try:
        blob = read_regular(path, MAX_MODEL_BYTES, "model file")
    except FileNotFoundError:
        raise UserError(f"no such model file {path}: pass a .keras file written by "
                        f"`fastcifar train --save`") from None
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise _refuse(path, f"it is not a .keras (zip) file ({e})") from None
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise _refuse(path, f"it holds {len(members)} members, a .keras file holds 3")
    total = sum(m.file_size for m in members)
    if total > MAX_MODEL_BYTES:
        raise _refuse(path, f"its members unpack to {total} bytes, above the "
                            f"{MAX_MODEL_BYTES}-byte limit")
    for m in members:
        if _expands_too_much(m.file_size, m.compress_size):
            raise _refuse(path, f"member {m.filename} would expand from {m.compress_size} "
                                f"to {m.file_size} bytes (a compression bomb?)")
    for m in members:
        if m.filename.endswith(".h5"):
            _check_h5(path, m.filename, archive.read(m))


def _check_h5(path: str, name: str, blob: bytes) -> None:
    """Every dataset of an HDF5 member: its declared size against what it stores."""
    import h5py

    datasets = []
    try:
        with h5py.File(io.BytesIO(blob), "r") as f:
            f.visititems(lambda _, obj: datasets.append(
                (obj.name, obj.size * obj.dtype.itemsize, obj.id.get_storage_size()))
                if isinstance(obj, h5py.Dataset) else None)
    except Exception as e:  # not HDF5, truncated: say so rather than let Keras trip on it
        raise _refuse(path, f"{name} is not a readable HDF5 file ({type(e).__name__})") \
            from None
    declared = sum(size for _, size, _ in datasets)
    if declared > MAX_MODEL_BYTES:
        raise _refuse(path, f"{name} declares {declared} bytes of weights, above the "
                            f"{MAX_MODEL_BYTES}-byte limit")
    for dataset, size, stored in datasets:
        if _expands_too_much(size, stored):
            raise _refuse(path, f"weights {dataset} in {name} would expand from {stored} to "
                                f"{size} bytes (a compression bomb?)")


def load_serving_model(path: str, num_classes: int, checked: bool = False):
    """A model saved by `fastcifar train --save`, checked (`check_keras_file`, unless the
    caller just did), loaded in Keras' safe mode, and checked to map (N, 32, 32, 3)
    pixels to (N, num_classes) logits."""
    from .errors import gist

    if not checked:
        check_keras_file(path)
    try:
        loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # wrong layers, a Lambda refused by safe mode, bad weights
        raise UserError(f"cannot load {path} as a fastcifar model ({type(e).__name__}: "
                        f"{gist(e)}); pass a file written by "
                        f"`fastcifar train --save`") from None
    inputs = getattr(loaded, "inputs", None) or []
    outputs = getattr(loaded, "outputs", None) or []
    in_shapes = [tuple(t.shape) for t in inputs]
    out_shapes = [tuple(t.shape) for t in outputs]
    if len(inputs) != 1 or tuple(inputs[0].shape[1:]) != (32, 32, 3):
        raise UserError(f"{path} takes inputs of shape {in_shapes}, not one (None, 32, 32, 3) "
                        f"batch of pixels: it is not a CIFAR model saved by fastcifar")
    if len(outputs) != 1 or len(outputs[0].shape) != 2 or outputs[0].shape[-1] != num_classes:
        raise UserError(f"{path} gives outputs of shape {out_shapes}, not one (None, "
                        f"{num_classes}) batch of logits for the data's {num_classes} "
                        f"classes: evaluate it on the data it was trained for")
    return loaded
