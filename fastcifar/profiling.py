"""Where the time goes: a profiler trace of steady-state steps, and the ops that took it.

`profile_steps` records TensorFlow's profiler trace (open it with TensorBoard);
`top_ops` reads the trace back (its XSpace protobuf) and sums each op's time: kernel time
on a GPU's device plane, or op execution time on the host's TensorFlow threads on a CPU.
Each op is put in a group a person tuning speed thinks in: convolution forward,
convolution backward, BatchNorm, pooling, dense, elementwise, data/augmentation, optimizer.
"""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Callable

# name scopes the trainer opens, so their ops can be told apart from the net's
SCOPE_GROUPS = (("augment", "data/augmentation"), ("optimizer", "optimizer"),
                ("conv_filter_grad", "convolution backward"))
# op type -> group, the first rule that matches (oneDNN names: _MklNativeConv2D...)
TYPE_GROUPS = (
    (lambda t: "Conv" in t and "Backprop" in t, "convolution backward"),
    (lambda t: "Conv" in t, "convolution forward"),
    (lambda t: "BatchNorm" in t, "BatchNorm"),
    (lambda t: "Pool" in t, "pooling"),
    (lambda t: "MatMul" in t, "dense"),
    (lambda t: t.startswith(("ResourceApply", "AssignSubVariableOp", "AssignAddVariableOp")),
     "optimizer"),
    (lambda t: t.startswith(("GatherV2", "ArgSort", "TopKV2", "StatelessRandom")),
     "data/augmentation"),
)


def profile_steps(call: Callable[[], float], logdir: str, calls: int = 2) -> float:
    """A TensorFlow profiler trace of `calls` steady-state calls into `logdir`; returns
    the wall seconds they took while traced."""
    import tensorflow as tf

    os.makedirs(logdir, exist_ok=True)
    tf.profiler.experimental.start(logdir)
    try:
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        return time.perf_counter() - t0
    finally:
        tf.profiler.experimental.stop()


def group_of(name: str, op_type: str) -> str:
    """The group an op belongs to, by the trainer's name scopes, then by its type."""
    for scope, group in SCOPE_GROUPS:
        if f"/{scope}/" in f"/{name}/" or name.startswith(f"{scope}/"):
            return group
    for matches, group in TYPE_GROUPS:
        if matches(op_type):
            return group
    return "elementwise"


def _op_times(space) -> tuple:
    """({(op name, op type): seconds}, where the times come from)."""
    totals: dict = {}
    devices = [p for p in space.planes if p.name.startswith("/device:GPU")]
    if devices:
        for plane in devices:
            stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    op = next((s.str_value or plane.stat_metadata[s.ref_value].name
                               for s in event.stats
                               if stat_names.get(s.metadata_id) == "tf_op"), "")
                    name, _, op_type = op.rpartition(":")
                    key = (name or plane.event_metadata[event.metadata_id].name, op_type)
                    totals[key] = totals.get(key, 0.0) + event.duration_ps * 1e-12
        return totals, "GPU kernel time (device planes)"
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                full = plane.event_metadata[event.metadata_id].name
                name, sep, op_type = full.rpartition(":")
                if re.fullmatch(r"\w*fusion(\.\d+)?", full):  # a kernel XLA generated
                    name, sep, op_type = full, ":", "XlaFusion"
                if not sep or "::" in full or not op_type.isidentifier() \
                        or op_type in ("ReadVariableOp", "Identity", "NoOp"):
                    continue  # executor bookkeeping, not an op
                totals[(name, op_type)] = totals.get((name, op_type), 0.0) \
                    + event.duration_ps * 1e-12
    return totals, "op execution time on the host's TensorFlow threads (CPU)"


def top_ops(logdir: str, profiled_seconds: float, limit: int = 10) -> dict:
    """The `limit` ops with the most time in the newest trace under `logdir`, each with
    its share of the profiled wall time and its group, and the time per group. On a CPU
    ops of different threads overlap, so shares may add up to more than 1."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    traces = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                    key=os.path.getmtime)
    if not traces:
        return {"error": f"no profiler trace under {logdir}"}
    space = xplane_pb2.XSpace()
    with open(traces[-1], "rb") as f:
        space.ParseFromString(f.read())
    totals, source = _op_times(space)
    wall = max(profiled_seconds, 1e-9)
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    rows = [{"op": name, "type": op_type, "group": group_of(name, op_type),
             "seconds": seconds, "share_of_step": seconds / wall}
            for (name, op_type), seconds in ranked[:limit]]
    groups: dict = {}
    for (name, op_type), seconds in totals.items():
        group = group_of(name, op_type)
        groups[group] = groups.get(group, 0.0) + seconds
    return {"top_ops": rows, "groups": dict(sorted(groups.items(), key=lambda g: -g[1])),
            "group_share_of_step": {g: s / wall for g, s in groups.items()},
            "profiled_seconds": profiled_seconds, "source": source,
            "trace": traces[-1]}


def top_ops_table(profile: dict) -> list:
    """`top_ops` as printable lines."""
    if "error" in profile:
        return [f"top ops: {profile['error']}"]
    lines = [f"where the time goes ({profile['source']}, over "
             f"{profile['profiled_seconds']:.2f} s of profiled steps):",
             f"  {'share':>6}  {'group':<22} {'type':<31} op (its end)"]
    for row in profile["top_ops"]:
        op = row["op"] if len(row["op"]) <= 60 else "..." + row["op"][-57:]
        lines.append(f"  {row['share_of_step']:>6.1%}  {row['group']:<22} {row['type']:<31} "
                     f"{op}")
    lines.append("  by group: " + ", ".join(
        f"{g} {s:.0%}" for g, s in sorted(profile["group_share_of_step"].items(),
                                          key=lambda item: -item[1])))
    if any(row["type"] == "XlaFusion" for row in profile["top_ops"]):
        lines.append("  XlaFusion: elementwise kernels XLA compiled. With XLA off the step as "
                     "a whole is not compiled, but fastcifar's fused GELU (forward and "
                     "backward) is, on its own")
    return lines
