"""`fastcifar report`: one PNG with the pictures that say more than the JSON.

Panels, each drawn when some result has the data: test accuracy against seconds (train
histories and accuracy-benchmark curves), the step-time distribution (step benchmarks),
and the utilisation timeline summary per window. Needs the `plot` extra (matplotlib).
"""

from __future__ import annotations

import os

from .errors import UserError
from .util import atomic_path


def _curves(result):
    if result.get("history"):
        return [[h["seconds"], h["test_acc"]] for h in result["history"]
                if h.get("test_acc") is not None]
    return (result.get("metrics") or {}).get("curve") or []


def render(results: list, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("fastcifar report needs matplotlib: pip install 'fastcifar[plot]'") \
            from None
    curves = [(os.path.basename(p), _curves(r)) for p, r in results]
    curves = [(n, c) for n, c in curves if c]
    steps = [(os.path.basename(p), r) for p, r in results if r.get("benchmark") == "step"]
    utils = [(os.path.basename(p), (r.get("metrics") or {}).get("utilization"))
             for p, r in results]
    utils = [(n, u) for n, u in utils if u and u.get("median") is not None]
    panels = [x for x in (("curve", curves), ("steps", steps), ("util", utils)) if x[1]]
    if not panels:
        raise UserError("nothing to plot: the results hold no history, curve, step times "
                          "or utilisation")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (kind, data) in zip(axes[0], panels):
        if kind == "curve":
            for name, c in data:
                ax.plot([p[0] for p in c], [100 * p[1] for p in c], marker="o", label=name)
            ax.set_xlabel("seconds (data prep + training + evaluations; no compile)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("accuracy vs time")
        elif kind == "steps":
            for i, (name, r) in enumerate(data):
                for j, cfg in enumerate(r.get("sweep") or [r["metrics"]]):
                    s = cfg.get("step_ms")
                    if not s:
                        continue
                    x = i * 10 + j
                    ax.errorbar([x], [s["median"]], yerr=[[s["median"] - s["p10"]],
                                                          [s["p90"] - s["median"]]],
                                fmt="o", capsize=4,
                                label=f"{name} b{cfg.get('batch_size', '')}")
            ax.set_ylabel("step time (ms): median, p10-p90")
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
    finally:
        plt.close(fig)
