"""The regression gate: `fastcifar compare BASELINE.json CURRENT.json`.

A metric fails only when it is worse than the threshold AND the two runs' spreads do not
overlap (the current run's best is worse than the baseline's worst), so noise alone does
not fail a build. Accuracy is compared in percentage points; for accuracy benchmarks the
share of runs reaching the target may not drop, and a target the baseline reached must be
reached. Unusable input (another benchmark, dataset or device, a setting that differs, a
run that did not finish, a value that is not a finite number, nothing to compare) is exit
2, never a pass. Which settings must match is derived from their declarations
(`fastcifar.config`); the runtime values `auto` resolved are shown, not refused. `--normalize` divides
throughput by each run's machine calibration (a numpy matmul measured in the same run),
which means something for CPU results only.
"""

from __future__ import annotations

import math
import statistics
from typing import Optional

from .errors import UserError
from .metrics import GATED_BENCHMARKS, gated
from .results import read_json
from .util import parse_fraction as _parse_fraction

# benchmark -> metric -> which way is better (declared in `fastcifar.metrics`)
GATED = {benchmark: gated(benchmark) for benchmark in GATED_BENCHMARKS}
# what `auto` resolved to: shown when it differs, and left to the timing to judge (a
# candidate whose `auto` picks a slower path is a regression, not another configuration)
RESOLVED = ("precision", "xla", "conv_grad", "data_layout")


def _number(path: str, name: str, value):
    try:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) \
            and math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        ok = False
    if not ok:
        shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
        raise UserError(f"{path}: metric {name!r} is {shown}, not a finite number; "
                        f"re-run the benchmark")
    return float(value)


def _value_and_range(path: str, metrics: dict, name: str):
    """(value, (low, high)) of a metric and its spread; None when absent or null."""
    m = metrics.get(name)
    if m is None:
        return None
    if isinstance(m, dict):  # a spread: median with p10/p90 (or mean with std)
        if "median" in m:
            mid = _number(path, name, m["median"])
            return mid, (_number(path, name, m.get("p10", mid)),
                         _number(path, name, m.get("p90", mid)))
        if "mean" in m:
            mid, s = _number(path, name, m["mean"]), _number(path, name, m.get("std", 0.0))
            return mid, (mid - s, mid + s)
        raise UserError(f"{path}: metric {name!r} has neither a median nor a mean; "
                        f"re-run the benchmark")
    value = _number(path, name, m)
    spread = metrics.get(f"{name}_spread")
    if isinstance(spread, dict) and "p10" in spread:
        return value, (_number(path, name, spread["p10"]), _number(path, name, spread["p90"]))
    std = metrics.get(f"{name}_std")
    if std is not None:
        std = _number(path, f"{name}_std", std)
        return value, (value - std, value + std)
    return value, (value, value)


def _checked(path: str) -> dict:
    result = read_json(path)
    for key in ("metrics", "config", "runtime", "dataset"):
        if not isinstance(result.get(key), dict):
            raise UserError(f"{path}: {key!r} is not an object; is it a fastcifar result?")
    status = result.get("status")
    if status == "failed":
        raise UserError(f"{path} is a failed run ({result.get('error', 'no reason given')}): "
                        f"it is not a measurement; re-run it")
    if status != "ok":
        raise UserError(f"{path} has status {status!r}, not 'ok': only a finished run is a "
                        f"measurement; re-run it")
    if not isinstance(result.get("runtime_config"), dict):
        raise UserError(f"{path} does not record the runtime settings it ran with (an older "
                        f"fastcifar wrote it): re-run the benchmark with this version")
    return result


def differences(base: dict, cur: dict) -> list:
    """Every compared setting (`fastcifar.config`: all but those declared `not_compared`)
    whose requested value differs."""
    from .config import RuntimeConfig, TrainConfig, settings

    out = []
    for section, cls in (("config", TrainConfig), ("runtime_config", RuntimeConfig)):
        for s in settings(cls):
            if s.not_compared:
                continue
            a, b = base[section].get(s.name, s.default), cur[section].get(s.name, s.default)
            if a != b:
                out.append(f"{s.name} {a!r} vs {b!r}")
    return out


def _resolved(base: dict, cur: dict) -> list:
    """What `auto` chose differently on the two sides (shown, not refused)."""
    return [f"{key} {base['runtime'].get(key)!r} vs {cur['runtime'].get(key)!r}"
            for key in RESOLVED if base["runtime"].get(key) != cur["runtime"].get(key)]


def compare(baseline_path: str, current_path: Optional[str] = None,
            max_regression: float = 0.10, max_acc_drop_pp: float = 0.5,
            normalize: bool = False, force: bool = False):
    """Returns (exit code, table lines): 0 pass, 1 regression; unusable input raises
    UserError (exit 2). With one path: an interleaved A/B result (`bench step
    --baseline`), judged on its own interval."""
    if not (math.isfinite(max_acc_drop_pp) and max_acc_drop_pp >= 0):
        raise UserError(f"invalid --max-acc-drop {max_acc_drop_pp}: use a finite number of "
                        f"percentage points >= 0")
    if not (math.isfinite(max_regression) and 0 <= max_regression < 1):
        raise UserError(f"invalid --max-regression {max_regression}: use 0% to 100%")
    if current_path is None:
        return _compare_paired(baseline_path, max_regression)
    base, cur = _checked(baseline_path), _checked(current_path)
    kind = base.get("benchmark")
    if kind not in GATED:
        raise UserError(f"{baseline_path} is not a step or accuracy benchmark result "
                        f"(benchmark={kind!r}); compare results of `fastcifar bench`")
    if cur.get("benchmark") != kind:
        raise UserError(f"different benchmarks: {kind!r} vs {cur.get('benchmark')!r}; "
                        f"compare like with like")
    for what, (section, key) in (("dataset", ("dataset", "sha256")),
                                 ("device", ("runtime", "device_name"))):
        a, b = base[section].get(key), cur[section].get(key)
        if a != b and not force:
            raise UserError(f"different {what}: {a!r} vs {b!r}; pass --force to compare "
                            f"anyway")
    differing = differences(base, cur)
    if differing and not force:
        raise UserError(f"different configurations ({'; '.join(differing)}): they measure "
                        f"different things; pass --force to compare anyway")
    calib = _calibrations(baseline_path, base, current_path, cur) if normalize else None
    lines = [f"{'metric':<26} {'baseline':>14} {'current':>14} {'change':>10}  verdict"]
    failed, compared = False, 0
    both_ab = kind == "step" and "ab" in base and "ab" in cur
    for name, better in GATED[kind].items():
        a = _value_and_range(baseline_path, base["metrics"], name)
        b = _value_and_range(current_path, cur["metrics"], name)
        if both_ab and name == "step_ms":
            verdict, shown = _interval_verdict(
                _rounds(baseline_path, base), _rounds(current_path, cur), False,
                max_regression)
        else:
            verdict, shown = _verdict(name, better, a, b, calib, max_regression,
                                      max_acc_drop_pp, baseline_path, current_path)
        failed |= verdict.startswith("FAIL")
        compared += not verdict.startswith("skipped")
        va, vb = (None if x is None else x[0] for x in (a, b))
        lines.append(f"{name:<26} {_fmt(va):>14} {_fmt(vb):>14} {shown:>10}  {verdict}")
    if not compared:
        raise UserError(f"nothing to compare: every gated metric "
                        f"({', '.join(GATED[kind])}) is null in both results; re-run the "
                        f"benchmarks")
    if kind == "step":
        rows, fp_failed = _fingerprint_rows(base["metrics"].get("fingerprint"),
                                            cur["metrics"].get("fingerprint"))
        lines += rows
        failed |= fp_failed
    resolved = _resolved(base, cur)
    if resolved:
        lines.append("(auto resolved differently: " + "; ".join(resolved)
                     + "; the timing above includes what that costs)")
    if differing:
        lines.append("(compared with --force although the configurations differ: "
                     + "; ".join(differing) + ")")
    if calib:
        lines.append(f"(throughput divided by machine calibration: {calib[0]:.1f} vs "
                     f"{calib[1]:.1f} GFLOP/s numpy matmul)")
    return (1 if failed else 0), lines


def _rounds(path: str, result: dict) -> list:
    values = result["ab"].get("candidate", {}).get("step_ms_rounds")
    if not isinstance(values, list) or len(values) < 2:
        raise UserError(f"{path}: its A/B record has fewer than 2 rounds; re-run it with "
                        f"--rounds 2 or more")
    return [_number(path, "step_ms_rounds", v) for v in values]


def _interval_verdict(base: list, cur: list, paired: bool, threshold: float):
    """(verdict, change shown) from the ratio's interval: FAIL only when the whole
    interval is above 1 and the ratio above 1 + threshold."""
    from .abtest import judge

    j = judge(base, cur, paired, threshold)
    r = j["step_ms_ratio"]
    shown = f"{100 * (r['median'] - 1):+.1f}%"
    interval = f"[{100 * (r['low'] - 1):+.1f}%, {100 * (r['high'] - 1):+.1f}%]"
    if j["slower"]:
        return f"FAIL (95% interval {interval})", shown
    if r["median"] > 1 + threshold:
        return f"worse, interval {interval} reaches 1", shown
    return f"ok (interval {interval})", shown


def _fingerprint_rows(base, cur) -> tuple:
    """Rows for the counted signals (`fastcifar.fingerprint`): any growth in FLOPs,
    converts or transposes fails, and so does any retrace while timing."""
    from .fingerprint import GATED as COUNTED_GATED

    if not isinstance(cur, dict) or "error" in cur:
        return ["(no fingerprint in the current result: counted signals not compared)"], False
    if not isinstance(base, dict) or "error" in base:
        base = {}
    rows, failed = [], False
    for name in COUNTED_GATED:
        a, b = base.get(name), cur.get(name)
        if name == "retraces":
            bad = isinstance(b, (int, float)) and b > 0
            verdict = "FAIL (the step was recompiled while timed)" if bad else "ok"
        elif a is None or b is None:
            bad, verdict = False, "skipped (not in both)"
        else:
            bad = b > a
            verdict = "FAIL (grew)" if bad else "ok"
        failed |= bad
        change = f"{b - a:+d}" if isinstance(a, int) and isinstance(b, int) else ""
        rows.append(f"{'hlo ' + name:<26} {_fmt(a):>14} {_fmt(b):>14} {change:>10}  {verdict}")
    return rows, failed


def _compare_paired(path: str, max_regression: float):
    result = _checked(path)
    ab = result.get("ab")
    if result.get("benchmark") != "step" or not isinstance(ab, dict):
        raise UserError(f"{path} is not an interleaved A/B result: give two results "
                        f"(BASELINE CURRENT), or make one with `fastcifar bench step "
                        f"--baseline PYTHON`")
    sides = []
    for side in ("baseline", "candidate"):
        values = (ab.get(side) or {}).get("step_ms_rounds")
        if not isinstance(values, list) or len(values) < 2:
            raise UserError(f"{path}: its A/B record has fewer than 2 rounds; re-run with "
                            f"--rounds 2 or more")
        sides.append([_number(path, "step_ms_rounds", v) for v in values])
    if len(sides[0]) != len(sides[1]):
        raise UserError(f"{path}: the two sides have different numbers of rounds; re-run it")
    verdict, shown = _interval_verdict(sides[0], sides[1], True, max_regression)
    failed = verdict.startswith("FAIL")
    lines = [f"{'metric':<26} {'baseline':>14} {'current':>14} {'change':>10}  verdict",
             f"{'step_ms (paired rounds)':<26} {_fmt(statistics.median(sides[0])):>14} "
             f"{_fmt(statistics.median(sides[1])):>14} {shown:>10}  {verdict}"]
    rows, fp_failed = _fingerprint_rows((ab.get("baseline") or {}).get("fingerprint"),
                                        (ab.get("candidate") or {}).get("fingerprint"))
    lines += rows
    from .abtest import judge

    j = judge(sides[0], sides[1], True, max_regression)
    md = j["min_detectable_slowdown"]
    lines.append(f"({len(sides[0])} interleaved rounds; Mann-Whitney p "
                 f"{j['mann_whitney_p']:.3g}; " + (
                     f"at this threshold the run would catch a slowdown of {md:.1%} or more "
                     f"80% of the time)" if md is not None else
                     "too few rounds to show any slowdown: use 3 or more)"))
    return (1 if failed or fp_failed else 0), lines


def _calibrations(baseline_path, base, current_path, cur) -> tuple:
    out = []
    for path, r in ((baseline_path, base), (current_path, cur)):
        if r["runtime"].get("device_kind") == "GPU":
            raise UserError(f"{path} ran on a GPU: --normalize divides by a CPU matmul, which "
                            f"says nothing about a GPU; compare on the same machine without "
                            f"--normalize")
        calibration = r.get("calibration")
        g = calibration.get("gflops") if isinstance(calibration, dict) else None
        if not g:
            raise UserError(f"{path} has no machine calibration; re-run the benchmark "
                            f"with this version to use --normalize")
        out.append(_number(path, "calibration.gflops", g))
    return tuple(out)


def _verdict(name, better, a, b, calib, max_regression, max_acc_drop_pp, base_path, cur_path):
    """(verdict, change shown) for one metric."""
    if a is None and b is None:
        return "skipped (null in both)", ""
    if name == "seconds_to_target":
        if b is None:
            return "FAIL (target no longer reached)", ""
        if a is None:
            return "ok (now reached)", ""
    elif a is None or b is None:
        raise UserError(f"{base_path if a is None else cur_path} lacks metric {name!r}; "
                        f"re-run the benchmark")
    (va, ra), (vb, rb) = a, b
    if name == "fraction_reaching_target":
        change = vb - va
        return ("FAIL (fewer runs reach the target)" if change < 0 else "ok"), \
            f"{100 * change:+.0f} pp"
    if calib and name in ("images_per_sec", "step_ms"):
        f = (lambda x, g: x / g) if name == "images_per_sec" else (lambda x, g: x * g)
        va, ra = f(va, calib[0]), tuple(f(x, calib[0]) for x in ra)
        vb, rb = f(vb, calib[1]), tuple(f(x, calib[1]) for x in rb)
    if name == "final_test_acc":
        change = 100 * (vb - va)
        worse, shown = -change > max_acc_drop_pp, f"{change:+.2f} pp"
    else:
        rel = (vb - va) / va if va else 0.0
        worse, shown = (-rel if better == "higher" else rel) > max_regression, \
            f"{100 * rel:+.1f}%"
    outside = (max(rb) < min(ra)) if better == "higher" else (min(rb) > max(ra))
    return ("FAIL" if worse and outside else "worse, within noise" if worse else "ok"), shown


def _fmt(v) -> str:
    if v is None:
        return "null"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"


def parse_fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1, for a threshold in [0%, 100%)."""
    value = _parse_fraction(text, "threshold")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise UserError(f"invalid threshold {text!r}: must be between 0% and 100%")
    return value
