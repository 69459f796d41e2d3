"""The inference call with its weights as constants (keras_inception.deploy.frozen)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import randomize

import keras_inception as ki
from keras_inception.deploy import folding as inference
from keras_inception.deploy import frozen


def test_frozen_call_equals_the_model_and_keeps_its_weights_then():
    model = randomize(
        ki.MODELS["inception_v3"](
            weights=None, input_shape=(107, 107, 3), width=0.25, depths=(1, 1, 1), aux_logits=True, classes=5
        )
    )
    folded = inference.fold_batchnorm(model)
    run = frozen.frozen_call(folded)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 107, 107, 3)).astype("float32")
    expected = folded(x, training=False)
    got = run(x)
    keras.tree.assert_same_structure(got, expected)  # logits and aux logits
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert run(x[:1]) is not None  # any batch size unless one is given

    for w in folded.weights:  # constants: a later change to the model does not reach the frozen call
        w.assign(np.zeros(w.shape, w.dtype))
    np.testing.assert_allclose(
        np.asarray(keras.tree.flatten(run(x))[0]),
        np.asarray(keras.tree.flatten(expected)[0]),
        rtol=1e-4,
        atol=1e-5,
    )


def test_towers_split_the_batch_and_give_the_model_s_outputs():
    """Towers a row apart (5 in 2: 3 and 2), fewer images than towers (whole), aux logits concatenated."""
    model = randomize(
        ki.MODELS["inception_resnet_v2"](
            weights=None, input_shape=(107, 107, 3), width=0.25, depths=(1, 1, 1), aux_logits=True, classes=5
        )
    )
    folded = inference.fold_batchnorm(model)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 107, 107, 3)).astype("float32")
    expected = keras.tree.flatten(folded(x, training=False))
    run = frozen.frozen_call(folded, towers=2)
    for n in (1, 2, 5):
        got = run(x[:n])
        assert isinstance(got, list) and len(got) == 2  # the model's structure: logits and aux logits
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a)[:n], rtol=1e-4, atol=1e-5)
    fixed = frozen.frozen_call(folded, batch=4, towers=3)  # 4 in 3: 2, 1 and 1
    np.testing.assert_allclose(np.asarray(fixed(x[:4])[0]), np.asarray(expected[0])[:4], rtol=1e-4, atol=1e-5)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"towers must be a whole number of at least 1, got {bad!r}"):
            frozen.frozen_call(folded, towers=bad)


def test_towers_run_parts_a_row_apart_the_larger_first():
    """A call whose rows depend on their whole batch (each less the batch mean) shows the parts."""
    import tensorflow as tf

    inputs = keras.Input((3,))
    model = keras.Model(
        inputs, keras.layers.Lambda(lambda t: t - tf.reduce_mean(t, 0, keepdims=True))(inputs)
    )
    x = np.random.default_rng(2).uniform(-1, 1, (5, 3)).astype("float32")

    def centred(*parts):
        return np.concatenate([p - p.mean(0) for p in parts])

    two, three = frozen.frozen_call(model, towers=2), frozen.frozen_call(model, towers=3)
    np.testing.assert_allclose(np.asarray(two(x)), centred(x[:3], x[3:]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(three(x[:4])), centred(x[:2], x[2:3], x[3:4]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(three(x[:2])), centred(x[:2]), atol=1e-6)  # whole
    np.testing.assert_allclose(np.asarray(frozen.frozen_call(model)(x)), centred(x), atol=1e-6)


def test_a_frozen_batch_one_convolution_takes_the_blocked_kernels():
    """Why the frozen call helps at batch 1 (oneDNN's own log): with a variable filter TensorFlow's
    batch-1 convolution under AVX2 is oneDNN's GEMM convolution; with a constant one, brgemm, as
    through ``frozen_call`` (its session) on a Keras convolution."""
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "w = np.ones([3, 3, 64, 96], np.float32)\n"
        "if sys.argv[1] == 'frozen_call':\n"
        "    import keras\n"
        "    from keras_inception.deploy.frozen import frozen_call\n"
        "    x = keras.Input((35, 35, 64))\n"
        "    conv = keras.Model(x, keras.layers.Conv2D(96, 3, padding='same')(x))\n"
        "    frozen_call(conv)(np.ones([1, 35, 35, 64]))\n"
        "    sys.exit()\n"
        "k = tf.Variable(w) if sys.argv[1] == 'variable' else None\n"
        "f = tf.function(lambda t: tf.nn.conv2d(t, k if k is not None else tf.constant(w), 1, 'SAME'))\n"
        "f(tf.ones([1, 35, 35, 64]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env.update(ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="1")
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"

    def kernels(filter_kind: str) -> set[str]:  # each in its own process: no primitive cache shared
        cmd = [sys.executable, "-c", code, filter_kind]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return {line.split(",")[6] for line in out.stdout.splitlines() if ",exec,cpu,convolution," in line}

    variable, constant = kernels("variable"), kernels("constant")
    if not variable:
        pytest.skip("TensorFlow runs no oneDNN kernels on this CPU")
    assert variable == {"x64:gemm:jit"} and constant == {"brg_conv_fwd:avx2"}, (variable, constant)
    assert kernels("frozen_call") == {"brg_conv_fwd:avx2"}


def test_a_captured_tensor_becomes_a_constant_too():
    """A tensor the call captures (TensorFlow captures large ones rather than embed them) is frozen."""
    import tensorflow as tf

    table = tf.constant(np.arange(4000, dtype="float32").reshape(1000, 4))
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t + tf.reduce_sum(table, 0))(inputs))
    x = np.ones((2, 4), "float32")
    np.testing.assert_array_equal(np.asarray(frozen.frozen_call(model)(x)), x + table.numpy().sum(0))


class _Counter(keras.layers.Layer):
    """Counts its calls in a variable: a call that writes a variable cannot be frozen."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


def test_a_call_that_writes_a_variable_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(_Counter()(inputs)))
    refused = r"cannot freeze AssignVariableOp .*: it takes a variable or other resource itself"
    with pytest.raises(ValueError, match=refused):
        frozen.frozen_call(model)


def test_a_model_of_two_inputs_is_refused():
    first, second = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([first, second], keras.layers.Add()([first, second]))
    with pytest.raises(ValueError, match="frozen_call takes a model of one input, got 2"):
        frozen.frozen_call(model)


def test_another_backend_is_refused_by_name():
    pytest.importorskip("jax")  # an optional extra
    code = (
        "import keras, numpy as np\n"
        "from keras_inception.deploy.frozen import frozen_call\n"
        "x = keras.Input((4,))\n"
        "frozen_call(keras.Model(x, keras.layers.Dense(2)(x)))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert "ValueError: frozen_call needs the TensorFlow backend, not 'jax'" in out.stderr
