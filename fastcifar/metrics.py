"""Every number fastcifar reports, declared once: its unit, which way is better, whether the
regression gate compares it, its TensorBoard tag and its column in the epoch table.

Results (`fastcifar.results`), the gate (`fastcifar.compare`), TensorBoard (`fastcifar.run`),
the command line's epoch table and the report's axis labels all read this table; a result
that carries a metric (or a history field) not declared here is refused when it is built.
Adding a metric is one `Metric(...)` line here plus the code that computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    better: str = "none"            # "higher", "lower" or "none"
    gated: Tuple[str, ...] = ()      # benchmarks whose gate compares it: "step", "accuracy"
    history: bool = False            # a field of each epoch's history row
    result: bool = True              # a key of a result's `metrics`
    tensorboard: str = ""            # the scalar's tag, written per epoch (history fields)
    column: Optional[tuple] = None   # epoch table: (position, header, width, format)
    label: str = ""                  # words for an axis or a table ("step time (ms)")

    def __post_init__(self):
        assert self.better in ("higher", "lower", "none"), self
        assert not self.tensorboard or self.history, self
        assert self.column is None or self.history, self


def _declare(*metrics: Metric) -> Mapping[str, Metric]:
    return {m.name: m for m in metrics}


_HISTORY_ONLY = dict(history=True, result=False)

METRICS: Mapping[str, Metric] = _declare(
    # throughput and time
    Metric("images_per_sec", "images/s", "higher", gated=("step",), history=True,
           tensorboard="throughput/images_per_sec", column=(8, "img/s", 7, ".0f"),
           label="images/s (steady state)"),
    Metric("images_per_sec_spread", "images/s", "higher"),
    Metric("step_ms", "ms", "lower", gated=("step",), label="step time (ms)"),
    Metric("fingerprint", "counts from the training call's HLO (fastcifar.fingerprint): "
                          "FLOPs per step, ops by kind, bytes, retraces while timing"),
    Metric("step_ms_ratio", "ratio candidate/baseline of median step time, with its 95% "
                            "interval (interleaved A/B)", "lower"),
    Metric("mann_whitney_p", "one-sided p-value that the candidate's steps are slower"),
    Metric("min_detectable_slowdown", "fraction: the smallest slowdown this A/B run would "
                                      "catch 80% of the time", "lower"),
    Metric("compile_seconds", "s", "lower"),
    Metric("train_seconds", "s", "lower"),
    Metric("prep_seconds", "s", "lower"),
    Metric("eval_seconds", "s", "lower", history=True),
    Metric("load_seconds", "s", "lower"),
    Metric("cold_wall_seconds", "s (process start to the first run's final accuracy: "
                                "imports, loading, compiling, training, evaluation)", "lower"),
    Metric("seconds_to_target", "s", "lower", gated=("accuracy",)),
    Metric("steps_per_epoch", "steps"),
    # accuracy
    Metric("final_test_acc", "fraction", "higher", gated=("accuracy",)),
    Metric("final_test_loss", "nats/image", "lower"),
    Metric("final_test_acc_std", "fraction", "lower"),
    Metric("fraction_reaching_target", "fraction", "higher", gated=("accuracy",)),
    Metric("curve", "[seconds, test accuracy]"),
    Metric("test_images", "images"),
    # compute and memory
    Metric("flops_per_image", "FLOP/image (training step)"),
    Metric("achieved_flops_per_sec", "FLOP/s", "higher"),
    Metric("peak_flops_per_sec", "FLOP/s"),
    Metric("fraction_of_peak", "fraction", "higher"),
    Metric("peak_error", "text (why no fraction_of_peak)"),
    Metric("peak_memory_bytes", "bytes", "lower"),
    Metric("host_peak_rss_bytes", "bytes (peak resident memory of the process)", "lower"),
    Metric("utilization", "% (kernel-busy on GPU, share of all cores on CPU)", "higher",
           label="utilisation (median, p10-p90)"),
    Metric("top_ops", "table (profiler: the ops that took the time)"),
    # against the tutorial
    Metric("speedup_vs_tutorial", "ratio", "higher"),
    Metric("speedup_vs_seed", "ratio (old name of speedup_vs_tutorial, removed in 0.3)",
           "higher"),
    Metric("tutorial_images_per_sec", "images/s"),
    Metric("fast_images_per_sec", "images/s", "higher"),
    Metric("tutorial_peak_rss_bytes", "bytes (peak resident memory of the tutorial's "
                                      "process)"),
    # identity and self-checks
    Metric("weights_checksum", "sha256 prefix of the final float32 weights"),
    Metric("passed", "checks"),
    Metric("failed", "checks", "lower"),
    Metric("skipped", "checks"),
    # each epoch's history row
    Metric("epoch", "epochs", column=(1, "epoch", 5, "d"), **_HISTORY_ONLY),
    Metric("lr", "learning rate per batch (lr_peak's unit)", tensorboard="learning_rate",
           column=(2, "lr", 7, ".4f"), **_HISTORY_ONLY),
    Metric("train_loss", "nats/image", "lower", tensorboard="train/loss",
           column=(3, "train loss", 10, ".4f"), **_HISTORY_ONLY),
    Metric("train_acc", "fraction", "higher", tensorboard="train/accuracy",
           column=(4, "train acc", 9, ".4f"), **_HISTORY_ONLY),
    Metric("test_loss", "nats/image", "lower", tensorboard="test/loss",
           column=(5, "test loss", 9, ".4f"), **_HISTORY_ONLY),
    Metric("test_acc", "fraction", "higher", tensorboard="test/accuracy",
           column=(6, "test acc", 8, ".4f"), label="test accuracy (%)", **_HISTORY_ONLY),
    Metric("epoch_seconds", "s", "lower", **_HISTORY_ONLY),
    Metric("utilization_pct", "% (the epoch's median)", "higher",
           tensorboard="throughput/utilization_pct", **_HISTORY_ONLY),
    Metric("seconds", "s (the clock: preparation, training, evaluations)",
           tensorboard="time/seconds", column=(7, "seconds", 8, ".1f"),
           label="seconds (data prep + training + evaluations; no compile)",
           **_HISTORY_ONLY),
)


def gated(benchmark: str) -> dict:
    """metric -> which way is better, for the metrics the gate compares in `benchmark`."""
    return {m.name: m.better for m in METRICS.values() if benchmark in m.gated}


GATED_BENCHMARKS = tuple(sorted({b for m in METRICS.values() for b in m.gated}))


def undeclared(metrics: Mapping, history=()) -> list:
    """Names in a result's metrics, or in its history rows, that are not declared here."""
    names = [k for k in metrics if k not in METRICS or not METRICS[k].result]
    for row in history or ():
        names += [k for k in row if (k not in METRICS or not METRICS[k].history)
                  and k not in names]
    return names


def tensorboard_tags() -> dict:
    """history field -> TensorBoard tag."""
    return {m.name: m.tensorboard for m in METRICS.values() if m.tensorboard}


def epoch_columns() -> list:
    """(field, header, width, format) of the command line's epoch table, in order."""
    return [(m.name, *m.column[1:]) for m in sorted(
        (m for m in METRICS.values() if m.column), key=lambda m: m.column[0])]


def epoch_header() -> str:
    return " ".join(f"{header:>{width}}" for _, header, width, _ in epoch_columns())


def epoch_line(row: dict) -> str:
    """One epoch's row as the table prints it ("-" for a value not measured that epoch)."""
    cells = []
    for name, _, width, fmt in epoch_columns():
        value = row.get(name)
        cells.append(f"{value:>{width}{fmt}}" if value is not None else f"{'-':>{width}}")
    return " ".join(cells)


def info(names) -> dict:
    """unit and direction of the named metrics, for a result's `metric_info`."""
    return {k: {"unit": METRICS[k].unit, "better": METRICS[k].better} for k in names
            if k in METRICS}


def label(name: str) -> str:
    return METRICS[name].label or f"{name} ({METRICS[name].unit})"
