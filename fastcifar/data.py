"""Load CIFAR-10 (or a stand-in) into uint8 NHWC arrays, from whatever the user has.

Sources: the official python archive or its extracted folder, a download of it, an
image-folder tree, or generated data. Everything ends in one validated `Dataset`, whose
`identity` (name + content hash) travels into every result so numbers are never
mistaken for another dataset's. Pure numpy here; TensorFlow only decodes image files.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import DataError, gist
from .util import atomic_path, content_hash, physical_memory_bytes, read_regular

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Dataset:
    """Train/test images (uint8, NHWC) and integer labels, with where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    sha256: str
    classes: tuple = CIFAR10_CLASSES

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def identity(self) -> dict:
        return {"name": self.name, "sha256": self.sha256,
                "train_size": int(len(self.x_train)), "test_size": int(len(self.x_test)),
                "num_classes": self.num_classes, "classes": list(self.classes)}


def cache_dir() -> Path:
    return Path(os.environ.get("FASTCIFAR_DATA", Path.home() / ".cache" / "fastcifar"))


def make_dataset(x_train, y_train, x_test, y_test, name: str,
                 classes: tuple = CIFAR10_CLASSES) -> Dataset:
    """Validate shapes, dtypes and labels; every loader ends here."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(f"{name}: {split} images must be uint8 of shape (N, 32, 32, 3), "
                            f"got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{name}: {split} labels must be a vector of {len(x)} labels, "
                            f"got shape {y.shape}")
        if len(x) == 0:
            raise DataError(f"{name}: the {split} split is empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes):
            raise DataError(f"{name}: {split} labels must be integers in [0, {len(classes)}), "
                            f"got range [{y.min()}, {y.max()}]")
    arrays = [np.ascontiguousarray(x_train), np.asarray(y_train, np.int32),
              np.ascontiguousarray(x_test), np.asarray(y_test, np.int32)]
    return Dataset(*arrays, name=name, sha256=content_hash(*arrays), classes=tuple(classes))


# --- data a user already holds ------------------------------------------------------------

def _pixels(x, name: str, split: str) -> np.ndarray:
    """Images as uint8 NHWC: uint8 as they are; integers in [0, 255]; floats in [0, 1]
    (x 255) or [0, 255], rounded. Anything else (normalised or negative values) is refused:
    fastcifar normalises with the training set's statistics itself."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DataError(f"{name}: {split} images must have shape (N, 32, 32, 3) (NHWC, RGB), "
                        f"got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{name}: {split} images must be uint8, integer or float pixels, got "
                        f"{x.dtype}")
    if x.size and not np.all(np.isfinite(x)):
        raise DataError(f"{name}: {split} images hold NaN or infinite values")
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise DataError(f"{name}: {split} pixel values span [{low:g}, {high:g}]: pass raw "
                        f"pixels (uint8, or floats in [0, 1] or [0, 255]); fastcifar "
                        f"normalises them itself")
    scale = 255.0 if np.issubdtype(x.dtype, np.floating) and high <= 1.0 else 1.0
    return np.rint(x.astype(np.float64) * scale).astype(np.uint8)


def _labels(y, n: int, name: str, split: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        hint = " (one-hot? pass class indices: y.argmax(-1))" if y.ndim == 2 else ""
        raise DataError(f"{name}: {split} labels must be a vector of {n} class indices, got "
                        f"shape {y.shape}{hint}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y))
                and np.all(y == np.rint(y))):
            raise DataError(f"{name}: {split} labels must be integer class indices, got "
                            f"{y.dtype}")
        y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{name}: {split} labels must be >= 0, got {y.min()}")
    return y.astype(np.int64)


def _materialised(split_data, name: str, split: str) -> tuple:
    """(images, labels) from a pair of arrays or a tf.data.Dataset of (image, label),
    batched or not, read once."""
    if hasattr(split_data, "as_numpy_iterator"):  # tf.data.Dataset
        images, labels = [], []
        for element in split_data.as_numpy_iterator():
            if not (isinstance(element, tuple) and len(element) == 2):
                raise DataError(f"{name}: the {split} tf.data.Dataset must yield (image, "
                                f"label) pairs")
            x, y = np.asarray(element[0]), np.asarray(element[1])
            batched = x.ndim == 4
            images.append(x if batched else x[None])
            labels.append(y.reshape(-1) if batched else y.reshape(1))
        if not images:
            raise DataError(f"{name}: the {split} tf.data.Dataset is empty")
        x, y = np.concatenate(images), np.concatenate(labels)
    elif isinstance(split_data, (tuple, list)) and len(split_data) == 2:
        x, y = split_data
    else:
        raise DataError(f"{name}: the {split} data must be (images, labels) arrays or a "
                        f"tf.data.Dataset of (image, label), got {type(split_data).__name__}")
    x = _pixels(x, name, split)
    return x, _labels(y, len(x), name, split)


def from_arrays(train, test, name: str = "arrays", classes: Optional[tuple] = None) -> Dataset:
    """A `Dataset` from data a user holds: `train` and `test` each `(images, labels)`
    numpy arrays or a `tf.data.Dataset` of (image, label). Images are materialised once
    as uint8 pixels (see `_pixels`); `classes` defaults to class0..classK-1 for the
    largest label K-1 (at least 2 classes)."""
    x_train, y_train = _materialised(train, name, "train")
    x_test, y_test = _materialised(test, name, "test")
    if classes is None:
        top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
        classes = tuple(f"class{i}" for i in range(max(top + 1, 2)))
    return make_dataset(x_train, y_train, x_test, y_test, name, tuple(classes))


def as_dataset(data, validation_data=None) -> Dataset:
    """What `Trainer.fit` accepts, as a `Dataset`: a Dataset; `(train, test)` with each
    split as `from_arrays` takes it; or the training split with `validation_data`."""
    if isinstance(data, Dataset):
        if validation_data is not None:
            raise DataError("a Dataset holds its own test split: drop validation_data")
        return data
    if validation_data is not None:
        return from_arrays(data, validation_data)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            hasattr(part, "as_numpy_iterator") or (isinstance(part, (tuple, list))
                                                   and len(part) == 2) for part in data):
        return from_arrays(data[0], data[1])
    raise DataError("fit() takes a fastcifar Dataset (fastcifar.load_data), "
                    "((x_train, y_train), (x_test, y_test)) arrays, or training data with "
                    "validation_data=(x_test, y_test) (arrays or tf.data.Datasets)")


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple:
    """Per-channel mean and std of uint8 NHWC images, exactly: integer sums over chunks
    (no float copy of the whole set, which a framework's allocator would keep resident).
    The std is at least 1 (one grey level)."""
    total = np.zeros(3, np.int64)
    squares = np.zeros(3, np.int64)
    for i in range(0, len(images), chunk):
        part = images[i:i + chunk].reshape(-1, 3).astype(np.int64)
        total += part.sum(0)
        squares += (part * part).sum(0)
    count = images.size // 3
    mean = total / count
    # at least one grey level: a channel that never changes (blank images) would
    # otherwise be divided by zero and every loss would be NaN
    std = np.maximum(np.sqrt(np.maximum(squares / count - mean ** 2, 0.0)), 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


# --- the official python archive -------------------------------------------------------

class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches contain: loading a pickle otherwise runs code.

    The official archives (Python 2 pickles) need numpy's array and dtype constructors
    only. A Python 3 protocol-2 pickle of bytes (as the test fixtures and re-pickled copies
    write them) also calls `_codecs.encode(text, "latin1")`; that is admitted in a form
    that takes no other codec (nested "hex" or "base64" encodes would double the size at
    every level) and builds no more bytes in all than the pickle itself holds, which is
    all a pickle written by `pickle.dumps` ever needs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def __init__(self, blob: bytes):
        super().__init__(io.BytesIO(blob), encoding="bytes")
        self.budget = len(blob)  # bytes `_codecs.encode` may still build

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return self._latin1
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)

    def _latin1(self, text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1") \
                or errors != "strict":
            raise pickle.UnpicklingError(f"refusing _codecs.encode with codec {encoding!r}: "
                                         f"only latin1 text is admitted")
        self.budget -= len(text)
        if self.budget < 0:
            raise pickle.UnpicklingError("it builds more bytes than the file holds (a "
                                         "memory bomb?)")
        return text.encode("latin1")


@dataclass(frozen=True)
class Format:
    """One of the official python archives: what it holds and how to read it."""

    name: str               # "cifar10" / "cifar100"
    archive: str            # file name of the archive
    folder: str             # the folder inside it
    train: tuple            # member names holding the training set, in order
    test: str               # the member holding the test set
    url: str
    sha256: str
    labels: dict            # label mode -> (pickle key, number of classes)
    member_cap: int         # bytes: far above an official member is not this format
    size: int = 0           # bytes of the official archive (a download stops past it)
    meta: str = ""          # the member with class names, if any
    meta_keys: tuple = ()   # its key per label mode

    @property
    def members(self) -> tuple:
        return self.train + (self.test,)


# An official CIFAR-10 batch is 31 MB, CIFAR-100's train member 154 MB; either archive is
# under 200 MB unpacked: far above is not CIFAR, and reading it would fill disk or memory.
CIFAR10 = Format("cifar10", ARCHIVE_NAME, BATCHES_DIR, TRAIN_BATCHES, TEST_BATCH, CIFAR10_URL,
                 CIFAR10_SHA256, {"fine": (b"labels", 10)}, 64 << 20, 170_498_071)
CIFAR100 = Format("cifar100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",),
                  "test", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                  {"fine": (b"fine_labels", 100), "coarse": (b"coarse_labels", 20)},
                  192 << 20, 169_001_437, "meta",
                  (b"fine_label_names", b"coarse_label_names"))
FORMATS = (CIFAR10, CIFAR100)
MAX_MEMBER_BYTES = 192 << 20  # a cap over every format's own (tests lower it)
MAX_ARCHIVE_BYTES = 512 << 20


def _unpickle(blob: bytes, where: str, what: str) -> dict:
    try:
        d = _CifarUnpickler(blob).load()
    except pickle.UnpicklingError as e:
        raise DataError(f"unsafe or corrupt {what} {where}: {e}; use the official "
                        f"archive") from None
    except Exception as e:  # truncated, not a pickle
        raise DataError(f"corrupt {what} {where} ({type(e).__name__}: {gist(e)}); "
                        f"re-download the archive") from None
    if not isinstance(d, dict):
        raise DataError(f"corrupt {what} {where}: not a dict of data and labels")
    return d


def _parse_batch(blob: bytes, where: str, label_key: bytes = b"labels",
                 num_classes: int = 10) -> tuple:
    """One pickled batch -> (images NHWC uint8, labels int64), every field checked."""
    d = _unpickle(blob, where, "CIFAR batch")
    data = d.get(b"data", d.get("data"))
    labels = d.get(label_key, d.get(label_key.decode()))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"corrupt CIFAR batch {where}: expected uint8 (N, 3072) data, "
                        f"got {got}")
    if not isinstance(labels, (list, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            and 0 <= v < num_classes for v in labels) or len(labels) != len(data):
        raise DataError(f"corrupt CIFAR batch {where}: labels must be a list of "
                        f"{len(data)} integers in [0, {num_classes})")
    return (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
            np.asarray([int(v) for v in labels], np.int64))


def _class_names_from(fmt: Format, mode: str, blob: Optional[bytes], where: str) -> tuple:
    _, count = fmt.labels[mode]
    if fmt is CIFAR10:
        return CIFAR10_CLASSES
    if blob is None:
        return tuple(f"class{i}" for i in range(count))
    key = fmt.meta_keys[list(fmt.labels).index(mode)]
    names = _unpickle(blob, where, "class-name list").get(key)
    if not isinstance(names, list) or len(names) != count or not all(
            isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"corrupt class names in {where}: expected {count} names")
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


def _read_regular(path: Path, limit: int = MAX_MEMBER_BYTES,
                  what: str = "data file") -> bytes:
    """A regular file's bytes, at most `limit` of them; never opens a FIFO or a device."""
    try:
        return read_regular(path, limit, what, DataError)
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None


def _format_of_folder(folder: Path) -> Format:
    return CIFAR100 if (folder / CIFAR100.test).is_file() and (folder / "train").is_file() \
        else CIFAR10


def load_batches_dir(folder: Path, name: Optional[str] = None, mode: str = "fine") -> Dataset:
    """The extracted archive (CIFAR-10's batches or CIFAR-100's train/test). Its content
    cannot be checked against the official digest, so it is not called `cifar10` or
    `cifar100` (a `--target` must be declared to benchmark it)."""
    fmt = _format_of_folder(folder)
    label_key, count = _label_mode(fmt, mode)
    parts = {}
    for member in fmt.members:
        path = folder / member
        if not path.exists() and not path.is_symlink():
            raise DataError(f"missing {fmt.name} batch file {path}: point --data at a "
                            f"complete {fmt.archive} or {fmt.folder}/ folder")
        parts[member] = _parse_batch(_read_regular(path, min(fmt.member_cap,
                                                             MAX_MEMBER_BYTES)),
                                     str(path), label_key, count)
    meta = folder / fmt.meta if fmt.meta else None
    classes = _class_names_from(fmt, mode, _read_regular(meta) if meta and meta.is_file()
                                else None, str(meta))
    suffix = "-coarse" if mode == "coarse" else ""
    return _from_batches(fmt, parts, name or f"{fmt.name}{suffix}-format:"
                         f"{folder.resolve().name}", classes)


def _label_mode(fmt: Format, mode: str) -> tuple:
    if mode not in fmt.labels:
        raise DataError(f"{fmt.name} has no {mode!r} labels: use "
                        f"{' or '.join(repr(m) for m in fmt.labels)}")
    return fmt.labels[mode]


def _from_batches(fmt: Format, parts: dict, name: str, classes: tuple) -> Dataset:
    train = [parts[b] for b in fmt.train]
    return make_dataset(np.concatenate([x for x, _ in train]),
                        np.concatenate([y for _, y in train]), *parts[fmt.test], name,
                        classes)


class _Counted(io.RawIOBase):
    """A read-only stream that refuses to deliver more than `limit` bytes in all."""

    def __init__(self, stream, limit: int, what: str):
        self.stream, self.limit, self.what, self.count = stream, limit, what, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.stream.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise DataError(f"{self.what} unpacks to more than {self.limit} bytes: not a "
                            f"CIFAR python archive (a compression bomb?)")
        buffer[:len(data)] = data
        return len(data)


class _Hashed(io.RawIOBase):
    """A read-only stream that hashes what passes through it: the digest an archive is
    named by is the digest of the very bytes that were parsed."""

    def __init__(self, stream):
        self.stream, self.sha256 = stream, hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.stream.read(len(buffer))
        self.sha256.update(data)
        buffer[:len(data)] = data
        return len(data)


def load_archive(path: Path, name: Optional[str] = None, mode: str = "fine") -> Dataset:
    """A python archive (CIFAR-10 or CIFAR-100, told apart by its members). Named
    `cifar10`/`cifar100` only when the bytes read are the official archive's (their
    SHA-256, computed on this read)."""
    ds, fmt, digest = _read_archive(path, mode)
    suffix = "-coarse" if mode == "coarse" else ""
    if name is None:
        name = (f"{fmt.name}{suffix}" if digest == fmt.sha256
                else f"{fmt.name}{suffix}-format:{digest[:12]}")
    return dataclasses.replace(ds, name=name)


def _read_archive(path: Path, mode: str) -> tuple:
    """(dataset, format, SHA-256 of the file) of an archive read as a stream: only the
    members the format needs, each capped, nothing written to disk; the gzip checksum is
    verified by reading to the end, and the digest is of the very bytes parsed."""
    wanted = {m: fmt for fmt in FORMATS for m in fmt.members + ((fmt.meta,) if fmt.meta
                                                               else ())}
    blobs, formats = {}, {}
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            raw = _Hashed(f)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            counted = io.BufferedReader(_Counted(stream, MAX_ARCHIVE_BYTES, str(path)))
            with tarfile.open(fileobj=counted, mode="r|") as tar:
                for member in tar:
                    folder, _, base = member.name.rpartition("/")
                    fmt = next((f for f in FORMATS if folder.endswith(f.folder)), None)
                    if fmt is None or base not in wanted or wanted[base] is not fmt \
                            or not member.isfile():
                        continue  # never extracted: links, devices and paths stay inert
                    cap = min(fmt.member_cap, MAX_MEMBER_BYTES)
                    if member.size > cap:
                        raise DataError(f"{base} in {path} is {member.size} bytes, above the "
                                        f"{cap}-byte limit of a {fmt.name} member")
                    blobs[base] = tar.extractfile(member).read()
                    formats[fmt.name] = fmt
            while counted.read(1 << 20):  # to the end: gzip checks its CRC there
                pass
            while raw.read(1 << 20):  # and every byte of the file is in the digest
                pass
            digest = raw.sha256.hexdigest()
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
        raise DataError(f"corrupt or truncated archive {path} ({type(e).__name__}: "
                        f"{gist(e)}); re-download it or pass the extracted "
                        f"folder") from None
    if len(formats) != 1:
        raise DataError(f"{path} holds no {BATCHES_DIR}/ or {CIFAR100.folder}/ batches: is it "
                        f"a CIFAR python archive?")
    fmt, = formats.values()
    missing = [m for m in fmt.members if m not in blobs]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: re-download {fmt.archive}")
    label_key, count = _label_mode(fmt, mode)
    parts = {m: _parse_batch(blobs.pop(m), f"{m} in {path}", label_key, count)
             for m in fmt.members}
    classes = _class_names_from(fmt, mode, blobs.get(fmt.meta), f"{fmt.meta} in {path}")
    return _from_batches(fmt, parts, str(path), classes), fmt, digest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_official(fmt: Format, mode: str = "fine", quiet: bool = True) -> Dataset:
    """The official archive from the cache, fetched when absent, and fetched again when
    the cached bytes are not the expected ones: their digest is computed on every use, as
    they are read (a digest remembered beside the file could be forged by whoever can
    write there)."""
    target = cache_dir() / fmt.archive
    expected = _expected_digest(fmt)
    if target.is_file():
        try:
            ds, _, digest = _read_archive(target, mode)
        except DataError:
            digest = None  # damaged: fetched again below
        if digest == expected:
            return _named(ds, fmt, mode, digest)
        target.unlink()
    ds, _, digest = _read_archive(download(fmt, quiet), mode)
    if digest != expected:  # replaced between the download's check and this read
        raise DataError(f"{target} changed while it was read: run the command again")
    return _named(ds, fmt, mode, digest)


def _named(ds: Dataset, fmt: Format, mode: str, digest: str) -> Dataset:
    """`ds`, whose archive has the expected digest: `cifar10`/`cifar100` when that is the
    official one (another is a mirror the user configured by its digest)."""
    suffix = "-coarse" if mode == "coarse" else ""
    return dataclasses.replace(ds, name=f"{fmt.name}{suffix}" if digest == fmt.sha256
                               else f"{fmt.name}{suffix}-format:{digest[:12]}")


def _expected_digest(fmt: Format) -> str:
    return os.environ.get(f"FASTCIFAR_{fmt.name.upper()}_SHA256", fmt.sha256).lower()


def _download_cap(fmt: Format) -> int:
    """Bytes a download of `fmt` may bring: the official size plus a margin. An endless or
    oversized stream is not the archive, and must not fill the disk."""
    return fmt.size + max(fmt.size // 100, 1 << 20)


def download(fmt: Format = None, quiet: bool = False) -> Path:
    """Download an archive into the cache, size-capped, checksum-verified, written
    atomically."""
    fmt = fmt or CIFAR10
    env = f"FASTCIFAR_{fmt.name.upper()}"
    url = os.environ.get(f"{env}_URL", fmt.url)
    expected = _expected_digest(fmt)
    target = cache_dir() / fmt.archive
    cap = _download_cap(fmt)
    hint = (f"download {fmt.archive} yourself and pass --data PATH (or set FASTCIFAR_DATA "
            f"to a folder holding it, or {env}_URL to a mirror)")
    too_big = DataError(f"{url} sends more than {cap} bytes, far above the {fmt.size}-byte "
                        f"{fmt.archive}: it is not the archive; {hint}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data cache {target.parent} ({e}); set "
                        f"FASTCIFAR_DATA to a writable folder") from None
    try:
        with atomic_path(str(target), suffix=".part") as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                if total and total > cap:
                    raise too_big
                from tqdm import tqdm
                got = 0
                with tqdm(total=total, unit="B", unit_scale=True, disable=quiet,
                          desc=f"downloading {fmt.archive}") as bar:
                    for chunk in iter(lambda: resp.read(min(1 << 20, cap + 1 - got)), b""):
                        got += len(chunk)
                        if got > cap:
                            raise too_big
                        out.write(chunk)
                        bar.update(len(chunk))
            got = _sha256_file(Path(tmp))
            if got != expected:
                raise DataError(f"checksum mismatch for {url} (sha256 {got[:12]}..., "
                                f"expected {expected[:12]}...): {hint}")
        return target
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"could not download {fmt.name} from {url} ({type(e).__name__}: "
                        f"{gist(e)}); {hint}") from None


def download_cifar10(quiet: bool = False) -> Path:
    return download(CIFAR10, quiet)


# --- image-folder trees ----------------------------------------------------------------

def _class_names(split_dir: Path) -> tuple:
    names = sorted(p.name for p in split_dir.iterdir()
                   if p.is_dir() and not p.name.startswith("."))  # .ipynb_checkpoints etc.
    if set(names) == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    if not names:
        raise DataError(f"{split_dir} has no class folders: expected {split_dir}/<class>/")
    if len(names) < 2:
        raise DataError(f"{split_dir} has one class folder ({names[0]}): a classifier needs "
                        f"at least 2 classes")
    return tuple(names)  # any number: the net's head follows the data


def _list_images(root: Path, classes: tuple) -> list:
    present = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if present != set(classes):
        raise DataError(f"{root} has class folders {sorted(present)}, train/ has "
                        f"{sorted(classes)}: train/ and test/ need the same classes")
    files = []
    for label, cls in enumerate(classes):
        files += [(p, label) for p in sorted((root / cls).iterdir())
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise DataError(f"no .png/.jpg images under {root}")
    return files


MAX_IMAGE_FILE_BYTES = 1 << 20  # a 32x32 image is a few kB in any format


def image_size(blob: bytes):
    """(width, height) from a PNG, JPEG, GIF or BMP header, read before any decoding;
    None when the header is not one of these."""
    if blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) >= 24:
        return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
    if blob[:6] in (b"GIF87a", b"GIF89a") and len(blob) >= 10:
        return int.from_bytes(blob[6:8], "little"), int.from_bytes(blob[8:10], "little")
    if blob[:2] == b"BM" and len(blob) >= 26:
        return (int.from_bytes(blob[18:22], "little", signed=True),
                abs(int.from_bytes(blob[22:26], "little", signed=True)))
    if blob[:2] == b"\xff\xd8":  # JPEG: walk the segments to the frame header (SOFn)
        i = 2
        while i + 9 < len(blob):
            if blob[i] != 0xFF:
                return None
            marker = blob[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = int.from_bytes(blob[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return (int.from_bytes(blob[i + 7:i + 9], "big"),
                        int.from_bytes(blob[i + 5:i + 7], "big"))
            i += 2 + length
    return None


def _decode_images(files: list) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    x = np.empty((len(files), 32, 32, 3), np.uint8)
    for i, (p, _) in enumerate(files):
        blob = _read_regular(p, MAX_IMAGE_FILE_BYTES, "image file")
        size = image_size(blob)
        if size is None:
            raise DataError(f"cannot decode image {p} (not a PNG, JPEG, GIF or BMP): replace "
                            f"or remove the file")
        if size != (32, 32):
            raise DataError(f"image {p} is {size[0]}x{size[1]}, expected 32x32: resize the "
                            f"tree to 32x32 first")
        try:
            img = tf.io.decode_image(blob, channels=3, expand_animations=False).numpy()
        except Exception as e:
            raise DataError(f"cannot decode image {p} ({type(e).__name__}): replace or remove "
                            f"the file") from None
        if img.shape != (32, 32, 3):
            raise DataError(f"image {p} is {img.shape[1]}x{img.shape[0]}, expected 32x32: "
                            f"resize the tree to 32x32 first")
        x[i] = img
    return x, np.array([label for _, label in files], np.int64)


def load_image_folder(root: Path, quiet: bool = True) -> Dataset:
    """ROOT/train/<class>/* and ROOT/test/<class>/*, decoded once and cached as .npz."""
    train_dir, test_dir = root / "train", root / "test"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DataError(f"missing {d}: an image folder needs train/<class>/ and "
                            f"test/<class>/ subfolders")
    classes = _class_names(train_dir)
    train_files, test_files = _list_images(train_dir, classes), _list_images(test_dir, classes)
    h = hashlib.sha256(repr(classes).encode())
    for p, label in train_files + test_files:
        h.update(os.fsencode(p.relative_to(root)) + f":{label}".encode())  # any file name
        h.update(_read_regular(p, MAX_IMAGE_FILE_BYTES, "image file"))
    key = h.hexdigest()
    cached = cache_dir() / "folders" / f"{key[:32]}.npz"
    name = f"folder:{root.name}"
    if cached.is_file():
        try:
            with np.load(cached) as z:
                return make_dataset(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                                    name, classes)
        except Exception:
            pass  # damaged cache entry: decode again below
    if not quiet:
        print(f"decoding {len(train_files) + len(test_files)} images under {root} (once)")
    ds = make_dataset(*_decode_images(train_files), *_decode_images(test_files), name, classes)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(str(cached), suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                     y_test=ds.y_test)
    except OSError:
        pass  # the cache is an optimisation; an unwritable cache must not stop training
    return ds


# --- generated data --------------------------------------------------------------------

def synthetic(n_train: int = 50000, n_test: Optional[int] = None, learnable: bool = False,
              seed: int = 0) -> Dataset:
    """Random images. `learnable` tints each class with its own colour and stripe pattern,
    which survives crop and flip, so a tiny net must beat chance quickly."""
    n_test = max(n_train // 5, 10) if n_test is None else n_test
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n_train + n_test)
    if learnable:
        # ten well-separated colours (corners and mid-points of the RGB cube) + stripes
        palette = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
                            [1, 0, 1], [0, 1, 1], [1, 1, 1], [.5, .5, 0], [0, .5, .5]])
        colours = 50 + 155 * palette
        rows = np.arange(32)[:, None]
        stripes = np.stack([np.sin(rows * (k + 1) * np.pi / 16) for k in range(10)])  # (10,32,1)
        x = colours[y][:, None, None, :] + 40 * stripes[y][..., None] \
            + rng.normal(0, 20, (n_train + n_test, 32, 32, 3))
        x = np.clip(x, 0, 255).astype(np.uint8)
    else:
        x = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    kind = "learnable" if learnable else "synthetic"
    return make_dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                        f"{kind}:{n_train}")


def _parse_count(spec: str, default: int) -> int:
    _, _, n = spec.partition(":")
    if not n:
        return default
    if not (n.isascii() and n.isdigit()) or int(n) < 1:
        raise DataError(f"bad data spec {spec!r}: use {spec.split(':')[0]}:N with N >= 1 "
                        f"training images, in digits")
    need = int(n) * 1.2 * 3072 * 3  # images, the test fifth, and working copies
    have = physical_memory_bytes()
    if have and need > have:
        raise DataError(f"{spec} would need about {need / 2**30:,.0f} GiB of memory; this "
                        f"machine has {have / 2**30:.0f} GiB: use fewer images")
    return int(n)


def input_path(spec: str) -> Optional[str]:
    """The file or folder a data spec reads (the cached archive for 'cifar10' and
    'cifar100'), or None for generated data: what no output may overwrite."""
    spec = str(spec)
    for fmt in FORMATS:
        if spec.split(":")[0] == fmt.name:
            return str(cache_dir() / fmt.archive)
    if spec.split(":")[0] in ("synthetic", "learnable") or not spec:
        return None
    return str(Path(spec).expanduser())


def training_images(spec: str) -> Optional[int]:
    """How many training images `spec` holds, known without decoding any (so settings
    that do not fit the data are refused before the work starts); None when that takes
    reading the data."""
    spec = str(spec)
    if spec.split(":")[0] in [fmt.name for fmt in FORMATS]:
        return 50000
    if spec.split(":")[0] in ("synthetic", "learnable"):
        try:
            return _parse_count(spec, 50000 if spec.startswith("synthetic") else 5000)
        except DataError:
            return None
    path = Path(spec).expanduser() if spec else None
    if path is not None and (path / "train").is_dir() and (path / "test").is_dir():
        try:
            return len(_list_images(path / "train", _class_names(path / "train")))
        except (DataError, OSError):
            return None  # the load says what is wrong
    return None


def load(spec: str = "cifar10", quiet: bool = True) -> Dataset:
    """One entry point: 'cifar10' or 'cifar100[:coarse]' (cached download),
    'synthetic[:N]', 'learnable[:N]', or a path to an archive, its extracted folder, or an
    image-folder tree. Only an official archive (by its SHA-256) is named `cifar10` or
    `cifar100`."""
    spec = str(spec)
    for fmt in FORMATS:
        if spec.split(":")[0] == fmt.name:
            mode = spec.partition(":")[2] or "fine"
            _label_mode(fmt, mode)
            return load_official(fmt, mode, quiet)
    if spec.split(":")[0] == "synthetic":
        return synthetic(_parse_count(spec, 50000))
    if spec.split(":")[0] == "learnable":
        return synthetic(_parse_count(spec, 5000), learnable=True)
    if not spec:
        raise DataError("empty data spec: pass 'cifar10', 'synthetic[:N]' or a path")
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"no such data path {path}: pass 'cifar10', 'synthetic[:N]', or a "
                        f"path to {ARCHIVE_NAME}, {BATCHES_DIR}/ or an image-folder tree")
    if path.is_file():
        return load_archive(path)
    if not path.is_dir():
        raise DataError(f"{path} is neither a file nor a folder: pass the archive or a folder")
    for fmt in FORMATS:
        if (path / fmt.test).is_file() or (path / fmt.train[0]).is_file() and \
                fmt is CIFAR10:
            return load_batches_dir(path)
        if (path / fmt.folder).is_dir():
            return load_batches_dir(path / fmt.folder)
    if (path / CIFAR100.test).is_file():
        return load_batches_dir(path)
    if (path / "train").is_dir() or (path / "test").is_dir():
        return load_image_folder(path, quiet=quiet)
    raise DataError(f"{path} is not CIFAR-10 data: expected {ARCHIVE_NAME}, a {BATCHES_DIR}/ "
                    f"folder, or train/<class>/ and test/<class>/ image folders")
