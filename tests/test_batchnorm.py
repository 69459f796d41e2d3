"""layers.BatchNorm: Keras's BatchNormalization whose training step runs TensorFlow's fused
kernel. Checked against Keras's own layer computed in float64 (outputs, gradients, moving
statistics), and in the networks (built with it, saved and reloaded as it). Its unbiased
moving-variance update is checked against slim's fused batch norm in a TF1 graph, on
every path and backend."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_inception as ki
from keras_inception.nn.layers import BatchNorm
from keras_inception.train import training

SHAPE = (4, 7, 5, 6)


def step(layer: keras.layers.Layer, x: tf.Tensor, upstream: np.ndarray) -> dict:
    """One training call: output, gradients of ``sum(output * upstream)``, moving statistics."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float64 if y.dtype == tf.float64 else tf.float32) * upstream)
    weights = {"dbeta": layer.beta} | ({"dgamma": layer.gamma} if layer.scale else {})
    grads = dict(zip(["dx", *weights], tape.gradient(loss, [x, *weights.values()]), strict=True))
    out = {"y": y, **grads, "mean": layer.moving_mean, "var": layer.moving_variance}
    return {k: np.asarray(tf.cast(v, tf.float64)) for k, v in out.items()}


def layer_pair(scale: bool, policy: str):
    """Keras's layer in float64 (the reference) and ours in ``policy``, same variables."""
    made = []
    for cls, dtype in ((keras.layers.BatchNormalization, "float64"), (BatchNorm, policy)):
        layer = cls(momentum=0.9, epsilon=0.001, scale=scale, dtype=dtype)
        layer.build(SHAPE)
        if scale:
            layer.gamma.assign(np.linspace(0.5, 2.0, SHAPE[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, SHAPE[-1]))
        layer.moving_variance.assign(np.full(SHAPE[-1], 2.0))
        made.append(layer)
    return made


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("policy,rtol", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_fused_training_step_equals_keras_batchnorm_in_float64(scale, policy, rtol):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, SHAPE)
    upstream = rng.normal(0.0, 1.0, SHAPE)
    reference, ours = layer_pair(scale, policy)
    expected = step(reference, tf.constant(x), upstream)
    x_ours = tf.constant(x, tf.float32)
    got = step(ours, x_ours, upstream.astype(np.float32))
    assert got["y"].dtype == np.float64 and ours.compute_dtype == policy.removeprefix("mixed_")
    for key, value in expected.items():
        scale_of = np.max(np.abs(value))
        assert np.max(np.abs(got[key] - value)) <= rtol * scale_of, key
    # the moving variance is updated with the batch's biased variance, as Keras's is
    biased = x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(got["var"], 0.9 * 2.0 + 0.1 * biased, rtol=10 * rtol)


def test_inference_and_other_paths_are_keras_batchnormalization():
    x = tf.constant(np.random.default_rng(1).normal(size=SHAPE), tf.float32)
    _, ours = layer_pair(False, "float32")
    reference, synced = (
        cls(momentum=0.9, epsilon=0.001, scale=False) for cls in (keras.layers.BatchNormalization, BatchNorm)
    )
    for layer in (reference, synced):
        layer.build(SHAPE)
        layer.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x, training=False), reference(x, training=False), rtol=1e-6)
    fused = tf.function(lambda t: synced(t, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" in {op.type for op in fused.get_operations()}
    # synchronised statistics are Keras's path (tf.distribute's all-reduce), not the fused kernel
    synced.synchronized = True
    keras_path = tf.function(lambda t: synced(t, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" not in {op.type for op in keras_path.get_operations()}
    np.testing.assert_allclose(synced(x, training=True), reference(x, training=True), rtol=1e-4, atol=1e-5)
    # float64, which the fused kernel does not take (slim's float64 parity test trains in it)
    reference64, ours64 = layer_pair(False, "float64")
    x64 = tf.constant(np.random.default_rng(3).normal(size=SHAPE), tf.float64)
    np.testing.assert_allclose(ours64(x64, training=True), reference64(x64, training=True), rtol=1e-12)


def test_networks_are_built_with_it_and_reload_as_it(tmp_path):
    model = ki.InceptionV3(weights=None, input_shape=(75, 75, 3), width=0.25, depths=(1, 1, 1), classes=5)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is BatchNorm for layer in norms)
    assert training.set_variance_update(model, "unbiased") == len(norms)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert type(again.get_layer(norms[0].name)) is BatchNorm
    assert {layer.variance_update for layer in again.layers if isinstance(layer, BatchNorm)} == {"unbiased"}
    x = np.random.default_rng(2).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)


TINY = (4, 1, 1, 6)  # 1x1 maps at batch 4: n / (n - 1) = 4 / 3
MOMENTUM, INITIAL_VARIANCE = 0.5, 2.0


def tiny_batch() -> np.ndarray:
    return np.random.default_rng(5).normal(2.0, 3.0, TINY)


def slim_fused_step(x: np.ndarray) -> dict[str, np.ndarray]:
    """slim's ``batch_norm(fused=True, scale=False)`` training step in a TF1 graph:
    ``tf.compat.v1.nn.fused_batch_norm`` and ``assign_moving_average`` of its mean and variance."""
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        channels = x.shape[-1]
        moving_mean = v1.Variable(np.zeros(channels, np.float32))
        moving_variance = v1.Variable(np.full(channels, INITIAL_VARIANCE, np.float32))
        y, mean, variance = v1.nn.fused_batch_norm(
            x.astype(np.float32), np.ones(channels, np.float32), np.zeros(channels, np.float32),
            epsilon=0.001, is_training=True,
        )  # fmt: skip
        updates = [
            moving.assign_sub((moving - value) * (1.0 - MOMENTUM))
            for moving, value in ((moving_mean, mean), (moving_variance, variance))
        ]
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            out, *_ = session.run([y, *updates])
            return {"y": out, "mean": session.run(moving_mean), "var": session.run(moving_variance)}


def tiny_layer(update: str, dtype: str = "float32", synchronized: bool = False) -> BatchNorm:
    layer = BatchNorm(
        momentum=MOMENTUM, epsilon=0.001, scale=False, variance_update=update, dtype=dtype,
        synchronized=synchronized,
    )  # fmt: skip
    layer.build(TINY)
    layer.moving_variance.assign(np.full(TINY[-1], INITIAL_VARIANCE))
    return layer


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "dtype,synchronized", [("float32", False), ("float64", False), ("float32", True)],
    ids=["fused-kernel", "keras-ops-float64", "keras-ops-synchronized"],
)  # fmt: skip
def test_unbiased_update_is_slims_fused_batch_norm_on_1x1_maps(dtype, synchronized):
    x = tiny_batch()
    reference = slim_fused_step(x)
    layers = {update: tiny_layer(update, dtype, synchronized) for update in ("unbiased", "biased")}
    assert layers["unbiased"].fused_training() == (dtype == "float32" and not synchronized)
    outputs = {update: layer(tf.constant(x, dtype), training=True) for update, layer in layers.items()}
    unbiased = layers["unbiased"]
    assert relative(unbiased.moving_variance, reference["var"]) <= 1e-6
    assert relative(unbiased.moving_mean, reference["mean"]) <= 1e-6
    assert relative(outputs["unbiased"], reference["y"]) <= 1e-5  # normalised with the biased variance
    # "biased" moves the variance by (n - 1) / n = 3/4 of the unbiased step
    steps = {k: np.asarray(m.moving_variance) - MOMENTUM * INITIAL_VARIANCE for k, m in layers.items()}
    np.testing.assert_allclose(steps["biased"], 0.75 * steps["unbiased"], rtol=1e-6)
    np.testing.assert_allclose(steps["biased"], (1.0 - MOMENTUM) * x.var(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(outputs["biased"], outputs["unbiased"])


BACKEND_STEP = """
import json, sys
import numpy as np
from keras_inception.nn.layers import BatchNorm
x, momentum, initial = np.array(json.loads(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
out = {}
for update in ("unbiased", "biased"):
    layer = BatchNorm(momentum=momentum, epsilon=0.001, scale=False, variance_update=update)
    layer.build(x.shape)
    layer.moving_variance.assign(np.full(x.shape[-1], initial))
    layer(x.astype("float32"), training=True)
    out[update] = np.asarray(layer.moving_variance).tolist()
print(json.dumps(out))
"""


@pytest.mark.parametrize("backend", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_other_backends_take_the_same_update(backend):
    pytest.importorskip(backend)
    x = tiny_batch()
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = [json.dumps(x.tolist()), str(MOMENTUM), str(INITIAL_VARIANCE)]
    run = subprocess.run(
        [sys.executable, "-c", BACKEND_STEP, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert relative(got["unbiased"], slim_fused_step(x)["var"]) <= 1e-6
    biased = MOMENTUM * INITIAL_VARIANCE + (1.0 - MOMENTUM) * x.var(axis=(0, 1, 2))
    assert relative(got["biased"], biased) <= 1e-6


def test_variance_update_is_saved_and_old_files_keep_the_biased_one():
    layer = BatchNorm(scale=False, variance_update="unbiased")
    config = layer.get_config()
    assert config["variance_update"] == "unbiased"
    assert BatchNorm.from_config(config).variance_update == "unbiased"
    del config["variance_update"]  # a file saved before the option: it trained with Keras's update
    assert BatchNorm.from_config(config).variance_update == "biased"
    with pytest.raises(ValueError, match=r"variance_update must be one of \(.biased., .unbiased.\), got 'x'"):
        BatchNorm(variance_update="x")
    with pytest.raises(ValueError, match="renorm keeps its own statistics; use variance_update='biased'"):
        BatchNorm(renorm=True, variance_update="unbiased")


def test_recipe_sets_the_update_and_warns_for_keras_own_layers():
    inputs = keras.Input((3, 3, 4))
    x = BatchNorm(name="ours")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    training.compile_model(model, training.Recipe.slim(), steps_per_epoch=1, top_k_metrics=False)
    assert model.get_layer("ours").variance_update == "unbiased"
    training.compile_model(
        model, training.Recipe.slim(moving_variance="biased"), steps_per_epoch=1, top_k_metrics=False
    )
    assert model.get_layer("ours").variance_update == "biased"
    foreign = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="1 BatchNormalization layers are Keras's own: their moving var"):
        training.compile_model(foreign, training.Recipe.slim(), steps_per_epoch=1, top_k_metrics=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.compile_model(foreign, training.Recipe(moving_variance="biased"), 1, top_k_metrics=False)
    with pytest.raises(ValueError, match=r"moving_variance must be one of \(.biased., .unbiased.\), got 'x'"):
        training.Recipe.slim(moving_variance="x")
