"""The regression gate: `fastcifar compare BASELINE.json CURRENT.json`.

A metric fails only when it is worse than the threshold AND the two runs' spreads do not
overlap (the current run's best is worse than the baseline's worst), so noise alone does
not fail a build. Accuracy is compared in percentage points. `--normalize` divides
throughput by each run's machine calibration (a numpy matmul measured in the same run).
"""

from __future__ import annotations

from .errors import UserError
from .results import read_json
from .util import parse_fraction as _parse_fraction

# metric -> (better, how to read its value and spread from a result's metrics)
GATED = {
    "step": {"images_per_sec": "higher", "step_ms": "lower"},
    "accuracy": {"final_test_acc": "higher", "seconds_to_target": "lower"},
}


def _value_and_range(metrics: dict, name: str):
    m = metrics.get(name)
    if m is None:
        return None
    if isinstance(m, dict):  # a spread: median with p10/p90 (or mean with std)
        if "median" in m:
            return m["median"], (m.get("p10", m["median"]), m.get("p90", m["median"]))
        if "mean" in m:
            s = m.get("std", 0.0)
            return m["mean"], (m["mean"] - s, m["mean"] + s)
        return None
    s = metrics.get(f"{name}_spread")
    if isinstance(s, dict) and "p10" in s:
        return m, (s["p10"], s["p90"])
    s = metrics.get(f"{name}_std")
    if isinstance(s, (int, float)):
        return m, (m - s, m + s)
    return m, (m, m)


def compare(baseline_path: str, current_path: str, max_regression: float = 0.10,
            max_acc_drop_pp: float = 0.5, normalize: bool = False, force: bool = False):
    """Returns (exit code, table lines). 2 = unusable input (raised as UserError)."""
    base, cur = read_json(baseline_path), read_json(current_path)
    kind = base.get("benchmark")
    if kind not in GATED:
        raise UserError(f"{baseline_path} is not a step or accuracy benchmark result "
                          f"(benchmark={kind!r}); compare results of `fastcifar bench`")
    if cur.get("benchmark") != kind:
        raise UserError(f"different benchmarks: {kind!r} vs {cur.get('benchmark')!r}; "
                          f"compare like with like")
    for what, key in (("dataset", ("dataset", "sha256")), ("device", ("runtime", "device_name"))):
        a, b = base.get(key[0], {}).get(key[1]), cur.get(key[0], {}).get(key[1])
        if a != b and not force:
            raise UserError(f"different {what}: {a!r} vs {b!r}; pass --force to compare "
                              f"anyway")
    calib = []
    if normalize:
        for path, r in ((baseline_path, base), (current_path, cur)):
            g = (r.get("calibration") or {}).get("gflops")
            if not g:
                raise UserError(f"{path} has no machine calibration; re-run the benchmark "
                                  f"with this version to use --normalize")
            calib.append(g)
    lines = [f"{'metric':<22} {'baseline':>14} {'current':>14} {'change':>10}  verdict"]
    failed = False
    for name, better in GATED[kind].items():
        a = _value_and_range(base["metrics"], name)
        b = _value_and_range(cur["metrics"], name)
        if a is None or b is None:
            if name == "seconds_to_target":
                continue  # optional: a run may not reach its target
            missing = baseline_path if a is None else current_path
            raise UserError(f"{missing} lacks metric {name!r}; re-run the benchmark")
        (va, ra), (vb, rb) = a, b
        if va is None or vb is None:
            lines.append(f"{name:<22} {_fmt(va):>14} {_fmt(vb):>14} {'':>10}  skipped (null)")
            continue
        if normalize and name in ("images_per_sec", "step_ms"):
            f = (lambda x, g: x / g) if name == "images_per_sec" else (lambda x, g: x * g)
            va, ra = f(va, calib[0]), tuple(f(x, calib[0]) for x in ra)
            vb, rb = f(vb, calib[1]), tuple(f(x, calib[1]) for x in rb)
        if name == "final_test_acc":
            change = 100 * (vb - va)
            worse = -change > max_acc_drop_pp
            shown = f"{change:+.2f} pp"
        else:
            rel = (vb - va) / va if va else 0.0
            worse = (-rel if better == "higher" else rel) > max_regression
            shown = f"{100 * rel:+.1f}%"
        outside = (max(rb) < min(ra)) if better == "higher" else (min(rb) > max(ra))
        verdict = "FAIL" if worse and outside else \
            "worse, within noise" if worse else "ok"
        failed |= verdict == "FAIL"
        lines.append(f"{name:<22} {_fmt(va):>14} {_fmt(vb):>14} {shown:>10}  {verdict}")
    if normalize:
        lines.append(f"(throughput divided by machine calibration: {calib[0]:.1f} vs "
                     f"{calib[1]:.1f} GFLOP/s numpy matmul)")
    return (1 if failed else 0), lines


def _fmt(v) -> str:
    if v is None:
        return "null"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1, for a threshold in [0%, 100%)."""
    value = _parse_fraction(text, "threshold")
    if not 0 <= value < 1:
        raise UserError(f"invalid threshold {text!r}: must be between 0% and 100%")
    return value
