"""Load CIFAR-10 (or a stand-in) into uint8 NHWC arrays, from whatever the user has.

Sources: the official python archive or its extracted folder, a download of it, an
image-folder tree, or generated data. Everything ends in one validated `Dataset`, whose
`identity` (name + content hash) travels into every result so numbers are never
mistaken for another dataset's. Pure numpy here; TensorFlow only decodes image files.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import DataError
from .util import atomic_path, content_hash

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
                "num_classes": self.num_classes}


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


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple:
    """Per-channel mean and std of uint8 NHWC images, exactly: integer sums over chunks
    (no float copy of the whole set, which a framework's allocator would keep resident)."""
    total = np.zeros(3, np.int64)
    squares = np.zeros(3, np.int64)
    for i in range(0, len(images), chunk):
        part = images[i:i + chunk].reshape(-1, 3).astype(np.int64)
        total += part.sum(0)
        squares += (part * part).sum(0)
    count = images.size // 3
    mean = total / count
    return mean.astype(np.float32), np.sqrt(squares / count - mean ** 2).astype(np.float32)


# --- the official python archive -------------------------------------------------------

class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR-10 batches contain: loading a pickle otherwise runs code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 batch file {path}: point --data at a complete "
                        f"{ARCHIVE_NAME} or {BATCHES_DIR}/ folder")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        data = d[b"data"] if b"data" in d else d["data"]
        labels = d[b"labels"] if b"labels" in d else d["labels"]
        data = np.asarray(data)
        labels = np.asarray(labels)
    except pickle.UnpicklingError as e:
        raise DataError(f"unsafe or corrupt CIFAR-10 batch {path}: {e}; use the official "
                        f"{ARCHIVE_NAME}") from None
    except Exception as e:  # truncated, wrong format, missing keys
        raise DataError(f"corrupt CIFAR-10 batch {path} ({type(e).__name__}: {e}); "
                        f"re-download {ARCHIVE_NAME}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or len(labels) != len(data):
        raise DataError(f"corrupt CIFAR-10 batch {path}: expected uint8 (N, 3072) data and N "
                        f"labels, got {data.dtype} {data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def load_batches_dir(folder: Path, name: str = "cifar10") -> Dataset:
    train = [_load_batch(folder / b) for b in TRAIN_BATCHES]
    x_test, y_test = _load_batch(folder / TEST_BATCH)
    return make_dataset(np.concatenate([x for x, _ in train]),
                        np.concatenate([y for _, y in train]), x_test, y_test, name)


def load_archive(path: Path, name: str = "cifar10") -> Dataset:
    if not hasattr(tarfile, "data_filter"):
        raise DataError("this Python lacks tarfile's safe extraction filter: use Python "
                        ">= 3.10.12, or extract the archive yourself and pass the folder")
    try:
        with tempfile.TemporaryDirectory(prefix="fastcifar-") as tmp, \
                tarfile.open(path, "r:*") as tar:
            tar.extractall(tmp, filter="data")
            found = [p for p in Path(tmp).rglob(BATCHES_DIR) if p.is_dir()]
            if not found:
                raise DataError(f"{path} holds no {BATCHES_DIR}/ folder: is it the CIFAR-10 "
                                f"python archive?")
            return load_batches_dir(found[0], name)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise DataError(f"corrupt or truncated archive {path} ({type(e).__name__}: {e}); "
                        f"re-download it or pass the extracted {BATCHES_DIR}/ folder") from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(quiet: bool = False) -> Path:
    """The official archive in the cache, downloaded and checksum-verified if absent."""
    url = os.environ.get("FASTCIFAR_CIFAR10_URL", CIFAR10_URL)
    expected = os.environ.get("FASTCIFAR_CIFAR10_SHA256", CIFAR10_SHA256).lower()
    target = cache_dir() / ARCHIVE_NAME
    hint = (f"download {ARCHIVE_NAME} yourself and pass --data PATH (or set FASTCIFAR_DATA "
            f"to a folder holding it, or FASTCIFAR_CIFAR10_URL to a mirror)")
    if target.is_file():
        if _sha256_file(target) == expected:
            return target
        target.unlink()  # a stale or damaged cached copy: fetch again
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data cache {target.parent} ({e}); set "
                        f"FASTCIFAR_DATA to a writable folder") from None
    try:
        with atomic_path(str(target), suffix=".part") as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                from tqdm import tqdm
                with tqdm(total=total, unit="B", unit_scale=True, disable=quiet,
                          desc=f"downloading {ARCHIVE_NAME}") as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
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
        raise DataError(f"could not download CIFAR-10 from {url} ({type(e).__name__}: {e}); "
                        f"{hint}") from None


# --- image-folder trees ----------------------------------------------------------------

def _class_names(split_dir: Path) -> tuple:
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if set(names) == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(names)


def _list_images(root: Path, classes: tuple) -> list:
    files = []
    for label, cls in enumerate(classes):
        d = root / cls
        if not d.is_dir():
            raise DataError(f"missing class folder {d}: train/ and test/ need the same classes")
        files += [(p, label) for p in sorted(d.iterdir())
                  if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"no .png/.jpg images under {root}")
    return files


def _decode_images(files: list) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    x = np.empty((len(files), 32, 32, 3), np.uint8)
    for i, (p, _) in enumerate(files):
        try:
            img = tf.io.decode_image(p.read_bytes(), channels=3, expand_animations=False).numpy()
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
        h.update(f"{p.relative_to(root)}:{label}".encode())
        h.update(p.read_bytes())
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
    if not n.isdigit() or int(n) < 1:
        raise DataError(f"bad data spec {spec!r}: use {spec.split(':')[0]}:N with N >= 1 "
                        f"training images")
    return int(n)


def load(spec: str = "cifar10", quiet: bool = True) -> Dataset:
    """One entry point: 'cifar10' (cached download), 'synthetic[:N]', 'learnable[:N]', or a
    path to the archive, its extracted folder, or an image-folder tree."""
    spec = str(spec)
    if spec == "cifar10":
        local = cache_dir() / ARCHIVE_NAME
        return load_archive(local if local.is_file() else download_cifar10(quiet=quiet))
    if spec.split(":")[0] == "synthetic":
        return synthetic(_parse_count(spec, 50000))
    if spec.split(":")[0] == "learnable":
        return synthetic(_parse_count(spec, 5000), learnable=True)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"no such data path {path}: pass 'cifar10', 'synthetic[:N]', or a "
                        f"path to {ARCHIVE_NAME}, {BATCHES_DIR}/ or an image-folder tree")
    if path.is_file():
        return load_archive(path)
    if (path / TEST_BATCH).exists() or (path / TRAIN_BATCHES[0]).exists():
        return load_batches_dir(path)
    if (path / BATCHES_DIR).is_dir():
        return load_batches_dir(path / BATCHES_DIR)
    if (path / "train").is_dir() or (path / "test").is_dir():
        return load_image_folder(path, quiet=quiet)
    raise DataError(f"{path} is not CIFAR-10 data: expected {ARCHIVE_NAME}, a {BATCHES_DIR}/ "
                    f"folder, or train/<class>/ and test/<class>/ image folders")
