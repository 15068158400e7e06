"""The same numbers as before the trainer was split into engine, loop and serving: every
recipe (and Muon), 8 steps at width 4 in float32 without XLA on fixed generated data. The
expected values were printed by the trainer as it stood before the split (commit 267a9a8,
on a 2-core AMD EPYC); any change to what a step computes moves them."""

import numpy as np
import pytest

from fastcifar.config import RuntimeConfig, recipe
from fastcifar.data import synthetic
from fastcifar.train import Trainer

# recipe -> (summed loss of steps 1-4, of steps 5-8, sum of squared trainable weights after
# 8 steps, test loss after 8 steps, history learning rate at step 8)
BEFORE = {
    "tutorial": (287.82855224609375, 252.17388916015625, 208.1338340832924,
                2.426762819290161, 0.2526315748691559),
    "davidnet": (289.35284423828125, 248.04266357421875, 211.4686196811893,
                4.345019340515137, 0.2526315748691559),
    "davidnet_tricks": (294.4417724609375, 268.01690673828125, 95.06644379540877,
                       3.2610127925872803, 0.2526315748691559),
    "airbench94": (288.21832275390625, 276.1220703125, 385.55889874095465,
                  13.45846176147461, 1.0108442306518555),
    "fast": (288.21832275390625, 276.1220703125, 385.55889874095465,
            13.45846176147461, 1.0108442306518555),
    "airbench94+muon": (287.6954040527344, 278.2561950683594, 537.8994443242044,
                       5.756320953369141, 1.0108442306518555),
}


@pytest.fixture(scope="module")
def data():
    return synthetic(256, 64, learnable=True, seed=5)


@pytest.mark.parametrize("variant", list(BEFORE))
def test_eight_steps_compute_what_they_computed_before_the_split(data, variant):
    name, _, extra = variant.partition("+")
    cfg = recipe(name, width=4, batch_size=32, epochs=2,
                 **({"muon_lr": 0.24} if extra == "muon" else {}))
    tr = Trainer(cfg, RuntimeConfig(precision="float32", xla=False, steps_per_call=4,
                                    eval_batch_size=32))
    dd = tr.prepare(data)
    if cfg.whiten:
        tr.fit_whitening(dd)
    losses = [float(tr.train_steps(dd, 4)[0].numpy()) for _ in range(2)]
    squares = sum(float(np.sum(np.square(v.numpy().astype(np.float64))))
                  for v in tr.model.trainable_variables)
    got = (*losses, squares, tr.evaluate_prepared(dd)["test_loss"],
           float(tr.lr_factor().numpy()) * cfg.lr_peak)
    # float32 rounding moves these by up to 3e-5 between code paths that compute the same
    # thing (Muon amplifies the most); a changed technique moves them by far more
    np.testing.assert_allclose(got, BEFORE[variant], rtol=1e-3)
