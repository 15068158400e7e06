"""`fastcifar` command line. Bad input: one line on stderr, exit 2, nothing half-written."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + traceback
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _import_tf_quietly() -> None:
    """TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) goes to fd 2 before any
    logging setting applies; hide it unless FASTCIFAR_TF_LOGS=1, so errors stay one line."""
    if os.environ.get("FASTCIFAR_TF_LOGS") == "1" or "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _fraction(text: str) -> float:
    v = float(text.rstrip("%"))
    return v / 100 if text.endswith("%") or v > 1 else v


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="davidnet", help="seed (the tutorial) or davidnet "
                   "(the original, default)")
    p.add_argument("--data", default="cifar10", help="cifar10 (download/cache, default), "
                   "synthetic[:N], learnable[:N], or a path to the archive, its folder or an "
                   "image-folder tree")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--lr-peak", type=float)
    p.add_argument("--weight-decay", type=float, help="coupled L2 (0 = the tutorial as it ran)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--cutout", type=int, help="cutout side in pixels, 0 = off")
    p.add_argument("--seed", type=int)
    p.add_argument("--target", type=_fraction, help="test accuracy target, e.g. 0.93 or 93%%")
    p.add_argument("--precision", default="auto",
                   help="auto, float32, mixed_bfloat16 or mixed_float16")
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                   help="compile steps with XLA (default: auto)")
    p.add_argument("--steps-per-call", type=int, default=8)
    p.add_argument("--data-layout", default="auto", help="auto, uint8 or compute")
    p.add_argument("--device", default=None, help="e.g. /GPU:1 (default: first GPU, else CPU)")
    p.add_argument("--deterministic", action="store_true", help="turn on op determinism")
    p.add_argument("--json", metavar="PATH", help="write the result JSON here")
    p.add_argument("--save", metavar="PATH.keras", help="save the trained model")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastcifar", description="Fast DavidNet training on CIFAR-10, "
                     "measured honestly.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train a recipe (default: davidnet)")
    _add_train_args(t)
    sub.add_parser("info", help="devices, versions, and what `auto` picks and why")
    return parser


def _configs(args):
    from .config import RuntimeConfig, recipe

    cfg = recipe(args.recipe, epochs=args.epochs, batch_size=args.batch_size,
                 width=args.width, lr_peak=args.lr_peak, weight_decay=args.weight_decay,
                 dropout=args.dropout, cutout=args.cutout, seed=args.seed, target=args.target)
    rt = RuntimeConfig(precision=args.precision, xla=args.xla,
                       steps_per_call=args.steps_per_call, deterministic=args.deterministic,
                       data_layout=args.data_layout, device=args.device).validate()
    return cfg, rt


def cmd_train(args) -> int:
    from . import results

    cfg, rt = _configs(args)
    if args.json:
        results.check_writable(args.json)
    if args.save:
        results.check_writable(args.save, suffix=".keras")
    _import_tf_quietly()
    from . import data as data_mod

    ds = data_mod.load(args.data, quiet=args.quiet)
    from .runtime import environment
    from .train import Trainer

    trainer = Trainer(cfg, rt)
    say = (lambda *a: None) if args.quiet else print
    say(f"fastcifar train: recipe {cfg.recipe}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"width {cfg.width}, {trainer.rt.precision}, XLA {'on' if trainer.rt.xla else 'off'} "
        f"on {trainer.rt.device} ({trainer.rt.device_name}); data {ds.name} "
        f"({len(ds.x_train)} train / {len(ds.x_test)} test)")
    header = (f"{'epoch':>5} {'lr':>7} {'train loss':>10} {'train acc':>9} {'test loss':>9} "
              f"{'test acc':>8} {'seconds':>8} {'img/s':>7}")
    say(header)

    def on_epoch(row):
        say(f"{row['epoch']:>5} {row['lr']:>7.4f} {row['train_loss']:>10.4f} "
            f"{row['train_acc']:>9.4f} {row['test_loss']:>9.4f} {row['test_acc']:>8.4f} "
            f"{row['seconds']:>8.1f} {row['images_per_sec']:>7.0f}")

    from .monitor import Monitor, headline
    from .runtime import nvml_index, peak_memory_bytes

    if trainer.rt.device_kind == "GPU":
        idx = nvml_index(trainer.rt.device)
        mon = Monitor(interval=0.1, gpu_indices=None if idx is None else [idx])
    else:
        mon = Monitor(interval=0.1, source="cpu")
    with mon:
        res = trainer.fit(ds, quiet=args.quiet, on_epoch=on_epoch, monitor=mon)
    stt = res.seconds_to_target
    say(f"final test accuracy {res.final_test_acc:.4f}; "
        + (f"target {cfg.target:.2%} reached at {stt:.1f} s" if stt is not None
           else f"target {cfg.target:.2%} not reached" if cfg.target else "no target")
        + f"; {res.images_per_sec:.0f} img/s steady state; compile {res.compile_seconds:.1f} s"
        + " (not timed)")
    if args.save:
        trainer.save(args.save)
    if args.json:
        metrics = {"images_per_sec": res.images_per_sec, "final_test_acc": res.final_test_acc,
                   "final_test_loss": res.final_test_loss, "seconds_to_target": stt,
                   "train_seconds": res.train_seconds, "prep_seconds": res.prep_seconds,
                   "compile_seconds": res.compile_seconds,
                   "steps_per_epoch": res.steps_per_epoch,
                   "peak_memory_bytes": peak_memory_bytes(trainer.rt.device),
                   "utilization": headline(res.utilization)}
        obj = results.build("train", cfg.to_dict(), trainer.rt.to_dict(), environment(),
                            ds.identity(), metrics, res.history,
                            utilization=res.utilization,
                            timing="seconds: data preparation (statistics, padding, upload) "
                                   "plus training; excludes compilation (done first on dummy "
                                   "data, state restored) and per-epoch evaluation")
        results.write_json(args.json, obj)
    return 0


def cmd_info(args) -> int:
    import tensorflow as tf

    from .config import RuntimeConfig
    from .runtime import environment, resolve

    env = environment()
    rt = resolve(RuntimeConfig())
    print(f"fastcifar {__import__('fastcifar').__version__}")
    for k in ("python", "tensorflow", "keras", "numpy", "platform", "cpu_model", "cpu_count"):
        print(f"  {k:<22} {env[k]}")
    print(f"  {'tf build':<22} {env['tf_build']}")
    print(f"  {'TF_ENABLE_ONEDNN_OPTS':<22} {env['TF_ENABLE_ONEDNN_OPTS']}")
    print(f"  {'XLA_FLAGS':<22} {env['XLA_FLAGS']}")
    print("devices:")
    for d in tf.config.list_physical_devices():
        print(f"  {d.name} ({d.device_type})")
    print(f"auto picks: {rt.precision}, XLA {'on' if rt.xla else 'off'}, data layout "
          f"{rt.data_layout}, on {rt.device} ({rt.device_name})")
    print(f"  why: {rt.why}")
    return 0


COMMANDS = {"train": cmd_train, "info": cmd_info}
NEEDS_TF = {"info"}


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .config import ConfigError
    from .data import DataError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        if args.command in NEEDS_TF:
            _import_tf_quietly()
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, DataError) as e:
        print(f"fastcifar: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastcifar: interrupted; no result written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
