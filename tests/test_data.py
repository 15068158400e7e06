"""Every data source on generated files in the official formats, good and bad."""

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from fastcifar import data
from fastcifar.data import DataError

from fakes import (CLASSES, make_batches, malicious_batch, write_archive,
                   write_batches_dir)


@pytest.fixture(scope="module")
def batches():
    return make_batches(per_batch=20)


def _expected(batches):
    x_train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_train = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    return x_train, y_train, batches["test_batch"][0], batches["test_batch"][1]


def _check(ds, batches):
    x_train, y_train, x_test, y_test = _expected(batches)
    np.testing.assert_array_equal(ds.x_train, x_train)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.x_test, x_test)
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (100, 32, 32, 3)
    assert len(ds.sha256) == 64


def test_archive_and_extracted_folder_load_the_same_arrays(tmp_path, batches):
    a = data.load(str(write_archive(tmp_path / "cifar-10-python.tar.gz", batches)))
    folder = write_batches_dir(tmp_path / "x", batches)
    b = data.load(str(folder))
    c = data.load(str(folder.parent))  # the folder that holds cifar-10-batches-py/
    for ds in (a, b, c):
        _check(ds, batches)
    assert a.sha256 == b.sha256 == c.sha256
    assert a.identity()["train_size"] == 100


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, batches):
    marker = tmp_path / "pwned"
    folder = write_batches_dir(tmp_path / "m", batches)
    (folder / "data_batch_3").write_bytes(malicious_batch(marker))
    with pytest.raises(DataError, match=r"unsafe.*data_batch_3.*refusing to load posix.system"):
        data.load(str(folder))
    archive = write_archive(tmp_path / "evil.tar.gz", batches,
                            replace={"test_batch": malicious_batch(marker)})
    with pytest.raises(DataError, match="test_batch"):
        data.load(str(archive))
    assert not marker.exists()


def test_truncated_archive_names_the_file(tmp_path, batches):
    good = write_archive(tmp_path / "good.tar.gz", batches).read_bytes()
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        data.load(str(bad))


def test_corrupt_and_missing_batches_name_the_file(tmp_path, batches):
    folder = write_batches_dir(tmp_path / "c", batches)
    (folder / "data_batch_2").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(DataError, match="corrupt CIFAR batch .*data_batch_2"):
        data.load(str(folder))
    (folder / "data_batch_2").unlink()
    with pytest.raises(DataError, match="missing cifar10 batch file .*data_batch_2"):
        data.load(str(folder))


def test_archive_without_batches_is_rejected(tmp_path):
    import tarfile

    p = tmp_path / "other.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        tar.add(__file__, arcname="something.py")
    with pytest.raises(DataError, match="no cifar-10-batches-py"):
        data.load(str(p))


class _Server:
    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_from_a_local_server_verifies_and_caches(tmp_path, batches, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    archive = write_archive(served / "cifar-10-python.tar.gz", batches)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCIFAR_DATA", str(cache))
    monkeypatch.setenv("FASTCIFAR_CIFAR10_SHA256", digest)
    with _Server(served) as srv:
        monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", f"{srv.url}/cifar-10-python.tar.gz")
        ds = data.load("cifar10")
    _check(ds, batches)
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    # the archive alone: its digest is computed on every use, never remembered beside it
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-python.tar.gz"]
    # cached: works with the server gone
    monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", "http://127.0.0.1:9/nothing")
    _check(data.load("cifar10"), batches)


def test_download_with_a_wrong_checksum_leaves_nothing(tmp_path, batches, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    write_archive(served / "cifar-10-python.tar.gz", batches)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCIFAR_DATA", str(cache))
    monkeypatch.setenv("FASTCIFAR_CIFAR10_SHA256", "0" * 64)
    with _Server(served) as srv:
        monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", f"{srv.url}/cifar-10-python.tar.gz")
        with pytest.raises(DataError, match="checksum mismatch.*--data PATH"):
            data.load("cifar10")
    assert list(cache.iterdir()) == []


def test_download_failure_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", f"http://127.0.0.1:{port}/c.tar.gz")
    with pytest.raises(DataError, match=r"could not download.*pass --data PATH") as e:
        data.load("cifar10")
    assert "\n" not in str(e.value)


def _write_png_tree(root: Path, classes, per_class=3, seed=0, suffix=".png"):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    images = {}
    for split in ("train", "test"):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                (d / f"{i:04d}{suffix}").write_bytes(tf.io.encode_png(img).numpy())
                images[(split, cls, i)] = img
    return images


def test_image_folder_uses_cifar_order_decodes_exactly_and_caches(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    images = _write_png_tree(root, CLASSES, per_class=2)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCIFAR_DATA", str(cache))
    ds = data.load(str(root))
    assert ds.classes == CLASSES  # CIFAR order, not alphabetical (automobile < bird < cat ...)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    i = list(ds.y_train).index(CLASSES.index("truck"))
    np.testing.assert_array_equal(ds.x_train[i], images[("train", "truck", 0)])
    cached = list((cache / "folders").glob("*.npz"))
    assert len(cached) == 1
    again = data.load(str(root))
    assert again.sha256 == ds.sha256
    # a changed file changes the content key
    (root / "test" / "cat" / "0000.png").write_bytes(
        (root / "test" / "dog" / "0000.png").read_bytes())
    changed = data.load(str(root))
    assert changed.sha256 != ds.sha256 and len(list((cache / "folders").glob("*.npz"))) == 2


def test_image_folder_with_other_names_is_sorted(tmp_path):
    root = tmp_path / "imgs"
    _write_png_tree(root, ("zebra", "ant", "moose"), per_class=1)
    ds = data.load(str(root))
    assert ds.classes == ("ant", "moose", "zebra") and ds.num_classes == 3


def test_corrupt_or_wrong_size_image_names_the_file(tmp_path):
    root = tmp_path / "imgs"
    _write_png_tree(root, ("a", "b"), per_class=1)
    bad = root / "train" / "b" / "0000.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"cannot decode image .*b/0000.png"):
        data.load(str(root))
    import tensorflow as tf

    bad.write_bytes(tf.io.encode_png(np.zeros((16, 16, 3), np.uint8)).numpy())
    with pytest.raises(DataError, match=r"0000.png is 16x16, expected 32x32"):
        data.load(str(root))


def test_synthetic_specs_and_validation():
    ds = data.load("synthetic:500")
    assert ds.x_train.shape == (500, 32, 32, 3) and len(ds.x_test) == 100
    assert ds.name == "synthetic:500"
    assert data.load("learnable:50").name == "learnable:50"
    with pytest.raises(DataError, match="synthetic:N"):
        data.load("synthetic:abc")
    with pytest.raises(DataError, match="labels must be integers in"):
        data.make_dataset(np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 10]),
                          np.zeros((1, 32, 32, 3), np.uint8), np.array([0]), "x")
    with pytest.raises(DataError, match=r"uint8 of shape \(N, 32, 32, 3\)"):
        data.make_dataset(np.zeros((2, 32, 32), np.uint8), np.array([0, 1]),
                          np.zeros((1, 32, 32, 3), np.uint8), np.array([0]), "x")


def test_not_cifar_folder_is_explained(tmp_path):
    with pytest.raises(DataError, match="is not CIFAR-10 data"):
        data.load(str(tmp_path))
