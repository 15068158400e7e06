"""`fastcifar` command line: parses, calls the library, prints. Every setting's flag comes
from its declaration in `fastcifar.config`. Any `fastcifar.errors.UserError` becomes one
line on stderr and exit code 2 (in `main`), with nothing half-written."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .errors import UserError
from .runtime import import_tensorflow_quietly

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + traceback
        raise UserError(f"{message} (see '{self.prog} --help')")


def _count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise UserError(f"invalid count {text!r}: use a whole number >= 1")
    return int(text)


def _batch_sizes(text: str) -> tuple:
    sizes = tuple(int(x) for x in text.split(",") if x.strip().isdigit())
    if len(sizes) != len(text.split(",")) or min(sizes, default=0) < 1:
        raise UserError(f"invalid --batch-size {text!r}: use a number >= 1 or a list like "
                        f"256,512,1024")
    return sizes


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help (a setting's is the recipe's value); examples
    in the epilog as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings or isinstance(default, bool):
            return text
        return f"{text} (default: %(default)s)"


EXAMPLES = {
    "train": ["fastcifar train --data learnable:5000 --width 16 --epochs 2",
              "fastcifar train --recipe airbench94 --data cifar10 --json run.json "
              "--save model.keras",
              "fastcifar train --data my-images/ --recipe fast --target 0.9 --saved-model "
              "served/"],
    "step": ["fastcifar bench step --recipe airbench94 --batch-size 256,512 --json step.json",
             "fastcifar bench step --width 32 --batch-size 128 --steps 2 --reps 7 "
             "--baseline ../base/.venv/bin/python --rounds 10 --max-regression 5% "
             "--json ab.json"],
    "accuracy": ["fastcifar bench accuracy --recipe airbench94 --runs 3 --json acc.json"],
    "ablate": ["fastcifar bench ablate --recipe airbench94 --budget-epochs 2 --seeds 2"],
    "evaluate": ["fastcifar evaluate model.keras --data cifar10"],
    "export-step": ["fastcifar export-step step/ --recipe airbench94 --batch-size 1024"],
    "compare": ["fastcifar compare base.json candidate.json --max-regression 10% --normalize",
                "fastcifar compare ab.json --max-regression 5%"],
    "report": ["fastcifar report run.json step.json -o report.png"],
    "info": ["fastcifar info"],
    "doctor": ["fastcifar doctor"],
}


def _epilog(name: str) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name])


def _add_settings(parser: argparse.ArgumentParser, skip=(), classes=None) -> None:
    """One flag per declared setting of TrainConfig and RuntimeConfig (or `classes`); a
    flag left out keeps the recipe's (or the runtime's default) value."""
    from .config import RECIPES, RuntimeConfig, TrainConfig, settings

    if classes is None:
        classes = (TrainConfig, RuntimeConfig)
        parser.add_argument("--recipe", help=f"{', '.join(RECIPES)} (the flags below "
                            "override it)")
    for cls in classes:
        group = parser.add_argument_group(
            f"{cls.__name__} settings", "a flag left out keeps the recipe's value "
            "(docs/settings.md lists every default)")
        for s in settings(cls):  # s: one declared setting
            if not s.flag or s.name in skip:
                continue
            kw = dict(dest=s.name, default=argparse.SUPPRESS,
                      help=s.help.replace("%", "%%"))
            if s.type is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw.update(type=s.parse or s.type, choices=s.choices or None)
            group.add_argument(s.flag_name, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastcifar", description="Fast DavidNet training on CIFAR-10, "
                     "measured honestly.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    def command(parent, name, func, help, data=None, json=True, quiet=True, profile=False):
        parser = parent.add_parser(name, help=help, description=help,
                                   formatter_class=_HelpFormatter, epilog=_epilog(name))
        parser.set_defaults(func=func)
        if data:
            parser.add_argument("--data", default=data, help="cifar10, synthetic[:N], "
                           "learnable[:N], or a path to the archive, its folder or an "
                           "image-folder tree")
        if json:
            parser.add_argument("--json", metavar="PATH", help="write the result JSON here")
        if quiet:
            parser.add_argument("--quiet", action="store_true", help="no progress bar or table")
        if profile:
            parser.add_argument("--profile", metavar="DIR", help="TensorFlow profiler trace "
                                "of steady-state steps")
        return parser

    train = command(sub, "train", cmd_train, "train a recipe (default: davidnet)", "cifar10")
    train.add_argument("--save", metavar="PATH.keras", help="save the trained model")
    train.add_argument("--saved-model", metavar="DIR", help="also write it as a TensorFlow "
                       "SavedModel (TF Serving, TFLite): a new folder")
    train.add_argument("--logdir", metavar="DIR", help="TensorBoard scalars per epoch (losses, "
                       "accuracies, learning rate, images/s, utilisation)")
    train.add_argument("--profile", metavar="DIR", nargs="?", const="", help="TensorFlow "
                       "profiler trace of steady-state steps (no DIR: into --logdir)")
    _add_settings(train)
    command(sub, "info", cmd_info, "devices, versions, and what `auto` picks and why",
            json=False, quiet=False)
    kinds = sub.add_parser("bench", help="benchmarks: step (default), accuracy, ablate") \
        .add_subparsers(dest="which", parser_class=_Parser, required=True)
    step = command(kinds, "step", cmd_bench_step, "compiled step time, img/s, fraction of "
                   "peak", "synthetic", profile=True)
    step.add_argument("--batch-size", dest="batch_sizes", type=_batch_sizes,
                      help="one size or a list: 256,512,1024")
    step.add_argument("--steps", type=_count, default=2, help="steps per timed call")
    step.add_argument("--reps", type=_count, default=5, help="timed calls per batch size")
    step.add_argument("--compare", choices=("tutorial", "seed"), help="also time the "
                      "tutorial's loop, alternating, and report speedup_vs_tutorial")
    step.add_argument("--pairs", type=_count, default=3, help="A/B pairs for --compare")
    step.add_argument("--baseline", metavar="PYTHON", help="interleaved A/B: the Python of "
                      "a second installation (e.g. ../base/.venv/bin/python); runs this "
                      "benchmark in alternating processes, baseline then this one, and "
                      "reports the step-time ratio with its 95%% interval")
    step.add_argument("--rounds", type=_count, default=5, help="A/B rounds with --baseline "
                      "(default: %(default)s)")
    step.add_argument("--budget", type=float, metavar="SECONDS", help="with --baseline: "
                      "start no round that would end past this many seconds (at least 2 "
                      "rounds run)")
    step.add_argument("--max-regression", default="10%", help="with --baseline: the "
                      "slowdown the verdict calls a regression (default: %(default)s)")
    _add_settings(step, skip=("batch_size", "steps_per_call"))
    acc = command(kinds, "accuracy", cmd_bench_accuracy, "seconds to a target accuracy",
                  "cifar10")
    acc.add_argument("--runs", type=_count, default=1, help="repeats, seeds seed..seed+N-1")
    _add_settings(acc)
    ablate = command(kinds, "ablate", cmd_bench_ablate, "the recipe, then each technique "
                     "switched off", "cifar10")
    ablate.add_argument("--budget-epochs", type=_count, help="epochs per run")
    ablate.add_argument("--seeds", type=_count, default=1, help="seeds per variant")
    ablate.add_argument("--set", dest="variants", action="append", default=[],
                        metavar="FIELD=VALUE[,FIELD=VALUE]", help="one more row with these "
                        "values changed (repeatable), e.g. --set batch_size=1536,epochs=7.59 "
                        "--set label_smoothing=0.09")
    ablate.add_argument("--only-set", action="store_true", help="no row per technique "
                        "switched off: the recipe and the --set rows only")
    _add_settings(ablate)
    evaluate = command(sub, "evaluate", cmd_evaluate, "evaluate a saved model as training "
                       "did (its normalisation and test-time views)", "cifar10", quiet=False)
    evaluate.add_argument("model", metavar="MODEL.keras")
    export = command(sub, "export-step", cmd_export_step, "write the compiled training call "
                     "as XLA HLO (+ a manifest) for any XLA backend; float16 + loss scaling, "
                     "XLA on, as a GPU run builds it", "synthetic:50000", json=False)
    export.add_argument("folder", metavar="DIR", help="written: step.hlo.pb, step.hlo.txt, "
                        "manifest.json (and inputs.npz with --inputs)")
    export.add_argument("--inputs", action="store_true", help="also write every parameter's "
                        "starting value (data included) to inputs.npz, for an equality check")
    _add_settings(export)
    command(sub, "doctor", cmd_doctor, "self-check this machine's GPU/CPU paths", quiet=False)
    report = command(sub, "report", cmd_report, "plot results: accuracy vs seconds, step "
                     "times, utilisation", json=False, quiet=False)
    report.add_argument("results", nargs="+", metavar="RESULT.json")
    report.add_argument("-o", "--output", required=True, metavar="report.png")
    gate = command(sub, "compare", cmd_compare, "regression gate between two benchmark "
                   "results", json=False, quiet=False)
    gate.add_argument("baseline", help="a result, or one interleaved A/B result alone")
    gate.add_argument("current", nargs="?")
    gate.add_argument("--max-regression", default="10%", help="throughput/time threshold")
    gate.add_argument("--max-acc-drop", type=float, default=0.5,
                      help="accuracy threshold in percentage points")
    gate.add_argument("--normalize", action="store_true", help="divide throughput by each "
                      "run's machine calibration")
    gate.add_argument("--force", action="store_true", help="compare across datasets/devices")
    return parser


def _configs(args, default_recipe: str = "davidnet"):
    """(TrainConfig, RuntimeConfig) from the recipe and the flags given."""
    import dataclasses

    from .config import RECIPE_ALIASES, RuntimeConfig, TrainConfig, recipe

    if getattr(args, "target", None) == "auto":
        del args.target  # as if not given: the recipe's, on CIFAR-10 only
    name = args.recipe or default_recipe
    if name in RECIPE_ALIASES:
        print(f"fastcifar: note: recipe {name!r} is now {RECIPE_ALIASES[name]!r}; the old "
              f"name goes in 0.3", file=sys.stderr)
        name = RECIPE_ALIASES[name]
    given = lambda cls: {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                         if hasattr(args, f.name) and f.name != "recipe"}
    return recipe(name, **given(TrainConfig)), RuntimeConfig(**given(RuntimeConfig)).validate()


def _start(args, inputs=()):
    """Check the outputs can be written and overwrite no input (before any work); the
    progress printer. `inputs`: (flag, path) read besides `--data`."""
    from .results import check_outputs

    if hasattr(args, "data"):
        from .data import input_path

        inputs = (("--data", input_path(args.data)),) + tuple(inputs)
    check_outputs([("--json", getattr(args, "json", None), None)], inputs)
    return (lambda *a: None) if getattr(args, "quiet", False) else \
        (lambda *a: print(*a, flush=True))


def _write(args, result) -> None:
    if args.json is not None:
        from .results import write_json

        write_json(args.json, result)


# --- commands ----------------------------------------------------------------------

def cmd_train(args) -> int:
    from . import cluster

    cfg, runtime = _configs(args)
    if cfg.strategy == "multiworker" and not cluster.is_supervised():
        peers = cluster.parse_tf_config(os.environ.get("TF_CONFIG"))
        return cluster.supervise(args.argv, peers, runtime.peer_timeout)
    import_tensorflow_quietly()
    from .metrics import epoch_header, epoch_line
    from .run import run_training

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    def on_start(trainer, ds, peers):
        resolved = trainer.runtime
        where = (f"{trainer.replicas} replicas ({cfg.strategy}"
                 + (f", worker {peers.rank} of {len(peers.workers)}" if peers else "")
                 + f", sync BN {'on' if cfg.sync_bn else 'off'})" if trainer.distributed
                 else resolved.device)
        say(f"fastcifar train: recipe {cfg.recipe}, {cfg.epochs} epochs, batch "
            f"{cfg.batch_size}, width {cfg.width}, {resolved.precision}, XLA "
            f"{'on' if resolved.xla else 'off'} on {where} ({resolved.device_name}); data "
            f"{ds.name} ({len(ds.x_train)} train / {len(ds.x_test)} test)")
        say(epoch_header())

    def on_epoch(row):
        say(epoch_line(row))

    if args.profile == "" and not args.logdir:
        raise UserError("--profile without a folder needs --logdir (the trace goes there)")
    result = run_training(cfg, runtime, args.data, json_path=args.json, save_path=args.save,
                          profile_dir=args.profile, logdir=args.logdir,
                          target_declared=hasattr(args, "target"), quiet=args.quiet,
                          on_start=on_start, on_epoch=on_epoch,
                          saved_model_dir=args.saved_model)
    metrics, worker = result["metrics"], result["runtime"].get("worker", 0)
    reached = metrics["seconds_to_target"]
    target = result["config"]["target"]  # the run's: a CIFAR-10 target is dropped elsewhere
    if worker == 0:
        say(f"final test accuracy {metrics['final_test_acc']:.4f}; "
            + (f"target {target:.2%} reached at {reached:.1f} s" if reached is not None
               else f"target {target:.2%} not reached" if target else "no target")
            + f"; {metrics['images_per_sec']:.0f} img/s steady state; compile "
              f"{metrics['compile_seconds']:.1f} s (not timed)")
    if result["runtime"]["replicas"] > 1:
        print(f"worker {worker}: final weights checksum {metrics['weights_checksum']}",
              flush=True)
    return 0


def cmd_info(args) -> int:
    import_tensorflow_quietly()
    from .runtime import describe_machine

    print(describe_machine())
    return 0


def cmd_bench_step(args) -> int:
    from .bench import step_benchmark

    say = _start(args)
    if args.baseline is not None:
        return _bench_ab(args, say)
    sizes = args.batch_sizes or ()
    cfg, runtime = _configs(args, default_recipe="tutorial")
    cfg = cfg.replace(batch_size=sizes[0]) if sizes else cfg
    if args.profile is not None:
        from .results import check_folder

        check_folder(args.profile)
    import_tensorflow_quietly()
    compare = "tutorial" if args.compare else None  # "seed": the old name
    result = step_benchmark(cfg, runtime, args.data, sizes, args.steps, args.reps, compare,
                            args.pairs, args.profile, say)
    _write(args, result)
    metrics, resolved = result["metrics"], result["runtime"]
    if compare:
        speedup = metrics["speedup_vs_tutorial"]
        say(f"  speedup vs the tutorial: {speedup['median']:.2f}x (min {speedup['min']:.2f}, "
            f"max {speedup['max']:.2f})")
    if "top_ops" in metrics:
        from .profiling import top_ops_table

        say("\n".join(top_ops_table(metrics["top_ops"])))
    util = metrics.get("utilization") or {}
    say(f"{metrics['images_per_sec']:.1f} img/s at batch {result['config']['batch_size']} "
        f"({resolved['precision']}, XLA {'on' if resolved['xla'] else 'off'}, "
        f"{resolved['device_name']}); "
        f"{util.get('metric', 'utilisation')} median "
        f"{util.get('median', float('nan')):.0f}%; steady state, compile excluded")
    return 0


def _bench_ab(args, say) -> int:
    import math

    from .abtest import interleaved, verdict_line
    from .compare import parse_fraction

    if args.compare or args.profile is not None:
        raise UserError("--baseline times the step alone: drop --compare and --profile")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise UserError(f"invalid --budget {args.budget}: a number of seconds > 0")
    if args.rounds < 2:
        raise UserError(f"invalid --rounds {args.rounds}: an interval needs at least 2")
    threshold = parse_fraction(args.max_regression)
    result = interleaved(args.baseline, args.argv, args.rounds, args.budget, threshold, say)
    _write(args, result)
    m = result["metrics"]
    print(verdict_line({**m, "slower": result["ab"]["slower"], "threshold": threshold}))
    return 0


def cmd_bench_accuracy(args) -> int:
    from .bench import accuracy_benchmark

    say = _start(args)
    cfg, runtime = _configs(args)
    import_tensorflow_quietly()
    result = accuracy_benchmark(cfg, runtime, args.data, args.runs,
                                target_declared=hasattr(args, "target"), quiet=args.quiet,
                                say=say)
    _write(args, result)
    metrics = result["metrics"]
    reached = round(metrics["fraction_reaching_target"] * args.runs)
    say(f"final accuracy {metrics['final_test_acc']:.4f} +- "
        f"{metrics['final_test_acc_std']:.4f} over {args.runs} run(s); "
        f"{reached}/{args.runs} reached {cfg.target:.2%}"
        + (f"; median seconds-to-target {metrics['seconds_to_target']:.1f}"
           if metrics["seconds_to_target"] is not None else ""))
    return 0


def cmd_bench_ablate(args) -> int:
    from .bench import ablation_benchmark, ablation_table

    say = _start(args)
    cfg, runtime = _configs(args)
    import_tensorflow_quietly()
    from .config import parse_overrides

    variants = [parse_overrides(text) for text in args.variants]
    for changes in variants:
        cfg.replace(**changes)  # each row's values checked before any work
    result = ablation_benchmark(cfg, runtime, args.data, args.budget_epochs, args.seeds,
                                quiet=args.quiet, say=say, variants=variants,
                                switch_off=not args.only_set)
    _write(args, result)
    print("\n" + "\n".join(ablation_table(result)))
    return 0


def cmd_evaluate(args) -> int:
    _start(args, inputs=(("the model", args.model),))
    import_tensorflow_quietly()
    from .run import evaluate_saved

    result = evaluate_saved(args.model, args.data)
    _write(args, result)
    m = result["metrics"]
    views = result["config"]["recorded"].get("test_time_views", {}).get("mode", "?")
    print(f"{args.model} on {result['dataset']['name']} ({m['test_images']} test images, "
          f"test-time views: {views}): accuracy {m['final_test_acc']:.4f}, loss "
          f"{m['final_test_loss']:.4f}")
    return 0


def cmd_export_step(args) -> int:
    """The training call as a GPU run would build it, unless the flags say otherwise:
    float16 with loss scaling, the library's conv gradients, XLA on."""
    from .results import check_folder

    for name, value in (("precision", "mixed_float16"), ("conv_grad", "library")):
        if not hasattr(args, name):
            setattr(args, name, value)
    if getattr(args, "xla", True) is False:
        raise UserError("export-step writes what XLA compiles: drop --no-xla")
    args.xla = True
    cfg, runtime = _configs(args)
    if cfg.strategy != "auto":
        raise UserError("export-step writes the call of one device: drop --strategy (XLA "
                        "compiles each replica's step the same way)")
    check_folder(args.folder, "the exported step")
    import_tensorflow_quietly()
    from .hlo import export_for

    manifest = export_for(cfg, runtime, args.data, args.folder, with_inputs=args.inputs)
    if not args.quiet:
        print(f"wrote {args.folder}: {len(manifest['parameters'])} parameters, "
              f"{len(manifest['outputs'])} outputs, {manifest['steps_per_call']} steps of "
              f"batch {manifest['batch_size']} per call ({manifest['runtime']['precision']}, "
              f"conv_grad {manifest['runtime']['conv_grad']}); run it with "
              f"`python benchmarks/xla_step.py {args.folder}`")
    return 0


def cmd_doctor(args) -> int:
    _start(args)
    import_tensorflow_quietly()
    from .doctor import run_checks, table

    result = run_checks()
    print("\n".join(table(result)))
    _write(args, result)
    return 1 if result["metrics"]["failed"] else 0


def cmd_report(args) -> int:
    from . import results
    from .report import render

    results.check_outputs([("--output", args.output, ".png")],
                          [("a result", p) for p in args.results])
    render([(p, results.read_json(p)) for p in args.results], args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, parse_fraction

    code, lines = compare(args.baseline, args.current, parse_fraction(args.max_regression),
                          args.max_acc_drop, args.normalize, args.force)
    print("\n".join(lines))
    print("REGRESSION" if code else "no regression beyond threshold and noise")
    return code


class _Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, CI runners, Kubernetes), unwound like Ctrl-C: every temporary
    file is removed on the way out."""


_signals_seen: list[int] = []


def _on_signal(signum, frame):
    from .util import STOP_REQUESTED

    _signals_seen.append(signum)
    STOP_REQUESTED.append(signum)
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _quiet_unraisable(unraisable) -> None:
    """A Ctrl-C that lands inside a callback Python cannot raise from (a garbage-collection
    hook) is "ignored" with a traceback; the stop is already recorded in STOP_REQUESTED and
    acted on, so only that traceback is dropped."""
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, _Terminated)):
        return
    sys.__unraisablehook__(unraisable)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"fastcifar: warning: {message}\n"


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.formatwarning = _one_line_warning  # a hint, not a traceback
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 still prints
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    from .util import STOP_REQUESTED

    _signals_seen.clear()
    STOP_REQUESTED.clear()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable
    try:
        return _main(argv)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = previous_hook
        STOP_REQUESTED.clear()


def _write_failed_result(args, error: UserError) -> None:
    """A run that failed part-way (a diverged loss) still answers its `--json`, with the
    failed result the error carries: the record of why there is no number."""
    from . import results

    failed, path = getattr(error, "result", None), getattr(args, "json", None)
    if failed is not None and path and path not in results.written:
        try:
            results.write_json(path, failed)
        except OSError:
            pass  # the error itself is what the user must see


def _stopped(terminated: bool) -> int:
    """One line that says what is on disk: nothing, or the outputs written before the
    stop (e.g. the result JSON when the signal landed while the model was being saved)."""
    from .results import written

    kept = (f"written before the stop: {', '.join(written)}; nothing else" if written
            else "no result written")
    print(f"fastcifar: {'terminated' if terminated else 'interrupted'}; {kept}",
          file=sys.stderr)
    return 143 if terminated else 130


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and (len(argv) == 1 or (argv[1].startswith("-")
                                                     and argv[1] not in ("-h", "--help"))):
        argv.insert(1, "step")  # `fastcifar bench [flags]` is the step benchmark
    parser = build_parser()
    from .results import written

    written.clear()
    args = None
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        args.argv = argv  # a supervised child re-runs the same command
        code = args.func(args)
        if _signals_seen:  # the interrupt was swallowed somewhere (a gc callback)
            return _stopped(_signals_seen[-1] == signal.SIGTERM)
        return code
    except UserError as e:
        _write_failed_result(args, e)
        print(f"fastcifar: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        return _stopped(isinstance(e, _Terminated))
    except Exception:
        if not _signals_seen:
            raise
        # Ctrl-C that lands while TensorFlow traces or compiles comes back wrapped
        # (SystemError inside a StagingError): it is still the user's stop, not a bug.
        return _stopped(_signals_seen[-1] == signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
