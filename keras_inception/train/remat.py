"""Rematerialisation: recompute a network's stem in the backward pass of a training step.

A training step keeps two tensors per conv unit for the backward pass (the convolution's
output for BatchNorm's gradient, the ReLU's for the next gradients). The stem's
convolutions at 149x149 down to 71x71 hold the largest of them. :func:`rematerialize`
keeps only the stem's end points instead and runs the stem again when the backward pass
reaches it, as ``tf.recompute_grad`` does, but BatchNorm updates its moving statistics
once. The price is the stem's forward pass again: 10-23% of the network's forward
multiply-adds (Inception-ResNet-v2 to Inception-v3).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_inception.models.base import all_layers
from keras_inception.nn.layers import BatchNorm, recomputation

# slim's stem end points (Inception-v3 and -ResNet-v2, Inception-v4): after the first three
# convolutions (149x149 and 147x147), and after the rest of the stem (73x73 and 71x71).
# Inception-ResNet-v1 has the first only.
STEM_END_POINTS = ("MaxPool_3a_3x3", "Mixed_3a", "MaxPool_5a_3x3", "Mixed_5a")


def recompute(segment: keras.Model):
    """``segment``'s training call, keeping only its input for the backward pass (graph mode)."""
    import tensorflow as tf

    @tf.custom_gradient
    def run(x):
        def grad(dy, variables=None):
            variables = list(variables or [])
            # A data dependency on dy, so the segment runs again only once the backward pass
            # reaches it (XLA ignores control dependencies; tf.recompute_grad does the same).
            first = tf.cast(tf.reduce_max(tf.reshape(dy, [-1])[:1]), tf.float32)  # -inf if empty
            x_again = x + tf.cast(tf.where(tf.math.is_nan(first), first, 0.0), x.dtype)
            with recomputation(), tf.GradientTape() as tape:
                tape.watch([x_again, *variables])
                y = segment(x_again, training=True)
            dx, *dvariables = tape.gradient(y, [x_again, *variables], output_gradients=dy)
            return dx, dvariables

        return segment(x, training=True), grad

    return run


def rematerialize(model: keras.Model, end_points: Sequence[str] | bool | None = None) -> keras.Model:
    """Recompute, in the backward pass of ``model``'s training calls, the activations
    before each end point, keeping only the end points' outputs.

    ``end_points`` are layer names in network order, each a tensor every path from the
    input to the outputs goes through (slim's stem end points are). A segment may hold no
    random layers (dropout would draw another mask) and no BatchNorm but
    :class:`~keras_inception.nn.layers.BatchNorm` training in float16, bfloat16 or float32,
    or frozen. TensorFlow only, in a ``tf.function`` (as ``fit`` runs a step); an eager
    call runs the whole model.

    ``None`` (or ``True``): the model's :data:`STEM_END_POINTS` where all that allows (one
    input, the end points top-level layers and not outputs), no recomputation otherwise;
    explicit end points raise instead. An empty sequence (or ``False``) undoes it.
    Inference, the model's config and its saved files are unchanged: this is how a
    training step runs, not part of the model.
    """
    if isinstance(end_points, bool):
        end_points = None if end_points else ()
    if isinstance(end_points, str):
        raise TypeError(f"end_points must be a sequence of layer names, got the string {end_points!r}")
    strict = end_points is not None
    if not strict:
        end_points = []
        inputs = getattr(model, "inputs", None) or []  # a subclassed model has none
        if keras.backend.backend() == "tensorflow" and len(inputs) == 1:
            outputs = {id(output) for output in model.outputs}  # a stem's output is no cut
            end_points = [
                layer.name
                for layer in model.layers
                if layer.name in STEM_END_POINTS and id(layer.output) not in outputs
            ]
    try:
        call = _segmented_call(model, list(end_points), strict)
    except ValueError:
        if strict:
            raise
        call = None  # e.g. a cut the graph reaches around: nothing to recompute
    vars(model).pop("call", None)  # undo an earlier one
    if call is not None:
        # An attribute of the instance, not a tracked layer: the segments share the model's
        # layers, and the model's weights, config and saved files stay as they were.
        object.__setattr__(model, "call", call)
    return model


def _segmented_call(model: keras.Model, end_points: list[str], strict: bool):
    if not end_points:
        return None
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"rematerialize needs the TensorFlow backend, not {keras.backend.backend()!r}")
    if len(model.inputs) != 1:
        raise ValueError(f"rematerialize needs a model of one input; {model.name!r} has {len(model.inputs)}")
    layer_names = {layer.name for layer in model.layers}
    segments, start = [], model.inputs[0]
    for name in end_points:
        if name not in layer_names:
            raise ValueError(f"{model.name!r} has no layer {name!r} to rematerialize up to")
        end = model.get_layer(name).output
        segments.append(_segment(start, end, name, f"{model.name}_up_to_{name}"))
        start = end
    rest = _segment(start, model.outputs, end_points[-1], f"{model.name}_after_{end_points[-1]}")
    if strict and (problem := _problem(segments)):
        raise ValueError(problem)
    whole = type(model).call.__get__(model)  # the class's, not an earlier rematerialisation's

    def call(inputs, training=None, mask=None, **kwargs):
        import tensorflow as tf

        if not training or tf.executing_eagerly():
            return whole(inputs, training=training, mask=mask, **kwargs)
        if problem := _problem(segments):  # checked again: trainability and policy can change
            if strict:
                raise ValueError(problem)
            return whole(inputs, training=training, mask=mask, **kwargs)
        x = keras.tree.flatten(inputs)[0]
        for segment in segments:
            x = recompute(segment)(x)
        return rest(x, training=True)

    return call


def _segment(start, end, end_point: str, name: str) -> keras.Model:
    try:
        return keras.Model(start, end, name=name)
    except ValueError as error:  # the graph reaches around the cut
        raise ValueError(
            f"cannot rematerialize up to {end_point}: not every path from the input to the outputs "
            f"goes through it ({error})"
        ) from error


def _problem(segments: list[keras.Model]) -> str | None:
    """Why a segment cannot be recomputed as it ran, or ``None``."""
    for layer in (layer for segment in segments for layer in all_layers(segment)):
        if getattr(layer, "_seed_generators", None):
            return f"cannot rematerialize {layer.name}: it is random, and would draw anew when recomputed"
        trains = isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        if trains and not (isinstance(layer, BatchNorm) and layer.fused_training()):
            return (
                f"cannot rematerialize {layer.name}: it would update its moving statistics "
                "again when recomputed (only keras_inception's BatchNorm training in float16, "
                "bfloat16 or float32, unsynchronised, skips that)"
            )
    return None
