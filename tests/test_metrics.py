"""Metrics are declared once: results, the gate, TensorBoard and the epoch table read the
declaration, and nothing undeclared can be written."""

import pytest

from fastcifar import compare, metrics, results


def test_a_result_with_an_undeclared_metric_or_history_field_is_refused():
    with pytest.raises(ValueError, match=r"undeclared metric\(s\) \['images_per_second'\]"):
        results.build("bench", {}, {}, {}, {}, {"images_per_second": 1.0})
    with pytest.raises(ValueError, match=r"\['learning_rate'\]"):
        results.build("train", {}, {}, {}, {}, {"final_test_acc": 0.5},
                      [{"epoch": 1, "learning_rate": 0.1}])
    # a history field is not a result metric: it may not pose as one
    with pytest.raises(ValueError, match=r"\['train_loss'\]"):
        results.build("train", {}, {}, {}, {}, {"train_loss": 0.5})
    ok = results.build("train", {}, {}, {}, {}, {"final_test_acc": 0.5},
                       [{"epoch": 1, "lr": 0.1, "test_acc": None}])
    assert ok["metric_info"] == {"final_test_acc": {"unit": "fraction", "better": "higher"}}


def test_the_gate_compares_what_the_declarations_say():
    assert compare.GATED == {
        "step": {"images_per_sec": "higher", "step_ms": "lower"},
        "accuracy": {"seconds_to_target": "lower", "final_test_acc": "higher",
                     "fraction_reaching_target": "higher"}}


def test_the_epoch_table_is_the_one_it_always_was():
    row = {"epoch": 3, "lr": 0.4, "train_loss": 1.23456, "train_acc": 0.5, "test_loss": None,
           "test_acc": None, "seconds": 12.34, "images_per_sec": 987.6}
    assert metrics.epoch_header() == ("epoch      lr train loss train acc test loss test acc "
                                      " seconds   img/s")
    assert metrics.epoch_line(row) == ("    3  0.4000     1.2346    0.5000         -        - "
                                       "    12.3     988")
    row.update(test_loss=2.0, test_acc=0.25)
    assert metrics.epoch_line(row).split()[4:6] == ["2.0000", "0.2500"]


def test_every_tensorboard_tag_is_a_history_field():
    tags = metrics.tensorboard_tags()
    assert tags["test_acc"] == "test/accuracy" and tags["lr"] == "learning_rate"
    assert all(metrics.METRICS[name].history for name in tags)
    assert len(tags) == 8
