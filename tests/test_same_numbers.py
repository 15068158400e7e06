"""The same numbers, recipe by recipe: 4 steps of every recipe (and Muon) at width 4 in
float32 without XLA on fixed generated data. The summed loss of those 4 steps is the one
the trainer printed before it was split into engine, loop and serving (commit 267a9a8);
the weights' sum of squares, the test loss after them and the learning rate were recorded
at the commit that added airbench94_muon (the loss there equal to 267a9a8's within 4e-4).

Tolerances are set by what varies between machines, not between code paths: two AMD EPYC
machines of the development pool round float32 convolutions differently (their oneDNN
kernels differ), which moves the 4-step loss by up to 4e-4 relative and later numbers more
as training amplifies it; eight steps were too many to compare across machines (the
test loss after 8 steps moved by 12%). A changed technique (smoothing, decay, EMA, TTA,
a rate) moves these by far more than the tolerances. The test loss (through BatchNorm
statistics of only 4 steps) is the most sensitive number, so it gets 5%."""

import numpy as np
import pytest

from fastcifar.config import RuntimeConfig, recipe
from fastcifar.data import synthetic
from fastcifar.train import Trainer

# recipe -> summed loss of steps 1-4 (printed at 267a9a8, before the split)
BEFORE_SPLIT = {
    "tutorial": 287.82855224609375,
    "davidnet": 289.35284423828125,
    "davidnet_tricks": 294.4417724609375,
    "airbench94": 288.21832275390625,
    "airbench94+muon": 287.6954040527344,
}
# recipe -> (summed loss of steps 1-4, sum of squared trainable weights after them, test
# loss after them, learning rate in the history's units at step 4), recorded on an AMD EPYC
RECORDED = {
    "tutorial": (287.8287353515625, 191.99180630652413, 2.233956813812256, 0.378947377204895),
    "davidnet": (289.47833251953125, 192.17140698642345, 2.2300310134887695,
                 0.378947377204895),
    "davidnet_tricks": (294.4842224121094, 57.08599499177653, 2.303709030151367,
                        0.378947377204895),
    "airbench94": (288.21893310546875, 101.28250629378164, 2.0857396125793457,
                   1.4637662172317507),
    # fast = airbench94 + Muon + selective TTA: its first three numbers are airbench94+muon's
    # (selective TTA changes only the evaluation)
    "fast": (287.62823486328125, 109.8897348341312, 2.315580368041992, 1.4637662172317507),
    "airbench94+muon": (287.62823486328125, 109.8897348341312, 2.2861199378967285,
                        1.4637662172317507),
    "airbench94_muon": (263.738525390625, 345.6865660137632, 1.3800263404846191, 1005.0),
}


@pytest.fixture(scope="module")
def data():
    return synthetic(256, 64, learnable=True, seed=5)


@pytest.mark.parametrize("variant", list(RECORDED))
def test_four_steps_compute_what_they_computed_before(data, variant):
    name, _, extra = variant.partition("+")
    cfg = recipe(name, width=4, batch_size=32, epochs=2,
                 **({"muon_lr": 0.24} if extra == "muon" else {}))
    tr = Trainer(cfg, RuntimeConfig(precision="float32", xla=False, steps_per_call=4,
                                    eval_batch_size=32))
    dd = tr.prepare(data)
    if cfg.whiten:
        tr.fit_whitening(dd)
    loss = float(tr.train_steps(dd, 4)[0].numpy())
    squares = sum(float(np.sum(np.square(v.numpy().astype(np.float64))))
                  for v in tr.model.trainable_variables)
    test_loss = tr.evaluate_prepared(dd)["test_loss"]
    lr = float(tr.lr_factor().numpy()) * cfg.lr_peak
    if variant in BEFORE_SPLIT:
        assert loss == pytest.approx(BEFORE_SPLIT[variant], rel=1e-3)
    want = RECORDED[variant]
    assert loss == pytest.approx(want[0], rel=1e-3)
    assert squares == pytest.approx(want[1], rel=1e-2)
    assert test_loss == pytest.approx(want[2], rel=5e-2)
    assert lr == pytest.approx(want[3], rel=1e-6)


def test_every_recipe_has_recorded_numbers():
    from fastcifar.config import RECIPES

    assert set(RECIPES) <= set(RECORDED), sorted(set(RECIPES) - set(RECORDED))
