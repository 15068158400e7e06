"""Settings are declared once: validation, flags and the docs' settings table come from there."""

import dataclasses
import math
import os
import re
from typing import Optional

import pytest

from fastcifar import cli
from fastcifar.config import (ConfigError, RuntimeConfig, TrainConfig, _Settings, recipe,
                              setting, settings, settings_table)

SETTINGS_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                            "settings.md")


def _parse(*argv):
    args = cli.build_parser().parse_args(list(argv))
    return cli._configs(args)


def _other_value(s):
    """A valid value other than the default, and how it is written on the command line."""
    if s.type is bool:
        return (not s.default), [s.flag_name if not s.default else f"--no-{s.flag_name[2:]}"]
    if s.choices:
        value = next(c for c in s.choices if c != s.default)
    elif s.name == "device":
        value = "/CPU:0"
    elif s.name == "net":
        value = "airbench94"
    elif s.name == "target":
        return 0.5, [s.flag_name, "50%"]
    elif s.type is int:
        value = (s.default or 0) + 1
    else:
        value = (s.default or 1.0) / 2
    return value, [s.flag_name, str(value)]


def test_each_setting_round_trips_through_its_flag():
    for cls in (TrainConfig, RuntimeConfig):
        for s in settings(cls):
            if not s.flag:
                continue
            value, argv = _other_value(s)
            if s.name == "whiten_bias_epochs":  # only airbench94's whitening has a bias
                argv = ["--recipe", "airbench94"] + argv
            cfg, rt = _parse("train", *argv)
            got = getattr(cfg if cls is TrainConfig else rt, s.name)
            assert got == value and got != s.default, (s.name, got, value)


def test_every_setting_has_a_working_flag():
    cfg, rt = _parse("train", "--recipe", "davidnet_tricks", "--peak-fraction", "0.3",
                     "--no-flip",
                     "--no-alternating-flip", "--crop-padding", "2", "--momentum", "0.85",
                     "--target", "91%", "--tta", "flip", "--xla", "--device", "/CPU:0",
                     "--eval-batch-size", "250", "--peer-timeout", "7.5", "--deterministic")
    assert (cfg.recipe, cfg.peak_fraction, cfg.flip, cfg.alternating_flip) == \
        ("davidnet_tricks", 0.3, False, False)
    assert (cfg.crop_padding, cfg.momentum, cfg.target, cfg.tta) == (2, 0.85, 0.91, "flip")
    assert cfg.epochs == 10 and cfg.whiten  # flags not given keep the recipe's values
    assert (rt.xla, rt.device, rt.eval_batch_size, rt.peer_timeout, rt.deterministic) == \
        (True, "/CPU:0", 250, 7.5, True)
    flags = {a.dest for a in cli.build_parser()._subparsers._group_actions[0]
             .choices["train"]._actions}
    for cls in (TrainConfig, RuntimeConfig):
        for s in settings(cls):
            if s.name != "recipe":  # chosen by name (--recipe), not set as a field
                assert (s.name in flags) == s.flag, s.name
    assert "recipe" in flags


@dataclasses.dataclass(frozen=True)
class Toy(_Settings):
    count: int = setting(3, "how many", low=1)
    share: float = setting(0.5, "a fraction", low=0, high=1, high_open=True)
    mode: str = setting("a", "which", choices=("a", "b"))
    limit: Optional[float] = setting(None, "optional", low=0, low_open=True,
                                     hint="(or leave unset)")


@pytest.mark.parametrize("field,value,message", [
    ("count", 0, "invalid count=0: must be an integer >= 1"),
    ("count", 2.5, "invalid count=2.5: must be an integer >= 1"),
    ("count", True, "invalid count=True: must be an integer >= 1"),
    ("share", 1.0, "invalid share=1.0: must be in [0, 1)"),
    ("share", math.nan, "invalid share=nan: must be a finite number"),
    ("mode", "c", "invalid mode='c': choose one of a, b"),
    ("limit", 0.0, "invalid limit=0.0: must be a number > 0 (or leave unset)"),
    ("limit", math.inf, "invalid limit=inf: must be a finite number (or leave unset)"),
])
def test_validation_comes_from_the_declaration(field, value, message):
    assert Toy().validate() == Toy()
    assert Toy(limit=2.0).validate().limit == 2.0
    with pytest.raises(ConfigError) as e:
        Toy(**{field: value}).validate()
    assert str(e.value) == message


def test_a_new_setting_gets_a_flag_without_touching_the_cli():
    import argparse

    parser = argparse.ArgumentParser()
    cli._add_settings(parser, classes=(Toy,))  # the CLI's own flag builder
    got = vars(parser.parse_args(["--count", "4", "--mode", "b", "--limit", "1.5"]))
    assert Toy(**got).validate() == Toy(count=4, mode="b", limit=1.5)


@pytest.mark.parametrize("name,value", [("lr_peak", math.inf), ("weight_decay", math.inf),
                                        ("bias_lr_scale", math.nan)])
def test_non_finite_recipe_values_are_refused(name, value):
    with pytest.raises(ConfigError, match=f"invalid {name}=.*finite"):
        TrainConfig(**{name: value}).validate()
    with pytest.raises(ConfigError, match="peer_timeout"):
        RuntimeConfig(peer_timeout=math.inf).validate()


def test_the_old_recipe_name_still_works_with_a_note(capsys):
    with pytest.warns(FutureWarning, match="'seed' is now called 'tutorial'"):
        old = recipe("seed")
    assert old == recipe("tutorial") and old.recipe == "tutorial" and old.dropout == 0.05
    cfg, _ = _parse("train", "--recipe", "seed", "--width", "8")
    assert cfg.recipe == "tutorial" and cfg.width == 8
    assert "recipe 'seed' is now 'tutorial'" in capsys.readouterr().err


def test_docs_settings_table_is_generated_from_the_declarations():
    text = open(SETTINGS_DOC).read()
    found = re.search(r"<!-- settings table: start -->\n(.*?)\n<!-- settings table: end -->",
                      text, re.S)
    assert found, "docs/settings.md lacks the settings table markers"
    assert found.group(1).strip() == settings_table(), \
        "docs/settings.md settings table is stale: run `python -m fastcifar.config` and paste it"
    assert "| `--lr-peak` | `TrainConfig.lr_peak` | 0.4 | a number > 0 |" in settings_table()
