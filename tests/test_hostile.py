"""Hostile files, faults and bad input: nothing mislabelled, nothing lost, no traceback.

Every hostile file is built here, small; size caps are tested with small caps."""

import errno
import hashlib
import io
import json
import os
import shutil
import pickle
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from fakes import make_batches, write_archive, write_batches_dir
from fastcifar import data
from fastcifar.errors import DataError

TINY = ["--data", "learnable:512", "--width", "8", "--batch-size", "64", "--epochs", "1",
        "--quiet", "--precision", "float32"]


def run(*args, cwd=None, env=None, timeout=300):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastcifar.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=timeout)


def one_line_exit_2(out, needle):
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert err.startswith("fastcifar: error:") and needle in err, err


@pytest.fixture(scope="module")
def batches():
    return make_batches(per_batch=20)


# --- 1. only the official archive is called cifar10 -------------------------------------

def test_an_archive_by_path_is_named_by_its_content_not_cifar10(tmp_path, batches):
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", batches)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert data.load(str(archive)).name == f"cifar10-format:{digest[:12]}"
    folder = write_batches_dir(tmp_path / "x", batches)
    assert data.load(str(folder)).name == "cifar10-format:cifar-10-batches-py"
    # so a benchmark of it must declare what it aims for
    out = run("bench", "accuracy", "--data", str(archive), "--width", "4", cwd=tmp_path)
    one_line_exit_2(out, "--target")


def test_a_flipped_crc_byte_is_caught(tmp_path, batches):
    blob = bytearray(write_archive(tmp_path / "a.tar.gz", batches).read_bytes())
    blob[-8] ^= 0xFF  # the gzip trailer's CRC-32: the data still decompresses
    bad = tmp_path / "crc.tar.gz"
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"corrupt or truncated archive .*crc.tar.gz.*CRC") \
            as e:
        data.load(str(bad))
    assert "\n" not in str(e.value)


def test_a_tampered_cached_archive_is_fetched_again_or_refused(tmp_path, batches,
                                                                monkeypatch):
    from test_data import _Server

    served = tmp_path / "served"
    served.mkdir()
    archive = write_archive(served / "cifar-10-python.tar.gz", batches)
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCIFAR_DATA", str(cache))
    monkeypatch.setenv("FASTCIFAR_CIFAR10_SHA256", hashlib.sha256(archive.read_bytes())
                       .hexdigest())
    with _Server(served) as srv:
        monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", f"{srv.url}/cifar-10-python.tar.gz")
        first = data.load("cifar10")
        cached = cache / "cifar-10-python.tar.gz"
        tampered = bytearray(cached.read_bytes())
        tampered[len(tampered) // 2] ^= 0x01  # same size
        cached.write_bytes(bytes(tampered))
        stamp = cached.stat().st_mtime_ns + 10 ** 9
        os.utime(cached, ns=(stamp, stamp))  # a later modification time, on any filesystem
        again = data.load("cifar10")  # verified on use: damaged, so fetched again
    assert again.sha256 == first.sha256
    assert cached.read_bytes() == archive.read_bytes()
    cached.write_bytes(bytes(tampered))
    monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", "http://127.0.0.1:9/nothing")
    with pytest.raises(DataError, match="could not download") as e:
        data.load("cifar10")  # no source answers: one line, and no damaged data used
    assert "\n" not in str(e.value)


# --- 2. a diverged run is a failure ------------------------------------------------------

def test_a_diverged_run_fails_with_a_failed_result_compare_refuses(tmp_path):
    out = run("train", *TINY, "--lr-peak", "1e6", "--json", str(tmp_path / "out.json"))
    one_line_exit_2(out, "training diverged")
    r = json.loads((tmp_path / "out.json").read_text())
    assert r["status"] == "failed" and "diverged" in r["error"]
    assert "final_test_acc" not in r["metrics"]
    cmp = run("compare", str(tmp_path / "out.json"), str(tmp_path / "out.json"))
    one_line_exit_2(cmp, "failed run")


@pytest.mark.parametrize("flag", ["--lr-peak", "--weight-decay", "--bias-lr-scale",
                                  "--peer-timeout"])
def test_non_finite_settings_are_refused(flag, tmp_path):
    one_line_exit_2(run("train", *TINY, flag, "inf", cwd=tmp_path), "finite")


# --- 3. the worker's log cannot be redirected by a planted symlink -----------------------

def test_the_worker_log_refuses_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    log = tmp_path / "planted.log"
    log.symlink_to(victim)
    code = ("import os, sys; from fastcifar import cluster\n"
            "try:\n    cluster.redirect_native_stderr()\nexcept OSError as e:\n"
            "    print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, FASTCIFAR_NATIVE_LOG=str(log)))
    assert out.stdout.strip() == "FileExistsError", out.stderr
    assert victim.read_text() == "precious"


# --- 4. bounded reading and decoding ------------------------------------------------------

def test_a_compression_bomb_stops_at_the_cap(tmp_path, batches, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(data, "MAX_ARCHIVE_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/padding")
        info.size = 4 << 20
        tar.addfile(info, io.BytesIO(bytes(4 << 20)))  # 4 MB of zeros: ~4 kB on disk
    assert bomb.stat().st_size < 50_000
    with pytest.raises(DataError, match="unpacks to more than 1048576 bytes"):
        data.load(str(bomb))
    assert list(scratch.iterdir()) == []  # nothing was extracted anywhere


def test_a_member_above_its_cap_is_refused_before_reading(tmp_path, batches, monkeypatch):
    monkeypatch.setattr(data, "MAX_MEMBER_BYTES", 1000)
    archive = write_archive(tmp_path / "a.tar.gz", batches)
    opened = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile",
                        lambda self, m: opened.append(m.name) or real(self, m))
    with pytest.raises(DataError, match=r"data_batch_1 in .*a.tar.gz is \d+ bytes, above the "
                                        r"1000-byte limit"):
        data.load(str(archive))
    assert opened == []  # refused from the header: not a byte of the member was read


def _png_header(width, height):
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                                + struct.pack(">I", zlib.crc32(kind + body)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x" * 100)


def test_an_image_declaring_a_huge_size_is_refused_before_decoding(tmp_path, monkeypatch):
    import tensorflow as tf

    from test_data import _write_png_tree

    _write_png_tree(tmp_path / "t", ("a", "b"), per_class=2)
    (tmp_path / "t" / "train" / "a" / "0000.png").write_bytes(_png_header(20000, 20000))
    decoded = []
    real = tf.io.decode_image
    monkeypatch.setattr(tf.io, "decode_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    with pytest.raises(DataError, match=r"0000.png is 20000x20000, expected 32x32"):
        data.load(str(tmp_path / "t"))
    assert decoded == []  # refused from the header, nothing decoded
    assert data.image_size(_png_header(20000, 20000)) == (20000, 20000)
    jpeg = tf.io.encode_jpeg(np.zeros((32, 48, 3), np.uint8)).numpy()
    assert data.image_size(jpeg) == (48, 32)


# --- 6. results are never lost silently -------------------------------------------------

def test_a_failing_model_write_keeps_the_json_and_says_so(tmp_path, monkeypatch, capsys):
    from fastcifar import cli, serving

    def full_disk(model, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serving, "save_model", full_disk)
    code = cli.main(["train", *TINY, "--json", str(tmp_path / "r.json"),
                     "--save", str(tmp_path / "m.keras")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{tmp_path / 'm.keras'} could not be written (No space left on device)" in err
    assert f"{tmp_path / 'r.json'} was written" in err
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.parametrize("args,needle", [
    (["--json", ""], "empty output path"),
    (["--json", "m.keras", "--save", "m.keras"], "both name"),
    (["--json", "fifo"], "not a regular file"),
    (["--profile", "afile"], "is a file, not a folder"),
])
def test_outputs_that_cannot_work_are_refused_up_front(tmp_path, args, needle):
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    one_line_exit_2(run("train", *TINY, *args, cwd=tmp_path), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "fifo"]


def test_files_follow_the_umask(tmp_path):
    from fastcifar import results

    old = os.umask(0o027)
    try:
        results.write_json(str(tmp_path / "r.json"), {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640


def test_a_full_disk_leaves_no_partial_cache_entry(tmp_path, monkeypatch):
    from test_data import _write_png_tree

    _write_png_tree(tmp_path / "t", ("a", "b"), per_class=2)

    def savez_fills_the_disk(f, **arrays):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_fills_the_disk)
    ds = data.load(str(tmp_path / "t"))  # the cache is an optimisation: training goes on
    assert len(ds.x_train) == 4
    assert list((data.cache_dir() / "folders").iterdir()) == []


# --- 7. SIGTERM is handled like Ctrl-C ----------------------------------------------------

def test_sigterm_mid_training_cleans_up_and_exits_143(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    errors = open(tmp_path / "stderr.txt", "w+")  # a file: the progress bar cannot block
    p = subprocess.Popen([sys.executable, "-m", "fastcifar.cli", "train", "--data",
                          "learnable:4096", "--width", "16", "--batch-size", "64",
                          "--epochs", "20", "--steps-per-call", "1", "--json",
                          str(out_dir / "r.json"), "--save", str(out_dir / "m.keras")],
                         stdout=subprocess.PIPE, stderr=errors, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and "step/s" not in open(errors.name).read():
            assert p.poll() is None, open(errors.name).read()[-2000:]
            time.sleep(0.2)  # wait for the progress bar: training steps are running
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    err = open(errors.name).read()
    assert p.returncode == 143, err[-2000:]
    assert "terminated; no result written" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


def test_ctrl_c_that_tensorflow_rewraps_still_exits_130(monkeypatch, capsys):
    """A signal that lands while TensorFlow traces comes back as a SystemError inside a
    StagingError, not a KeyboardInterrupt: it must still read as the user's stop."""
    from fastcifar import cli

    def traced(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, handled by the CLI
            time.sleep(5)
        except KeyboardInterrupt as e:
            raise SystemError("returned a result with an exception set") from e
        raise AssertionError("SIGINT never arrived")

    monkeypatch.setattr(cli, "cmd_compare", traced)
    # what the process had: Python's default, or SIG_IGN under a shell's background `&`
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["compare", "a.json", "b.json"]) == 130
    assert "interrupted; no result written" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # restored

    def broken(args):
        raise SystemError("a real bug, no signal")

    monkeypatch.setattr(cli, "cmd_compare", broken)
    with pytest.raises(SystemError):  # without a signal, a bug is still a bug
        cli.main(["compare", "a.json", "b.json"])


def test_sigterm_during_a_download_leaves_no_partial_file(tmp_path):
    import http.server
    import threading

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 20))
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(bytes(10_000))
                    time.sleep(0.05)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", FASTCIFAR_DATA=str(cache),
               FASTCIFAR_CIFAR10_URL=f"http://127.0.0.1:{server.server_address[1]}/c.tgz")
    p = subprocess.Popen([sys.executable, "-m", "fastcifar.cli", "train", "--width", "4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 60
        while not list(cache.glob("*.part")) and time.time() < deadline:
            time.sleep(0.1)
        assert list(cache.glob("*.part")), "the download never started"
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        server.shutdown()
    assert p.returncode == 143, err[-2000:]
    assert list(cache.iterdir()) == []


# --- 8. one line, not a traceback ---------------------------------------------------------

def _tree(root: Path, classes):
    from test_data import _write_png_tree

    _write_png_tree(root, classes, per_class=1)
    return root


@pytest.mark.parametrize("make,needle", [
    (lambda r: [shutil.rmtree(d) for split in ("train", "test") for d in (r / split).iterdir()
                if d.name != "a"], "at least 2 classes"),
    (lambda r: (r / "train" / "a" / "x.png").mkdir(), "x.png is not a regular file"),
    (lambda r: (r / "train" / "a" / "x.png").symlink_to(r / "nowhere.png"), "missing file"),
    (lambda r: os.mkfifo(r / "train" / "a" / "x.png"), "x.png is not a regular file"),
])
def test_bad_image_trees_are_one_line(tmp_path, make, needle):
    root = _tree(tmp_path / "t", tuple("abcdefghij"))
    make(root)
    with pytest.raises(DataError, match=needle) as e:
        data.load(str(root))
    assert "\n" not in str(e.value)


def test_hidden_folders_are_ignored(tmp_path):
    root = _tree(tmp_path / "t", ("a", "b"))
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "test" / ".ipynb_checkpoints").mkdir()
    assert data.load(str(root)).classes == ("a", "b")


@pytest.mark.parametrize("labels", [[2 ** 64] * 20, [None] * 20, 7, {"a": 1}, [0.5] * 20,
                                    ["cat"] * 20, [True] * 20, [0] * 19, [-1] * 20])
def test_bad_pickle_labels_are_refused(tmp_path, batches, labels):
    folder = write_batches_dir(tmp_path / "c", batches)
    x = batches["data_batch_1"][0]
    blob = pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(20, 3072),
                         b"labels": labels}, protocol=2)
    (folder / "data_batch_1").write_bytes(blob)
    with pytest.raises(DataError, match=r"data_batch_1: labels must be a list of 20 integers"):
        data.load(str(folder))


BAD = [
    (["train", "--seed", str(2 ** 63)], "invalid seed"),
    (["train", "--batch-size", str(2 ** 64)], "invalid batch_size"),
    (["train", "--width", "100000000"], "GiB"),
    (["train", "--data", "synthetic:1000000000000"], "GiB"),
    (["train", "--data", "learnable:64", "--device", "garbage"], "invalid device='garbage'"),
    (["train", "--target", "1.5"], "above 1"),
    (["bench", "step", "--steps", "0"], "invalid count '0'"),
    (["bench", "step", "--batch-size", ""], "invalid --batch-size ''"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_are_one_line(args, needle, tmp_path):
    one_line_exit_2(run(*args, cwd=tmp_path), needle)
    assert list(tmp_path.iterdir()) == []


def test_tf_config_with_non_ascii_digits_is_refused():
    from fastcifar import cluster
    from fastcifar.errors import ConfigError

    with pytest.raises(ConfigError, match="is not 'host:port'"):
        cluster.parse_tf_config(json.dumps({"cluster": {"worker": ["a:２２２２"]},
                                            "task": {"type": "worker", "index": 0}}))


def test_a_worker_port_in_use_is_one_line(tmp_path):
    import socket

    from fastcifar import cluster

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        peers = [f"127.0.0.1:{port}", cluster.free_local_addresses(1)[0]]
        out = run("train", *TINY, "--strategy", "multiworker", "--peer-timeout", "20",
                  env={"TF_CONFIG": cluster.tf_config(peers, 0)}, timeout=120)
    finally:
        busy.close()
    one_line_exit_2(out, f"127.0.0.1:{port}")


def test_report_on_a_result_lacking_keys_is_one_line(tmp_path):
    broken = {"schema_version": 1, "command": "train", "history": [{"test_acc": 0.5}]}
    (tmp_path / "r.json").write_text(json.dumps(broken))
    one_line_exit_2(run("report", str(tmp_path / "r.json"), "-o", str(tmp_path / "p.png")),
                    "cannot plot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# --- 9. smaller ---------------------------------------------------------------------------

def test_errors_name_the_users_archive_in_one_line(tmp_path, batches):
    archive = write_archive(tmp_path / "mine.tar.gz", batches,
                            replace={"data_batch_2": b"\x80\x02not a pickle"})
    with pytest.raises(DataError, match=r"data_batch_2 in .*mine.tar.gz") as e:
        data.load(str(archive))
    assert "/fastcifar-" not in str(e.value) and "\n" not in str(e.value)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(write_archive(tmp_path / "b.tar.gz", batches).read_bytes()[:3000])
    with pytest.raises(DataError, match="cut.tar.gz") as e:
        data.load(str(cut))
    assert "\n" not in str(e.value)


def test_a_stale_heartbeat_variable_does_not_turn_supervision_off(tmp_path):
    """Inherited from a shell, FASTCIFAR_HEARTBEAT_FD must not make the command skip its
    supervisor: the start-up deadline still applies."""
    from fastcifar import cluster

    peers = cluster.free_local_addresses(2)  # nobody listens on the second
    t0 = time.monotonic()
    out = run("train", *TINY, "--strategy", "multiworker", "--peer-timeout", "6",
              env={"TF_CONFIG": cluster.tf_config(peers, 0), "FASTCIFAR_HEARTBEAT_FD": "1",
                   "FASTCIFAR_SUPERVISOR_PID": "-1"}, timeout=120)
    one_line_exit_2(out, "start-up timed out")
    assert time.monotonic() - t0 < 90


# === round two ===========================================================================

# --- 0. every recipe's model saves, loads in safe mode and evaluates to its accuracy -----

def _recipe_variants():
    from fastcifar.config import RECIPES

    variants = [(name, {}) for name in RECIPES]  # a new recipe is covered when it lands
    return variants + [("airbench94", {"muon_lr": 0.24})]


@pytest.mark.parametrize("name,extra", _recipe_variants(),
                         ids=[n + ("+muon" if e else "") for n, e in _recipe_variants()])
def test_every_recipe_saves_loads_in_safe_mode_and_evaluates_to_its_accuracy(
        tmp_path, name, extra):
    from fastcifar.config import RuntimeConfig, recipe
    from fastcifar.run import evaluate_saved, run_training

    cfg = recipe(name, width=4, batch_size=64, epochs=2, target=None, **extra)
    r = run_training(cfg, RuntimeConfig(eval_batch_size=128), "learnable:512",
                     json_path=str(tmp_path / "r.json"), save_path=str(tmp_path / "m.keras"))
    ev = evaluate_saved(str(tmp_path / "m.keras"), "learnable:512")  # Keras safe mode
    assert ev["metrics"]["test_images"] == 102
    assert abs(ev["metrics"]["final_test_acc"] - r["metrics"]["final_test_acc"]) <= 0.001
    assert ev["metrics"]["final_test_loss"] == pytest.approx(r["metrics"]["final_test_loss"],
                                                             rel=1e-3)
    assert ev["config"]["recorded"]["test_time_views"]["mode"] == cfg.tta


# --- 1. the unpickler builds nothing a pickle does not hold -------------------------------

class _Encode:
    """`_codecs.encode(inner, codec)` when pickled."""

    def __init__(self, inner, codec):
        self.inner, self.codec = inner, codec

    def __reduce__(self):
        import _codecs

        return (_codecs.encode, (self.inner, self.codec))


def _batch_with(data_field) -> bytes:
    return pickle.dumps({b"data": data_field, b"labels": [0] * 20}, protocol=2)


def test_a_pickle_that_nests_encodes_is_refused(tmp_path, batches):
    """Nested hex encodes double the bytes at every level: 12 levels turn 1 kB into 4 MB
    (30 would be gigabytes). Only latin1 text is admitted."""
    bomb = "x" * 1000
    for _ in range(12):
        bomb = _Encode(bomb, "hex" if not isinstance(bomb, str) else "latin1")
    blob = _batch_with(bomb)
    assert len(blob) < 2000
    folder = write_batches_dir(tmp_path / "c", batches)
    (folder / "data_batch_1").write_bytes(blob)
    with pytest.raises(DataError, match=r"data_batch_1: refusing _codecs.encode with codec "
                                        r"'hex'") as e:
        data.load(str(folder))
    assert "\n" not in str(e.value)


def test_a_pickle_that_re_encodes_one_text_is_capped(tmp_path, batches):
    """One memoised text encoded 500 times builds 500 times the bytes the file holds: the
    whole unpickled object may not hold more bytes than the pickle."""
    text = "y" * 10_000
    blob = pickle.dumps({b"data": [_Encode(text, "latin1") for _ in range(500)],
                         b"labels": [0] * 20}, protocol=2)
    assert len(blob) < 20_000  # the text is stored once, then fetched from the memo
    folder = write_batches_dir(tmp_path / "c", batches)
    (folder / "data_batch_1").write_bytes(blob)
    with pytest.raises(DataError, match="builds more bytes than the file holds"):
        data.load(str(folder))
    # what the official archives and fixtures hold still loads: protocol-2 bytes included
    (folder / "data_batch_1").write_bytes(
        __import__("fakes").batch_bytes(*batches["data_batch_1"], "data_batch_1"))
    assert len(data.load(str(folder)).x_train) == 100


# --- 2. a .keras zip bomb is refused before Keras opens it -------------------------------

def _keras_zip(path, weights: bytes, method=None):
    import zipfile

    method = zipfile.ZIP_DEFLATED if method is None else method
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", "{}")
        z.writestr("config.json", "{}")
        z.writestr(zipfile.ZipInfo("model.weights.h5"), weights, compress_type=method)
    return path


def _h5_bytes(**dataset_kwargs) -> bytes:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("layers/dense/vars/0", **dataset_kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("make,needle", [
    # 8 MB of zeros deflated to ~8 kB: a thousandfold (the was 1.7 MB -> 3.7 GB)
    (lambda p: _keras_zip(p, bytes(8 << 20)), "member model.weights.h5 would expand"),
    # stored as is, but the HDF5 dataset inside is gzip-compressed zeros
    (lambda p: _keras_zip(p, _h5_bytes(data=np.zeros((2048, 1024), np.float32),
                                       compression="gzip"), method=0),
     "weights /layers/dense/vars/0 in model.weights.h5 would expand"),
])
def test_a_keras_zip_bomb_is_refused_before_keras_opens_it(tmp_path, monkeypatch, capsys,
                                                           make, needle):
    import keras

    from fastcifar import cli

    opened = []
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: opened.append(a))
    path = make(tmp_path / "bomb.keras")
    assert path.stat().st_size < 200_000
    code = cli.main(["evaluate", str(path), "--data", "learnable:64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert opened == []


# --- 3. a download stops at the archive's size --------------------------------------------

def test_an_endless_download_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download_cap", lambda fmt: 3 << 20)
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", "file:///dev/zero")
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"file:///dev/zero sends more than 3145728 bytes"):
        data.load("cifar10")
    assert time.monotonic() - t0 < 30
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left


def test_a_download_declaring_too_many_bytes_is_refused_before_reading(tmp_path,
                                                                      monkeypatch):
    import http.server
    import threading

    sent = []

    class Huge(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(bytes(1 << 16))
                    sent.append(1)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTCIFAR_CIFAR10_URL",
                       f"http://127.0.0.1:{server.server_address[1]}/c.tgz")
    try:
        with pytest.raises(DataError, match="sends more than"):
            data.load("cifar10")
    finally:
        server.shutdown()
    assert list((tmp_path / "cache").iterdir()) == []


# --- 4. compare reads regular files only, and only so much ---------------------------------

def test_compare_refuses_a_fifo_a_device_and_an_oversized_file(tmp_path, monkeypatch, capsys):
    from fastcifar import cli, results

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"schema_version": 1}))
    os.mkfifo(tmp_path / "fifo.json")
    for path, needle in ((tmp_path / "fifo.json", "not a regular file"),
                         ("/dev/zero", "not a regular file")):
        t0 = time.monotonic()
        assert cli.main(["compare", str(path), str(good)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert time.monotonic() - t0 < 10  # no wait for a writer that never comes
    monkeypatch.setattr(results, "MAX_RESULT_BYTES", 100)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"schema_version": 1, "pad": "x" * 200}))
    assert cli.main(["compare", str(big), str(good)]) == 2
    assert "above the 100-byte limit of a result file" in capsys.readouterr().err


# --- 5. no digest is remembered: a forged one names nothing -------------------------------

def test_a_forged_digest_sidecar_cannot_name_an_archive_cifar10(tmp_path, batches,
                                                                monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("FASTCIFAR_DATA", str(cache))
    monkeypatch.setenv("FASTCIFAR_CIFAR10_URL", "http://127.0.0.1:9/nothing")
    fake = write_archive(cache / "cifar-10-python.tar.gz", batches)
    st = fake.stat()
    (cache / "cifar-10-python.tar.gz.sha256").write_text(
        f"{st.st_size} {st.st_mtime_ns} {data.CIFAR10_SHA256}")  # a forged remembered digest
    with pytest.raises(DataError, match="could not download"):
        data.load("cifar10")  # the fake is hashed, found wrong, and fetched again
    assert not (cache / "cifar-10-python.tar.gz").exists()


# --- 6. no output overwrites an input -----------------------------------------------------

def test_an_output_that_is_also_an_input_is_refused(tmp_path, batches, monkeypatch, capsys):
    from fastcifar import cli

    model = tmp_path / "m.keras"
    model.write_bytes(b"a model, precious")
    archive = write_archive(tmp_path / "a.tar.gz", batches)
    before = archive.read_bytes()
    os.link(archive, tmp_path / "hardlink.json")
    (tmp_path / "r.png").write_text("{}")  # a result, however it is named
    cases = [
        (["evaluate", str(model), "--json", str(model)], "--json"),
        (["train", *TINY[2:], "--data", str(archive), "--json", str(archive)], "--json"),
        (["train", *TINY[2:], "--data", str(archive), "--json",
          str(tmp_path / "hardlink.json")], "--json"),
        (["bench", "step", "--width", "4", "--data", str(archive), "--json", str(archive)],
         "--json"),
        (["train", *TINY[2:], "--data", str(tmp_path), "--save", str(tmp_path / "x.keras")],
         "lies inside the input folder"),
        (["report", str(tmp_path / "r.png"), "-o", str(tmp_path / "r.png")], "--output"),
    ]
    for argv, needle in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and ("also the input" in err or "inside" in err), err
        assert len(err.splitlines()) == 1, err
    assert model.read_bytes() == b"a model, precious" and archive.read_bytes() == before
    assert (tmp_path / "r.png").read_text() == "{}" and not (tmp_path / "x.keras").exists()


# --- 7. divergence is a failed result in every benchmark ----------------------------------

def test_a_diverged_step_benchmark_fails_with_a_failed_result(tmp_path):
    out = run("bench", "step", "--data", "learnable:512", "--width", "4", "--batch-size",
              "64", "--steps", "4", "--reps", "2", "--lr-peak", "1e6", "--precision",
              "float32", "--json", str(tmp_path / "s.json"))
    one_line_exit_2(out, "training diverged")
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["status"] == "failed" and r["benchmark"] == "step" and r["metrics"] == {}
    one_line_exit_2(run("compare", str(tmp_path / "s.json"), str(tmp_path / "s.json")),
                    "failed run")


def test_a_diverged_accuracy_benchmark_writes_its_failed_result(tmp_path, capsys):
    from fastcifar import cli

    code = cli.main(["bench", "accuracy", *TINY, "--lr-peak", "1e6", "--target", "0.5",
                     "--json", str(tmp_path / "a.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "training diverged" in err and len(err.splitlines()) == 1, err
    r = json.loads((tmp_path / "a.json").read_text())
    assert r["status"] == "failed" and r["benchmark"] == "accuracy"
    assert "diverged" in r["error"] and r["metrics"] == {}


def test_a_diverged_ablation_writes_its_failed_result(tmp_path, capsys):
    from fastcifar import cli

    code = cli.main(["bench", "ablate", *TINY, "--recipe", "tutorial", "--lr-peak", "1e6",
                     "--json", str(tmp_path / "a.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "training diverged" in err and len(err.splitlines()) == 1, err
    r = json.loads((tmp_path / "a.json").read_text())
    assert r["status"] == "failed" and r["benchmark"] == "ablate"
    assert "diverged" in r["error"]


# --- 8. a budget of less than one step is refused ------------------------------------------

def test_a_run_of_less_than_one_step_is_refused(tmp_path, capsys):
    from fastcifar import cli

    code = cli.main(["train", *TINY, "--epochs", "1e-300", "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr()
    assert code == 2 and "invalid epochs=1e-300: less than one step (8 steps make an epoch" \
        in err.err, err.err
    assert "fastcifar train:" not in err.out  # refused before the run's header is printed
    assert not (tmp_path / "r.json").exists()


# --- 9. what an interrupted command says is what is on disk --------------------------------

def test_sigterm_while_the_model_is_saved_says_the_json_was_written(tmp_path):
    code = ("import os, signal, time, sys\n"
            "from fastcifar import cli, train\n"
            "def save(self, path, mean=None, std=None):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "train.Trainer.save = save\n"
            f"sys.exit(cli.main({[*TINY, '--json', str(tmp_path / 'r.json'), '--save', str(tmp_path / 'm.keras')]!r}))\n")
    code = code.replace("cli.main([", "cli.main(['train', ")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert out.returncode == 143, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last == (f"fastcifar: terminated; written before the stop: {tmp_path / 'r.json'}; "
                    f"nothing else"), last
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# --- 10. sys.exit in a user's module is an error naming it ---------------------------------

@pytest.mark.parametrize("source,needle", [
    ("import sys\nsys.exit(0)\n", "importing exiting called sys.exit(0)"),
    ("import sys\ndef f(policy):\n    sys.exit(0)\n", "building the model with f() called "
                                                     "sys.exit(0)"),
])
def test_a_net_module_that_calls_sys_exit_is_an_error(tmp_path, source, needle):
    (tmp_path / "exiting.py").write_text(source)
    out = run("train", *TINY, "--net", "exiting:f", "--no-whiten", cwd=tmp_path,
              env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    one_line_exit_2(out, needle)


# --- 11. one line, not a traceback ---------------------------------------------------------

def test_a_deterministic_step_benchmark_runs(tmp_path):
    """Op determinism refuses unseeded random ops: the conv peak's inputs are seeded."""
    out = run("bench", "step", "--deterministic", "--data", "learnable:256", "--width", "4",
              "--batch-size", "64", "--steps", "1", "--reps", "1", "--precision", "float32",
              "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "s.json").read_text())["runtime"]["deterministic"] is True


def _saved_keras(path, inputs, outputs):
    import keras

    image = keras.Input(inputs)
    x = keras.layers.Flatten()(image)
    x = keras.layers.Dense(int(np.prod(outputs)))(x)
    x = keras.layers.Reshape(outputs)(x) if len(outputs) > 1 else x
    keras.Model(image, x).save(path)
    return path


@pytest.mark.parametrize("inputs,outputs,needle", [
    ((28, 28, 1), (10,), "takes inputs of shape [(None, 28, 28, 1)]"),
    ((32, 32, 3), (5,), "gives outputs of shape [(None, 5)], not one (None, 10)"),
    ((32, 32, 3), (2, 5), "gives outputs of shape [(None, 2, 5)]"),
])
def test_evaluate_refuses_a_model_of_the_wrong_shape(tmp_path, capsys, inputs, outputs,
                                                     needle):
    from fastcifar import cli

    path = _saved_keras(tmp_path / "m.keras", inputs, outputs)
    assert cli.main(["evaluate", str(path), "--data", "learnable:64"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_an_image_folder_with_names_that_are_not_utf8_trains(tmp_path):
    import tensorflow as tf

    root = os.path.join(os.fsencode(tmp_path), b"imgs\xff")
    for split in (b"train", b"test"):
        for cls in (b"a", b"b\xfe"):
            folder = os.path.join(root, split, cls)
            os.makedirs(folder)
            for i in range(4):
                pixels = np.full((32, 32, 3), 40 * i + (100 if cls == b"a" else 0), np.uint8)
                with open(os.path.join(folder, b"%d\xfd.png" % i), "wb") as f:
                    f.write(tf.io.encode_png(pixels).numpy())
    out = subprocess.run([sys.executable, "-m", "fastcifar.cli", "train", "--data",
                          os.fsdecode(root), "--width", "4", "--batch-size", "4", "--epochs",
                          "1", "--precision", "float32", "--json", str(tmp_path / "r.json")],
                         capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert b"folder:imgs\\udcff" in out.stdout  # printed, escaped
    assert json.loads((tmp_path / "r.json").read_text())["dataset"]["num_classes"] == 2


BAD_2 = [
    (["train", "--epochs", "1e300"], "invalid epochs=1e+300"),
    (["train", "--eval-batch-size", "10000000"], "invalid eval_batch_size=10000000"),
    (["train", "--eval-batch-size", "1e29"], "invalid int value: '1e29'"),
    (["train", "--eval-batch-size", "1" + "0" * 29], "invalid eval_batch_size="),
    (["train", "--lr-peak", "1e308"], "invalid lr_peak=1e+308: must be a finite float32"),
    (["train", "--device", "/CPU:7"], "invalid device='/CPU:7': this machine has 1 CPU"),
    (["train", "--logdir", "afile"], "cannot write TensorBoard scalars into afile"),
]


@pytest.mark.parametrize("args,needle", BAD_2, ids=[" ".join(a)[:40] for a, _ in BAD_2])
def test_bad_flags_are_one_line_round_two(args, needle, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_exit_2(run(*args[:1], *TINY, *args[1:], cwd=tmp_path), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_eval_batch_above_the_test_set_is_the_test_set(tmp_path):
    from fastcifar.config import RuntimeConfig, recipe
    from fastcifar.train import Trainer

    tr = Trainer(recipe("davidnet", width=4, batch_size=32, epochs=1),
                 RuntimeConfig(precision="float32", eval_batch_size=60000))
    ds = data.synthetic(64, 50, learnable=True)
    ev = tr.evaluate(ds)  # 50 test images, not 60,000 padded ones
    assert ev["count"] == 50 and tr.eval_batch == 50
    assert tr.data.x_test.shape[0] == 50


@pytest.mark.parametrize("change,needle", [
    (lambda r: r["metrics"].update(images_per_sec=10 ** 400), "not a finite number"),
    (lambda r: r.update(calibration="fast"), "has no machine calibration"),
])
def test_compare_refuses_unreadable_numbers_in_one_line(tmp_path, capsys, change, needle):
    from fastcifar import cli, results

    r = results.build("bench", {"width": 4}, {"device_name": "cpu", "device_kind": "CPU"},
                      {}, {"sha256": "x"}, {"images_per_sec": 100.0, "step_ms": 10.0},
                      benchmark="step", calibration={"gflops": 50.0}, runtime_config={})
    (tmp_path / "a.json").write_text(json.dumps(r))
    change(r)
    (tmp_path / "b.json").write_text(json.dumps(r))
    assert cli.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                     "--normalize"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_a_tf_config_nested_too_deeply_is_one_line():
    from fastcifar import cluster
    from fastcifar.errors import ConfigError

    with pytest.raises(ConfigError, match="nested too deeply"):
        cluster.parse_tf_config("[" * 60_000 + "]" * 60_000)


def test_report_of_huge_values_is_one_line_and_a_long_history_is_thinned(tmp_path, capsys,
                                                                         monkeypatch):
    from fastcifar import cli, report

    base = {"schema_version": 1, "command": "train"}
    (tmp_path / "huge.json").write_text(json.dumps(
        {**base, "history": [{"seconds": 1e308, "test_acc": 0.5},
                             {"seconds": -1e308, "test_acc": 1e308}]}))
    assert cli.main(["report", str(tmp_path / "huge.json"), "-o", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot plot" in err and "out of range" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a.png").exists()
    rows = [{"seconds": float(i), "test_acc": (i % 7) / 7} for i in range(100_001)]
    (tmp_path / "long.json").write_text(json.dumps({**base, "history": rows}))
    drawn = []
    real = report._curve
    monkeypatch.setattr(report, "_curve", lambda r: drawn.append(real(r)) or drawn[-1])
    assert cli.main(["report", str(tmp_path / "long.json"), "-o", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").stat().st_size > 0
    assert len(drawn[0]) <= report.MAX_POINTS + 1 and drawn[0][-1] == [100000.0, 100000 % 7 / 7]


# --- 12. smaller ----------------------------------------------------------------------------

def test_target_auto_is_the_recipes_on_cifar10_and_none_on_other_data(tmp_path, capsys):
    from fastcifar import cli

    loud = [a for a in TINY if a != "--quiet"]
    assert cli.main(["train", *loud, "--target", "auto", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["config"]["target"] is None
    assert "no target" in out and "94.00%" not in out  # not measured against CIFAR-10's


def test_target_auto_on_official_cifar10_is_the_recipes(tmp_path, monkeypatch):
    """The other half: data named `cifar10` (only the official archive's digest earns the
    name, tested with the archive readers) keeps the recipe's published target."""
    import dataclasses

    from fastcifar import cli

    real = data.load
    monkeypatch.setattr(data, "load", lambda spec="cifar10", quiet=True: dataclasses.replace(
        real("learnable:512"), name="cifar10") if spec == "cifar10" else real(spec, quiet))
    args = [a for a in TINY if a != "learnable:512"]
    args[args.index("--data") + 1:args.index("--data") + 1] = ["cifar10"]
    for recipe_name, want in (("tutorial", 0.93), ("davidnet", 0.94)):
        out = tmp_path / f"{recipe_name}.json"
        assert cli.main(["train", *args, "--recipe", recipe_name, "--target", "auto",
                         "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["dataset"]["name"] == "cifar10"
        assert result["config"]["target"] == want


def test_generated_data_is_not_measured_against_a_cifar10_target(tmp_path, capsys):
    from fastcifar import cli

    assert cli.main(["train", *[a for a in TINY if a != "--quiet"]]) == 0
    out = capsys.readouterr().out
    assert "no target" in out and "target 94.00% not reached" not in out


def test_a_run_stopped_before_its_first_epoch_leaves_no_events_file(tmp_path):
    logdir = tmp_path / "tb"
    errors = open(tmp_path / "stderr.txt", "w+")
    p = subprocess.Popen([sys.executable, "-m", "fastcifar.cli", "train", "--data",
                          "learnable:4096", "--width", "16", "--batch-size", "64",
                          "--epochs", "20", "--steps-per-call", "1", "--logdir", str(logdir)],
                         stdout=subprocess.PIPE, stderr=errors, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and "step/s" not in open(errors.name).read():
            assert p.poll() is None, open(errors.name).read()[-2000:]
            time.sleep(0.2)  # the first epoch is running
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143
    assert "terminated; no result written" in open(errors.name).read()
    assert not logdir.exists() or list(logdir.rglob("*")) == []
