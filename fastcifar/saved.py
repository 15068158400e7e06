"""Saved models read back: a `.keras` file is a zip that anyone may hand to `fastcifar
evaluate`, so it is checked before Keras opens it.

A zip declares each member's size, and Python's zip reader stops there; a deflated member
may still expand a thousandfold (a "zip bomb"), and the HDF5 weights file inside may
compress its datasets once more. Keras writes `.keras` members stored, not deflated, and
HDF5 datasets uncompressed, so a genuine file expands by nothing: any large expansion is
refused, at both levels, before a byte is decompressed for Keras.
"""

from __future__ import annotations

import io
import zipfile

from .errors import UserError
from .util import read_regular

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
    import keras

    from . import model as _  # noqa: F401  (registers the saved layers)
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
