"""Filter gradients of small feature maps as nine matrix products (runtime `conv_grad`):
the same sum as the library's kernel, checked against the sum written out by hand."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fastcifar.config import RuntimeConfig, recipe
from fastcifar.data import synthetic
from fastcifar.airbench import airbench94
from fastcifar.davidnet import davidnet
from fastcifar.layers import Conv2D, filter_grad_by_matmuls, use_matmul_filter_grad
from fastcifar.runtime import resolve
from fastcifar.train import Trainer


def test_the_filter_gradient_is_the_sum_over_examples_and_positions_by_hand():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4, 3))
    dy = rng.standard_normal((2, 5, 4, 6))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # SAME padding of a 3x3 kernel
    by_hand = np.zeros((3, 3, 3, 6))
    for i in range(3):
        for j in range(3):
            for n in range(2):
                for h in range(5):
                    for w in range(4):
                        by_hand[i, j] += np.outer(xp[n, h + i, w + j], dy[n, h, w])
    got = filter_grad_by_matmuls(tf.constant(x), tf.constant(dy), 3).numpy()
    np.testing.assert_allclose(got, by_hand, rtol=1e-12, atol=1e-12)

    # which tap is which: x = 1 at (row 0, col 0, channel 0), dy = 1 at (row 1, col 1,
    # channel 2): output (1, 1) sees input (0, 0) through the top-left tap only
    x1, dy1 = np.zeros((1, 3, 3, 2)), np.zeros((1, 3, 3, 4))
    x1[0, 0, 0, 0] = dy1[0, 1, 1, 2] = 1.0
    expected = np.zeros((3, 3, 2, 4))
    expected[0, 0, 0, 2] = 1.0
    got1 = filter_grad_by_matmuls(tf.constant(x1), tf.constant(dy1), 3).numpy()
    np.testing.assert_array_equal(got1, expected)


def test_the_layer_computes_what_keras_conv2d_computes():
    """Forward and input gradient are the library's; the filter gradient the same sum,
    and the library's filter-gradient op is really gone from the traced step."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((3, 6, 6, 5)), tf.float32)  # 36 pixels: applies
    results = {}
    for matmul in (False, True):
        layer = Conv2D(7, 3, padding="same", use_bias=False)
        layer.build(x.shape)
        layer.kernel.assign(np.random.default_rng(2).standard_normal((3, 3, 5, 7)))
        layer.matmul_filter_grad = matmul

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * tf.sin(y))
            return (y,) + tuple(tape.gradient(loss, [x, layer.kernel]))

        y, dx, dk = step(x)
        results[matmul] = (y.numpy(), dx.numpy(), dk.numpy())
        ops = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
        assert ("Conv2DBackpropFilter" in ops) is not matmul, ops
        assert "Conv2DBackpropInput" in ops
    (y0, dx0, dk0), (y1, dx1, dk1) = results[False], results[True]
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)
    np.testing.assert_allclose(dk1, dk0, rtol=1e-5, atol=1e-4)
    assert np.abs(dk0).max() > 1.0  # a real gradient, not zeros on both sides


@pytest.mark.parametrize("kwargs,size,applies", [
    ({}, 8, True), ({}, 9, False), ({}, 3, True),   # 64 pixels at most
    ({"strides": 2}, 8, False), ({"padding": "valid"}, 8, False),
    ({"dilation_rate": 2}, 8, False), ({"kernel_size": (3, 1)}, 8, False),
    ({"kernel_size": 5}, 8, False), ({"kernel_size": 1}, 8, False), ({"groups": 2}, 8, False),
    ({"data_format": "channels_first"}, 8, False)])
def test_only_stride_1_same_3x3_convs_on_small_maps_take_the_matmul_gradient(kwargs, size,
                                                                            applies):
    args = dict(filters=4, kernel_size=3, padding="same") | kwargs
    layer = Conv2D(**args)
    layer.matmul_filter_grad = True
    assert layer._matmul_applies(tf.zeros((2, size, size, 4))) is applies
    layer.matmul_filter_grad = False
    assert layer._matmul_applies(tf.zeros((2, size, size, 4))) is False


def test_it_applies_to_the_maps_of_8x8_and_less_in_each_net():
    # airbench94 conv inputs: 31, 15, 15, 7, 7, 3 -> the last three;
    # DavidNet: 32, 32, 16, 16, 16, 8, 4, 4 -> layer3 and its two residual convs
    for net, small in ((airbench94(8), {"group2_conv2", "group3_conv1", "group3_conv2"}),
                       (davidnet(8), {"layer3_conv", "layer3_res1_conv", "layer3_res2_conv"})):
        assert use_matmul_filter_grad(net, True) == 3
        on = {l.name for l in net.layers if getattr(l, "matmul_filter_grad", False)
              and l._matmul_applies(l.input)}
        assert on == small, on
        assert use_matmul_filter_grad(net, False) == 0
        assert not any(getattr(l, "matmul_filter_grad", False) for l in net.layers)


def test_auto_picks_matmul_on_cpu_and_the_trainer_applies_the_choice():
    auto = resolve(RuntimeConfig())
    assert auto.conv_grad == ("matmul" if auto.device_kind == "CPU" else "library")
    assert resolve(RuntimeConfig(conv_grad="library")).conv_grad == "library"
    for choice, expected in (("library", False), ("matmul", True)):
        t = Trainer(recipe("airbench94", width=4, batch_size=32),
                    RuntimeConfig(precision="float32", conv_grad=choice))
        assert t.model.get_layer("group3_conv2").matmul_filter_grad is expected
        assert t.describe_runtime()["conv_grad"] == choice

    def plain_keras(policy):  # keras' own Conv2D: nothing the choice applies to
        inp = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(4, 3, padding="same", dtype=policy)(inp)
        x = keras.layers.GlobalMaxPooling2D(dtype=policy)(x)
        return keras.Model(inp, keras.layers.Dense(10, dtype="float32")(x))

    t = Trainer(recipe("davidnet", width=4, batch_size=32),
                RuntimeConfig(precision="float32", conv_grad="matmul"), model=plain_keras)
    assert t.describe_runtime()["conv_grad"] == "library"  # what really ran


# bfloat16 keeps 8 bits: three steps of either gradient differ by up to 4.2% in the
# whitening bias on one AMD EPYC (under 3% on another); a wrong tap would differ by ~100%
@pytest.mark.parametrize("precision,tol", [("float32", 1e-4), ("mixed_bfloat16", 6e-2)])
def test_training_steps_move_the_weights_as_the_library_gradient_does(precision, tol,
                                                                      monkeypatch):
    from fastcifar import layers as model

    traced = []  # layers whose gradient the matmul form computed, as the step was traced
    original = model.filter_grad_by_matmuls
    monkeypatch.setattr(model, "filter_grad_by_matmuls",
                        lambda x, dy, k: traced.append(x.shape) or original(x, dy, k))
    ds = synthetic(256, 64, learnable=True, seed=3)
    moved = {}
    for choice in ("library", "matmul"):
        traced.clear()
        t = Trainer(recipe("airbench94", width=4, batch_size=64),
                    RuntimeConfig(precision=precision, steps_per_call=3, conv_grad=choice))
        data = t.prepare(ds)
        start = [v.numpy() for v in t.model.trainable_variables]
        loss = float(t.train_steps(data, 3)[0].numpy())
        # library: never; matmul: the 7x7, 7x7 and 3x3 maps (once per trace)
        maps = [tuple(s[1:3]) for s in traced]
        if choice == "library":
            assert maps == []
        else:
            assert set(maps) == {(7, 7), (3, 3)} and maps.count((7, 7)) == 2 * maps.count(
                (3, 3)), maps
        moved[choice] = (loss, [v.numpy() - s for v, s in
                                zip(t.model.trainable_variables, start)])
    (loss0, d0), (loss1, d1) = moved["library"], moved["matmul"]
    assert loss1 == pytest.approx(loss0, rel=tol)
    names = [v.path for v in t.model.trainable_variables]
    for name, a, b in zip(names, d0, d1):
        if "group3_conv" in name or "group2_conv2" in name:
            assert np.linalg.norm(a) > 0, name
        rel = np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12)
        assert rel < tol, (name, rel)


# --- auto precision on CPUs -------------------------------------------------------------------

def _cpuinfo(tmp_path, vendor, model, flags):
    """Two logical processors, as /proc/cpuinfo lists them."""
    block = (f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: 6\n"
             f"model name\t: {model}\nflags\t\t: fpu sse2 avx2 avx512f {flags}\n\n")
    path = tmp_path / "cpuinfo"
    path.write_text(block.format(n=0) + block.format(n=1))
    return str(path)


AMX = "CPU with AMX_BF16 -> mixed_bfloat16"
AMD = "AMD CPU with AVX512_BF16 -> mixed_bfloat16"
NOT_AMD = ("CPU with AVX512_BF16, no AMX, not AMD -> float32 (measured: bf16 at 0.66x "
           "float32's speed on an Intel Xeon without AMX)")
NONE = "CPU without AVX512_BF16 or AMX_BF16 -> float32"


@pytest.mark.parametrize("vendor,model,flags,expected", [
    # measured: bf16 faster than float32 on these two
    ("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", "avx512_bf16 amx_bf16 amx_tile", AMX),
    ("AuthenticAMD", "AMD EPYC 9654 96-Core Processor", "avx512_bf16", AMD),
    # measured: mixed_bfloat16 at 0.66x float32's images/s on an Intel Xeon without AMX
    ("GenuineIntel", "Intel(R) Xeon(R) Processor", "avx512_bf16", NOT_AMD),
    ("GenuineIntel", "Intel(R) Xeon(R) CPU E5-2690 v4", "", NONE),
    ("AuthenticAMD", "AMD EPYC 7B12", "", NONE),
    # not measured: AMX alone decides; an unknown vendor's AVX512_BF16 is not taken on trust
    ("GenuineIntel", "Intel(R) Xeon(R) Future", "amx_bf16", AMX),
    ("HygonGenuine", "Hygon C86 7185", "avx512_bf16", NOT_AMD),
    ("GenuineIntel", "Intel(R) Xeon(R) Processor", "amx_tile avx512_bf16", NOT_AMD),
])
def test_auto_precision_on_a_cpu_follows_vendor_and_flags(tmp_path, vendor, model, flags,
                                                          expected):
    from fastcifar.runtime import cpu_precision
    from fastcifar.util import cpu_info

    info = cpu_info(_cpuinfo(tmp_path, vendor, model, flags))
    assert info["model"] == model and info["vendor"] == vendor
    assert isinstance(info["flags"], set) and "avx512f" in info["flags"]
    assert cpu_precision(info) == (expected.split("-> ")[1].split(" ")[0], expected)


def test_cpuinfo_without_a_vendor_or_flags_gives_float32(tmp_path):
    from fastcifar.runtime import cpu_precision
    from fastcifar.util import cpu_info

    path = tmp_path / "cpuinfo"  # as on some ARM machines: "Features", no vendor_id
    path.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n")
    info = cpu_info(str(path))
    assert info["vendor"] == "" and info["flags"] == set()
    assert cpu_precision(info) == ("float32", NONE)
    missing = cpu_info(str(tmp_path / "absent"))
    assert missing["flags"] == set() and cpu_precision(missing)[0] == "float32"


def test_auto_precision_on_this_machine_is_the_rules_choice():
    from fastcifar.runtime import cpu_precision
    from fastcifar.util import cpu_info

    auto = resolve(RuntimeConfig())
    if auto.device_kind != "CPU":
        pytest.skip("a GPU is visible: auto follows its compute capability")
    precision, why = cpu_precision(cpu_info())
    assert auto.precision == precision and auto.why.startswith(why)
