"""What the compiled training call does, counted rather than timed: a noise-free signal for
the regression gate.

From the HLO module TensorFlow hands XLA for the multi-step training call (before XLA
optimises it, so the same on every machine and however loaded the runner is): the FLOPs of
its convolutions and matrix products, how many of each kind of op it holds (convolutions,
dots, converts, transposes, copies, custom calls), the bytes of its parameters and outputs,
and the model's trainable parameter count. The HLO is taken with XLA on even where the run
itself keeps XLA off: it describes the computation, not how the run executes it. A cast
slipped into the step shows as more converts, a layout change as more transposes, a wider
layer as more FLOPs; none of it depends on the clock.

Counts are static: an op inside the step's loop body counts once, not once per step.
"""

from __future__ import annotations

import math
import re
from collections import Counter

COUNTED = ("convolution", "dot", "convert", "transpose", "copy", "custom-call")
# compared by the gate: any growth fails (FLOPs, casts, layout changes, retraces)
GATED = ("flops_per_step", "convert", "transpose", "retraces")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
# `%name = TYPE[dims]{layout} opcode(operands), attributes`
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(\S+?\[[0-9,]*\])(?:\{[^}]*\})?"
                          r"\s+([\w\-]+)\((.*)$")


def _dims(text: str) -> list:
    return [int(d) for d in text.split(",") if d]


def _prod(dims) -> int:
    return math.prod(dims) if dims else 1


def _operand_shapes(rest: str) -> list:
    """Shapes of an instruction's operands, in order (the text before the attributes)."""
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    return [_dims(m.group(2)) for m in _SHAPE.finditer(rest[:end])]


def conv_flops(out: list, rhs: list, dim_labels: str) -> int:
    """2 x output elements x multiply-adds per output element (the kernel's size over its
    output-feature dimension, `o` in the kernel's dim labels)."""
    kernel_labels = dim_labels.split("->")[0].split("_")[1]
    o = kernel_labels.index("o")
    return 2 * _prod(out) * (_prod(rhs) // rhs[o])


def dot_flops(out: list, lhs: list, contracting: list) -> int:
    return 2 * _prod(out) * _prod([lhs[d] for d in contracting])


def from_hlo(text: str) -> dict:
    """Counts and FLOPs of an HLO module's text (every computation in it)."""
    counts, flops = Counter(), 0
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            continue
        out_shape, opcode, rest = m.groups()
        if opcode in COUNTED:
            counts[opcode] += 1
        if opcode == "convolution":
            out = _dims(_SHAPE.match(out_shape).group(2))
            labels = re.search(r"dim_labels=([\w>\-]+)", rest)
            operands = _operand_shapes(rest)
            if labels and len(operands) == 2:
                flops += conv_flops(out, operands[1], labels.group(1))
        elif opcode == "dot":
            out = _dims(_SHAPE.match(out_shape).group(2))
            operands = _operand_shapes(rest)
            contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", rest)
            if operands and contracting:
                flops += dot_flops(out, operands[0], _dims(contracting.group(1)))
    header = text.split("\n", 1)[0]
    layout = re.search(r"entry_computation_layout=\{\((.*)\)->(.*)\}", header)
    in_bytes = out_bytes = 0
    if layout:
        clean = lambda s: re.sub(r"/\*[^*]*\*/", "", s)
        size = lambda s: sum(_BYTES.get(t, 4) * _prod(_dims(d)) for t, d in _SHAPE.findall(clean(s)))
        in_bytes, out_bytes = size(layout.group(1)), size(layout.group(2))
    return {"flops": flops, "ops": {k: counts.get(k, 0) for k in COUNTED},
            "parameter_bytes": in_bytes, "output_bytes": out_bytes}


def call_hlo(engine, data, steps: int) -> str:
    """The HLO text of the engine's `steps`-step training call on `data`, compiled with
    XLA whatever the run uses; nothing is run."""
    import tensorflow as tf

    fn = tf.function(engine._train_loop, jit_compile=True)
    args = (data.x_train, data.y_train, data.mean, data.std, tf.constant(steps, tf.int32))
    return compiler_ir(fn.experimental_get_compiler_ir(*args), "hlo", data.x_train.device)


def compiler_ir(generator, stage: str, device: str):
    """`generator(stage)` on `device`, named: without it TensorFlow finds the device by
    running an unseeded random op, which op determinism (--deterministic) refuses. (It
    warns that `device_name` is deprecated, yet has no other way to skip that op.)"""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="device_name is being deprecated")
        return generator(stage=stage, device_name=device)


def of_engine(engine, data, steps: int) -> dict:
    """The fingerprint of one benchmarked configuration (one device only: a distributed
    call is not one XLA module). `flops_per_step` is the module's FLOPs (the loop body
    counted once, which is one step)."""
    if engine.distributed:
        return {"error": "no fingerprint for a distributed run: its call is not one XLA "
                         "module"}
    try:
        counted = from_hlo(call_hlo(engine, data, steps))
    except (ValueError, RuntimeError) as e:  # e.g. no deterministic XLA max-pool gradient
        from .errors import gist

        return {"error": f"no fingerprint: XLA could not lower the step ({gist(e)})"}
    return {"flops_per_step": counted["flops"], **counted["ops"],
            "parameter_bytes": counted["parameter_bytes"],
            "output_bytes": counted["output_bytes"],
            "trainable_parameters": int(sum(_prod(v.shape)
                                            for v in engine.model.trainable_variables)),
            "precision": engine.runtime.precision,
            "data_layout": engine.runtime.data_layout,
            "source": "HLO before optimisation, XLA on, one device"}


def tracing_count(engine) -> int:
    """How many times the training call has been traced (a retrace is a new compile)."""
    return int(engine._train_fn.experimental_get_tracing_count())


def regressions(base: dict, cur: dict) -> list:
    """(name, base, current) for every gated count that grew."""
    out = []
    for name in GATED:
        a, b = base.get(name), cur.get(name)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > a:
            out.append((name, a, b))
    return out
