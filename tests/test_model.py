"""DavidNet as the tutorial defines it: init, BatchNorm, dtypes, saving."""

import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from fastcifar.davidnet import davidnet
from fastcifar.layers import conv_layers


@pytest.fixture(scope="module")
def net():
    return davidnet(width=8, dropout=0.0, precision="float32", seed=1)


def test_architecture_widths_and_parameter_count(net):
    convs = conv_layers(net)
    assert [c.filters for c in convs] == [8, 16, 16, 16, 32, 64, 64, 64]
    assert all(c.kernel_size == (3, 3) and not c.use_bias for c in convs)
    dense = net.get_layer("linear")
    assert dense.units == 10 and not dense.use_bias
    # conv kernels + BN (gamma, beta) + dense, counted by hand for c=8
    chans = [(3, 8), (8, 16), (16, 16), (16, 16), (16, 32), (32, 64), (64, 64), (64, 64)]
    want = sum(9 * a * b + 2 * b for a, b in chans) + 64 * 10
    assert net.count_params() - sum(int(np.prod(v.shape)) for v in net.non_trainable_weights) \
        == want


def test_init_is_pytorch_uniform_within_fan_in_bounds(net):
    for layer in conv_layers(net) + [net.get_layer("linear")]:
        k = layer.kernel.numpy()
        bound = 1 / math.sqrt(np.prod(k.shape[:-1]))
        assert np.abs(k).max() <= bound
        assert np.abs(k).max() > 0.9 * bound  # spread over the whole interval
        assert abs(k.mean()) < 0.2 * bound


def test_batchnorm_momentum_and_epsilon(net):
    bn = net.get_layer("prep_bn")
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5
    conv_out = keras.Model(net.input, net.get_layer("prep_conv").output)
    x = tf.random.normal([16, 32, 32, 3], seed=0)
    mean0, var0 = bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()
    net(x, training=True)
    c = conv_out(x).numpy().reshape(-1, bn.moving_mean.shape[0])
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.9 * mean0 + 0.1 * c.mean(0),
                               rtol=1e-4, atol=1e-6)
    # the running variance takes the unbiased batch variance, as PyTorch and fused TF BN do
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               0.9 * var0 + 0.1 * c.var(0, ddof=1), rtol=1e-4)


def test_fused_batchnorm_matches_keras_batchnorm():
    from fastcifar.layers import BatchNorm

    x = tf.random.normal([8, 6, 6, 5], seed=4) * 3 + 1
    ours = BatchNorm(momentum=0.9, epsilon=1e-5)
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    ours.build(x.shape)
    ref.build(x.shape)
    ours.gamma.assign(tf.linspace(0.5, 1.5, 5))
    ref.gamma.assign(tf.linspace(0.5, 1.5, 5))
    np.testing.assert_allclose(ours(x, training=True).numpy(), ref(x, training=True).numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), ref.moving_mean.numpy(), rtol=1e-5)
    for layer in (ours, ref):
        layer.moving_variance.assign(tf.ones(5) * 2.0)
    np.testing.assert_allclose(ours(x, training=False).numpy(), ref(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_policy_is_per_model_and_logits_are_float32(precision):
    before = keras.config.dtype_policy().name
    m = davidnet(width=4, precision=precision)
    assert keras.config.dtype_policy().name == before == "float32"
    assert m.get_layer("prep_conv").compute_dtype == precision.split("_")[1]
    assert m.get_layer("prep_conv").kernel.dtype == "float32"
    out = m(tf.zeros([2, 32, 32, 3]), training=False)
    assert out.dtype == tf.float32 and out.shape == (2, 10)


def test_logits_are_scaled_by_one_eighth(net):
    x = tf.random.normal([4, 32, 32, 3], seed=2)
    pre = keras.Model(net.input, net.get_layer("linear").output)(x, training=False)
    np.testing.assert_allclose(net(x, training=False).numpy(), 0.125 * pre.numpy(), rtol=1e-6)


def test_dropout_variant_has_dropout_layers():
    m = davidnet(width=4, dropout=0.05)
    drops = [l for l in m.layers if isinstance(l, keras.layers.Dropout)]
    assert len(drops) == 8 and all(d.rate == 0.05 for d in drops)


def test_saves_and_loads_in_safe_mode_in_a_fresh_process(net, tmp_path):
    path = tmp_path / "m.keras"
    net.save(path)
    x = tf.random.normal([4, 32, 32, 3], seed=3)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", net(x, training=False).numpy())
    # a fresh process: registering fastcifar's layer is all it needs; safe mode (default)
    code = ("import numpy as np, keras, fastcifar.serving; "
            "m = keras.models.load_model('m.keras'); "
            "y = m(np.load('x.npy'), training=False); "
            "np.testing.assert_allclose(np.asarray(y), np.load('y.npy'), rtol=1e-5, atol=1e-6);"
            "print('same')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and "same" in out.stdout, out.stderr[-2000:]


def test_import_has_no_global_side_effects():
    code = ("import sys, fastcifar; assert 'tensorflow' not in sys.modules; "
            "import fastcifar.serving, keras; "
            "assert keras.config.dtype_policy().name == 'float32'; "
            
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
