"""Inception-v3, the paper's baseline (slim ``nets/inception_v3.py``).

Its 35x35 and 8x8 blocks are its own; its 17x17 blocks and both reductions are
the shared ones of :mod:`keras_inception.blocks` with other filters.
"""

from __future__ import annotations

import keras

from keras_inception import blocks
from keras_inception.layers import SLIM_BN_MOMENTUM, ConvBN, avg_pool, concat, max_pool
from keras_inception.models.base import Spec, build
from keras_inception.models.inception_v4 import block_letters

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
    depths: tuple[int, int, int] = (3, 4, 2),
) -> keras.Model:
    """Inception-v3 as slim builds it (aux head on the last 17x17 block, ``Mixed_6e``).

    Same arguments as :func:`~keras_inception.InceptionV4`; ``width`` is slim's
    ``depth_multiplier``, ``depths`` the 35x35, 17x17 and 8x8 block counts (slim 3, 4, 2;
    other counts repeat the middle blocks' filters).
    """
    a, b, c = depths

    def c7(i: int) -> int:  # 17x17 bottleneck widths: 128, 160, ..., 160, 192
        return 128 if i == 0 else 192 if i == b - 1 else 160

    def body(conv: ConvBN, x):
        x = blocks.stem_v3(conv, x)
        x = max_pool(x, "MaxPool_5a_3x3")
        for i, letter in enumerate(block_letters(a)):
            quirk = {"b1_names": ("Conv2d_0b_1x1", "Conv_1_0c_5x5")} if letter == "c" else {}
            x = mixed_35(conv, x, f"Mixed_5{letter}", pool_filters=32 if i == 0 else 64, **quirk)
        x = blocks.reduction_a(conv, x, "Mixed_6a", k=64, l=96, m=96, n=384, last="Conv2d_1a_1x1")
        for i, letter in enumerate(block_letters(b)):
            f = c7(i)
            x = blocks.inception_b(
                conv, x, f"Mixed_6{letter}", b0=192, b1=(f, f, 192), b2=(f, f, f, f, 192), b3=192
            )
        aux = x
        x = blocks.reduction_b(conv, x, "Mixed_7a", b0=(192, 320), b1=(192, 192, 192, 192))
        for letter in block_letters(c):
            x = mixed_8(
                conv, x, f"Mixed_7{letter}", b1_second="Conv2d_0b_3x1" if letter == "b" else "Conv2d_0c_3x1"
            )
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
