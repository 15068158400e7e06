"""The run loop: epochs of compiled calls, evaluations, the history and the clock.

The clock (`seconds`, `seconds_to_target`) covers preparing the data, training, and every
evaluation the run makes (`eval_every`; the final one always), because those certify the
accuracy it reports; compilation is done first on dummy data and timed apart
(`compile_seconds`). A loss that is not finite stops the run (`TrainingDiverged`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .errors import TrainingDiverged


@dataclass
class FitResult:
    """What `Trainer.fit` returns (docs/training.md, "What fit returns")."""

    history: list = field(default_factory=list)   # one dict per epoch (`fastcifar.metrics`)
    final_test_acc: float = 0.0                    # fraction of the test set, last evaluation
    final_test_loss: float = 0.0                   # mean cross-entropy per test image
    seconds_to_target: Optional[float] = None      # clock when config.target was first met
    train_seconds: float = 0.0     # the whole clock: preparation, training, evaluations
    prep_seconds: float = 0.0      # statistics, padding, upload, whitening fit
    eval_seconds: float = 0.0      # every evaluation the run made
    compile_seconds: float = 0.0   # compiling, apart from the clock
    images_per_sec: float = 0.0    # training images per second of training time
    steps_per_epoch: int = 0
    utilization: Optional[dict] = None  # monitor result over the training windows
    stopped_early: bool = False    # a callback set model.stop_training


# history field -> the name Keras callbacks look for in `logs`
KERAS_LOGS = {"train_loss": "loss", "train_acc": "accuracy", "test_loss": "val_loss",
              "test_acc": "val_accuracy", "lr": "learning_rate"}


def keras_logs(row: dict) -> dict:
    """An epoch's row as Keras callbacks see it: every number measured, under fastcifar's
    names and Keras' (`loss`, `accuracy`, `val_loss`, `val_accuracy`, `learning_rate`)."""
    # not `epoch`: Keras passes the epoch itself (ModelCheckpoint formats both into a path)
    logs = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
    logs.update({KERAS_LOGS[k]: v for k, v in logs.items() if k in KERAS_LOGS})
    return logs


def _callbacks(engine, callbacks, epochs: int, steps: int):
    """Keras callbacks around the run loop (never inside the compiled call): `callback.model`
    is the network being trained; `model.stop_training` ends the run after the epoch."""
    if not callbacks:
        return None
    import keras

    listed = list(callbacks)
    for cb in listed:
        if not isinstance(cb, keras.callbacks.Callback):
            raise TypeError(f"callbacks must be keras.callbacks.Callback objects, got "
                            f"{type(cb).__name__}")
    engine.model.stop_training = False
    return keras.callbacks.CallbackList(listed, add_history=False, add_progbar=False,
                                        model=engine.model, epochs=epochs, steps=steps,
                                        verbose=0)


@dataclass
class _Clock:
    """Seconds on the clock, and the training part of them (for images/s)."""

    elapsed: float = 0.0
    training: float = 0.0
    images: int = 0


def fit(engine, ds, epochs: Optional[float] = None, quiet: bool = True,
        on_epoch: Optional[Callable[[dict], None]] = None, monitor=None,
        on_progress: Optional[Callable[[], None]] = None, callbacks=None) -> FitResult:
    """Train `engine` on `ds` and evaluate (see the module's clock rule). A started
    `fastcifar.monitor.Monitor` gets one window per epoch's training phase.
    `on_progress()` is called after compiling, every compiled call and every evaluation
    (a supervisor's heartbeat); `on_epoch(row)` and Keras `callbacks` at epoch ends, on
    the host, between compiled calls."""
    progress = on_progress or (lambda: None)
    engine.compile(len(ds.x_train), len(ds.x_test))
    progress()
    t0 = time.perf_counter()
    data = _prepared(engine, ds)
    steps_per_epoch = engine.steps_per_epoch(data.n_train)
    total = engine.total_steps_for(data.n_train, epochs)
    n_epochs = math.ceil(total / steps_per_epoch)
    if engine.user_model:
        _warn_unsettled_batchnorm(engine.model, total)
    result = FitResult(prep_seconds=time.perf_counter() - t0,
                       compile_seconds=engine.compile_seconds, steps_per_epoch=steps_per_epoch)
    clock, windows = _Clock(elapsed=result.prep_seconds), []
    listeners = _callbacks(engine, callbacks, n_epochs, steps_per_epoch)
    if listeners is not None:
        listeners.on_train_begin({})
    for epoch in range(1, n_epochs + 1):
        if listeners is not None:
            listeners.on_epoch_begin(epoch - 1, {})
        steps = min(steps_per_epoch, total - (epoch - 1) * steps_per_epoch)
        row, window = _train_phase(engine, data, epoch, n_epochs, steps, quiet, progress,
                                   monitor, clock, result.history)
        windows += [window] if window is not None else []
        if epoch == n_epochs or (engine.runtime_config.eval_every
                                 and epoch % engine.runtime_config.eval_every == 0):
            _evaluation(engine, data, row, clock, result)
            progress()
        row["seconds"] = clock.elapsed
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if listeners is not None:
            listeners.on_epoch_end(epoch - 1, keras_logs(row))
            if getattr(engine.model, "stop_training", False) and epoch < n_epochs:
                result.stopped_early = True
                if row["test_acc"] is None:  # the run's last row carries its accuracy
                    _evaluation(engine, data, row, clock, result)
                    row["seconds"] = clock.elapsed
                break
    finished = _finished(result, clock, monitor, windows)
    if listeners is not None:
        listeners.on_train_end(keras_logs(result.history[-1]) if result.history else {})
    return finished


def unsettled_batchnorm(model, steps: int) -> list:
    """(layer name, momentum, steps it needs) for every BatchNormalization whose moving
    statistics cannot settle in `steps` steps: after k steps the initial (0, 1) statistics
    still weigh m^k, about e^-3 (5%) at k = 3 / (1 - m)."""
    import keras

    def every(layer):
        for sub in getattr(layer, "layers", None) or ():
            yield sub
            yield from every(sub)

    out = []
    for layer in every(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            m = float(layer.momentum)
            needed = math.ceil(3 / (1 - m)) if m < 1 else math.inf
            if steps < needed:
                out.append((layer.name, m, needed))
    return out


def _warn_unsettled_batchnorm(model, steps: int) -> None:
    import warnings

    bad = unsettled_batchnorm(model, steps)
    if bad:
        name, m, needed = max(bad, key=lambda b: b[2])
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        warnings.warn(f"BatchNormalization {name!r}{more} has momentum {m:g}: its moving statistics need about {needed} steps to settle and "
                      f"this run has {steps}, so evaluation will use statistics still near "
                      f"their start (a test loss far above the training loss); use momentum "
                      f"<= {max(0.0, 1 - 3 / steps):.2f} or train longer", UserWarning,
                      stacklevel=3)


def _prepared(engine, ds):
    """The data on the device, the whitening fitted (both on the clock), every upload
    finished before the clock is read."""
    data = engine.prepare(ds)
    if engine.config.whiten:  # fitted on the device from training images: training time
        engine.fit_whitening(data)
    for x in engine.placement.copies(data.x_train):
        x[0, 0, 0, 0].numpy()
    return data


def _train_phase(engine, data, epoch: int, n_epochs: int, steps: int, quiet: bool,
                 progress, monitor, clock: _Clock, history: list):
    """One epoch's training in a monitor window; returns (its history row, the window)."""
    cfg = engine.config
    images = steps * cfg.batch_size
    window = (monitor.window(f"epoch {epoch}") if monitor is not None
              else contextlib.nullcontext())
    with window as w:
        loss_sum, hits, seconds = _train_epoch(engine, data, steps, f"epoch {epoch}/{n_epochs}",
                                               quiet, progress, history)
    clock.elapsed += seconds
    clock.training += seconds
    clock.images += images
    row = {"epoch": epoch, "train_loss": loss_sum / images, "train_acc": hits / images,
           "test_loss": None, "test_acc": None, "epoch_seconds": seconds,
           "eval_seconds": 0.0, "images_per_sec": images / seconds,
           "utilization_pct": _main_utilization(w),
           "lr": float(engine.lr_factor().numpy()) * cfg.lr_peak}
    return row, w


def _evaluation(engine, data, row: dict, clock: _Clock, result: FitResult) -> None:
    """Evaluate into `row`, on the clock; the first time the target is reached is noted."""
    t_eval = time.perf_counter()
    ev = engine.evaluate_prepared(data)
    row.update(test_loss=ev["test_loss"], test_acc=ev["test_acc"],
               eval_seconds=time.perf_counter() - t_eval)
    clock.elapsed += row["eval_seconds"]
    result.eval_seconds += row["eval_seconds"]
    target = engine.config.target
    if result.seconds_to_target is None and target is not None and ev["test_acc"] >= target:
        result.seconds_to_target = clock.elapsed


def _finished(result: FitResult, clock: _Clock, monitor, windows: list) -> FitResult:
    if result.history:
        last = result.history[-1]
        result.final_test_acc, result.final_test_loss = last["test_acc"], last["test_loss"]
    result.train_seconds = clock.elapsed
    if monitor is not None:
        result.utilization = monitor.result(windows)
    result.images_per_sec = clock.images / clock.training if clock.training else 0.0
    return result


def _train_epoch(engine, data, steps_per_epoch: int, label: str, quiet: bool, progress,
                 history: list = ()):
    """One epoch of `steps_per_epoch` steps in compiled calls; returns (summed loss,
    hits, seconds). A loss that is not finite (read from the fetch every call makes
    anyway) stops the run: float16 loss-scale skips keep the loss finite, so they never
    trigger this."""
    from tqdm import tqdm

    steps_per_call = engine.runtime_config.steps_per_call
    loss_sum = hits = 0.0
    done = 0
    t0 = time.perf_counter()
    # the bar is cleared even when a step raises
    with tqdm(total=steps_per_epoch, desc=label, unit="step", leave=False,
              disable=quiet) as bar:
        while done < steps_per_epoch:
            n = min(steps_per_call, steps_per_epoch - done)
            call_loss, call_hits = engine.train_steps(data, n)
            loss = float(call_loss.numpy())
            if not np.isfinite(loss):
                step = int(engine.step.numpy())
                raise TrainingDiverged(
                    f"training diverged: the loss is {loss} in the {n} steps up to "
                    f"step {step} (lr peak {engine.config.lr_peak}); lower --lr-peak or "
                    f"--weight-decay", step, history)
            loss_sum += loss
            hits += float(call_hits.numpy())
            done += n
            bar.update(n)
            progress()
    return loss_sum, hits, time.perf_counter() - t0


def _main_utilization(window) -> Optional[float]:
    """The median of a monitor window's main metric (kernel-busy %, or process CPU %)."""
    summary = getattr(window, "summary", None) or {}
    key = next((k for k in summary if k.endswith("kernel_busy_pct")), None) \
        or ("process_cpu_pct" if "process_cpu_pct" in summary else None)
    return summary[key]["median"] if key and summary[key] else None
