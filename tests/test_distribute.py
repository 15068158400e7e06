"""tf.distribute: two logical CPU devices (split in conftest) and real worker processes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from fastcifar import cluster
from fastcifar.config import ConfigError, RuntimeConfig, TrainConfig
from fastcifar.data import synthetic
from fastcifar.distribute import distance_moved, split_cpu, weights_checksum
from fastcifar.train import Trainer

RT = RuntimeConfig(precision="float32", steps_per_call=4, eval_batch_size=50)
STEPS = 3  # the first step runs at lr 0; step 3 starts the second epoch (new tables)


def make(replicas=1, sync_bn=True, batch=512, **kw):
    strategy = dict(strategy="mirrored", replicas=replicas) if replicas > 1 else {}
    cfg = TrainConfig(width=8, epochs=2, batch_size=batch, dropout=0.0, sync_bn=sync_bn,
                      target=None, **strategy, **kw)
    return Trainer(cfg, RT)


@pytest.fixture(scope="module")
def data():
    return synthetic(1024, 123, learnable=True, seed=2)


def _train(tr, data):
    w0 = [v.numpy() for v in tr.model.trainable_variables]
    dd = tr.prepare(data)
    loss, correct = (float(t.numpy()) for t in tr.train_steps(dd, STEPS))
    return w0, dd, loss, correct


@pytest.fixture(scope="module")
def runs(data):
    out = {}
    for name, tr in (("one", make(1)), ("two_sync", make(2)),
                     ("two_local", make(2, sync_bn=False))):
        out[name] = (tr, *_train(tr, data))
    return out


def _weights(tr):
    return [v.numpy() for v in tr.model.trainable_variables]


def test_two_replicas_with_sync_bn_match_one_device(runs):
    one, two = runs["one"], runs["two_sync"]
    assert two[0].replicas == 2 and one[0].replicas == 1
    start = one[1]
    assert all(np.array_equal(a, b) for a, b in zip(start, two[1]))  # same initial weights
    # measured ~2e-4 here: float rounding of the split sums, amplified by max-pool routing
    assert distance_moved(_weights(one[0]), _weights(two[0]), start) < 1e-2
    stats = lambda tr: [v.numpy() for v in tr.model.weights if "moving" in v.path]
    for a, b in zip(stats(one[0]), stats(two[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # the summed training loss and hit count are over the same 3 x 512 images
    assert two[3] == pytest.approx(one[3], rel=1e-4)
    assert two[4] == one[4]
    assert int(two[0].step.numpy()) == STEPS


def test_per_replica_batchnorm_is_a_different_computation(runs):
    """Without sync BN each replica normalises its 256 images by their own statistics:
    a different function of the batch (the README says why), so weights move apart."""
    one, local = runs["one"], runs["two_local"]
    assert distance_moved(_weights(one[0]), _weights(local[0]), one[1]) > 5e-2  # measured ~0.2


def test_replica_copies_agree(runs):
    tr = runs["two_sync"][0]
    for v in tr.model.weights:
        copies = [c.numpy() for c in v.value.values]
        assert len(copies) == 2 and np.array_equal(copies[0], copies[1]), v.path
    tables = [c.numpy() for c in tr.perm.values]
    assert np.array_equal(tables[0], tables[1])


def test_replicas_started_mid_epoch_split_the_one_device_batch(data):
    """A cold start at step 1 (mid-epoch 0) or 3 (mid-epoch 1): replica r trains on slice r
    of exactly the batch one device trains on there."""
    one, two = make(1), make(2)
    one_data, two_data = one.prepare(data), two.prepare(data)
    for start in (1, 3):
        one.step.assign(start)
        two.step.assign(start)
        (idx, images, labels), = one.peek_batch(one_data)
        parts = two.peek_batch(two_data)
        assert len(parts) == 2 and len(set(idx.tolist())) == 512
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), idx)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), images)
        np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), labels)


def test_distributed_evaluation_counts_every_test_image_once(runs, data):
    tr = runs["two_sync"][0]
    dd = runs["two_sync"][2]
    ev = tr.evaluate_prepared(dd)
    assert ev["count"] == len(data.x_test) == 123  # 123 -> 2 shards of 100 with padding
    shards = [s.shape[0] for s in tr.strategy.experimental_local_results(dd.x_test)]
    assert shards == [100, 100]
    # the same weights evaluated on one device give the same loss and accuracy
    single = make(1)
    single.model.set_weights(tr.model.get_weights())
    ref = single.evaluate(data)
    assert ref["count"] == 123
    assert ev["test_acc"] == pytest.approx(ref["test_acc"], abs=1e-6)
    assert ev["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-5)


def test_predict_and_save_from_a_mirrored_trainer(runs, data, tmp_path):
    tr, dd = runs["two_sync"][0], runs["two_sync"][2]
    logits = tr.predict(data.x_test[:7], dd.mean, dd.std)
    assert logits.shape == (7, 10)  # Keras' own predict would return one batch per replica
    tr.save(str(tmp_path / "m.keras"))
    import keras

    import fastcifar.serving  # noqa: F401  (registers the layers)

    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert weights_checksum(loaded) == weights_checksum(tr.model)


def test_fast_recipe_runs_mirrored_like_one_device(data):
    """Whitening (fitted once, copied to every replica), EMA and bias-lr scaling as
    replica-local state, TTA in the sharded evaluation."""
    from fastcifar.config import recipe

    out = {}
    for strategy, replicas in (("auto", 0), ("mirrored", 2)):
        cfg = recipe("davidnet_tricks", width=8, epochs=2, batch_size=256,
                     strategy=strategy,
                     replicas=replicas, sync_bn=True, target=None)
        tr = Trainer(cfg, RT)
        out[strategy] = (tr, tr.fit(data))
    tr, res = out["mirrored"]
    for e in tr.ema_variables:
        a, b = (c.numpy() for c in e.values)
        assert np.array_equal(a, b)
    ref = out["auto"][1].history[-1]
    row = res.history[-1]
    assert row["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-2)
    assert row["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-2)


def test_an_overflow_on_one_replica_makes_every_replica_skip():
    from fastcifar.engine import _agree_on_overflow

    s = tf.distribute.MirroredStrategy(["/CPU:0", "/CPU:1"])

    def grads(bad_replica):
        def rep():
            ctx = tf.distribute.get_replica_context()
            bad = tf.equal(ctx.replica_id_in_sync_group, bad_replica)
            g = tf.where(bad, float("inf"), 1.0) * tf.ones([3])
            return _agree_on_overflow(ctx, [g, None])[0]
        return [o.numpy() for o in s.experimental_local_results(tf.function(
            lambda: s.run(rep))())]

    assert all(np.isnan(g).all() for g in grads(1))  # replica 0 was finite, yet skips too
    assert all(np.array_equal(g, np.ones(3)) for g in grads(-1))  # nobody overflowed


def test_mixed_float16_loss_scaling_under_mirrored(data):
    cfg = TrainConfig(width=4, epochs=2, batch_size=128, strategy="mirrored", replicas=2,
                      target=None)
    tr = Trainer(cfg, RuntimeConfig(precision="mixed_float16", steps_per_call=2,
                                    eval_batch_size=50))
    dd = tr.prepare(data)
    tr.step.assign(2)  # past the lr-0 first step
    w0 = [v.numpy() for v in tr.model.trainable_variables]
    tr.optimizer.dynamic_scale.assign(2.0 ** 40)  # float16 gradients overflow everywhere
    tr.train_steps(dd, 1)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(w0, tr.model.trainable_variables))
    assert float(tr.optimizer.dynamic_scale.numpy()) == 2.0 ** 39
    tr.optimizer.dynamic_scale.assign(2.0 ** 6)
    loss, _ = tr.train_steps(dd, 2)  # with a sane scale it trains
    assert np.isfinite(float(loss.numpy()))
    assert any(not np.array_equal(a, v.numpy())
               for a, v in zip(w0, tr.model.trainable_variables))
    for v in tr.model.trainable_variables:  # the replicas stayed identical
        a, b = (c.numpy() for c in v.value.values)
        assert np.array_equal(a, b), v.path


def test_mirrored_refuses_xla_on_cpu_and_bad_batches():
    with pytest.raises(ConfigError, match="xla"):
        Trainer(TrainConfig(width=4, strategy="mirrored", replicas=2),
                RuntimeConfig(precision="float32", xla=True))
    with pytest.raises(ConfigError, match="split evenly across 2 replicas"):
        TrainConfig(strategy="mirrored", replicas=2, batch_size=511).validate()
    with pytest.raises(ConfigError, match="needs strategy='mirrored'"):
        TrainConfig(replicas=2).validate()


def test_split_cpu_after_initialisation_names_the_fix():
    tf.constant(1.0)  # TensorFlow is initialised (with the 2 devices from conftest)
    split_cpu(2)  # already there: nothing to do
    with pytest.raises(ConfigError, match=r"already initialised.*split_cpu\(4\)"):
        split_cpu(4)


# --- TF_CONFIG -----------------------------------------------------------------------

def test_tf_config_parsing():
    c = cluster.parse_tf_config(json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]},
         "task": {"type": "worker", "index": 1}}))
    assert c.workers == ("a:1", "b:2", "c:3") and c.rank == 2 and not c.is_chief
    assert c.peers == ("a:1", "b:2")
    bad = [None, "", "{", "[]", '{"cluster": {}}', '{"cluster": {"ps": ["a:1"]}}',
           '{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
           '{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
           '{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
           '{"cluster": {"worker": ["a:1"]}}',
           '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
           '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
           '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}']
    for text in bad:
        with pytest.raises(ConfigError, match="TF_CONFIG") as e:
            cluster.parse_tf_config(text)
        assert "\n" not in str(e.value)


# --- real processes ------------------------------------------------------------------

TRAIN = ["train", "--data", "learnable:1024", "--width", "8", "--batch-size", "256",
         "--precision", "float32", "--quiet"]


def _start(args, tf_config, extra_env=None, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=tf_config, **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-m", "fastcifar.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def _reap(procs):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)


def _children(pid: int) -> list:
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:  # field 4 of stat: the parent's pid
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _running_with(marker: str) -> list:
    """Processes whose command line mentions `marker` (none may outlive a test)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_two_worker_processes_finish_with_the_same_weights(tmp_path):
    ports = cluster.free_local_addresses(2)
    args = TRAIN + ["--epochs", "2", "--strategy", "multiworker", "--peer-timeout", "90"]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    procs = [_start(args + ["--json", str(tmp_path / "r.json")], cluster.tf_config(ports, i),
                    {"TMPDIR": str(tmp)}) for i in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        _reap(procs)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert list(tmp.iterdir()) == []  # the workers' TensorFlow logs went with them
    chief = json.loads((tmp_path / "r.json").read_text())
    other = json.loads((tmp_path / "r.worker1.json").read_text())
    assert chief["runtime"]["replicas"] == 2 and chief["runtime"]["strategy"] == "multiworker"
    assert chief["metrics"]["weights_checksum"] == other["metrics"]["weights_checksum"]
    for i, (out, _) in enumerate(outs):
        assert f"worker {i}: final weights checksum {chief['metrics']['weights_checksum']}" \
            in out
    assert len(chief["history"]) == 2 and 0 <= chief["metrics"]["final_test_acc"] <= 1


def test_unreachable_peer_is_an_error_within_the_timeout(tmp_path):
    ports = cluster.free_local_addresses(2)  # nobody will listen on the second
    marker = str(tmp_path / "never.json")
    t0 = time.monotonic()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    p = _start(TRAIN + ["--strategy", "multiworker", "--peer-timeout", "8", "--json", marker],
               cluster.tf_config(ports, 0), {"TMPDIR": str(tmp)})
    try:
        out, err = p.communicate(timeout=120)
    finally:
        _reap([p])
    elapsed = time.monotonic() - t0
    assert p.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcifar: error: multiworker start-up "
                                                   "timed out"), err[-2000:]
    assert ports[1] in lines[0] and "Traceback" not in err
    assert elapsed < 60
    # the worker's TensorFlow log is kept for the failure, named, in a private folder
    log = lines[0].split("TensorFlow's log: ")[1].rstrip(")")
    assert os.path.isfile(log) and os.path.dirname(os.path.dirname(log)) == str(tmp)
    assert os.stat(os.path.dirname(log)).st_mode & 0o777 == 0o700
    assert not os.path.exists(marker)
    assert _running_with(marker) == []  # the stuck worker was killed, not left behind


def test_ctrl_c_stops_a_waiting_worker_and_its_child(tmp_path):
    ports = cluster.free_local_addresses(2)
    marker = str(tmp_path / "never.json")
    p = _start(TRAIN + ["--strategy", "multiworker", "--peer-timeout", "60", "--json", marker],
               cluster.tf_config(ports, 0))
    try:
        deadline = time.monotonic() + 60
        while not _children(p.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # the child is now blocked waiting for the absent peer
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        _reap([p])
    assert p.returncode == 130 and "interrupted; no result written" in err
    assert not os.path.exists(marker) and _running_with(marker) == []


def test_a_peer_dying_mid_run_stops_the_other_with_exit_2(tmp_path):
    ports = cluster.free_local_addresses(2)
    args = TRAIN + ["--epochs", "40", "--strategy", "multiworker", "--peer-timeout", "60"]
    args[args.index("--quiet")] = "--steps-per-call=1"  # progress rows on stdout
    procs = [_start(args + ["--json", str(tmp_path / "r.json")], cluster.tf_config(ports, i))
             for i in range(2)]
    try:
        for line in procs[0].stdout:  # wait until the chief has finished an epoch
            if line.split() and line.split()[0] == "1":
                break
        os.killpg(procs[1].pid, signal.SIGKILL)  # the whole second worker disappears
        t0 = time.monotonic()
        out, err = procs[0].communicate(timeout=150)
        waited = time.monotonic() - t0
    finally:
        _reap(procs)
    assert procs[0].returncode == 2, err[-3000:]
    lines = [l for l in err.splitlines() if l.startswith("fastcifar:")]
    assert len(lines) == 1 and ("lost contact" in lines[0] or "stalled" in lines[0]), err[-2000:]
    assert "Traceback" not in err
    assert waited < 120
    assert not (tmp_path / "r.json").exists()


def test_a_frozen_worker_is_killed_by_its_supervisor(tmp_path):
    """A worker that stops making progress (SIGSTOP: alive, silent) is the supervisor's
    case: after --peer-timeout without a heartbeat it is killed and its command exits 2;
    its peer loses contact and exits 2 as well. Nothing is left running."""
    ports = cluster.free_local_addresses(2)
    marker = str(tmp_path / "r.json")
    args = TRAIN + ["--epochs", "40", "--strategy", "multiworker", "--peer-timeout", "15",
                    "--json", marker]
    args[args.index("--quiet")] = "--steps-per-call=1"
    procs = [_start(args, cluster.tf_config(ports, i)) for i in range(2)]
    try:
        for line in procs[0].stdout:
            if line.split() and line.split()[0] == "1":
                break
        worker = _children(procs[1].pid)[0]  # the supervised child of worker 1
        os.kill(worker, signal.SIGSTOP)
        t0 = time.monotonic()
        outs = [p.communicate(timeout=150) for p in procs]
        waited = time.monotonic() - t0
    finally:
        _reap(procs)
    assert [p.returncode for p in procs] == [2, 2], [e[-1500:] for _, e in outs]
    frozen = [l for l in outs[1][1].splitlines() if l.startswith("fastcifar:")]
    assert len(frozen) == 1 and "stalled: no progress for 15 s" in frozen[0]
    assert waited < 120
    assert _running_with(marker) == []


def test_cli_mirrored_splits_the_cpu(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    out = subprocess.run([sys.executable, "-m", "fastcifar.cli", *TRAIN, "--epochs", "1",
                          "--strategy", "mirrored", "--replicas", "2", "--sync-bn",
                          "--json", str(tmp_path / "m.json")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "m.json").read_text())
    assert r["runtime"]["replicas"] == 2 and r["config"]["sync_bn"] is True
    assert r["runtime"]["replica_devices"] == ["/job:localhost/replica:0/task:0/device:CPU:0",
                                               "/job:localhost/replica:0/task:0/device:CPU:1"]
    assert "final weights checksum" in out.stdout


@pytest.mark.parametrize("args,env,match", [
    (["--strategy", "mirrored", "--replicas", "3"], {}, "does not split evenly across 3"),
    (["--strategy", "multiworker"], {"TF_CONFIG": '{"cluster": '}, "invalid TF_CONFIG"),
    (["--strategy", "multiworker"], {"TF_CONFIG": ""}, "needs the TF_CONFIG"),
    (["--strategy", "mirrored", "--replicas", "2", "--xla"], {}, "xla"),
])
def test_cli_distribution_errors_are_one_line(args, env, match, tmp_path):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env)
    if "TF_CONFIG" not in env:
        e.pop("TF_CONFIG", None)
    out = subprocess.run([sys.executable, "-m", "fastcifar.cli", *TRAIN, *args,
                          "--json", str(tmp_path / "x.json")],
                         capture_output=True, text=True, env=e, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], out.stderr[-2000:]
    assert not (tmp_path / "x.json").exists()
