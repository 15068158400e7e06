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
    p.add_argument("--recipe", default="davidnet", help="seed (the tutorial), davidnet "
                   "(the original, default) or fast (bag of tricks, 10 epochs)")
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
    p.add_argument("--label-smoothing", type=float, help="e.g. 0.2 (0 = off)")
    p.add_argument("--ema", type=float, help="weight-averaging decay, e.g. 0.99 (0 = off)")
    p.add_argument("--tta", choices=("none", "flip", "flip_translate"),
                   help="test-time augmentation")
    p.add_argument("--alternating-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="mirror each image every other epoch instead of at random")
    p.add_argument("--activation", choices=("relu", "celu", "gelu"))
    p.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=None,
                   help="frozen PCA-whitening first layer")
    p.add_argument("--frozen-bn-scale", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--bias-lr-scale", type=float, help="BatchNorm beta lr x this, wd / this")
    p.add_argument("--precision", default="auto",
                   help="auto, float32, mixed_bfloat16 or mixed_float16")
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                   help="compile steps with XLA (default: auto)")
    p.add_argument("--steps-per-call", type=int, default=8)
    p.add_argument("--data-layout", default="auto", help="auto, uint8 or compute")
    p.add_argument("--device", default=None, help="e.g. /GPU:1 (default: first GPU, else CPU)")
    p.add_argument("--deterministic", action="store_true", help="turn on op determinism")
    p.add_argument("--strategy", choices=("auto", "mirrored", "multiworker"),
                   help="auto: one device; mirrored: every local GPU (or --replicas logical "
                        "CPU devices); multiworker: the cluster in TF_CONFIG")
    p.add_argument("--replicas", type=int, help="mirrored: how many local devices "
                   "(default: every GPU; on a CPU-only machine, the CPU split in N)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm statistics over the global batch (default: per replica)")
    p.add_argument("--peer-timeout", type=float, default=120.0, metavar="S",
                   help="multiworker: seconds to wait for every worker to join, and for any "
                        "step to make progress, before failing (default 120)")
    p.add_argument("--json", metavar="PATH", help="write the result JSON here (multiworker: "
                   "worker i > 0 writes PATH.worker<i>.json)")
    p.add_argument("--save", metavar="PATH.keras", help="save the trained model")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.add_argument("--profile", metavar="DIR", help="TensorFlow profiler trace of two "
                   "steady-state calls after training")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastcifar", description="Fast DavidNet training on CIFAR-10, "
                     "measured honestly.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train a recipe (default: davidnet)")
    _add_train_args(t)
    sub.add_parser("info", help="devices, versions, and what `auto` picks and why")
    b = sub.add_parser("bench", help="benchmarks: step (default) or accuracy")
    b.add_argument("which", nargs="?", default="step", choices=("step", "accuracy", "ablate"))
    b.add_argument("--recipe", default=None, help="default: seed for step timing, "
                   "davidnet for accuracy")
    b.add_argument("--data", default=None, help="step: synthetic (default) or any --data "
                   "spec; accuracy: cifar10 (default) or a path")
    b.add_argument("--width", type=int)
    b.add_argument("--batch-size", default=None, help="one size or a list: 256,512,1024")
    b.add_argument("--steps", type=int, default=None, help="steps per timed call")
    b.add_argument("--reps", type=int, default=5, help="timed calls per configuration")
    b.add_argument("--precision", default="auto")
    b.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None)
    b.add_argument("--compare", choices=("seed",), help="also time the tutorial's loop, "
                   "alternating, and report speedup_vs_seed")
    b.add_argument("--pairs", type=int, default=3, help="A/B pairs for --compare")
    b.add_argument("--profile", metavar="DIR", help="TensorFlow profiler trace of "
                   "steady-state steps")
    b.add_argument("--epochs", type=int)
    b.add_argument("--runs", type=int, default=1, help="accuracy: repeats with seeds 0..N-1")
    b.add_argument("--target", type=_fraction)
    b.add_argument("--seed", type=int)
    b.add_argument("--budget-epochs", type=int, help="ablate: epochs per run")
    b.add_argument("--seeds", type=int, default=1, help="ablate: seeds per variant")
    b.add_argument("--json", metavar="PATH")
    b.add_argument("--quiet", action="store_true")
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


def _configs(args):
    from .config import RuntimeConfig, recipe

    cfg = recipe(args.recipe, epochs=args.epochs, batch_size=args.batch_size,
                 width=args.width, lr_peak=args.lr_peak, weight_decay=args.weight_decay,
                 dropout=args.dropout, cutout=args.cutout, seed=args.seed, target=args.target,
                 label_smoothing=args.label_smoothing, ema=args.ema, tta=args.tta,
                 alternating_flip=args.alternating_flip, activation=args.activation,
                 whiten=args.whiten, frozen_bn_scale=args.frozen_bn_scale,
                 bias_lr_scale=args.bias_lr_scale, strategy=args.strategy,
                 replicas=args.replicas, sync_bn=args.sync_bn)
    rt = RuntimeConfig(precision=args.precision, xla=args.xla,
                       steps_per_call=args.steps_per_call, deterministic=args.deterministic,
                       data_layout=args.data_layout, device=args.device,
                       peer_timeout=args.peer_timeout).validate()
    return cfg, rt


def _worker_path(path, cluster):
    """Worker 0 writes PATH; worker i writes PATH.worker<i>.json (one shared disk is safe)."""
    if path is None or cluster is None or cluster.is_chief:
        return path
    stem = path[:-5] if path.endswith(".json") else path
    return f"{stem}.worker{cluster.rank}.json"


def _supervised_train(args, rt, info) -> int:
    """Run this same command as a watched child (see fastcifar.cluster)."""
    from . import cluster as cl

    try:
        return cl.supervise(args.argv, info, rt.peer_timeout)
    except cl.SupervisorError as e:
        from .config import ConfigError

        raise ConfigError(str(e)) from None


def cmd_train(args) -> int:
    from . import cluster as cl
    from . import results

    cfg, rt = _configs(args)
    info = native_log = None
    if cfg.strategy == "multiworker":
        info = cl.parse_tf_config(os.environ.get("TF_CONFIG"))
        if cl.HEARTBEAT_ENV not in os.environ:
            return _supervised_train(args, rt, info)
        native_log = cl.redirect_native_stderr(info.rank)
    json_path = _worker_path(args.json, info)
    if json_path:
        results.check_writable(json_path)
    save_path = args.save if info is None or info.is_chief else None
    if save_path:
        results.check_writable(save_path, suffix=".keras")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    _import_tf_quietly()
    from . import distribute
    from .runtime import environment
    from .train import Trainer

    # before anything initialises TensorFlow (loading image folders decodes with it)
    strategy = distribute.make_strategy(cfg, rt)
    from . import data as data_mod

    ds = data_mod.load(args.data, quiet=args.quiet)
    cl.heartbeat()
    trainer = Trainer(cfg, rt, strategy=strategy)
    quiet = args.quiet or (info is not None and not info.is_chief)
    say = (lambda *a: None) if quiet else print
    where = (f"{trainer.replicas} replicas ({cfg.strategy}"
             + (f", worker {info.rank} of {len(info.workers)}" if info else "")
             + f", sync BN {'on' if cfg.sync_bn else 'off'})" if trainer.distributed
             else f"{trainer.rt.device}")
    say(f"fastcifar train: recipe {cfg.recipe}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"width {cfg.width}, {trainer.rt.precision}, XLA {'on' if trainer.rt.xla else 'off'} "
        f"on {where} ({trainer.rt.device_name}); data {ds.name} "
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

    if trainer.rt.device_kind == "GPU":  # every GPU a replica runs on, matched to NVML
        gpus = trainer.describe_runtime()["replica_devices"]
        idx = [nvml_index("/GPU:" + d.rsplit(":", 1)[-1]) for d in gpus if "GPU" in d.upper()]
        mon = Monitor(interval=0.1, gpu_indices=None if None in idx or not idx else idx)
    else:
        mon = Monitor(interval=0.1, source="cpu")
    with mon:
        res = _fit_reporting_peers(trainer, ds, quiet, on_epoch, mon, native_log)
    stt = res.seconds_to_target
    checksum = distribute.weights_checksum(trainer.model)
    say(f"final test accuracy {res.final_test_acc:.4f}; "
        + (f"target {cfg.target:.2%} reached at {stt:.1f} s" if stt is not None
           else f"target {cfg.target:.2%} not reached" if cfg.target else "no target")
        + f"; {res.images_per_sec:.0f} img/s steady state; compile {res.compile_seconds:.1f} s"
        + " (not timed)")
    if trainer.distributed:
        print(f"worker {info.rank if info else 0}: final weights checksum {checksum}",
              flush=True)
    if save_path:
        trainer.save(save_path)
    if args.profile:
        from .bench import profile_steps

        os.makedirs(args.profile, exist_ok=True)
        dd = trainer._last_data
        profile_steps(lambda: float(trainer.train_steps(dd, 1)[0].numpy()), args.profile)
    if args.json:
        metrics = {"images_per_sec": res.images_per_sec, "final_test_acc": res.final_test_acc,
                   "final_test_loss": res.final_test_loss, "seconds_to_target": stt,
                   "train_seconds": res.train_seconds, "prep_seconds": res.prep_seconds,
                   "compile_seconds": res.compile_seconds,
                   "steps_per_epoch": res.steps_per_epoch,
                   "peak_memory_bytes": peak_memory_bytes(trainer.rt.device),
                   "utilization": headline(res.utilization),
                   "weights_checksum": checksum}
        obj = results.build("train", cfg.to_dict(), trainer.describe_runtime(), environment(),
                            ds.identity(), metrics, res.history,
                            utilization=res.utilization,
                            timing="seconds: data preparation (statistics, padding, upload) "
                                   "plus training; excludes compilation (done first on dummy "
                                   "data, state restored) and per-epoch evaluation")
        results.write_json(json_path, obj)
    cl.heartbeat("done")
    return 0


def _fit_reporting_peers(trainer, ds, quiet, on_epoch, monitor, native_log=None):
    """fit(); a lost multiworker peer (TensorFlow aborts the collectives) is one line."""
    import tensorflow as tf

    from .config import ConfigError

    try:
        return trainer.fit(ds, quiet=quiet, on_epoch=on_epoch, monitor=monitor)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError) as e:
        if not trainer.distributed:
            raise
        first = next((l.strip() for l in str(e.message).splitlines()
                      if "unhealthy" in l or "abort" in l.lower() or "deadline" in l.lower()),
                     str(e.message).splitlines()[0] if e.message else type(e).__name__)
        raise ConfigError(f"lost contact with a worker peer ({type(e).__name__}: {first}); "
                          f"check every worker's log and restart all of them"
                          + (f" (TensorFlow's log: {native_log})" if native_log else "")
                          ) from None


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


def _batch_sizes(text):
    from .config import ConfigError

    try:
        sizes = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"invalid --batch-size {text!r}: use a number or a list like "
                          f"256,512,1024") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"invalid --batch-size {text!r}: sizes must be >= 1")
    return sizes


def cmd_bench(args) -> int:
    from . import results
    from .config import ConfigError, RuntimeConfig, recipe

    if args.json:
        results.check_writable(args.json)
    if args.which == "step" and (args.runs != 1 or args.target is not None):
        raise ConfigError("--runs/--target belong to `bench accuracy`, not `bench step`")
    if args.reps < 1 or args.pairs < 1 or args.runs < 1:
        raise ConfigError("--reps, --pairs and --runs must be >= 1")
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    name = args.recipe or ("seed" if args.which == "step" else "davidnet")
    sizes = _batch_sizes(args.batch_size or 512)
    cfg = recipe(name, width=args.width, batch_size=sizes[0], epochs=args.epochs,
                 seed=args.seed, target=args.target)
    rt = RuntimeConfig(precision=args.precision, xla=args.xla).validate()
    if args.which == "step":
        return _bench_step(args, cfg, rt, sizes)
    if args.which == "ablate":
        return _bench_ablate(args, cfg, rt)
    return _bench_accuracy(args, cfg, rt)


def _bench_ablate(args, cfg, rt) -> int:
    """The recipe, then once per technique switched off: same seeds, same epoch budget."""
    import statistics

    from . import bench, results
    from . import data as data_mod
    from .config import FAST_TECHNIQUES, ConfigError
    from .runtime import environment
    from .train import Trainer

    if args.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    budget = args.budget_epochs or cfg.epochs
    ds = data_mod.load(args.data or "cifar10", quiet=args.quiet)
    _import_tf_quietly()
    techniques = {k: v for k, v in FAST_TECHNIQUES.items()
                  if cfg.replace(**v) != cfg}  # only what the recipe has switched on
    variants = {"all techniques": {}, **{f"without {k}": v for k, v in techniques.items()}}
    rows = []
    for name, off in variants.items():
        accs, secs = [], []
        for s in range(args.seeds):
            c = cfg.replace(epochs=budget, seed=cfg.seed + s, **off)
            res = Trainer(c, rt).fit(ds, quiet=True)
            accs.append(res.final_test_acc)
            secs.append(res.train_seconds)
        rows.append({"variant": name, "switched_off": dict(off),
                     "final_test_acc_mean": statistics.mean(accs),
                     "final_test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "accs": accs, "seconds_median": statistics.median(secs)})
        if not args.quiet:
            r = rows[-1]
            print(f"{name:<34} acc {r['final_test_acc_mean']:.4f} +- "
                  f"{r['final_test_acc_std']:.4f}  {r['seconds_median']:.1f} s", flush=True)
    base = rows[0]["final_test_acc_mean"]
    print(f"\nrecipe {cfg.recipe}, {budget} epochs, {args.seeds} seed(s), data {ds.name}")
    print(f"{'variant':<34} {'final acc (mean)':>16} {'vs all (pp)':>12} {'seconds':>8}")
    for r in rows:
        print(f"{r['variant']:<34} {100 * r['final_test_acc_mean']:>15.2f}% "
              f"{100 * (r['final_test_acc_mean'] - base):>+12.2f} {r['seconds_median']:>8.1f}")
    if args.json:
        obj = results.build("bench", cfg.to_dict(), rt.to_dict(), environment(),
                            ds.identity(), {"final_test_acc": base}, benchmark="ablate",
                            ablation=rows, budget_epochs=budget, seeds=args.seeds,
                            calibration=bench.calibrate_machine())
        results.write_json(args.json, obj)
    return 0


def _bench_step(args, cfg, rt, sizes) -> int:
    from . import bench, results
    from . import data as data_mod
    from .config import ConfigError
    from .monitor import Monitor
    from .runtime import environment

    ds = data_mod.load(args.data or "synthetic", quiet=args.quiet)
    _import_tf_quietly()
    steps = args.steps or 2
    say = (lambda *a: None) if args.quiet else print
    calibration = bench.calibrate_machine()
    sweep, calls = [], {}
    mon = Monitor(interval=0.1, source="auto")
    with mon:
        for bs in sizes:
            c = cfg.replace(batch_size=bs)
            if bs > len(ds.x_train):
                sweep.append({"batch_size": bs, "error": f"batch larger than the "
                              f"{len(ds.x_train)} training images"})
                continue
            say(f"bench step: width {c.width}, batch {bs}, {steps} steps x {args.reps} calls")
            r, call = bench.step_benchmark(c, rt, ds, steps, args.reps, monitor=mon,
                                           profile_dir=args.profile if bs == sizes[0] else None,
                                           return_call=True)
            calls[bs] = call
            sweep.append(r)
            if "error" in r:
                say(f"  batch {bs}: {r['error']}")
                continue
            say(f"  {r['images_per_sec']:.1f} img/s, step {r['step_ms']['median']:.1f} ms "
                f"(p10 {r['step_ms']['p10']:.1f}, p90 {r['step_ms']['p90']:.1f}), "
                f"{r['fraction_of_peak']:.1%} of peak, compile {r['compile_seconds']:.1f} s")
    ok = [r for r in sweep if "error" not in r]
    if not ok:
        raise ConfigError("every configuration failed: " + "; ".join(
            f"batch {r['batch_size']}: {r['error']}" for r in sweep))
    head = ok[0]
    metrics = {k: head[k] for k in ("images_per_sec", "images_per_sec_spread", "step_ms",
                                    "compile_seconds", "flops_per_image",
                                    "achieved_flops_per_sec", "peak_flops_per_sec",
                                    "fraction_of_peak", "peak_memory_bytes")}
    metrics["utilization"] = head.get("utilization")
    if args.compare == "seed":
        say(f"comparing with the tutorial's loop ({args.pairs} alternating pairs)")
        sp = bench.seed_speedup(cfg.replace(batch_size=head["batch_size"]), rt, ds, steps,
                                args.pairs, fast_call=calls.get(head["batch_size"]))
        metrics.update(sp)
        s = sp["speedup_vs_seed"]
        say(f"  speedup vs the tutorial: {s['median']:.2f}x (min {s['min']:.2f}, "
            f"max {s['max']:.2f})")
    util = metrics.get("utilization") or {}
    say(f"{head['images_per_sec']:.1f} img/s at batch {head['batch_size']} "
        f"({head['runtime']['precision']}, XLA {'on' if head['runtime']['xla'] else 'off'}, "
        f"{head['runtime']['device_name']}); {util.get('metric', 'utilisation')} median "
        f"{util.get('median', float('nan')):.0f}%; steady state, compile excluded")
    if args.json:
        obj = results.build("bench", cfg.to_dict(), head["runtime"], environment(),
                            ds.identity(), metrics, benchmark="step", sweep=sweep,
                            calibration=calibration,
                            timing="step_ms: one synchronised call of `steps` steps / steps; "
                                   "compile_seconds measured apart, first real call untimed")
        results.write_json(args.json, obj)
    return 0


def _bench_accuracy(args, cfg, rt) -> int:
    import statistics
    import time

    from . import bench, results
    from . import data as data_mod
    from .config import ConfigError
    from .runtime import environment
    from .train import Trainer

    spec = args.data or "cifar10"
    say = (lambda *a: None) if args.quiet else print
    t0 = time.perf_counter()
    ds = data_mod.load(spec, quiet=args.quiet)
    load_s = time.perf_counter() - t0
    if ds.name != "cifar10" and args.target is None:
        raise ConfigError(f"data {ds.name} is not CIFAR-10: declare the accuracy to reach "
                          f"with --target (e.g. --target 0.80)")
    _import_tf_quietly()
    runs = []
    for i in range(args.runs):
        c = cfg.replace(seed=(cfg.seed + i))
        tr = Trainer(c, rt)
        tr.compile(len(ds.x_train), len(ds.x_test))  # untimed, state restored
        res = tr.fit(ds, quiet=args.quiet)
        curve = [[load_s + h["seconds"], h["test_acc"]] for h in res.history]
        stt = None if res.seconds_to_target is None else load_s + res.seconds_to_target
        runs.append({"seed": c.seed, "final_test_acc": res.final_test_acc,
                     "seconds_to_target": stt, "curve": curve,
                     "train_seconds": load_s + res.train_seconds})
        say(f"run {i + 1}/{args.runs} (seed {c.seed}): final {res.final_test_acc:.4f}, "
            + (f"target {c.target:.2%} at {stt:.1f} s" if stt is not None
               else f"target {c.target:.2%} not reached"))
        rt_dict = tr.describe_runtime()
    accs = [r["final_test_acc"] for r in runs]
    reached = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
    metrics = {
        "final_test_acc": statistics.mean(accs),
        "final_test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "fraction_reaching_target": len(reached) / len(runs),
        "seconds_to_target": statistics.median(reached) if reached else None,
        "curve": runs[0]["curve"],
        "load_seconds": load_s,
    }
    say(f"final accuracy {metrics['final_test_acc']:.4f} +- {metrics['final_test_acc_std']:.4f}"
        f" over {len(runs)} run(s); {len(reached)}/{len(runs)} reached {cfg.target:.2%}"
        + (f"; median seconds-to-target {metrics['seconds_to_target']:.1f}" if reached else ""))
    if args.json:
        obj = results.build("bench", cfg.to_dict(), rt_dict, environment(), ds.identity(),
                            metrics, benchmark="accuracy", runs=runs,
                            calibration=bench.calibrate_machine(),
                            timing="clock: loading, normalising, padding, uploading the data "
                                   "and all training; excludes compilation (done first on "
                                   "dummy data, state restored) and per-epoch evaluation",
                            note=None if ds.name == "cifar10" else
                            f"not CIFAR-10: dataset {ds.name}, target declared by the user")
        results.write_json(args.json, obj)
    return 0


def cmd_doctor(args) -> int:
    from . import results
    from .config import RuntimeConfig
    from .doctor import run_checks
    from .runtime import environment, resolve

    if args.json:
        results.check_writable(args.json)
    _import_tf_quietly()
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        from .distribute import split_cpu

        split_cpu(2)  # for the data-parallel check; before TensorFlow initialises
    rt = resolve(RuntimeConfig())
    print(f"fastcifar doctor on {rt.device} ({rt.device_name}); auto = {rt.precision}, "
          f"XLA {'on' if rt.xla else 'off'}")
    checks = run_checks(rt.device_kind)
    print(f"{'check':<48} {'result':<6} {'s':>6}  detail")
    for c in checks:
        print(f"{c['check']:<48} {c['status']:<6} {c['seconds']:>6}  {c['detail']}")
    failed = [c for c in checks if c["status"] != "pass"]
    print("all checks passed" if not failed else f"{len(failed)} check(s) FAILED")
    if args.json:
        obj = results.build("doctor", {}, rt.to_dict(), environment(), {},
                            {"passed": len(checks) - len(failed), "failed": len(failed)},
                            checks=checks)
        results.write_json(args.json, obj)
    return 1 if failed else 0


def cmd_report(args) -> int:
    from . import results
    from .report import render

    results.check_writable(args.output, suffix=".png")
    loaded = [(p, results.read_json(p)) for p in args.results]
    render(loaded, args.output)
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
    from .config import ConfigError
    from .data import DataError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        args.argv = argv  # a supervised child re-runs the same command
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
