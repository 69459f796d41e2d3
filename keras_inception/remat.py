"""Rematerialisation: recompute a network's first activations in the backward pass.

A training step keeps two tensors per conv unit for the backward pass (the convolution's
output for BatchNorm's gradient, the ReLU's for the next gradients). The stem's first
three convolutions (149x149 and 147x147, 32-64 channels) hold the largest of them for a
few percent of the network's compute. :func:`rematerialize` keeps only each segment's
input instead and runs the segment again when the backward pass reaches it, as
``tf.recompute_grad`` does, but without updating BatchNorm's moving statistics twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_inception.layers import BatchNorm, recomputation

# The stem's end points (Inception-v3 and -ResNet, Inception-v4): its first three
# convolutions (149x149 and 147x147), then the rest of the stem (73x73 and 71x71).
STEM_END_POINTS = ("MaxPool_3a_3x3", "Mixed_3a", "MaxPool_5a_3x3", "Mixed_5a")


def recompute(segment: keras.Model):
    """``segment``'s training call, keeping only its input for the backward pass."""
    import tensorflow as tf

    @tf.custom_gradient
    def run(x):
        def grad(dy, variables=None):
            # A data dependency on dy, so the segment runs again only once the backward pass
            # reaches it (XLA ignores control dependencies; tf.recompute_grad does the same).
            first = tf.cast(tf.reshape(dy, [-1])[0], tf.float32)
            x_again = x + tf.cast(tf.where(tf.math.is_nan(first), first, 0.0), x.dtype)
            with recomputation(), tf.GradientTape() as tape:
                tape.watch(x_again)
                y = segment(x_again, training=True)
            dx, *dvariables = tape.gradient(y, [x_again, *(variables or [])], output_gradients=dy)
            return dx, dvariables

        return segment(x, training=True), grad

    return run


def rematerialize(model: keras.Model, end_points: Sequence[str] | None = None) -> keras.Model:
    """Recompute, in the backward pass of ``model``'s training calls, the activations
    before each end point, keeping only the end points' outputs.

    ``end_points`` are layer names in network order, each a tensor every path from the
    input to the outputs goes through (slim's stem end points are). BatchNorm layers in a
    segment must train in float16, bfloat16 or float32 (the fused kernel, see
    :class:`~keras_inception.layers.BatchNorm`) or be frozen; TensorFlow only.

    ``None``: the model's :data:`STEM_END_POINTS`, where the TensorFlow backend and the
    BatchNorm layers allow it, and the whole model otherwise. An empty sequence undoes it.
    Inference and saved files are unchanged: like ``jit_compile``, this is how a training
    step runs, not part of the model.
    """
    strict = end_points is not None
    if end_points is None:
        if keras.backend.backend() != "tensorflow" or len(model.inputs) != 1:
            end_points = []
        else:
            end_points = [layer.name for layer in model.layers if layer.name in STEM_END_POINTS]
    vars(model).pop("call", None)  # undo an earlier one
    if not end_points:
        return model
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"rematerialize needs the TensorFlow backend, not {keras.backend.backend()!r}")
    if len(model.inputs) != 1:
        raise ValueError(f"rematerialize needs a model of one input; {model.name!r} has {len(model.inputs)}")
    segments, start = [], model.inputs[0]
    for name in end_points:
        if not _has_layer(model, name):
            raise ValueError(f"{model.name!r} has no layer {name!r} to rematerialize up to")
        end = model.get_layer(name).output
        segments.append(_segment(start, end, name))
        start = end
    rest = _segment(start, model.outputs, end_points[-1])
    whole = model.call

    def call(inputs, training=None, mask=None):
        if not training:
            return whole(inputs, training=training, mask=mask)
        problem = next(filter(None, map(_batch_norm_problem, segments)), None)
        if problem and strict:
            raise ValueError(problem)
        if problem:
            return whole(inputs, training=training, mask=mask)
        x = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        for segment in segments:
            x = recompute(segment)(x)
        return rest(x, training=True)

    # An attribute of the instance, not a tracked layer: the segments share the model's
    # layers, and the model's weights, config and saved files stay as they were.
    object.__setattr__(model, "call", call)
    return model


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _segment(start, end, name: str) -> keras.Model:
    try:
        return keras.Model(start, end)
    except ValueError as error:  # the graph reaches around the cut
        raise ValueError(
            f"cannot rematerialize up to {name}: not every path from the input to the outputs "
            f"goes through it ({error})"
        ) from error


def _batch_norm_problem(segment: keras.Model) -> str | None:
    for layer in segment.layers:
        trains = isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        if trains and not (isinstance(layer, BatchNorm) and layer.fused_training()):
            return (
                f"cannot rematerialize {layer.name}: it would update its moving statistics "
                "again when recomputed (only keras_inception's BatchNorm training in float16, "
                "bfloat16 or float32, unsynchronised, skips that)"
            )
    return None
