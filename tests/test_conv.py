"""layers.Conv2D: Keras's Conv2D whose 1x1 convolutions run as a matmul in a training step.
Checked against Keras's own layer (outputs and gradients), in the traced graphs, and in the
networks (built with it, saved and reloaded as it)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_inception as ki
from keras_inception.nn.layers import Conv2D

SHAPE = (3, 6, 5, 8)


def pair(kernel_size: int, use_bias: bool, policy: str):
    """Keras's layer in float32 (the reference) and ours in ``policy``, same weights."""
    rng = np.random.default_rng(0)
    made = []
    for cls, dtype in ((keras.layers.Conv2D, "float32"), (Conv2D, policy)):
        layer = cls(7, kernel_size, padding="same", use_bias=use_bias, dtype=dtype)
        layer.build(SHAPE)
        made.append(layer)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in made[0].weights]
    for layer in made:
        layer.set_weights(weights)
    return made


def step(layer, x: tf.Tensor, upstream: np.ndarray) -> dict:
    """Output and gradients of ``sum(output * upstream)`` in one training call."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    names = ["dx", "dkernel", *(["dbias"] if layer.use_bias else [])]
    grads = tape.gradient(loss, [x, layer.kernel, *([layer.bias] if layer.use_bias else [])])
    return {"y": y, **dict(zip(names, grads, strict=True))}


def op_types(layer, x, training: bool) -> set[str]:
    """The op types of ``layer``'s forward and backward pass, traced."""

    def run(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = layer(t, training=training)
        return tape.gradient(y, [t, layer.kernel])

    graph = tf.function(run).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("policy,rtol", [("float32", 1e-5), ("mixed_bfloat16", 2e-2)])
def test_pointwise_training_step_equals_keras_conv2d(use_bias, policy, rtol):
    rng = np.random.default_rng(1)
    x = rng.normal(size=SHAPE).astype(np.float32)
    upstream = rng.normal(size=(*SHAPE[:-1], 7)).astype(np.float32)
    reference, ours = pair(1, use_bias, policy)
    expected = step(reference, tf.constant(x), upstream)
    got = step(ours, tf.constant(x), upstream)
    assert got["y"].dtype == ours.compute_dtype and got["y"].shape == expected["y"].shape
    for key, value in expected.items():
        value = np.asarray(value)
        error = np.max(np.abs(np.asarray(tf.cast(got[key], tf.float32)) - value))
        assert error <= rtol * np.max(np.abs(value)), key


def test_matmul_only_for_pointwise_training():
    x = tf.constant(np.random.default_rng(2).normal(size=SHAPE), tf.float32)
    _, pointwise = pair(1, True, "float32")
    training = op_types(pointwise, x, training=True)
    assert "MatMul" in training and not {"Conv2D", "Conv2DBackpropFilter"} & training
    assert "Conv2D" in op_types(pointwise, x, training=False)  # inference keeps the convolution
    _, spatial = pair(3, False, "float32")
    assert "MatMul" not in op_types(spatial, x, training=True)
    strided = Conv2D(4, 1, strides=2)
    strided.build(SHAPE)
    assert "MatMul" not in op_types(strided, x, training=True)
    # inference and training compute the same function
    trained, inferred = pointwise(x, training=True), pointwise(x, training=False)
    np.testing.assert_allclose(trained, inferred, rtol=1e-5, atol=1e-5)


def test_networks_are_built_with_it_and_reload_as_it(tmp_path):
    model = ki.InceptionResNetV2(
        weights=None, input_shape=(75, 75, 3), width=0.25, depths=(1, 1, 1), classes=5
    )
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    biased = [layer for layer in convs if layer.use_bias]  # the residual up-projections
    assert biased and all(type(layer) is Conv2D for layer in convs)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert type(again.get_layer(biased[0].name)) is Conv2D
    x = np.random.default_rng(3).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)
