"""The inference form of a network: every BatchNorm folded into the convolution before it.

folded = fold_batchnorm(model)   # same topology and names, no BatchNormalization layers

In inference BatchNorm is a fixed per-channel affine map, ``y = (x - mean) * s + beta``
with ``s = gamma / sqrt(variance + epsilon)`` (``gamma = 1`` for slim's ``scale=False``),
so a convolution whose output feeds only a BatchNorm becomes one convolution with
kernel ``kernel * s`` and bias ``(bias - mean) * s + beta``. The folded convolution keeps
the convolution's name, so end points and weight provenance stay readable; the BatchNorm
layer is gone. Inception-ResNet's residual scale folds the same way: ``x + scale * up(h)``
becomes ``x + up'(h)`` with ``up``'s kernel and bias times ``scale``, and the
:class:`~keras_inception.nn.layers.ScaleSum` keeps its name with scale 1 (a plain sum).
The folded model is for inference only: it has no batch statistics to train.

Where the residual scale goes is the one choice that follows the machine and the batch
(``fold_residual_scale``; :func:`residual_scale_folds`). Folded, TensorFlow fuses the plain sum
and the ReLU after it into the projection (oneDNN's ``sum`` post-op): faster with AVX-512, and at
batch 2 and up with AVX2 alone; but at batch 1 with AVX2 alone oneDNN runs the projection as a
GEMM convolution that applies that post-op slowly (1.4-2.2x slower per projection). There,
keeping the scale in the :class:`~keras_inception.nn.layers.ScaleSum` (a multiply the convolution
does not fuse) made Inception-ResNet-v2 1.13-1.22x faster (docs/cpu.md). ``predict`` and ``evaluate``
ask for batch 1's form when they run one image at a time.
"""

from __future__ import annotations

import collections
import dataclasses

import keras
import numpy as np
from keras import layers

from keras_inception.core import cpu
from keras_inception.nn.layers import ScaleSum, end_points

CONVOLUTIONS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)  # kernel [..., in, out]


class _Removed:
    """Stands for a folded BatchNorm in the clone: its call passes its input through."""


class _Probe(layers.Layer):
    """Stands for a layer in the tracing clone: the layer's output spec, no weights."""

    def __init__(self, layer: layers.Layer):
        super().__init__(name=layer.name)
        self.spec = layer.compute_output_spec  # a method, not a tracked layer

    def compute_output_spec(self, *args, **kwargs):
        return self.spec(*args, **kwargs)


@dataclasses.dataclass
class _Trace:
    """A Functional graph's layer calls, as ``keras.models.clone_model`` walks it."""

    calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # per layer name
    uses: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # per id(tensor)
    producers: dict = dataclasses.field(default_factory=dict)  # id(tensor) -> layer name
    inputs: dict = dataclasses.field(default_factory=dict)  # layer name -> its tensor inputs, in order
    outputs: dict = dataclasses.field(default_factory=dict)  # layer name -> its tensor outputs
    held: list = dataclasses.field(default_factory=list)  # every tensor, alive while ids are compared


def _trace(model: keras.Model) -> _Trace:
    """Every layer call of ``model``'s graph (public API: a clone of weightless stand-ins)."""
    trace = _Trace()

    def call(probe: _Probe, *args, **kwargs):
        outputs = probe(*args, **kwargs)
        inputs = [x for x in keras.tree.flatten((args, kwargs)) if isinstance(x, keras.KerasTensor)]
        trace.calls[probe.name] += 1
        trace.uses.update(id(x) for x in inputs)
        trace.inputs.setdefault(probe.name, inputs)
        trace.outputs.setdefault(probe.name, keras.tree.flatten(outputs))
        trace.producers.update((id(y), probe.name) for y in keras.tree.flatten(outputs))
        trace.held.append((inputs, outputs))
        return outputs

    clone = keras.models.clone_model(model, clone_function=_Probe, call_function=call)
    trace.uses.update(id(y) for y in keras.tree.flatten(clone.outputs))
    trace.held.append(clone)
    return trace


def _graph(model: keras.Model) -> keras.Model | None:
    """``model`` as a Functional graph (a built ``Sequential`` as its Functional view); ``None``
    for a model that is no graph of layers (subclassed, or not built)."""
    if isinstance(model, keras.Sequential):
        if not model.built:
            return None
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    return model if getattr(model, "inputs", None) else None  # a subclassed model has none


def residual_scale_folds(batch_size: int | None = None) -> bool:
    """Whether Inception-ResNet's residual scale should fold for calls of ``batch_size`` images
    (None: any): always, but at batch 1 where TensorFlow runs oneDNN's CPU kernels without
    AVX-512 (as oneDNN sees the CPU: ``ONEDNN_MAX_CPU_ISA`` counts), where the fused residual sum
    is slow. TensorFlow turns oneDNN on by itself only on x86 CPUs with AVX512_VNNI, AVX512_BF16,
    AVX-VNNI or AMX (so of the CPUs without AVX-512: Intel's with AVX-VNNI, Alder Lake and later),
    and anywhere with ``TF_ENABLE_ONEDNN_OPTS=1``; with TensorFlow's own (Eigen) kernels the
    scale folds."""
    flags = cpu.current().flags
    if (
        batch_size != 1
        or keras.backend.backend() != "tensorflow"
        or "avx2" not in flags
        or "avx512f" in flags
    ):
        return True  # the slow post-op is that of oneDNN's x86 AVX2 GEMM convolution
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU")) or not tensorflow_onednn()


def tensorflow_onednn() -> bool:
    """Whether TensorFlow runs its CPU kernels through oneDNN in this process."""
    from tensorflow.python.util import _pywrap_util_port  # no public API says it

    return bool(_pywrap_util_port.IsMklEnabled())


def _pairs(model: keras.Model) -> tuple[dict[str, str], dict[str, str]]:
    """``({batchnorm: convolution}, {scale-sum: convolution})``: what folds in ``model``'s own graph.

    A convolution called once, channels last, without activation, whose one output feeds
    only a BatchNorm called once that normalises the channels (and is neither a model
    output nor an end point), or only the residual input of a :class:`ScaleSum` called once.
    """
    trace = _trace(model)
    points = {id(t) for t in _end_points(model).values()}
    for layer in model.layers:  # an end point is read by the user: one use more
        if trace.calls[layer.name] == 1 and not isinstance(layer, keras.Model) and id(layer.output) in points:
            trace.uses.update(id(y) for y in trace.outputs[layer.name])

    def sole_linear_conv(tensor) -> layers.Layer | None:
        name = trace.producers.get(id(tensor))
        if name is None or trace.uses[id(tensor)] != 1 or trace.calls[name] != 1:
            return None
        conv = model.get_layer(name)
        plain = isinstance(conv, CONVOLUTIONS) and conv.activation is keras.activations.linear
        return conv if plain and conv.data_format == "channels_last" else None

    norms, sums = {}, {}
    for name, calls in trace.calls.items():
        layer, inputs = model.get_layer(name), trace.inputs[name]
        if calls != 1:
            continue
        if isinstance(layer, layers.BatchNormalization) and len(inputs) == 1:
            conv = sole_linear_conv(inputs[0])
            if conv is not None and layer.axis in (-1, len(inputs[0].shape) - 1):
                norms[name] = conv.name
        elif isinstance(layer, ScaleSum) and len(inputs) == 2 and layer.scale != 1.0:
            conv = sole_linear_conv(inputs[1])  # (shortcut, residual)
            if conv is not None:
                sums[name] = conv.name
    return norms, sums


def _foldable(model: keras.Model) -> bool:
    """Whether ``model`` (or a model nested in it) has a BatchNorm or a residual scale that folds."""
    graph = _graph(model)
    return graph is not None and (
        any(_pairs(graph)) or any(isinstance(x, keras.Model) and _foldable(x) for x in graph.layers)
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


def fold_batchnorm(model: keras.Model, fold_residual_scale: bool = True) -> keras.Model:
    """The inference form of ``model``: a new Functional model, each convolution that feeds
    only a BatchNorm replaced by one convolution with bias (same name), the BatchNorm removed;
    with ``fold_residual_scale``, each residual scale folded into its projection too
    (:func:`residual_scale_folds` says which is faster for a batch size on this machine).

    Every other layer is a copy (config and weights); nested models are folded in turn.
    A folded convolution keeps its name, so the folded model's end points
    (:func:`keras_inception.end_points`, read from its graph) are the model's. A model with
    nothing to fold comes back as it is (the same object); a ``Sequential`` one comes back
    as a Functional model.
    """
    graph = _graph(model)
    if graph is None:
        return model
    pairs, sums = _pairs(graph)
    sums = sums if fold_residual_scale else {}
    if not (pairs or sums) and not any(isinstance(x, keras.Model) and _foldable(x) for x in graph.layers):
        return model
    convs = {conv: graph.get_layer(bn) for bn, conv in pairs.items()}
    scales = {conv: graph.get_layer(name).scale for name, conv in sums.items()}

    def clone(layer):
        if isinstance(layer, keras.Model):
            folded = fold_batchnorm(layer, fold_residual_scale)
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
    except (ValueError, AttributeError):  # none, or a layer called twice
        return {}
