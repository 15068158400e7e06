"""Files in the official CIFAR-10 formats, generated small, for tests."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")


def batch_bytes(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """One batch as the python archive stores it: CHW rows of 3072 bytes, protocol 2."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    d = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
         b"data": data, b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    return pickle.dumps(d, protocol=2)


def make_batches(per_batch: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch)
        out[name] = (x, y)
    return out


def write_batches_dir(folder: Path, batches: dict) -> Path:
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, (x, y) in batches.items():
        (d / name).write_bytes(batch_bytes(x, y, name))
    (d / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [c.encode() for c in CLASSES]}, protocol=2))
    return d


def write_archive(path: Path, batches: dict, replace: dict = None) -> Path:
    """cifar-10-python.tar.gz; `replace` swaps a member's bytes (for corrupt variants)."""
    replace = replace or {}
    with tarfile.open(path, "w:gz") as tar:
        for name, (x, y) in batches.items():
            blob = replace.get(name, batch_bytes(x, y, name))
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


class Exploit:
    """A pickle that would run a shell command when loaded by a plain unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_batch(marker: Path) -> bytes:
    return pickle.dumps({b"data": Exploit(marker), b"labels": [0]}, protocol=2)


def write_cifar100_archive(path: Path, n_train: int = 40, n_test: int = 20, seed: int = 0):
    """cifar-100-python.tar.gz as published: train, test (fine and coarse labels) and meta
    (the class names), protocol-2 pickles; returns (archive, the arrays written)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    blobs = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        coarse = fine // 5
        arrays[split] = (x, fine, coarse)
        blobs[split] = pickle.dumps(
            {b"filenames": [f"{i}.png".encode() for i in range(n)], b"batch_label": split.encode(),
             b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) for v in coarse],
             b"data": x.transpose(0, 3, 1, 2).reshape(n, 3072)}, protocol=2)
    blobs["meta"] = pickle.dumps({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                  b"coarse_label_names": [f"coarse{i}".encode()
                                                          for i in range(20)]}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path, arrays
