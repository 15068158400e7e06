"""The compiled training call as XLA gets it: `fastcifar export-step DIR`.

With `jit_compile=True`, TensorFlow hands XLA one HLO module for the whole multi-step call;
before XLA optimises it, it is platform-neutral: the data and every variable the call
reads are parameters, the loss, the hit count and the new value of every variable it
writes are outputs, each aliased to the parameter it updates. Written as serialized HLO
(`step.hlo.pb`) and text (`step.hlo.txt`), with `manifest.json` saying what each parameter
and output is, any XLA backend can run, time or analyse the call without TensorFlow
(`benchmarks/xla_step.py` runs it through JAX's PJRT client). What this measures is the
compiled step on XLA; not TensorFlow's runtime between calls, the non-XLA cuDNN path, or
NCCL. The step count per call is a constant inside the module: one export, one
`steps_per_call`.
"""

from __future__ import annotations

import os
import re
import numpy as np

from . import results
from .errors import ConfigError

# HLO element types and the numpy dtypes a runner feeds
HLO_DTYPES = {"pred": "bool", "s8": "int8", "s16": "int16", "s32": "int32", "s64": "int64",
              "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
              "f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64"}
DATA_PARAMETERS = (("x_train", "data: the training images, reflect-padded, on the device"),
                   ("y_train", "data: the training labels"),
                   ("mean", "data: the per-channel mean of the training images"),
                   ("std", "data: the per-channel std of the training images"))


def parse_layout(hlo_text: str) -> tuple:
    """(parameter shapes, output shapes, {output index: parameter index}) from the
    module's header: `entry_computation_layout={(P...)->(O...)}` and
    `input_output_alias={ {o}: (p, {}, may-alias), ... }`."""
    header = hlo_text.split("\n", 1)[0]
    layout = re.search(r"entry_computation_layout=\{\((.*)\)->(.*)\}", header)
    if layout is None:
        raise ValueError("no entry_computation_layout in the HLO module's header")
    shape = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
    clean = lambda s: re.sub(r"/\*[^*]*\*/", "", s)
    params = [(m.group(1), [int(d) for d in m.group(2).split(",") if d])
              for m in shape.finditer(clean(layout.group(1)))]
    outputs = [(m.group(1), [int(d) for d in m.group(2).split(",") if d])
               for m in shape.finditer(clean(layout.group(2)))]
    aliases = {int(o): int(p) for o, p in
               re.findall(r"\{(\d+)\}: \((\d+), \{\}, (?:may|must)-alias\)", header)}
    return params, outputs, aliases


def _variables_by_handle(engine) -> dict:
    """id(resource handle) -> (variable, its name) for every variable the call can read."""
    named, seen = {}, set()
    for v in engine.state_variables() + [engine.epoch_steps, engine.total_steps]:
        name = str(getattr(v, "path", None) or v.name)
        if name in seen:  # names identify parameters: they must be unique
            raise ConfigError(f"two of the trainer's variables are named {name!r}; the "
                              f"export cannot tell them apart")
        seen.add(name)
        named[id(v.handle)] = (v, name)
    return named


def _init_hint(value: np.ndarray) -> dict:
    """How a runner without the `.npz` fills a parameter like this one."""
    if value.size <= 1:
        return {"init": "value", "value": value.reshape(-1).tolist()[0] if value.size else 0}
    if not np.issubdtype(value.dtype, np.floating):
        return {"init": "zeros"} if not value.any() else {"init": "arange"}
    if not value.any():
        return {"init": "zeros"}
    if np.all(value == 1):
        return {"init": "ones"}
    return {"init": "normal", "mean": float(value.mean()), "std": float(value.std())}


def export_for(config, runtime, data: str, folder: str, with_inputs: bool = False) -> dict:
    """Build the trainer `config`/`runtime` name for `data`, fit its whitening as a run
    would, move its step counter a quarter into the schedule (the learning rate is not 0
    there) and export its call (`export_step`); returns the manifest."""
    from . import data as data_mod
    from .train import Trainer

    ds = data_mod.load(data)
    if ds.num_classes != config.num_classes:
        config = config.replace(num_classes=ds.num_classes)
    trainer = Trainer(config, runtime)
    trainer.check_budget(len(ds.x_train))
    device_data = trainer.prepare(ds)
    if config.whiten:
        trainer.fit_whitening(device_data)
    trainer.step.assign(trainer.total_steps_for(device_data.n_train) // 4)
    return export_step(trainer, device_data, ds.identity(), folder,
                       runtime.steps_per_call, with_inputs)


def export_step(engine, data, dataset: dict, folder: str, steps: int,
                with_inputs: bool = False) -> dict:
    """Write the engine's `steps`-step training call on the device data `data` into
    `folder`; returns the manifest. The engine must have XLA on and one device. Nothing is
    run: the engine's state is as it was."""
    import tensorflow as tf

    from .flops import train_flops

    if not engine.runtime.xla or engine.distributed:
        raise ConfigError("export-step needs XLA on one device: the HLO module is what "
                          "XLA compiles (drop --no-xla and --strategy)")
    args = (data.x_train, data.y_train, data.mean, data.std, tf.constant(steps, tf.int32))
    concrete = engine._train_fn.get_concrete_function(*args)
    ir = engine._train_fn.experimental_get_compiler_ir(*args)
    from .fingerprint import compiler_ir

    proto = compiler_ir(ir, "hlo_serialized", data.x_train.device)
    text = compiler_ir(ir, "hlo", data.x_train.device)
    params, outputs, aliases = parse_layout(text)
    named = _variables_by_handle(engine)
    inputs = [(name, meaning, t.numpy()) for (name, meaning), t in
              zip(DATA_PARAMETERS, args[:4])]
    for handle in concrete.captured_inputs:
        if id(handle) not in named:
            raise ConfigError("the training call captures a tensor that is not one of the "
                              "trainer's variables; it cannot be exported")
        v, name = named[id(handle)]
        role = "step counter" if v is engine.step else "variable"
        inputs.append((name, f"{role}: {name}", np.asarray(v.numpy())))
    if len(inputs) != len(params):
        raise ConfigError(f"the HLO module has {len(params)} parameters, the call "
                          f"{len(inputs)}: cannot describe it")
    manifest = _manifest(engine, dataset, steps, params, outputs, aliases, inputs,
                         train_flops(engine.model))
    os.makedirs(folder, exist_ok=True)
    _write(os.path.join(folder, "step.hlo.pb"), proto)
    _write(os.path.join(folder, "step.hlo.txt"), text.encode())
    if with_inputs:
        from .util import atomic_path

        with atomic_path(os.path.join(folder, "inputs.npz"), suffix=".npz") as tmp, \
                open(tmp, "wb") as f:
            np.savez(f, **{f"p{i}": value for i, (_, _, value) in enumerate(inputs)})
        results.note_written(os.path.join(folder, "inputs.npz"))
        manifest["inputs_npz"] = "inputs.npz"
    results.write_json(os.path.join(folder, "manifest.json"), manifest)
    return manifest


def _write(path: str, blob: bytes) -> None:
    from .util import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)
    results.note_written(path)


def _manifest(engine, dataset, steps, params, outputs, aliases, inputs,
              flops_per_image) -> dict:
    cfg = engine.config
    parameters = []
    for i, ((kind, shape), (name, meaning, value)) in enumerate(zip(params, inputs)):
        if list(value.shape) != shape:
            raise ConfigError(f"parameter {i} ({name}) is {list(value.shape)} in the call "
                              f"but {shape} in the HLO module: cannot describe it")
        entry = {"index": i, "name": name, "meaning": meaning, "shape": shape,
                 "dtype": HLO_DTYPES.get(kind, kind)}
        if i >= len(DATA_PARAMETERS):
            entry.update(_init_hint(value))
        parameters.append(entry)
    updated = {p: o for o, p in aliases.items()}
    described = []
    for o, (kind, shape) in enumerate(outputs):
        p = aliases.get(o)
        meaning = ("the summed training loss of the call" if o == 0 else
                   "the number of correctly classified training images" if o == 1 else
                   f"the new value of {inputs[p][0]}" if p is not None else "an output")
        described.append({"index": o, "shape": shape, "dtype": HLO_DTYPES.get(kind, kind),
                          "meaning": meaning, "updates": p})
    return {"format": "fastcifar HLO export, version 1",
            "hlo": "step.hlo.pb", "hlo_text": "step.hlo.txt",
            "steps_per_call": steps, "batch_size": cfg.batch_size,
            "images_per_call": steps * cfg.batch_size,
            "flops_per_image": flops_per_image,
            "flops_per_call": flops_per_image * steps * cfg.batch_size,
            "train_images": int(inputs[0][2].shape[0]), "num_classes": cfg.num_classes,
            "start_step": int(engine.step.numpy()),
            "config": cfg.to_dict(), "runtime": engine.describe_runtime(),
            "runtime_config": engine.runtime_config.to_dict(),
            "dataset": dataset, "parameters": parameters, "outputs": described,
            "feed_back": {str(o): p for o, p in sorted(aliases.items())},
            "not_updated": [p["index"] for p in parameters if p["index"] not in updated],
            "needs_x64": any(p["dtype"] in ("int64", "uint64", "float64")
                             for p in parameters)}
