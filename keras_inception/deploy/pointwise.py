"""Sibling 1x1 convolutions fused into one: an inference-form transform beside BatchNorm folding.

    fused = fuse_pointwise(fold_batchnorm(model))

Most Inception blocks open two to four branches with a 1x1 stride-1 convolution of the block's
input. Those convolutions read the same tensor, so they are one convolution whose kernel is
their kernels concatenated along the output channels (bias and all): the fused layer computes
every branch's first output at once, reading the input once, and a :class:`ChannelSplit` hands
each branch its channels. Each member must be a plain 1x1 convolution (stride 1, no dilation,
one group, channels last, called once) with the same activation, use of bias and dtype policy;
where every member's sole consumer is the same ReLU-like ``Activation`` layer, that activation
moves into the fused convolution and the ``Activation`` layers go, so the runtime still fuses
convolution, bias and activation.

Names and weights: the fused convolution is named after its block with ``-Pointwise_fused``
(``Mixed_5b-Pointwise_fused``), its split ``...-Pointwise_split``; the split's config lists the
member convolutions' names in kernel order (``ChannelSplit.names``), so member ``i``'s kernel is
``fused.kernel[..., offsets[i]:offsets[i + 1]]``. The result equals the unfused model up to
float32 rounding; it is for inference only (no BatchNorm to train, no per-branch layers).
"""

from __future__ import annotations

import collections
import os

import keras
import numpy as np
from keras import layers

FUSED_SUFFIX = "Pointwise_fused"
SPLIT_SUFFIX = "Pointwise_split"


@keras.saving.register_keras_serializable(package="keras_inception")
class ChannelSplit(layers.Layer):
    """Splits the last axis into consecutive parts of ``sizes`` channels (one output each);
    ``names`` records which layer each part stands for."""

    def __init__(self, sizes: list[int], names: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.sizes = [int(s) for s in sizes]
        self.names = list(names or [])

    def call(self, inputs):
        return keras.ops.split(inputs, list(np.cumsum(self.sizes)[:-1]), axis=-1)

    def compute_output_shape(self, input_shape):
        return [(*input_shape[:-1], s) for s in self.sizes]

    def get_config(self) -> dict:
        return {**super().get_config(), "sizes": self.sizes, "names": self.names}


def _pointwise(layer: layers.Layer) -> bool:
    return isinstance(layer, layers.Conv2D) and (
        tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.data_format == "channels_last"
    )


def _consumers(model: keras.Model) -> dict[int, list]:
    """``{id(tensor): [layers reading it]}`` over ``model``'s layers (a model output counts as a reader)."""
    readers = collections.defaultdict(list)
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        for tensor in keras.tree.flatten(layer.input):
            readers[id(tensor)].append(layer)
    for tensor in keras.tree.flatten(model.outputs):
        readers[id(tensor)].append(None)
    return readers


def _block_name(names: list[str]) -> str:
    prefix = os.path.commonprefix(names)
    return prefix.split("-Branch_")[0].rstrip("-_") or names[0]


def _activation(layer: layers.Layer) -> str:
    return str(layer.get_config()["activation"])


def fusable_groups(model: keras.Model) -> list[list[layers.Layer]]:
    """The groups (two or more, in layer order) of plain 1x1 convolutions of ``model`` that read
    the same tensor and share activation, bias use and dtype policy (none an end point)."""
    points = {id(t) for t in (getattr(model, "end_points", None) or {}).values()}
    groups = collections.defaultdict(list)
    for layer in model.layers:
        if (
            _pointwise(layer)
            and not isinstance(layer.input, (list, tuple, dict))
            and id(layer.output) not in points
        ):
            key = (id(layer.input), _activation(layer), layer.use_bias, layer.dtype_policy.name)
            groups[key].append(layer)
    return [g for g in groups.values() if len(g) > 1]


def _activation_after(conv: layers.Layer, readers: dict) -> layers.Layer | None:
    """The ``Activation`` layer that is the sole reader of ``conv``'s output, or None."""
    found = readers.get(id(conv.output), [])
    if len(found) == 1 and isinstance(found[0], layers.Activation):
        return found[0]
    return None


def fused_weights(convs: list[layers.Layer]) -> list[np.ndarray]:
    """``[kernel(, bias)]`` of one convolution computing ``convs`` side by side."""
    kernel = np.concatenate([np.asarray(c.kernel) for c in convs], axis=-1)
    if not convs[0].use_bias:
        return [kernel]
    return [kernel, np.concatenate([np.asarray(c.bias) for c in convs], axis=-1)]


def fuse_pointwise(model: keras.Model) -> keras.Model:
    """``model`` with each group of :func:`fusable_groups` computed by one convolution (see
    the module's docstring); the same object when nothing fuses. End points carry over (a
    member's or its activation's output becomes its slice of the split)."""
    groups = fusable_groups(model)
    if not groups:
        return model
    readers = _consumers(model)
    member_of: dict[str, tuple[int, int]] = {}
    dropped: set[str] = set()
    plans = []
    for g, convs in enumerate(groups):
        acts = [_activation_after(c, readers) for c in convs]
        same = all(a is not None for a in acts) and len({_activation(a) for a in acts}) == 1
        if same and convs[0].activation is keras.activations.linear:
            activation = acts[0].get_config()["activation"]
            dropped.update(a.name for a in acts)
        else:
            activation, acts = convs[0].get_config()["activation"], [None] * len(convs)
        block = _block_name([c.name for c in convs])
        config = {
            **convs[0].get_config(),
            "name": f"{block}-{FUSED_SUFFIX}",
            "filters": sum(c.filters for c in convs),
            "activation": activation,
        }
        fused = convs[0].__class__.from_config(config)
        fused.build(convs[0].input.shape)
        fused.set_weights(fused_weights(convs))
        names = [(a or c).name for c, a in zip(convs, acts, strict=True)]
        split = ChannelSplit([c.filters for c in convs], names, name=f"{block}-{SPLIT_SUFFIX}")
        plans.append((fused, split))
        for i, (c, a) in enumerate(zip(convs, acts, strict=True)):
            member_of[c.name] = (g, i)
            if a is not None:
                member_of[a.name] = (g, i)
    outputs: dict[int, list] = {}

    class _Member:
        def __init__(self, name: str):
            self.name = name

    def clone(layer):
        if layer.name in member_of:
            return _Member(layer.name)
        new = layer.__class__.from_config(layer.get_config())
        if layer.get_build_config() is not None:
            new.build_from_config(layer.get_build_config())
        new.set_weights(layer.get_weights())
        return new

    def call(layer, *args, **kwargs):
        if not isinstance(layer, _Member):
            return layer(*args, **kwargs)
        g, i = member_of[layer.name]
        if layer.name in dropped:  # the activation now inside the fused convolution
            return args[0]
        if g not in outputs:
            fused, split = plans[g]
            outputs[g] = split(fused(args[0]))
        return outputs[g][i]

    new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    if getattr(model, "end_points", None) is not None:
        new.end_points = _end_points(model, new, member_of, plans, dropped)
    return new


def _end_points(model, new, member_of, plans, dropped) -> dict:
    producers = {id(layer.output): layer.name for layer in model.layers if not isinstance(layer.output, list)}
    points = {}
    for name, tensor in model.end_points.items():
        layer = producers.get(id(tensor))
        if layer is None:
            continue
        if layer in member_of:
            g, i = member_of[layer]
            points[name] = new.get_layer(plans[g][1].name).output[i]
        else:
            points[name] = new.get_layer(layer).output
    return points
