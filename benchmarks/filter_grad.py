"""3x3 filter gradients, the library's kernel against nine matrix products, one layer at a
time at airbench94's shapes (every map size its convolutions see) and DavidNet's smallest.

    python benchmarks/filter_grad.py [--reps 5] [--dtype bfloat16] [--json PATH]

Each is timed alone (median of --reps synchronised calls after one warm-up; compile
excluded), with the forward convolution at the same shape for scale. This is what set
`fastcifar.layers.MATMUL_FILTER_GRAD_MAX_PIXELS`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (net, batch, map size, input channels, output channels) at width 64: every map airbench94's
# convolutions see, and DavidNet's two smallest (its 16x16 maps and up are far above the cut)
SHAPES = (("airbench94", 1024, 31, 24, 64), ("airbench94", 1024, 15, 64, 64),
          ("airbench94", 1024, 15, 64, 256), ("airbench94", 1024, 7, 256, 256),
          ("airbench94", 1024, 3, 256, 256), ("davidnet", 512, 8, 256, 512),
          ("davidnet", 512, 4, 512, 512))


def _median_seconds(fn, args, reps: int) -> float:
    """`fn` returns a scalar: synchronising copies no large result to the host."""
    fn(*args).numpy()  # trace, compile, allocate
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args).numpy()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, choices=range(1, 1001), metavar="N")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # one new function per shape is the point: no retrace warnings
    from fastcifar.layers import MATMUL_FILTER_GRAD_MAX_PIXELS, filter_grad_by_matmuls
    from fastcifar.runtime import environment
    from fastcifar.util import cpu_info

    dtype = tf.as_dtype(args.dtype)
    rows = []
    print(f"{args.dtype}, {cpu_info()['model']}; ms per call, median of {args.reps}; "
          f"matmul is used at {MATMUL_FILTER_GRAD_MAX_PIXELS} pixels or less")
    print(f"{'net':<11} {'batch':>5} {'map':>5} {'cin':>4} {'cout':>4} {'forward':>8} "
          f"{'library':>8} {'matmul':>8} {'library/matmul':>15}")
    total = lambda f: tf.function(lambda *a: tf.reduce_sum(tf.cast(f(*a), tf.float32)))
    for net, batch, size, cin, cout in SHAPES:
        x = tf.cast(tf.random.normal([batch, size, size, cin]), dtype)
        dy = tf.cast(tf.random.normal([batch, size, size, cout]), dtype)
        k = tf.cast(tf.random.normal([3, 3, cin, cout]) * 0.05, dtype)
        forward = lambda x, k: tf.nn.conv2d(x, k, 1, "SAME")
        library = lambda x, dy, cin=cin, cout=cout: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[3, 3, cin, cout], out_backprop=dy, strides=[1, 1, 1, 1],
            padding="SAME")
        matmul = lambda x, dy: filter_grad_by_matmuls(x, dy, 3)
        row = {"net": net, "batch": batch, "map": size, "cin": cin, "cout": cout,
               "flop": 2 * batch * size * size * cin * cout * 9,
               "forward_ms": 1e3 * _median_seconds(total(forward), (x, k), args.reps),
               "library_ms": 1e3 * _median_seconds(total(library), (x, dy), args.reps),
               "matmul_ms": 1e3 * _median_seconds(total(matmul), (x, dy), args.reps)}
        a = tf.cast(tf.function(library)(x, dy), tf.float32)
        b = tf.cast(tf.function(matmul)(x, dy), tf.float32)
        row["relative_difference"] = float(tf.norm(a - b) / tf.norm(a))
        rows.append(row)
        print(f"{net:<11} {batch:>5} {size:>3}^2 {cin:>4} {cout:>4} {row['forward_ms']:>8.1f} "
              f"{row['library_ms']:>8.1f} {row['matmul_ms']:>8.1f} "
              f"{row['library_ms'] / row['matmul_ms']:>14.2f}x", flush=True)
    if args.json:
        from fastcifar import results

        results.write_json(args.json, {"benchmark": "filter_grad", "dtype": args.dtype,
                                       "rows": rows,
                                       "environment": environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
