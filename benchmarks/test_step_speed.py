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
    from fastcifar.bench import compiled_call
    from fastcifar.config import RuntimeConfig, recipe
    from fastcifar.data import synthetic

    ds = synthetic(max(4 * BATCH, 512), 100)
    tr, call, _ = compiled_call(recipe("tutorial", width=WIDTH, batch_size=BATCH),
                                RuntimeConfig(precision=request.param), ds, STEPS)
    return tr, call


def test_train_call(benchmark, compiled):
    tr, call = compiled
    benchmark.extra_info.update(precision=tr.runtime.precision, xla=tr.runtime.xla, width=WIDTH,
                                batch_size=BATCH, steps_per_call=STEPS)
    loss = benchmark(call)
    assert loss == loss  # finite, not NaN
