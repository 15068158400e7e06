"""Every setting, declared once: type, default, help, allowed values. Validation, the
command-line flags (`fastcifar.cli`) and the README's settings table are derived from these
declarations, so adding a setting is one field here plus its use.

A recipe (`TrainConfig`) says *what* is computed: it fixes the numbers a run can be
compared on. `RuntimeConfig` says *how* it is computed (precision, XLA, steps per call):
changing it must not change the result beyond dtype tolerance.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

from .errors import ConfigError
from .util import parse_fraction, physical_memory_bytes

__all__ = ["ConfigError", "TrainConfig", "RuntimeConfig", "RECIPES", "RECIPE_ALIASES",
           "FAST_TECHNIQUES", "recipe", "settings", "settings_table"]


FLOAT32_MAX = 3.4028234663852886e38


def setting(default, help: str, *, choices: tuple = (), low=None, high=None,
            low_open: bool = False, high_open: bool = False, hint: str = "",
            parse=None, flag: bool = True, not_compared: str = ""):
    """A dataclass field that carries its own documentation and checks.

    `low`/`high` bound numbers (closed unless `*_open`); `choices` lists the allowed
    strings; `hint` is appended to the error; `parse` reads the command-line text;
    `flag=False` keeps a field off the command line. The regression gate refuses two
    results whose settings differ, every setting taking part unless `not_compared`
    says why it does not change what is measured."""
    return field(default=default, metadata=dict(
        help=help, choices=tuple(choices), low=low, high=high, low_open=low_open,
        high_open=high_open, hint=hint, parse=parse, flag=flag, not_compared=not_compared))


@dataclass(frozen=True)
class Setting:
    """One field as the validator, the CLI and the README see it."""

    name: str
    type: type          # int, float, bool or str
    optional: bool      # None allowed
    default: Any
    help: str
    choices: tuple
    low: Any
    high: Any
    low_open: bool
    high_open: bool
    hint: str
    parse: Any
    flag: bool
    not_compared: str   # why the gate may compare results that differ in it ("": it may not)

    @property
    def flag_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """The allowed values in words: "one of a, b", "an integer >= 1", "in [0, 1)"."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is bool:
            return "true or false"
        noun = "an integer" if self.type is int else "a number"
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            span = (f"{'(' if self.low_open else '['}{lo}, {hi}"
                    f"{')' if self.high_open else ']'}")
            return f"an integer in {span}" if self.type is int else f"in {span}"
        if lo is not None:
            return f"{noun} {'>' if self.low_open else '>='} {lo}"
        if hi is not None:
            return f"{noun} {'<' if self.high_open else '<='} {hi}"
        return noun if self.type is not str else "text"

    def problem(self, value) -> Optional[str]:
        """Why `value` is not allowed, or None."""
        if value is None:
            return None if self.optional else "must be set"
        if self.type is bool:
            return None if isinstance(value, bool) else "must be True or False"
        if self.type is str:
            if not isinstance(value, str):
                return "must be text"
            if self.choices and value not in self.choices:
                return f"choose {self.allowed()}"
            return None
        integer = self.type is int
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return f"must be {self.allowed() if integer else 'a finite number'}"
        if not integer and not math.isfinite(value):
            return "must be a finite number"
        if not integer and abs(value) > FLOAT32_MAX:  # it enters float32 arithmetic
            return f"must be a finite float32 number (at most {FLOAT32_MAX:.4g} in size)"
        too_low = self.low is not None and (value <= self.low if self.low_open
                                            else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open
                                              else value > self.high)
        if too_low or too_high:
            return f"must be {self.allowed()}"
        return None


def settings(cls) -> list:
    """The `Setting` of every field of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind, optional = hints[f.name], False
        if typing.get_origin(kind) is typing.Union:
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind, optional = args[0], True
        out.append(Setting(f.name, kind, optional, f.default, **f.metadata))
    return out


class _Settings:
    """validate / replace / to_dict for both config classes."""

    def validate(self):
        for s in settings(type(self)):
            why = s.problem(getattr(self, s.name))
            if why:
                hint = f" {s.hint}" if s.hint else ""
                raise ConfigError(f"invalid {s.name}={getattr(self, s.name)!r}: {why}{hint}")
        self._check_together()
        return self

    def _check_together(self) -> None:
        """Rules that involve more than one field."""

    def replace(self, **changes: Any):
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _target(text: str):
    """'0.93', '93%', or 'auto' (the recipe's target on official CIFAR-10, none on other
    data: the command line treats it as not given)."""
    return "auto" if str(text).strip().lower() == "auto" else parse_fraction(text, "target")


@dataclass(frozen=True)
class TrainConfig(_Settings):
    """One training recipe. Defaults are the `davidnet` recipe (David Page's original)."""

    recipe: str = setting("davidnet", "the recipe these values started from", flag=False,
                          not_compared="a name: the values it set are compared one by one")
    net: str = setting("davidnet", "network: davidnet (ResNet-9, width c), airbench94 "
                       "(widths c, 4c, 4c), or your own as package.module:builder (a "
                       "function of the precision policy returning a Keras model)")
    num_classes: int = setting(10, "outputs of the net (the command line takes it from the "
                               "data: 100 for cifar100)", low=2, high=100_000,
                               not_compared="follows the data, compared by its digest")
    epochs: float = setting(24, "epochs to train; a fraction trains part of the last one",
                            low=0, low_open=True, high=100_000)
    batch_size: int = setting(512, "global batch size (split evenly across replicas)", low=1,
                              high=1 << 20)
    lr_batch: int = setting(0, "the batch size lr_peak is quoted for: at another batch the "
                            "rate per summed loss stays lr_peak / lr_batch (airbench94_muon's "
                            "rule); 0 = the run's own batch (lr_peak / batch_size)", low=0,
                            high=1 << 20)
    width: int = setting(64, "channels of the first layer, c", low=1,
                         hint="(the tutorial uses 64)")
    lr_peak: float = setting(0.4, "peak learning rate (per example: divided by the batch "
                             "size)", low=0, low_open=True)
    # The tutorial peaks at epoch (24+1)//5 = 5 of 24; kept as a fraction so short runs warm up.
    peak_fraction: float = setting(5 / 24, "where the learning rate peaks, as a fraction of "
                                   "the run", low=0, high=1, high_open=True)
    lr_start: float = setting(0.0, "learning rate at step 0, as a fraction of the peak",
                              low=0, high=1)
    lr_end: float = setting(0.0, "learning rate at the last step, as a fraction of the peak",
                            low=0, high=1)
    momentum: float = setting(0.9, "Nesterov momentum", low=0, high=1, high_open=True)
    weight_decay: float = setting(5e-4, "coupled L2, times the batch size", low=0,
                                  hint="(0 reproduces the tutorial as it actually ran)")
    dropout: float = setting(0.0, "dropout after every conv (the tutorial: 0.05)", low=0,
                             high=1, high_open=True)
    cutout: int = setting(8, "cutout square side in pixels (0 = off)", low=0, high=32)
    flip: bool = setting(True, "random horizontal flip")
    alternating_flip: bool = setting(False, "mirror each image every other epoch instead "
                                     "of at random (airbench)")
    label_smoothing: float = setting(0.0, "label smoothing, e.g. 0.2 (0 = off)", low=0,
                                     high=1, high_open=True)
    ema: float = setting(0.0, "decay of a moving average of the weights that evaluation "
                         "uses, e.g. 0.99 (0 = off)", low=0, high=1, high_open=True)
    lookahead: bool = setting(False, "airbench's lookahead: every 5 steps the weights move "
                              "to their average, decay 0.95^5 (step/total)^3; the average is "
                              "copied in at the end")
    tta: str = setting("none", "test-time augmentation: the image; + its mirror; + both "
                       "shifted one pixel each way", choices=("none", "flip", "flip_translate"))
    tta_fraction: float = setting(1.0, "test-time views only for this fraction of each "
                                  "evaluation batch: the images the plain view is least "
                                  "sure of (lowest top softmax probability); the rest keep "
                                  "their plain logits (1 = every image)", low=0,
                                  low_open=True, high=1,
                                  hint="(cifar10-speedrun's selective TTA: 0.15-0.25)")
    activation: str = setting("relu", "activation after every BatchNorm",
                              choices=("relu", "celu", "gelu", "silu"))
    frozen_bn_scale: bool = setting(False, "BatchNorm scale fixed at 1")
    bias_lr_scale: float = setting(1.0, "BatchNorm bias: learning rate x this, weight decay "
                                   "/ this", low=0, low_open=True,
                                   hint="(64 in the bag of tricks, 1 = off)")
    muon_lr: float = setting(0.0, "conv filters take Muon steps (airbench94_muon's "
                             "optimizer: Nesterov momentum, filter normalised, update "
                             "orthogonalised by 3 Newton-Schulz steps, no weight decay) with "
                             "this peak learning rate on the recipe's schedule (0 = off)",
                             low=0, hint="(airbench94_muon: 0.24)")
    muon_momentum: float = setting(0.6, "Muon's Nesterov momentum (with --muon-lr)", low=0,
                                   high=1, high_open=True)
    muon_bf16: bool = setting(False, "Muon's Newton-Schulz steps in bfloat16 (as "
                              "airbench94_muon) instead of float32")
    whiten: bool = setting(False, "frozen whitening first layer from the training patches' "
                           "eigenvectors (davidnet: 3x3 + a 1x1 conv; airbench94: 2x2, with "
                           "their negatives)")
    whiten_bias_epochs: float = setting(0.0, "airbench94: epochs the whitening layer's bias "
                                        "trains before it is frozen", low=0)
    whiten_bias_linear: bool = setting(False, "airbench94_muon: the whitening bias trains "
                                       "at the BatchNorm biases' rate (bias_lr_scale), "
                                       "decaying linearly to 0 over whiten_bias_epochs, "
                                       "instead of on the recipe's schedule")
    crop_padding: int = setting(4, "reflect padding for the random crop, in pixels",
                                low=0, high=16)
    target: Optional[float] = setting(0.94, "test accuracy to reach, e.g. 0.93 or 93%",
                                      low=0, low_open=True, high=1, parse=_target)
    seed: int = setting(0, "random seed: initial weights, data order, augmentation", low=0,
                        high=1_000_000, not_compared="another seed is another sample of the "
                        "same configuration")
    strategy: str = setting("auto", "auto: one device; mirrored: every local GPU (or "
                            "--replicas logical CPU devices); multiworker: the cluster "
                            "in TF_CONFIG", choices=("auto", "mirrored", "multiworker"))
    replicas: int = setting(0, "mirrored: how many local devices (0 = every GPU; on a "
                            "CPU-only machine, the CPU split in N)", low=0)
    sync_bn: bool = setting(False, "BatchNorm statistics over the global batch, not each "
                            "replica's share")

    def _check_together(self) -> None:
        from .nets import NETS

        if self.net not in NETS and ":" not in self.net:
            raise ConfigError(f"invalid net={self.net!r}: choose {' or '.join(NETS)}, or "
                              f"give your own builder as package.module:function")
        spec = NETS.get(self.net, NETS["davidnet"])  # a user's net: DavidNet's as a guess
        # float32 weights, gradients, optimizer slots: a lower bound on what a step needs
        weights = 4 * 4 * spec.parameters(self.width, self.num_classes)
        memory = physical_memory_bytes()
        if memory and weights > memory:
            raise ConfigError(f"invalid width={self.width}: its weights, gradients and "
                              f"optimizer state alone need about {weights / 2**30:,.0f} GiB; "
                              f"this machine has {memory / 2**30:.0f} GiB (64 is the "
                              f"tutorial's width)")
        if self.recipe not in RECIPES and self.recipe != "custom":
            raise ConfigError(f"invalid recipe={self.recipe!r}: choose one of "
                              f"{', '.join(RECIPES)}")
        if self.alternating_flip and not self.flip:
            raise ConfigError("invalid alternating_flip=True: needs flip=True")
        airbench = self.net in ("airbench94", "airbench94_muon")
        if self.whiten_bias_epochs and not (self.whiten and airbench):
            raise ConfigError(f"invalid whiten_bias_epochs={self.whiten_bias_epochs}: only "
                              f"airbench94's whitening layer has a bias (needs net="
                              f"'airbench94' or 'airbench94_muon' and whiten=True)")
        if self.whiten_bias_linear and self.whiten_bias_epochs == 0 and self.whiten \
                and airbench:
            raise ConfigError("invalid whiten_bias_linear=True: the bias decays over "
                              "whiten_bias_epochs, which is 0; set --whiten-bias-epochs")
        if self.strategy == "auto" and self.replicas > 1:
            raise ConfigError(f"invalid replicas={self.replicas}: needs strategy='mirrored' "
                              f"(one device otherwise)")
        if self.replicas > 1:
            check_batch_split(self.batch_size, self.replicas)


def check_budget(config: TrainConfig, n_train: int) -> int:
    """Steps per epoch on `n_train` images (the remainder of each epoch is dropped),
    refusing a batch larger than the set or a run of less than one step."""
    steps = n_train // config.batch_size
    if steps < 1:
        raise ConfigError(f"invalid batch_size={config.batch_size}: larger than the "
                          f"{n_train} training images; lower --batch-size")
    if math.ceil(round(config.epochs * steps, 6)) < 1:
        raise ConfigError(f"invalid epochs={config.epochs}: less than one step ({steps} "
                          f"steps make an epoch here); use at least --epochs "
                          f"{1 / steps:.6g}")
    return steps


def check_batch_split(batch_size: int, replicas: int) -> None:
    """Every replica takes an equal share of the global batch (the settings check it when
    they name the replica count, the trainer once the devices are known)."""
    if batch_size % replicas:
        raise ConfigError(f"invalid batch_size={batch_size}: it does not split evenly "
                          f"across {replicas} replicas; use a multiple of {replicas}")


@dataclass(frozen=True)
class RuntimeConfig(_Settings):
    """How a recipe runs. `auto` values are resolved by `fastcifar.runtime.resolve`."""

    precision: str = setting("auto", "auto, or float32 / mixed_bfloat16 / mixed_float16",
                             choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))
    xla: Optional[bool] = setting(None, "compile steps with XLA (default: auto)")
    steps_per_call: int = setting(8, "training steps per compiled call", low=1,
                                  high=1 << 20)
    deterministic: bool = setting(False, "TensorFlow op determinism (slower)")
    data_layout: str = setting("auto", "training set on the device as uint8 (normalised "
                               "in the step) or pre-normalised in the compute dtype",
                               choices=("auto", "uint8", "compute"))
    conv_grad: str = setting("auto", "3x3 filter gradients on feature maps of 8x8 or less: "
                             "library (oneDNN/cuDNN's kernel) or matmul (nine matrix "
                             "products; faster on CPU); auto: matmul on CPU, library on GPU",
                             choices=("auto", "library", "matmul"))
    eval_batch_size: int = setting(1000, "test images per evaluation batch (at most the "
                                   "test images per device)", low=1, high=1 << 16)
    eval_every: int = setting(1, "evaluate every N epochs (0 = only after the last); "
                              "every evaluation counts in the clock", low=0)
    device: Optional[str] = setting(None, "e.g. /GPU:1 (default: first GPU, else CPU)",
                                    not_compared="the device is compared by its model name")
    peer_timeout: float = setting(120.0, "multiworker: seconds to wait for every worker to "
                                  "join, and for any step to make progress",
                                  low=0, low_open=True,
                                  not_compared="a time limit: nothing computed depends "
                                  "on it")

    def _check_together(self) -> None:
        import re

        if self.device is not None and not re.fullmatch(r"/?(CPU|GPU)(:\d+)?",
                                                        self.device.upper()):
            raise ConfigError(f"invalid device={self.device!r}: use /CPU:0 or /GPU:N (or "
                              f"leave it to auto)")


# airbench94's hyperparameters are "decoupled": lr 11.5 and weight decay 0.0153 per 1,024
# examples, with Nesterov momentum 0.85. Its per-example step size at the peak is
# 11.5 / (1024 (1 + 1/(1 - 0.85))), which is lr_peak / batch_size here; its coupled decay
# coefficient (PyTorch's weight_decay = wd / lr) is 0.0153 * 1024 / 11.5, which is
# weight_decay * batch_size here. Both in this trainer's units, for batch 1024:
_AIRBENCH_MOMENTUM = 0.85
_AIRBENCH = dict(
    recipe="airbench94", net="airbench94", epochs=9.9, batch_size=1024, width=64,
    lr_peak=11.5 / (1 + 1 / (1 - _AIRBENCH_MOMENTUM)), weight_decay=0.0153 / 11.5,
    momentum=_AIRBENCH_MOMENTUM, peak_fraction=0.23, lr_start=0.2, lr_end=0.07,
    bias_lr_scale=64.0, frozen_bn_scale=True, label_smoothing=0.2, whiten=True,
    whiten_bias_epochs=3, activation="gelu", dropout=0.0, cutout=0, crop_padding=2,
    flip=True, alternating_flip=True, lookahead=True, ema=0.0, tta="flip_translate",
    target=0.94)

RECIPES: Mapping[str, Mapping[str, Any]] = {
    # The tutorial as written: dropout 0.05, no cutout, 93% target (its own published result).
    # Its weight decay never ran (a rebinding bug); here it does. weight_decay=0 reproduces
    # the tutorial as it ran.
    "tutorial": dict(recipe="tutorial", epochs=24, batch_size=512, lr_peak=0.4, dropout=0.05,
                     cutout=0, weight_decay=5e-4, target=0.93),
    # David Page's original: no dropout, 8x8 cutout; 94% in 24 epochs (his published result).
    "davidnet": dict(recipe="davidnet", epochs=24, batch_size=512, lr_peak=0.4, dropout=0.0,
                     cutout=8, weight_decay=5e-4, target=0.94),
    # fastcifar's own combination: DavidNet with some of the "bag of tricks" and airbench's
    # alternating flip, on the davidnet schedule (README lists how it differs from the bag
    # of tricks' final recipe). No published target: declare one with --target.
    "davidnet_tricks": dict(recipe="davidnet_tricks", epochs=10, batch_size=512, lr_peak=0.4,
                            dropout=0.0, cutout=8, weight_decay=5e-4, target=None,
                            label_smoothing=0.2, whiten=True, frozen_bn_scale=True,
                            bias_lr_scale=64.0, ema=0.99, tta="flip_translate",
                            alternating_flip=True),
    # airbench94 (Keller Jordan, arXiv 2404.00498), all of it: 94.01% mean of 1,000 runs in
    # 9.9 epochs (published).
    "airbench94": _AIRBENCH,
    # airbench94_muon (Keller Jordan, `airbench94_muon.py`): 94.01% mean of 200 runs in
    # 8 epochs, 2.59 s on an A100 (published). Its optimizer groups in this trainer's units:
    # the head at lr 0.67 per summed loss (lr_peak / batch), BatchNorm and whitening
    # biases at 0.053 (bias_lr_scale = 0.053 / 0.67), weight decay 2e-6 x batch / lr
    # (weight_decay x batch here, divided by bias_lr_scale for the biases), all linear to
    # 0 with no warm-up; Muon for the filters at 0.24, momentum 0.6, bfloat16.
    "airbench94_muon": dict(
        _AIRBENCH, recipe="airbench94_muon", net="airbench94_muon", epochs=8,
        batch_size=2000, lr_batch=2000, lr_peak=0.67 * 2000, weight_decay=2e-6 / 0.67,
        momentum=0.85,
        peak_fraction=0.0, lr_start=1.0, lr_end=0.0, bias_lr_scale=0.053 / 0.67,
        muon_lr=0.24, muon_momentum=0.6, muon_bf16=True, whiten_bias_linear=True,
        lookahead=False, target=0.94),
    # fastcifar's own: airbench94 with airbench94_muon's optimizer for the conv filters
    # (Muon at 0.24, momentum 0.6, float32 Newton-Schulz) and cifar10-speedrun's selective
    # TTA (the 25% least confident test images). Measured against the record script on
    # the 2-core development CPU (docs/recipes.md, "fast against the record"); at 8
    # epochs its accuracy on CIFAR-10 is not measured, so it declares no target.
    "fast": dict(_AIRBENCH, recipe="fast", epochs=8, muon_lr=0.24, muon_momentum=0.6,
                 tta_fraction=0.25, target=None),
}

# Old recipe names, kept working for one release (0.2; removed in 0.3).
RECIPE_ALIASES: Mapping[str, str] = {"seed": "tutorial"}

# technique -> the overrides that switch it off (for `fastcifar bench ablate`)
FAST_TECHNIQUES: Mapping[str, Mapping[str, Any]] = {
    "label_smoothing": dict(label_smoothing=0.0),
    "whitening": dict(whiten=False, whiten_bias_epochs=0.0),
    "frozen_bn_scale+bias_lr": dict(frozen_bn_scale=False, bias_lr_scale=1.0),
    "ema": dict(ema=0.0),
    "lookahead": dict(lookahead=False),
    "tta": dict(tta="none"),
    "alternating_flip": dict(alternating_flip=False),
    "muon": dict(muon_lr=0.0),
}


def recipe_name(name: str) -> str:
    """The current name of a recipe (an old alias is translated, with a FutureWarning)."""
    if name in RECIPE_ALIASES:
        import warnings

        warnings.warn(f"recipe {name!r} is now called {RECIPE_ALIASES[name]!r}; the old "
                      f"name will be removed in fastcifar 0.3", FutureWarning, stacklevel=3)
        return RECIPE_ALIASES[name]
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return name


def recipe(name: str, **overrides: Any) -> TrainConfig:
    """The named recipe with `overrides` applied (None = keep the recipe's value), validated."""
    base = dict(RECIPES[recipe_name(name)])
    base.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(base) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**base).validate()


def parse_overrides(text: str) -> dict:
    """'batch_size=1536,label_smoothing=0.09' -> {field: value}, each value read as its
    setting's flag reads it (a TrainConfig field, not a runtime one)."""
    by_name = {s.name: s for s in settings(TrainConfig)}
    out = {}
    for part in str(text).split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in by_name or not by_name[name].flag:
            raise ConfigError(f"invalid --set {part.strip()!r}: use FIELD=VALUE with a "
                              f"recipe field, e.g. batch_size=1536 (docs/settings.md)")
        s = by_name[name]
        value = value.strip()
        try:
            if s.type is bool:
                if value.lower() not in ("true", "false", "1", "0", "on", "off"):
                    raise ValueError(value)
                parsed = value.lower() in ("true", "1", "on")
            elif s.optional and value.lower() in ("none", "auto"):
                parsed = None
            else:
                parsed = (s.parse or s.type)(value)
        except (ValueError, TypeError):
            raise ConfigError(f"invalid --set {name}={value!r}: must be "
                              f"{s.allowed()}") from None
        out[name] = parsed
    return out


def settings_table() -> str:
    """The README's table of every setting (regenerate with `python -m fastcifar.config`)."""
    rows = ["| flag | field | default | allowed | meaning |", "|---|---|---|---|---|"]
    for cls in (TrainConfig, RuntimeConfig):
        for s in settings(cls):
            if not s.flag:
                continue
            default = "auto" if s.default is None else s.default
            if isinstance(default, float):
                default = f"{default:.4g}"
            flag = (f"`{s.flag_name}` / `--no-{s.flag_name[2:]}`" if s.type is bool
                    else f"`{s.flag_name}`")
            allowed = s.allowed() + (", or auto" if s.optional and s.type is not str else "")
            rows.append(f"| {flag} | `{cls.__name__}.{s.name}` | {default} | {allowed} "
                        f"| {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
