"""Inception-v4 (paper Figs. 3-9; slim ``nets/inception_v4.py``)."""

from __future__ import annotations

import string

import keras

from keras_inception import blocks
from keras_inception.layers import SLIM_BN_MOMENTUM, ConvBN
from keras_inception.models.base import Spec, build

SPEC = Spec(
    name="inception_v4",
    slim_scope="InceptionV4",
    aux_conv="AuxLogits/Conv2d_2a",
    aux_logits="AuxLogits/Aux_logits",
)


def block_letters(count: int) -> str:
    """slim's block suffixes after the reduction block: ``b``, ``c``, ... (``Mixed_6b``)."""
    if count > 25:
        raise ValueError(f"at most 25 blocks per stage, got {count}")
    return string.ascii_lowercase[1 : count + 1]


def InceptionV4(
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    name: str = "inception_v4",
    *,
    aux_logits: bool = False,
    dropout_rate: float = 0.2,
    bn_momentum: float = SLIM_BN_MOMENTUM,
    width: float = 1.0,
    depths: tuple[int, int, int] = (4, 7, 3),
) -> keras.Model:
    """Inception-v4: 4 Inception-A, 7 Inception-B and 3 Inception-C blocks.

    Arguments are keras.applications' (see :mod:`keras_inception`), plus
    ``aux_logits`` (slim's auxiliary head on ``Mixed_6h``; the model then returns
    ``[predictions, aux_predictions]``), ``dropout_rate``, ``bn_momentum``,
    ``width`` (channel multiplier) and ``depths`` (blocks per stage).
    """
    a, b, c = depths

    def body(conv: ConvBN, x):
        x = blocks.stem_v4(conv, x)
        for letter in block_letters(a):
            x = blocks.inception_a(conv, x, f"Mixed_5{letter}")
        x = blocks.reduction_a(conv, x, "Mixed_6a", k=192, l=224, m=256, n=384)
        for letter in block_letters(b):
            x = blocks.inception_b(conv, x, f"Mixed_6{letter}")
        aux = x
        x = blocks.reduction_b(conv, x, "Mixed_7a")
        for letter in block_letters(c):
            x = blocks.inception_c(conv, x, f"Mixed_7{letter}")
        return x, aux

    return build(
        SPEC,
        body,
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        aux_logits=aux_logits,
        dropout_rate=dropout_rate,
        bn_momentum=bn_momentum,
        width=width,
    )
