"""Hostile files, faults and bad input: nothing mislabelled, nothing lost, no traceback.

Every hostile file is built here, small; size caps are tested with small caps."""

import errno
import hashlib
import io
import json
import os
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
    from fastcifar import cli, train

    def full_disk(model, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train, "save_model", full_disk)
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
    assert cli.main(["compare", "a.json", "b.json"]) == 130
    assert "interrupted; no result written" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

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
    (lambda r: (r / "train" / "k").mkdir() or (r / "test" / "k").mkdir(), "11 class folders"),
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
