"""layers.BatchNorm: Keras's BatchNormalization whose training step runs TensorFlow's fused
kernel. Checked against Keras's own layer computed in float64 (outputs, gradients, moving
statistics), and in the networks (built with it, saved and reloaded as it)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_inception as ki
from keras_inception.layers import BatchNorm

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
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert type(again.get_layer(norms[0].name)) is BatchNorm
    x = np.random.default_rng(2).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)
