"""The inference form of a network: every BatchNorm folded into the convolution before it.

folded = fold_batchnorm(model)   # same topology and names, no BatchNormalization layers

In inference BatchNorm is a fixed per-channel affine map, ``y = (x - mean) * s + beta``
with ``s = gamma / sqrt(variance + epsilon)`` (``gamma = 1`` for slim's ``scale=False``),
so a convolution whose output feeds only a BatchNorm becomes one convolution with
kernel ``kernel * s`` and bias ``(bias - mean) * s + beta``. The folded convolution keeps
the convolution's name, so end points and weight provenance stay readable; the BatchNorm
layer is gone. Inception-ResNet's residual scale folds the same way: ``x + scale * up(h)``
becomes ``x + up'(h)`` with ``up``'s kernel and bias times ``scale``, and the
:class:`~keras_inception.layers.ScaleSum` keeps its name with scale 1 (a plain sum).
The folded model is for inference only: it has no batch statistics to train.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import keras
import numpy as np
from keras import layers

from keras_inception.layers import ScaleSum, end_points

CONVOLUTIONS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)  # kernel [..., in, out]


class _Removed:
    """Stands for a folded BatchNorm in the clone: its call passes its input through."""


def _histories(value) -> Iterator[tuple[str, int, int]]:
    """The ``keras_history`` ``(layer, node, tensor)`` of every tensor in a serialised call."""
    if isinstance(value, dict):
        if "keras_history" in value:
            yield tuple(value["keras_history"])
        else:
            for item in value.values():
                yield from _histories(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _histories(item)


def _graph(model: keras.Model) -> tuple[keras.Model, dict] | None:
    """``model`` as a Functional graph (a built ``Sequential`` as its Functional view) and its
    config; ``None`` for a model that is no graph of layers (subclassed, or not built)."""
    if isinstance(model, keras.Sequential):
        if not model.built:
            return None
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    config = model.get_config() or {}
    return (model, config) if "layers" in config else None


def _pairs(model: keras.Model, config: dict) -> tuple[dict[str, str], dict[str, str]]:
    """``({batchnorm: convolution}, {scale-sum: convolution})``: what folds in ``model``'s own graph.

    Read from the functional config (public API): a convolution called once, channels
    last, without activation, whose one output feeds only a BatchNorm called once that
    normalises the channels (and is neither a model output nor an end point), or only the
    residual input of a :class:`ScaleSum` called once.
    """
    calls = {entry["name"]: entry["inbound_nodes"] for entry in config["layers"]}
    uses = collections.Counter(_histories([entry["inbound_nodes"] for entry in config["layers"]]))
    uses.update(_histories(config.get("output_layers", [])))
    points = {id(t) for t in _end_points(model).values()}
    uses.update((layer.name, 0, 0) for layer in model.layers if id(layer.output) in points)

    def sole_linear_conv(source: tuple[str, int, int]) -> layers.Layer | None:
        if uses[source] != 1 or len(calls.get(source[0], ())) != 1:
            return None
        conv = model.get_layer(source[0])
        plain = isinstance(conv, CONVOLUTIONS) and conv.activation is keras.activations.linear
        return conv if plain and conv.data_format == "channels_last" else None

    norms, sums = {}, {}
    for name, nodes in calls.items():
        layer = model.get_layer(name)
        if len(nodes) != 1:
            continue
        sources = list(_histories(nodes[0]["args"]))
        if isinstance(layer, layers.BatchNormalization) and len(sources) == 1:
            conv = sole_linear_conv(sources[0])
            if conv is not None and layer.axis in (-1, len(conv.output.shape) - 1):
                norms[name] = conv.name
        elif isinstance(layer, ScaleSum) and len(sources) == 2 and layer.scale != 1.0:
            conv = sole_linear_conv(sources[1])  # (shortcut, residual)
            if conv is not None:
                sums[name] = conv.name
    return norms, sums


def _foldable(model: keras.Model) -> bool:
    """Whether ``model`` (or a model nested in it) has a BatchNorm or a residual scale that folds."""
    graph = _graph(model)
    return graph is not None and (
        any(_pairs(*graph)) or any(isinstance(x, keras.Model) and _foldable(x) for x in graph[0].layers)
    )


def folded_weights(conv: layers.Layer, bn: layers.BatchNormalization) -> list[np.ndarray]:
    """``[kernel, bias]`` of ``conv`` followed by ``bn`` in inference, as one convolution (float32)."""
    kernel = np.asarray(conv.kernel, np.float64)
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else 0.0
    scale = 1.0 / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    if bn.scale:
        scale = scale * np.asarray(bn.gamma, np.float64)
    shift = (bias - np.asarray(bn.moving_mean, np.float64)) * scale
    if bn.center:
        shift = shift + np.asarray(bn.beta, np.float64)
    shift = np.broadcast_to(shift, kernel.shape[-1:])
    return [(kernel * scale).astype(np.float32), shift.astype(np.float32)]


def _copy(layer: layers.Layer) -> layers.Layer:
    """A new layer of ``layer``'s config, built, holding its weights."""
    new = layer.__class__.from_config(layer.get_config())
    if layer.get_build_config() is not None:
        new.build_from_config(layer.get_build_config())
    new.set_weights(layer.get_weights())
    return new


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """The inference form of ``model``: a new Functional model, each convolution that feeds
    only a BatchNorm replaced by one convolution with bias (same name), the BatchNorm removed.

    Every other layer is a copy (config and weights); nested models are folded in turn.
    A BatchNorm whose output is an end point (:func:`keras_inception.end_points`) stays, so
    the folded model's end points, read from its graph, are the model's. A model with
    nothing to fold comes back as it is (the same object); a ``Sequential`` one comes back
    as a Functional model.
    """
    graph = _graph(model)
    if graph is None:
        return model
    graph, config = graph
    pairs, sums = _pairs(graph, config)
    if not (pairs or sums) and not any(isinstance(x, keras.Model) and _foldable(x) for x in graph.layers):
        return model
    convs = {conv: graph.get_layer(bn) for bn, conv in pairs.items()}
    scales = {conv: graph.get_layer(name).scale for name, conv in sums.items()}

    def clone(layer):
        if isinstance(layer, keras.Model):
            folded = fold_batchnorm(layer)
            return _copy(layer) if folded is layer else folded
        if layer.name in pairs:
            return _Removed()
        if layer.name in sums:
            return ScaleSum.from_config({**layer.get_config(), "scale": 1.0})
        if layer.name in scales:
            weights = [w * scales[layer.name] for w in layer.get_weights()]
        elif layer.name in convs:
            weights = folded_weights(layer, convs[layer.name])
        else:
            return _copy(layer)
        new = layer.__class__.from_config({**layer.get_config(), "use_bias": len(weights) == 2})
        new.build_from_config(layer.get_build_config())
        new.set_weights(weights)
        return new

    def call(layer, *args, **kwargs):
        return args[0] if isinstance(layer, _Removed) else layer(*args, **kwargs)

    return keras.models.clone_model(graph, clone_function=clone, call_function=call)


def _end_points(model: keras.Model) -> dict:
    """``model``'s slim end points, none for a model that is not ours."""
    try:
        return end_points(model)
    except ValueError:
        return {}
