"""`run_training`: everything `fastcifar train` does, callable from Python.

Checks the outputs can be written, builds the strategy (before TensorFlow initialises),
loads the data, trains with the utilisation monitor on, and writes the result JSON, then
the model, then an optional profile. A multi-worker run started by the command line's
supervisor reports progress to it through the callback built here; the trainer itself
knows nothing of supervisors.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional

from . import cluster, distribute, results
from .config import RuntimeConfig, TrainConfig
from .errors import TrainingDiverged, UserError

TRAIN_TIMING = ("seconds: data preparation (statistics, padding, upload, whitening fit), "
                "training, and every evaluation the run made (the final one included), as "
                "those certify its accuracy; compilation excluded (done first on dummy data, "
                "state restored) and reported as compile_seconds; loading files excluded")


def run_training(config: TrainConfig, runtime: RuntimeConfig = RuntimeConfig(),
                 data: str = "cifar10", *, json_path: Optional[str] = None,
                 save_path: Optional[str] = None, profile_dir: Optional[str] = None,
                 logdir: Optional[str] = None, target_declared: bool = True,
                 quiet: bool = True, model=None, on_start: Optional[Callable] = None,
                 on_epoch: Optional[Callable[[dict], None]] = None,
                 saved_model_dir: Optional[str] = None) -> dict:
    """Train `config` on `data` and return the result (the `fastcifar.results` schema).

    The net's outputs follow the data's classes. A recipe's target is a CIFAR-10 figure:
    on other data it is dropped unless `target_declared`. `logdir` gets TensorBoard
    scalars per epoch (and the profile, if `profile_dir` is ""). `model`: a user's model
    or builder (see `Trainer`). `on_start(trainer, dataset, cluster)` and `on_epoch(row)`
    let a caller print; in a multi-worker run only worker 0 calls them, writes
    `json_path` and `save_path`, and worker i writes `json_path` as PATH.worker<i>.json.
    `saved_model_dir`: also a TensorFlow SavedModel of the served model there (new)."""
    from . import data as data_mod

    peers = None
    native_log = None
    progress: Callable[..., None] = lambda event="tick": None
    if config.strategy == "multiworker":
        peers = cluster.parse_tf_config(os.environ.get("TF_CONFIG"))
        if cluster.is_supervised():
            native_log = cluster.redirect_native_stderr()
            progress = cluster.heartbeat
    chief = peers is None or peers.is_chief
    json_path = cluster.worker_path(json_path, peers)
    save_path = save_path if chief else None
    saved_model_dir = saved_model_dir if chief else None
    results.check_outputs([("--json", json_path, None), ("--save", save_path, ".keras")],
                          [("--data", data_mod.input_path(data))])
    if saved_model_dir is not None:
        from .serving import check_new_folder

        check_new_folder(saved_model_dir, "--saved-model")
        if os.path.abspath(saved_model_dir) in {os.path.abspath(p) for p in
                                                (json_path, save_path, logdir, profile_dir,
                                                 data_mod.input_path(data)) if p}:
            raise UserError(f"--saved-model {saved_model_dir} is also another input or "
                            f"output of this run; choose its own folder")
    if logdir is not None:
        results.check_folder(logdir, "TensorBoard scalars")
    if profile_dir == "" and logdir:
        profile_dir = logdir  # the profile in the same run folder as the scalars
    if profile_dir is not None:
        results.check_folder(profile_dir)
    if logdir is not None:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("--logdir needs TensorBoard, which TensorFlow no longer installs: "
                            "pip install tensorboard")

    known = data_mod.training_images(data)
    if known is not None:  # settings that do not fit the data: refused before decoding
        from .config import check_budget

        check_budget(config, known)
    # before anything initialises TensorFlow (loading image folders decodes with it)
    strategy = distribute.make_strategy(config, runtime)
    progress("ready")  # every peer joined: the supervisor's start-up deadline is met
    ds = data_mod.load(data, quiet=quiet)
    progress()
    if ds.num_classes != config.num_classes:
        config = config.replace(num_classes=ds.num_classes)
    if ds.name != "cifar10" and not target_declared and config.target is not None:
        config = config.replace(target=None)  # a CIFAR-10 figure says nothing here
    from .monitor import monitor_for
    from .train import Trainer

    trainer = Trainer(config, runtime, strategy=strategy, model=model)
    trainer.check_budget(len(ds.x_train))  # before anything is printed
    if chief and on_start is not None:
        on_start(trainer, ds, peers)
    if logdir is not None and chief:
        on_epoch = _with_tensorboard(logdir, on_epoch)
    guard = (distribute.peer_errors(native_log) if trainer.distributed
             else contextlib.nullcontext())
    try:
        with monitor_for(trainer.placement.devices) as monitor, guard:
            res = trainer.fit(ds, quiet=quiet or not chief,
                              on_epoch=on_epoch if chief else None, monitor=monitor,
                              on_progress=progress)
    except TrainingDiverged as e:
        e.result = _failed(trainer, ds, e)
        if json_path:  # a record that it failed, which `compare` refuses to measure
            _write_outputs(json_path, e.result, None, None)
        raise
    result = _result(trainer, res, ds, peers)
    _write_outputs(json_path, result, save_path, trainer, saved_model_dir)
    if profile_dir:
        from .profiling import profile_steps

        data_on_device = trainer.data
        profile_steps(lambda: float(trainer.train_steps(data_on_device, 1)[0].numpy()),
                      profile_dir)
    progress("done")
    return result


def _with_tensorboard(logdir: str, on_epoch):
    """`on_epoch` that also writes the epoch's scalars for TensorBoard into `logdir`. The
    events file is created with the first epoch's scalars, so a run stopped before then
    (loading, compiling) leaves none; after that, each epoch is flushed whole."""
    import tensorflow as tf

    from .metrics import tensorboard_tags

    writers = []
    names = tensorboard_tags()

    def write(row):
        if not writers:
            writers.append(tf.summary.create_file_writer(logdir))
            results.note_written(f"TensorBoard scalars in {logdir}")
        writer = writers[0]
        with writer.as_default(step=row["epoch"]):
            for key, tag in names.items():
                if row.get(key) is not None:
                    tf.summary.scalar(tag, float(row[key]))
        writer.flush()
        if on_epoch is not None:
            on_epoch(row)

    return write


def _write_outputs(json_path, result, save_path, trainer, saved_model_dir=None) -> None:
    """The JSON first (small, and the record of the run), then the model(s). A failure
    after a finished run is one line that says what was and was not written."""
    written = []
    def save():
        trainer.save(save_path)
        results.note_written(save_path)

    def save_saved_model():
        trainer.save_saved_model(saved_model_dir)
        results.note_written(saved_model_dir)

    for path, write in ((json_path, lambda: results.write_json(json_path, result)),
                        (save_path, save), (saved_model_dir, save_saved_model)):
        if not path:
            continue
        try:
            write()
        except OSError as e:
            done = f"; {written[0]} was written" if written else ""
            raise UserError(f"the run finished but {path} could not be written "
                            f"({e.strerror or e}){done}") from None
        written.append(path)


def _failed(trainer, ds, error: TrainingDiverged) -> dict:
    from .runtime import environment

    return results.failed("train", trainer.config.to_dict(), trainer.describe_runtime(),
                          environment(), ds.identity(), error, error.history,
                          runtime_config=trainer.runtime_config.to_dict(), timing=TRAIN_TIMING)


def _result(trainer, res, ds, peers) -> dict:
    """The `train` result of a finished fit."""
    from .monitor import headline
    from .runtime import environment, peak_memory_bytes

    described = trainer.describe_runtime()
    if peers is not None:
        described["worker"] = peers.rank
    metrics = {"images_per_sec": res.images_per_sec, "final_test_acc": res.final_test_acc,
               "final_test_loss": res.final_test_loss,
               "seconds_to_target": res.seconds_to_target,
               "train_seconds": res.train_seconds, "prep_seconds": res.prep_seconds,
               "eval_seconds": res.eval_seconds,
               "compile_seconds": res.compile_seconds,
               "steps_per_epoch": res.steps_per_epoch,
               "peak_memory_bytes": peak_memory_bytes(trainer.runtime.device),
               "utilization": headline(res.utilization),
               "weights_checksum": distribute.weights_checksum(trainer.model)}
    return results.build("train", trainer.config.to_dict(), described, environment(),
                         ds.identity(), metrics, res.history, utilization=res.utilization,
                         runtime_config=trainer.runtime_config.to_dict(), timing=TRAIN_TIMING)


def evaluate_saved(path: str, data: str = "cifar10", batch_size: int = 1000) -> dict:
    """Load a model saved by `fastcifar train --save` (Keras safe mode) and evaluate it on
    the test split of `data` as training evaluated it: the normalisation and test-time
    views it recorded. Returns an `evaluate` result."""
    import numpy as np
    import tensorflow as tf

    from . import data as data_mod
    from .runtime import environment
    from .serving import check_keras_file, load_serving_model

    check_keras_file(path)  # before any data is read: a bad file is refused at once
    ds = data_mod.load(data)
    model = load_serving_model(path, ds.num_classes, checked=True)
    call = tf.function(lambda x: model(x, training=False))
    loss_sum = hits = 0.0
    for i in range(0, len(ds.x_test), batch_size):
        logits = call(tf.constant(ds.x_test[i:i + batch_size], tf.float32))
        labels = ds.y_test[i:i + batch_size]
        loss_sum += float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, tf.cast(logits, tf.float32))).numpy())
        hits += float(np.sum(np.argmax(logits.numpy(), -1) == labels))
    recorded = {layer.name: layer.get_config() for layer in model.layers
                if layer.name in ("standardize", "test_time_views")}
    count = len(ds.x_test)
    return results.build("evaluate", {"model": os.path.abspath(path), "recorded": recorded},
                         {}, environment(), ds.identity(),
                         {"final_test_acc": hits / count, "final_test_loss": loss_sum / count,
                          "test_images": count},
                         timing="no clock: evaluation of a saved model")
