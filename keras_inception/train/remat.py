"""Rematerialisation: recompute a network's stem in the backward pass of a training step.

:func:`rematerialize` gives a model a ``train_step`` (the hook Keras's ``fit`` runs) whose
forward pass recomputes; :func:`forward` is that forward pass, for loops of one's own.

A training step keeps two tensors per conv unit for the backward pass (the convolution's
output for BatchNorm's gradient, the ReLU's for the next gradients). The stem's
convolutions at 149x149 down to 71x71 hold the largest of them. :func:`rematerialize`
keeps only the stem's end points instead and runs the stem again when the backward pass
reaches it, as ``tf.recompute_grad`` does, but BatchNorm updates its moving statistics
once. The price is the stem's forward pass again: 10-23% of the network's forward
multiply-adds (Inception-ResNet-v2 to Inception-v3).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

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


def forward(model: keras.Model, end_points: Sequence[str] | bool | None = None) -> Callable:
    """``model``'s training forward pass, ``x -> outputs``, recomputing in the backward pass
    the activations before each end point and keeping only the end points' outputs.

    ``end_points`` are layer names in network order, each a tensor every path from the
    input to the outputs goes through (slim's stem end points are). A segment may hold no
    random layers (dropout would draw another mask) and no BatchNorm but
    :class:`~keras_inception.nn.layers.BatchNorm` training in float16, bfloat16 or float32,
    or frozen. TensorFlow only, in a ``tf.function`` (as ``fit`` runs a step); an eager
    call runs the whole model.

    ``None`` (or ``True``): the model's :data:`STEM_END_POINTS` where all that allows (one
    input, the end points top-level layers and not outputs), the plain forward pass
    otherwise; explicit end points raise instead. An empty sequence (or ``False``): the
    plain forward pass, ``model(x, training=True)``.
    """
    return _recomputing(model, end_points) or functools.partial(model, training=True)


def _recomputing(model: keras.Model, end_points: Sequence[str] | bool | None) -> Callable | None:
    """:func:`forward`'s recomputing forward pass, ``None`` where nothing is recomputed."""
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
        return _segmented(model, list(end_points), strict)
    except ValueError:
        if strict:
            raise
        return None  # e.g. a cut the graph reaches around: nothing to recompute


def rematerialize(model: keras.Model, end_points: Sequence[str] | bool | None = None) -> keras.Model:
    """Give ``model`` a ``train_step`` (Keras's hook for what ``fit`` runs) whose forward pass
    is :func:`forward`'s: the activations before each end point recomputed in the backward
    pass. ``end_points`` as :func:`forward`'s; where nothing is recomputed (``()`` or
    ``False``, or the default where it does not apply), Keras's own step again.

    Inference, the model's ``call``, its config and its saved files are unchanged: this is
    how a training step runs, not part of the model.
    """
    run = _recomputing(model, end_points)
    vars(model).pop("train_step", None)  # undo an earlier one
    if run is not None:
        model.train_step = _train_step(model, run)
    if getattr(model, "compiled", False):
        model.make_train_function(force=True)  # a step made before traces the new one
    return model


def _train_step(model: keras.Model, run: Callable) -> Callable:
    """Keras's training step (loss, its tracker, loss scaling, update, metrics) in public API,
    the forward pass ``run``."""
    import tensorflow as tf

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = run(x)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync  # the loss is per replica
            batch = tf.shape(keras.tree.flatten(x)[0])[0]
            tracker = next(metric for metric in model.metrics if metric.name == "loss")
            tracker.update_state(loss * tf.cast(replicas, loss.dtype), sample_weight=batch)
            loss = model.optimizer.scale_loss(loss)
        variables = model.trainable_variables
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    return train_step


def _segmented(model: keras.Model, end_points: list[str], strict: bool) -> Callable | None:
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

    def run(inputs):
        import tensorflow as tf

        if tf.executing_eagerly():
            return model(inputs, training=True)
        if problem := _problem(segments):  # checked again: trainability and policy can change
            if strict:
                raise ValueError(problem)
            return model(inputs, training=True)
        x = keras.tree.flatten(inputs)[0]
        for segment in segments:
            x = recompute(segment)(x)
        outputs = rest(x, training=True)
        return outputs[0] if isinstance(outputs, list) and len(model.outputs) == 1 else outputs

    return run


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
        if any(isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values()):
            return f"cannot rematerialize {layer.name}: it is random, and would draw anew when recomputed"
        trains = isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        if trains and not (isinstance(layer, BatchNorm) and layer.fused_training()):
            return (
                f"cannot rematerialize {layer.name}: it would update its moving statistics "
                "again when recomputed (only keras_inception's BatchNorm training in float16, "
                "bfloat16 or float32, unsynchronised, skips that)"
            )
    return None
