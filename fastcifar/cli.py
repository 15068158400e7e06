"""`fastcifar` command line: parses, calls the library, prints. Every setting's flag comes
from its declaration in `fastcifar.config`. Any `fastcifar.errors.UserError` becomes one
line on stderr and exit code 2 (in `main`), with nothing half-written."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + traceback
        from .errors import UserError

        raise UserError(f"{message} (see '{self.prog} --help')")


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


# --- parsing -------------------------------------------------------------------------

def _add_settings(p: argparse.ArgumentParser, skip=()) -> None:
    """One flag per declared setting of TrainConfig and RuntimeConfig; a flag left out
    keeps the recipe's (or the runtime's default) value."""
    from .config import RECIPES, RuntimeConfig, TrainConfig, settings

    p.add_argument("--recipe", help=f"{', '.join(RECIPES)} (fields below override it)")
    for cls in (TrainConfig, RuntimeConfig):
        group = p.add_argument_group(f"{cls.__name__} settings")
        for s in settings(cls):
            if not s.flag or s.name in skip:
                continue
            kw = dict(dest=s.name, default=argparse.SUPPRESS, help=s.help)
            if s.type is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = s.parse or s.type
                kw["choices"] = s.choices or None
            group.add_argument(s.flag_name, **kw)


def _add_output(p, profile: bool = True) -> None:
    p.add_argument("--json", metavar="PATH", help="write the result JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    if profile:
        p.add_argument("--profile", metavar="DIR", help="TensorFlow profiler trace of "
                       "steady-state steps")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastcifar", description="Fast DavidNet training on CIFAR-10, "
                     "measured honestly.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train a recipe (default: davidnet)")
    t.add_argument("--data", default="cifar10", help="cifar10 (download/cache, default), "
                   "synthetic[:N], learnable[:N], or a path to the archive, its folder or an "
                   "image-folder tree")
    t.add_argument("--save", metavar="PATH.keras", help="save the trained model")
    _add_output(t)
    _add_settings(t)
    sub.add_parser("info", help="devices, versions, and what `auto` picks and why")

    b = sub.add_parser("bench", help="benchmarks: step (default), accuracy or ablate")
    kinds = b.add_subparsers(dest="which", parser_class=_Parser)
    step = kinds.add_parser("step", help="compiled step time, img/s, fraction of peak")
    step.add_argument("--data", default="synthetic", help="synthetic (default) or any "
                      "--data spec")
    step.add_argument("--batch-size", dest="batch_sizes", help="one size or a list: "
                      "256,512,1024")
    step.add_argument("--steps", type=int, default=2, help="steps per timed call")
    step.add_argument("--reps", type=int, default=5, help="timed calls per configuration")
    step.add_argument("--compare", choices=("tutorial", "seed"), help="also time the "
                      "tutorial's loop, alternating, and report speedup_vs_tutorial")
    step.add_argument("--pairs", type=int, default=3, help="A/B pairs for --compare")
    _add_output(step)
    _add_settings(step, skip=("batch_size", "steps_per_call"))
    acc = kinds.add_parser("accuracy", help="seconds to a target accuracy")
    acc.add_argument("--data", default="cifar10", help="cifar10 (default) or a path")
    acc.add_argument("--runs", type=int, default=1, help="repeats with seeds seed..seed+N-1")
    _add_output(acc, profile=False)
    _add_settings(acc)
    ablate = kinds.add_parser("ablate", help="the recipe, then each technique switched off")
    ablate.add_argument("--data", default="cifar10", help="cifar10 (default) or a path")
    ablate.add_argument("--budget-epochs", type=int, help="epochs per run")
    ablate.add_argument("--seeds", type=int, default=1, help="seeds per variant")
    _add_output(ablate, profile=False)
    _add_settings(ablate)

    d = sub.add_parser("doctor", help="self-check this machine's GPU/CPU paths")
    d.add_argument("--json", metavar="PATH")
    r = sub.add_parser("report", help="plot results: accuracy vs seconds, step times, "
                       "utilisation")
    r.add_argument("results", nargs="+", metavar="RESULT.json")
    r.add_argument("-o", "--output", required=True, metavar="report.png")
    c = sub.add_parser("compare", help="regression gate between two benchmark results")
    c.add_argument("baseline")
    c.add_argument("current")
    c.add_argument("--max-regression", default="10%", help="throughput/time threshold")
    c.add_argument("--max-acc-drop", type=float, default=0.5,
                   help="accuracy threshold in percentage points")
    c.add_argument("--normalize", action="store_true", help="divide throughput by each "
                   "run's machine calibration")
    c.add_argument("--force", action="store_true", help="compare across datasets/devices")
    return parser


def _configs(args, default_recipe: str = "davidnet"):
    """(TrainConfig, RuntimeConfig) from the recipe and the flags given."""
    import dataclasses

    from .config import RECIPE_ALIASES, RuntimeConfig, TrainConfig, recipe

    name = args.recipe or default_recipe
    if name in RECIPE_ALIASES:
        print(f"fastcifar: note: recipe {name!r} is now {RECIPE_ALIASES[name]!r}; the old "
              f"name goes in 0.3", file=sys.stderr)
        name = RECIPE_ALIASES[name]
    given = vars(args)
    train = {f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given}
    runtime = {f.name: given[f.name] for f in dataclasses.fields(RuntimeConfig)
               if f.name in given}
    return recipe(name, **train), RuntimeConfig(**runtime).validate()


def _positive(args, *names) -> None:
    from .errors import UserError

    for name in names:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")


def _write(args, result) -> None:
    if args.json:
        from .results import write_json

        write_json(args.json, result)


# --- commands ----------------------------------------------------------------------

def cmd_train(args) -> int:
    from . import cluster

    cfg, runtime = _configs(args)
    if cfg.strategy == "multiworker" and not cluster.is_supervised():
        peers = cluster.parse_tf_config(os.environ.get("TF_CONFIG"))
        return cluster.supervise(args.argv, peers, runtime.peer_timeout)
    _import_tf_quietly()
    from .run import run_training

    say = (lambda *a: None) if args.quiet else print

    def on_start(trainer, ds, peers):
        rt = trainer.runtime
        where = (f"{trainer.replicas} replicas ({cfg.strategy}"
                 + (f", worker {peers.rank} of {len(peers.workers)}" if peers else "")
                 + f", sync BN {'on' if cfg.sync_bn else 'off'})" if trainer.distributed
                 else rt.device)
        say(f"fastcifar train: recipe {cfg.recipe}, {cfg.epochs} epochs, batch "
            f"{cfg.batch_size}, width {cfg.width}, {rt.precision}, XLA "
            f"{'on' if rt.xla else 'off'} on {where} ({rt.device_name}); data {ds.name} "
            f"({len(ds.x_train)} train / {len(ds.x_test)} test)")
        say(f"{'epoch':>5} {'lr':>7} {'train loss':>10} {'train acc':>9} {'test loss':>9} "
            f"{'test acc':>8} {'seconds':>8} {'img/s':>7}")

    def on_epoch(row):
        say(f"{row['epoch']:>5} {row['lr']:>7.4f} {row['train_loss']:>10.4f} "
            f"{row['train_acc']:>9.4f} {row['test_loss']:>9.4f} {row['test_acc']:>8.4f} "
            f"{row['seconds']:>8.1f} {row['images_per_sec']:>7.0f}")

    result = run_training(cfg, runtime, args.data, json_path=args.json, save_path=args.save,
                          profile_dir=args.profile, quiet=args.quiet, on_start=on_start,
                          on_epoch=on_epoch)
    m, worker = result["metrics"], result["runtime"].get("worker", 0)
    stt = m["seconds_to_target"]
    if worker == 0:
        say(f"final test accuracy {m['final_test_acc']:.4f}; "
            + (f"target {cfg.target:.2%} reached at {stt:.1f} s" if stt is not None
               else f"target {cfg.target:.2%} not reached" if cfg.target else "no target")
            + f"; {m['images_per_sec']:.0f} img/s steady state; compile "
              f"{m['compile_seconds']:.1f} s (not timed)")
    if result["runtime"]["replicas"] > 1:
        print(f"worker {worker}: final weights checksum {m['weights_checksum']}", flush=True)
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


def _batch_sizes(text) -> tuple:
    from .errors import UserError

    try:
        sizes = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise UserError(f"invalid --batch-size {text!r}: use a number or a list like "
                        f"256,512,1024") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"invalid --batch-size {text!r}: sizes must be >= 1")
    return sizes


def cmd_bench(args) -> int:
    from . import bench, results

    which = args.which
    if args.json:
        results.check_writable(args.json)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    if which == "step":
        _positive(args, "steps", "reps", "pairs")
        sizes = _batch_sizes(args.batch_sizes) if args.batch_sizes else ()
        cfg, runtime = _configs(args, default_recipe="tutorial")
        if sizes:
            cfg = cfg.replace(batch_size=sizes[0])
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
        _import_tf_quietly()
        compare = "tutorial" if args.compare in ("tutorial", "seed") else None
        result = bench.step_benchmark(cfg, runtime, args.data, sizes, args.steps, args.reps,
                                      compare, args.pairs, args.profile, say)
        _write(args, result)
        m, rt = result["metrics"], result["runtime"]
        if compare:
            s = m["speedup_vs_tutorial"]
            say(f"  speedup vs the tutorial: {s['median']:.2f}x (min {s['min']:.2f}, "
                f"max {s['max']:.2f})")
        util = m.get("utilization") or {}
        say(f"{m['images_per_sec']:.1f} img/s at batch {result['config']['batch_size']} "
            f"({rt['precision']}, XLA {'on' if rt['xla'] else 'off'}, {rt['device_name']}); "
            f"{util.get('metric', 'utilisation')} median "
            f"{util.get('median', float('nan')):.0f}%; steady state, compile excluded")
        return 0
    _import_tf_quietly()
    if which == "accuracy":
        _positive(args, "runs")
        cfg, runtime = _configs(args)
        result = bench.accuracy_benchmark(cfg, runtime, args.data, args.runs,
                                          target_declared="target" in vars(args),
                                          quiet=args.quiet, say=say)
        _write(args, result)
        m = result["metrics"]
        reached = round(m["fraction_reaching_target"] * args.runs)
        say(f"final accuracy {m['final_test_acc']:.4f} +- {m['final_test_acc_std']:.4f} "
            f"over {args.runs} run(s); {reached}/{args.runs} reached {cfg.target:.2%}"
            + (f"; median seconds-to-target {m['seconds_to_target']:.1f}" if reached else ""))
        return 0
    _positive(args, "seeds")
    cfg, runtime = _configs(args)
    result = bench.ablation_benchmark(cfg, runtime, args.data, args.budget_epochs, args.seeds,
                                      quiet=args.quiet, say=say)
    _write(args, result)
    rows = result["ablation"]
    base = rows[0]["final_test_acc_mean"]
    print(f"\nrecipe {cfg.recipe}, {result['budget_epochs']} epochs, {args.seeds} seed(s), "
          f"data {result['dataset']['name']}")
    print(f"{'variant':<34} {'final acc (mean)':>16} {'vs all (pp)':>12} {'seconds':>8}")
    for r in rows:
        print(f"{r['variant']:<34} {100 * r['final_test_acc_mean']:>15.2f}% "
              f"{100 * (r['final_test_acc_mean'] - base):>+12.2f} {r['seconds_median']:>8.1f}")
    return 0


def cmd_doctor(args) -> int:
    from . import results
    from .doctor import run_checks

    if args.json:
        results.check_writable(args.json)
    _import_tf_quietly()
    result = run_checks()
    rt = result["runtime"]
    print(f"fastcifar doctor on {rt['device']} ({rt['device_name']}); auto = "
          f"{rt['precision']}, XLA {'on' if rt['xla'] else 'off'}")
    print(f"{'check':<48} {'result':<7} {'s':>6}  detail")
    for c in result["checks"]:
        print(f"{c['check']:<48} {c['status']:<7} {c['seconds']:>6}  {c['detail']}")
    failed = result["metrics"]["failed"]
    print(f"{failed} check(s) FAILED" if failed else "all checks passed")
    _write(args, result)
    return 1 if failed else 0


def cmd_report(args) -> int:
    from . import results
    from .report import render

    results.check_writable(args.output, suffix=".png")
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


COMMANDS = {"train": cmd_train, "info": cmd_info, "bench": cmd_bench,
            "compare": cmd_compare, "doctor": cmd_doctor, "report": cmd_report}
NEEDS_TF = {"info"}


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .errors import UserError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and (len(argv) == 1 or (argv[1].startswith("-")
                                                     and argv[1] not in ("-h", "--help"))):
        argv.insert(1, "step")  # `fastcifar bench [flags]` is the step benchmark
    try:
        args = parser.parse_args(argv)
        args.argv = argv  # a supervised child re-runs the same command
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        if args.command in NEEDS_TF:
            _import_tf_quietly()
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"fastcifar: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastcifar: interrupted; no result written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
