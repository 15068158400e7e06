"""pytest-benchmark suite: the compiled training call, for CI regression gating.

    pytest benchmarks --benchmark-json=base.json                # on the baseline commit
    pytest benchmarks --benchmark-compare=base.json --benchmark-compare-fail=median:10%

Not part of the default test run (the project's testpaths is tests/). Each timed round
synchronises by fetching the loss, so host timing measures device work. Sizes come from
FASTCIFAR_BENCH_WIDTH / FASTCIFAR_BENCH_BATCH (defaults: 16 and 128, a few seconds on a CPU).
"""

import os

import pytest

WIDTH = int(os.environ.get("FASTCIFAR_BENCH_WIDTH", "16"))
BATCH = int(os.environ.get("FASTCIFAR_BENCH_BATCH", "128"))
STEPS = 2


@pytest.fixture(scope="module", params=["auto", "float32"])
def compiled(request):
    from fastcifar.config import RuntimeConfig, recipe
    from fastcifar.data import synthetic
    from fastcifar.train import Trainer

    ds = synthetic(max(4 * BATCH, 512), 100)
    tr = Trainer(recipe("seed", width=WIDTH, batch_size=BATCH),
                 RuntimeConfig(precision=request.param, steps_per_call=STEPS))
    tr.compile(len(ds.x_train), len(ds.x_test))
    dd = tr.prepare(ds)
    tr.step.assign(tr.steps_per_epoch(dd.n_train))
    return request.param, tr, dd


def test_train_call(benchmark, compiled):
    precision, tr, dd = compiled
    benchmark.extra_info.update(precision=tr.rt.precision, xla=tr.rt.xla, width=WIDTH,
                                batch_size=BATCH, steps_per_call=STEPS)
    loss = benchmark(lambda: float(tr.train_steps(dd, STEPS)[0].numpy()))
    assert loss == loss  # finite, not NaN
