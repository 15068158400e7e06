"""`fastcifar report`: one PNG with the pictures that say more than the JSON.

Panels, each drawn when some result has the data: test accuracy against seconds (train
histories and accuracy-benchmark curves), the step-time distribution (step benchmarks),
and the utilisation timeline summary per window. Needs the `plot` extra (matplotlib).
"""

from __future__ import annotations

import math
import os

from .errors import UserError
from .metrics import label
from .results import note_written
from .util import atomic_path


MAX_POINTS = 2000  # per curve: more points than pixels only slow the drawing down
MAX_MAGNITUDE = 1e12  # seconds, milliseconds or percentages beyond this are not real


def _number(value) -> float:
    x = float(value)
    if not math.isfinite(x) or abs(x) > MAX_MAGNITUDE:
        raise ValueError(f"{value!r} is out of range")
    return x


def _curve(result) -> list:
    if result.get("history"):
        points = [[_number(h["seconds"]), _number(h["test_acc"])] for h in result["history"]
                  if h.get("test_acc") is not None]
    else:
        points = [[_number(x), _number(y)]
                  for x, y in (result.get("metrics") or {}).get("curve") or []]
    step = max(1, -(-len(points) // MAX_POINTS))  # every k-th point, and the last
    return points[::step] + ([points[-1]] if step > 1 and (len(points) - 1) % step else [])


def _step_rows(result) -> list:
    if result.get("benchmark") != "step":
        return []
    rows = result.get("sweep") or [result["metrics"]]
    return [{"batch_size": r.get("batch_size", ""),
             **{k: _number(r["step_ms"][k]) for k in ("median", "p10", "p90")}}
            for r in rows if r.get("step_ms")]


def _utilization(result):
    u = (result.get("metrics") or {}).get("utilization")
    if not u or u.get("median") is None:
        return None
    return {"median": _number(u["median"]), "p10": _number(u["p10"]),
            "p90": _number(u["p90"]),
            "metric": u.get("metric"), "source": u.get("source")}


def _extract(path: str, result: dict) -> tuple:
    """(curve, step rows, utilisation) of one result; a malformed one is one line."""
    try:
        return _curve(result), _step_rows(result), _utilization(result)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise UserError(f"cannot plot {path}: a field it needs is missing or not a number "
                        f"({type(e).__name__}: {e}); pass results written by fastcifar") \
            from None


def render(results: list, path: str) -> None:
    extracted = [(os.path.basename(p), *_extract(p, r)) for p, r in results]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("fastcifar report needs matplotlib: pip install 'fastcifar[plot]'") \
            from None
    curves = [(name, c) for name, c, _, _ in extracted if c]
    steps = [(name, rows) for name, _, rows, _ in extracted if rows]
    utils = [(name, u) for name, _, _, u in extracted if u]
    panels = [x for x in (("curve", curves), ("steps", steps), ("util", utils)) if x[1]]
    if not panels:
        raise UserError("nothing to plot: the results hold no history, curve, step times "
                          "or utilisation")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (kind, data) in zip(axes[0], panels):
        if kind == "curve":
            for name, c in data:
                ax.plot([p[0] for p in c], [100 * p[1] for p in c], marker="o", label=name)
            ax.set_xlabel(label("seconds"))
            ax.set_ylabel(label("test_acc"))
            ax.set_title("accuracy vs time")
        elif kind == "steps":
            for i, (name, rows) in enumerate(data):
                for j, s in enumerate(rows):
                    x = i * 10 + j
                    ax.errorbar([x], [s["median"]], yerr=[[s["median"] - s["p10"]],
                                                          [s["p90"] - s["median"]]],
                                fmt="o", capsize=4, label=f"{name} b{s['batch_size']}")
            ax.set_ylabel(f"{label('step_ms')}: median, p10-p90")
            ax.set_xticks([])
            ax.set_title("step-time distribution")
        else:
            names = [n for n, _ in data]
            med = [u["median"] for _, u in data]
            lo = [u["median"] - u["p10"] for _, u in data]
            hi = [u["p90"] - u["median"] for _, u in data]
            ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=4)
            ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
            ax.set_ylabel(f"{data[0][1].get('metric')} (median, p10-p90)")
            ax.set_title(f"utilisation ({data[0][1].get('source')}) over training windows")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    except (ValueError, OverflowError, RuntimeError) as e:  # matplotlib's own limits
        raise UserError(f"cannot plot these results ({type(e).__name__}: {e})") from None
    finally:
        plt.close(fig)
    note_written(path)
