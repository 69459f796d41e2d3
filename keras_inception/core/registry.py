"""What the package knows about each network and each published checkpoint, as data.

Each family module of :mod:`keras_inception.models` declares its :class:`Family`, its
published weights (:class:`PretrainedConfig`) and its builder in one place, with
:func:`register`; the tables here (:data:`FAMILIES`, :data:`PRETRAINED`, :data:`BUILDERS`)
are filled from those declarations when the package is imported (timm's ``default_cfgs``
and ``register_model``). Nothing here imports the rest of the package: the checkpoint
reader, the weights zoo, export, evaluation and the builders all read these tables.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

DENSE_LOGITS_SCOPE = "Logits/Logits"  # the dense classifier: v4, IRv1/v2 and every fine-tuned head
Builder = TypeVar("Builder", bound=Callable[..., Any])
HEAD_DROPOUT_SCOPE = "Logits/Dropout_1b"  # the main head's dropout, in every family and fine-tuned head


@dataclasses.dataclass(frozen=True)
class Family:
    """One network family: its names and the scopes of its heads.

    Attributes:
        name: registry key and default model name, e.g. ``"inception_v4"``.
        slim_scope: the checkpoint's top-level scope (``"InceptionV4"``), or ``None``
            where slim has no such network (Inception-ResNet-v1).
        depths: blocks per stage (35x35, 17x17, 8x8) of the published network.
        logits_scope: scope of the classifier layer.
        aux_conv_scope: scope of the aux head's 768-filter convolution, formatted with its
            kernel's height and width (Inception-v3's ``Conv2d_2a_{}x{}``).
        aux_kernel: the largest side of that convolution's kernel (Inception-v3: 5, slim's
            ``_reduced_kernel_size_for_small_input``); ``None``: the whole map it reads.
        aux_logits_scope: scope of the aux classifier layer.
        conv_logits: classifiers are 1x1 convolutions (Inception-v3), not dense layers.
        default_size: input side with ``include_top=True``.
        min_size: the smallest input side the stem accepts.
        conv_initializer: slim's initial convolution kernels: ``"slim_variance_scaling"``
            (``inception_arg_scope``) or ``"glorot_uniform"`` (slim's default, IRv2).
        aux_stddevs: truncated-normal stddevs of the aux head's 768-filter conv and
            classifier, where slim sets them (Inception-v3: 0.01, 0.001).
        l2_biases: slim's arg scope regularises biases too (Inception-ResNet-v2).
    """

    name: str
    slim_scope: str | None
    depths: tuple[int, int, int]
    logits_scope: str = DENSE_LOGITS_SCOPE
    aux_conv_scope: str = "AuxLogits/Conv2d_2a_5x5"
    aux_logits_scope: str = "AuxLogits/Logits"
    aux_kernel: int | None = None
    conv_logits: bool = False
    default_size: int = 299
    min_size: int = 75
    conv_initializer: str = "slim_variance_scaling"
    aux_stddevs: tuple[float, float] | None = None
    l2_biases: bool = False


EVAL_CROP_FRACTION = 0.875  # slim's central crop for evaluation


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    """One published slim checkpoint and the conventions it was trained with.

    Attributes:
        tag: the ``weights=`` value (``"imagenet"``, ``"adv_imagenet"``, ...).
        archive: file name in slim's model zoo.
        top1, top5: slim's ILSVRC-2012 validation accuracy (single crop, %), if published.
        sha256: the archive's digest; none are published, see ``keras_inception.weights.zoo.pin``.
        num_classes: outputs of the checkpoint's classifier (1001: background first).
        label_offset: ImageNet class ``i`` is output ``i + label_offset``.
        input_size: side of the square input it was evaluated at.
        crop_fraction: central crop of slim's evaluation transform.
        value_range: the pixel range the network expects (``x / 127.5 - 1``).
        family: the network it belongs to (set by :func:`register`).
    """

    tag: str
    archive: str
    top1: float | None = None
    top5: float | None = None
    sha256: str | None = None
    num_classes: int = 1001
    label_offset: int = 1
    input_size: int = 299
    crop_fraction: float = EVAL_CROP_FRACTION
    value_range: tuple[float, float] = (-1.0, 1.0)
    family: str = ""


# Filled by register(), in the order the family modules are imported (keras_inception.models).
FAMILIES: dict[str, Family] = {}
PRETRAINED: dict[tuple[str, str], PretrainedConfig] = {}
BUILDERS: dict[str, Callable[..., Any]] = {}


def register(family: Family, *pretrained: PretrainedConfig) -> Callable[[Builder], Builder]:
    """Declare ``family``, its published weights and (decorated) its builder, all in one place."""

    def add(builder: Builder) -> Builder:
        if family.name in FAMILIES:
            raise ValueError(f"family {family.name!r} is declared twice")
        FAMILIES[family.name] = family
        BUILDERS[family.name] = builder
        for config in pretrained:
            PRETRAINED[(family.name, config.tag)] = dataclasses.replace(config, family=family.name)
        return builder

    return add


def family(name: str) -> Family:
    """The family registered as ``name``; a ``ValueError`` lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(FAMILIES)}") from None


def family_for_scope(scope: str) -> Family | None:
    """The family whose slim checkpoints live under ``scope`` (``"InceptionV4"``)."""
    return next((f for f in FAMILIES.values() if f.slim_scope == scope), None)


def pretrained_tags(family_name: str | None = None) -> list[str]:
    """The ``weights=`` tags published for a family (for any family when ``None``)."""
    return sorted({tag for (name, tag) in PRETRAINED if family_name in (None, name)})


def pretrained_config(family_name: str, tag: str) -> PretrainedConfig:
    """The configuration of ``weights=tag`` for a family; a ``ValueError`` lists the tags."""
    try:
        return PRETRAINED[(family_name, tag)]
    except KeyError:
        available = pretrained_tags(family_name) or "none (build with weights=None)"
        raise ValueError(f"{family_name} has no {tag!r} weights; available: {available}") from None


@functools.cache
def slim_manifest(family_name: str) -> dict[str, tuple[int, ...]]:
    """Every variable name and shape of the public checkpoint (1001 classes, aux head)."""
    if family(family_name).slim_scope is None:
        raise ValueError(f"{family_name} has no slim checkpoints")
    path = f"resources/slim_manifests/{family_name}.json"
    text = resources.files("keras_inception").joinpath(path).read_text()
    return {name: tuple(shape) for name, shape in json.loads(text).items()}
