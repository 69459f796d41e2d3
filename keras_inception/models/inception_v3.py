"""Inception-v3, the paper's baseline (slim ``nets/inception_v3.py``).

Its 35x35 and 8x8 blocks are its own; its 17x17 blocks and both reductions are
the shared ones of :mod:`keras_inception.blocks` with other filters.
"""

from __future__ import annotations

import keras

from keras_inception import blocks
from keras_inception.layers import SLIM_BN_MOMENTUM, ConvBN, avg_pool, concat, max_pool
from keras_inception.models.base import Spec, build

SPEC = Spec(
    name="inception_v3",
    slim_scope="InceptionV3",
    logits="Logits/Conv2d_1c_1x1",
    aux_logits="AuxLogits/Conv2d_2b_1x1",
    conv_logits=True,
)


def mixed_35(conv: ConvBN, x, scope: str, pool_filters: int, b1_names=("Conv2d_0a_1x1", "Conv2d_0b_5x5")):
    """``Mixed_5b``-``5d``: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.

    slim names ``Mixed_5c``'s second branch ``Conv2d_0b_1x1`` / ``Conv_1_0c_5x5``.
    """
    b0 = conv(x, 64, 1, f"{scope}/Branch_0/Conv2d_0a_1x1")
    b1 = conv(x, 48, 1, f"{scope}/Branch_1/{b1_names[0]}")
    b1 = conv(b1, 64, 5, f"{scope}/Branch_1/{b1_names[1]}")
    b2 = conv(x, 64, 1, f"{scope}/Branch_2/Conv2d_0a_1x1")
    b2 = conv(b2, 96, 3, f"{scope}/Branch_2/Conv2d_0b_3x3")
    b2 = conv(b2, 96, 3, f"{scope}/Branch_2/Conv2d_0c_3x3")
    b3 = avg_pool(x, f"{scope}/Branch_3/AvgPool_0a_3x3")
    b3 = conv(b3, pool_filters, 1, f"{scope}/Branch_3/Conv2d_0b_1x1")
    return concat([b0, b1, b2, b3], scope)


def mixed_8(conv: ConvBN, x, scope: str, b1_second: str):
    """``Mixed_7b`` / ``7c``: the expanded 8x8 block (slim's names differ in one layer)."""
    b0 = conv(x, 320, 1, f"{scope}/Branch_0/Conv2d_0a_1x1")
    p = f"{scope}/Branch_1"
    b1 = conv(x, 384, 1, f"{p}/Conv2d_0a_1x1")
    b1 = concat(
        [conv(b1, 384, (1, 3), f"{p}/Conv2d_0b_1x3"), conv(b1, 384, (3, 1), f"{p}/{b1_second}")],
        f"{p}/concat",
    )
    p = f"{scope}/Branch_2"
    b2 = conv(x, 448, 1, f"{p}/Conv2d_0a_1x1")
    b2 = conv(b2, 384, 3, f"{p}/Conv2d_0b_3x3")
    b2 = concat(
        [conv(b2, 384, (1, 3), f"{p}/Conv2d_0c_1x3"), conv(b2, 384, (3, 1), f"{p}/Conv2d_0d_3x1")],
        f"{p}/concat",
    )
    b3 = avg_pool(x, f"{scope}/Branch_3/AvgPool_0a_3x3")
    b3 = conv(b3, 192, 1, f"{scope}/Branch_3/Conv2d_0b_1x1")
    return concat([b0, b1, b2, b3], scope)


def InceptionV3(
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    name: str = "inception_v3",
    *,
    aux_logits: bool = False,
    dropout_rate: float = 0.2,
    bn_momentum: float = SLIM_BN_MOMENTUM,
    width: float = 1.0,
) -> keras.Model:
    """Inception-v3 as slim builds it (aux head on ``Mixed_6e``).

    Same arguments as :func:`~keras_inception.InceptionV4`; ``width`` is slim's
    ``depth_multiplier``.
    """

    def body(conv: ConvBN, x):
        x = blocks.stem_v3(conv, x)
        x = max_pool(x, "MaxPool_5a_3x3")
        x = mixed_35(conv, x, "Mixed_5b", pool_filters=32)
        x = mixed_35(conv, x, "Mixed_5c", pool_filters=64, b1_names=("Conv2d_0b_1x1", "Conv_1_0c_5x5"))
        x = mixed_35(conv, x, "Mixed_5d", pool_filters=64)
        x = blocks.reduction_a(conv, x, "Mixed_6a", k=64, l=96, m=96, n=384, last="Conv2d_1a_1x1")
        for letter, c7 in zip("bcde", (128, 160, 160, 192), strict=True):
            x = blocks.inception_b(
                conv, x, f"Mixed_6{letter}", b0=192, b1=(c7, c7, 192), b2=(c7, c7, c7, c7, 192), b3=192
            )
        aux = x
        x = blocks.reduction_b(conv, x, "Mixed_7a", b0=(192, 320), b1=(192, 192, 192, 192))
        x = mixed_8(conv, x, "Mixed_7b", b1_second="Conv2d_0b_3x1")
        x = mixed_8(conv, x, "Mixed_7c", b1_second="Conv2d_0c_3x1")
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
