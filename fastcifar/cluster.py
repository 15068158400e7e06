"""Multi-worker plumbing that must work without TensorFlow: reading `TF_CONFIG`, and the
supervisor that keeps a worker from waiting forever.

TensorFlow's `MultiWorkerMirroredStrategy` blocks inside its constructor, holding the
Python lock and ignoring SIGTERM, until every peer has joined: no thread or signal in the
worker can end that wait. So the command line runs a multi-worker job as a child process
and watches it from outside: the child reports progress on a pipe (`heartbeat`), and a
child that reports nothing for `timeout` seconds is killed and turned into a one-line
error with exit code 2.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError, PeerError

HEARTBEAT_ENV = "FASTCIFAR_HEARTBEAT_FD"
SUPERVISOR_ENV = "FASTCIFAR_SUPERVISOR_PID"  # only the supervisor's own child is supervised
NATIVE_LOG_ENV = "FASTCIFAR_NATIVE_LOG"
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                     '"task": {"type": "worker", "index": 0}}')


@dataclass(frozen=True)
class Cluster:
    workers: tuple     # "host:port" of every worker, chief first when there is one
    task_type: str     # "worker" or "chief"
    task_index: int
    rank: int          # position in `workers`

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def peers(self) -> tuple:
        return tuple(a for i, a in enumerate(self.workers) if i != self.rank)


def parse_tf_config(text: Optional[str]) -> Cluster:
    """Validate `TF_CONFIG` as TensorFlow reads it, with errors that say what to write."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid TF_CONFIG: {why}; expected e.g. {TF_CONFIG_EXAMPLE}")

    if not text or not text.strip():
        raise ConfigError("strategy 'multiworker' needs the TF_CONFIG environment variable; "
                          f"set it on every worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not JSON ({e.msg} at character {e.pos})") from None
    except RecursionError:
        raise bad("nested too deeply to read") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict):
        raise bad("no 'cluster' object")
    cluster, task = cfg["cluster"], cfg.get("task")
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise bad(f"cluster job(s) {sorted(unknown)} are not used by MultiWorkerMirroredStrategy")
    jobs = {}
    for job in ("chief", "worker"):
        addrs = cluster.get(job, [])
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise bad(f"cluster.{job} must be a list of 'host:port' strings")
        for a in addrs:
            host, _, port = a.rpartition(":")
            if not host or not (port.isascii() and port.isdigit()) \
                    or not 0 < int(port) < 65536:
                raise bad(f"address {a!r} is not 'host:port'")
        jobs[job] = addrs
    if len(jobs["chief"]) > 1:
        raise bad("at most one chief")
    workers = tuple(jobs["chief"] + jobs["worker"])
    if not workers:
        raise bad("the cluster lists no workers")
    if len(set(workers)) != len(workers):
        raise bad("an address appears twice")
    if not isinstance(task, dict) or task.get("type") not in jobs or not jobs[task["type"]]:
        raise bad("'task.type' must name a job of the cluster ('worker' or 'chief')")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not \
            0 <= index < len(jobs[task["type"]]):
        raise bad(f"'task.index' must be an integer in [0, {len(jobs[task['type']])})")
    rank = index if task["type"] == "chief" else len(jobs["chief"]) + index
    return Cluster(workers, task["type"], index, rank)


def free_local_addresses(n: int) -> list:
    """`n` free "127.0.0.1:port" addresses, for a cluster on one machine (tests, benchmarks)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(workers, index: int) -> str:
    """The TF_CONFIG of worker `index` of a cluster of `workers` addresses."""
    return json.dumps({"cluster": {"worker": list(workers)},
                       "task": {"type": "worker", "index": index}})


def is_supervised() -> bool:
    """True in a worker started by `supervise` (it reports progress to its parent): the
    variables must name this process' parent, so a stale copy inherited from a shell does
    not turn supervision off."""
    return (HEARTBEAT_ENV in os.environ
            and os.environ.get(SUPERVISOR_ENV) == str(os.getppid()))


def heartbeat(event: str = "tick") -> None:
    """Tell a supervising parent that this process made progress (no-op without one).
    The trainer never calls this: the command line passes it in as a progress callback."""
    fd = os.environ.get(HEARTBEAT_ENV)
    if not fd:
        return
    try:
        os.write(int(fd), (event.replace("\n", " ") + "\n").encode())
    except (OSError, ValueError):
        pass


def worker_path(path: Optional[str], cluster: Optional[Cluster]) -> Optional[str]:
    """Worker 0 writes PATH; worker i writes PATH.worker<i>.json (one shared disk is safe)."""
    if path is None or cluster is None or cluster.is_chief:
        return path
    stem = path[:-5] if path.endswith(".json") else path
    return f"{stem}.worker{cluster.rank}.json"


def redirect_native_stderr() -> Optional[str]:
    """In a supervised worker, send what TensorFlow's C++ runtime writes to fd 2 (gRPC and
    collective chatter, many lines per lost peer) to the log file the supervisor named, in
    a folder only this user can enter; created exclusively and never through a symlink.
    Python's own stderr (the one-line error, progress bars) keeps the terminal."""
    path = os.environ.get(NATIVE_LOG_ENV)
    if not path or os.environ.get("FASTCIFAR_TF_LOGS") == "1":
        return None
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    return path


def unreachable(addresses, timeout: float = 1.0) -> list:
    """The addresses nothing accepts a TCP connection on (a peer that is not running)."""
    out = []
    for a in addresses:
        host, _, port = a.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError:
            out.append(a)
    return out


def supervise(argv: list, cluster: Cluster, timeout: float, grace: float = 30.0) -> int:
    """Run `python -m fastcifar.cli <argv>` as a child and return its exit code.

    Deadlines: `timeout` seconds from start until the child says "ready" (every peer
    joined), then `timeout` seconds between any two heartbeats. After "done" the child gets
    `grace` seconds to exit. A missed deadline kills the child's process group and raises
    PeerError naming the likely cause. TensorFlow's C++ log of the child goes to a private
    folder, removed when the child succeeds and named in the error when it does not."""
    read_fd, write_fd = os.pipe()
    log_dir = tempfile.mkdtemp(prefix="fastcifar-worker-")  # mode 0700
    log = os.path.join(log_dir, f"tensorflow-worker{cluster.rank}.log")
    env = dict(os.environ, **{HEARTBEAT_ENV: str(write_fd), SUPERVISOR_ENV: str(os.getpid()),
                              NATIVE_LOG_ENV: log})
    proc = subprocess.Popen([sys.executable, "-m", "fastcifar.cli", *argv], env=env,
                            pass_fds=(write_fd,), start_new_session=True,
                            preexec_fn=_die_with_parent)
    os.close(write_fd)
    code = None
    try:
        code = _watch(proc, read_fd, cluster, timeout, grace, log)
        return code
    except KeyboardInterrupt:
        _kill(proc)
        code = 0  # interrupted on purpose: nothing to diagnose, so no log to keep
        raise
    finally:
        os.close(read_fd)
        if proc.poll() is None:
            _kill(proc)
        if code == 0:
            shutil.rmtree(log_dir, ignore_errors=True)


def _watch(proc, read_fd, cluster, timeout, grace, log) -> int:
    sel = selectors.DefaultSelector()
    sel.register(read_fd, selectors.EVENT_READ)
    phase, deadline, buf = "start", time.monotonic() + timeout, b""
    t_start = time.monotonic()
    try:
        while True:
            wait = max(deadline - time.monotonic(), 0.0)
            if not sel.select(timeout=min(wait, 0.5)):
                if proc.poll() is not None:
                    return _exit_code(proc.returncode)
                if time.monotonic() < deadline:
                    continue
                _kill(proc)
                if phase == "done":
                    return 0
                raise PeerError(
                    _stall_message(phase, cluster, timeout, time.monotonic() - t_start)
                    + f" (TensorFlow's log: {log})")
            chunk = os.read(read_fd, 4096)
            if not chunk:  # the child closed its end: it is exiting
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    _kill(proc)
                    return 0 if phase == "done" else 1
                return _exit_code(proc.returncode)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                event = line.decode(errors="replace").strip()
                if event in ("ready", "done"):
                    phase = event
            deadline = time.monotonic() + (grace if phase == "done" else timeout)
    finally:
        sel.close()


def _die_with_parent() -> None:
    """Linux: the worker is killed if its supervisor dies (else it would run on alone)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_code(rc: int) -> int:
    return rc if rc >= 0 else 128 - rc  # killed by signal N -> 128 + N, as a shell says


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _stall_message(phase: str, cluster: Cluster, timeout: float, elapsed: float) -> str:
    down = unreachable(cluster.peers)
    who = (f"nothing answers at {', '.join(down)}" if down
           else "every peer address accepts connections")
    if phase == "start":
        return (f"multiworker start-up timed out after {elapsed:.0f} s waiting for the other "
                f"workers of TF_CONFIG ({who}): start the same command on every worker, "
                f"check the addresses, or raise --peer-timeout")
    return (f"multiworker run stalled: no progress for {timeout:.0f} s ({who}); a worker "
            f"stopped or hung: check every worker's log, or raise --peer-timeout if one "
            f"compiled call takes longer")
