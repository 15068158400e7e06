"""Steady-state training throughput, variants side by side in one process.

    python benchmarks/step_throughput.py --width 64 --batch-size 512 --rounds 3 --steps 3
    python benchmarks/step_throughput.py --recipe airbench94 --variants auto@library,auto@matmul

Variants: fastcifar in float32 and mixed_bfloat16 with XLA off and on, `auto`, a runtime
`conv_grad` after `@`, and the tutorial's eager + per-image tf.data loop (float32, in a
process of its own, as `fastcifar bench step --compare tutorial` runs it). Ratios are
against the tutorial when it runs, else against the first variant. Rounds alternate the variants
(A B C ... A B C ...) so machine noise hits all alike; each timing is one synchronised
call of `--steps` steps after compilation (compile time is reported apart). Prints medians,
spread and ratios; `--json PATH` writes them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="tutorial", help="the step of this recipe's net")
    ap.add_argument("--width", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--steps", type=int, default=3, help="steps per timed call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=50000)
    ap.add_argument("--variants", default="float32,mixed_bfloat16,float32+xla,"
                    "mixed_bfloat16+xla,mixed_bfloat16:compute,auto,tutorial",
                    help="comma list: PRECISION[+xla][:uint8|compute][@library|matmul], "
                         "auto, tutorial")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from fastcifar.baselines.tutorial import TutorialProcess
    from fastcifar.bench import compiled_call
    from fastcifar.config import RuntimeConfig, recipe
    from fastcifar.data import load
    from fastcifar.runtime import environment

    data_spec = f"synthetic:{args.train_size}"
    ds = load(data_spec)
    if args.recipe != "tutorial" and "tutorial" in args.variants.split(","):
        ap.error("the tutorial variant is the tutorial's own net and loop: use it with "
                 "--recipe tutorial, or drop it from --variants")
    cfg = recipe(args.recipe, width=args.width, batch_size=args.batch_size)
    args.width, args.batch_size = cfg.width, cfg.batch_size
    runners, compile_s, resolved = {}, {}, {}
    for name in args.variants.split(","):
        if name == "tutorial":
            t0 = time.perf_counter()
            tutorial = TutorialProcess(data_spec, width=args.width,
                                       batch_size=args.batch_size)
            compile_s[name] = time.perf_counter() - t0  # start-up, first step, buffer fill
            runners[name] = lambda: tutorial.time_steps(args.steps)
            resolved[name] = {"precision": "float32", "xla": False,
                              "mode": "eager+tf.data, own process"}
            continue
        spec, _, conv_grad = name.partition("@")  # e.g. auto@library
        spec, _, layout = spec.partition(":")  # e.g. mixed_bfloat16:compute
        prec, _, xla = spec.partition("+")
        rt = RuntimeConfig(precision=prec, xla=(True if xla else None if prec == "auto"
                                                else False), steps_per_call=args.steps,
                           data_layout=layout or "auto", conv_grad=conv_grad or "auto")
        tr, call, compile_s[name] = compiled_call(cfg, rt, ds, args.steps)

        def run(call=call):
            t0 = time.perf_counter()
            call()
            return time.perf_counter() - t0

        runners[name] = run
        resolved[name] = {"precision": tr.runtime.precision, "xla": tr.runtime.xla,
                          "data_layout": tr.runtime.data_layout,
                          "conv_grad": tr.runtime.conv_grad,
                          "mode": "compiled, device-resident"}
        print(f"compiled {name}: {compile_s[name]:.1f} s", file=sys.stderr)

    ips = {name: [] for name in runners}
    for r in range(args.rounds):
        for name, run in runners.items():
            ips[name].append(args.steps * args.batch_size / run())
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in ips.items()),
              file=sys.stderr)

    base = "tutorial" if "tutorial" in ips else next(iter(ips))
    rows = {}
    for name, v in ips.items():
        row = {"images_per_sec_median": statistics.median(v), "min": min(v), "max": max(v),
               "samples": v, "compile_seconds": compile_s[name], **resolved[name]}
        if name != base:
            ratios = [a / b for a, b in zip(v, ips[base])]  # paired by round
            row[f"vs_{base}"] = {"median": statistics.median(ratios), "min": min(ratios),
                                  "max": max(ratios)}
        rows[name] = row
    print(f"\n{args.recipe}, width {args.width}, batch {args.batch_size}, {args.steps} steps/call, "
          f"{args.rounds} rounds; steady state (compile excluded)")
    vs_head = f"vs {base} (min-max)"
    print(f"{'variant':<20} {'img/s med':>10} {'min':>7} {'max':>7} {vs_head:>24} "
          f"{'compile s':>10}")
    for name, row in rows.items():
        vs = row.get(f"vs_{base}")
        vs_s = f"{vs['median']:.2f}x ({vs['min']:.2f}-{vs['max']:.2f})" if vs else "1.00x"
        print(f"{name:<20} {row['images_per_sec_median']:>10.1f} {row['min']:>7.1f} "
              f"{row['max']:>7.1f} {vs_s:>24} {row['compile_seconds']:>10.1f}")
    if args.json:
        from fastcifar import results

        obj = results.build("bench-throughput", cfg.to_dict(), {}, environment(),
                            ds.identity(), {"variants": rows}, width=args.width,
                            batch_size=args.batch_size)
        results.write_json(args.json, obj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
