"""Inception-ResNet-v1 (paper only) and -v2 (slim ``nets/inception_resnet_v2.py``).

Both are: stem, 35x35 residual blocks, Reduction-A, 17x17 residual blocks,
Reduction-B, 8x8 residual blocks. Residual branches are scaled by ``scales``
(paper section 3.3: 0.1-0.3; slim 0.17 / 0.10 / 0.20) before the sum.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_inception import blocks
from keras_inception.layers import SLIM_BN_MOMENTUM, ConvBN, avg_pool, concat, max_pool
from keras_inception.models.base import Spec, build

SPEC_V1 = Spec(name="inception_resnet_v1", slim_scope=None)
SPEC_V2 = Spec(name="inception_resnet_v2", slim_scope="InceptionResnetV2")
SLIM_SCALES = (0.17, 0.10, 0.20)


def repeat(conv: ConvBN, x, block, scope: str, prefix: str, count: int, scale: float, **filters):
    """slim's ``slim.repeat``: ``count`` blocks named ``{scope}/{prefix}_1`` ... ``_{count}``."""
    for i in range(1, count + 1):
        x = block(conv, x, f"{scope}/{prefix}_{i}", scale, **filters)
    return x


def mixed_5b(conv: ConvBN, x):
    """slim's ``Mixed_5b`` of Inception-ResNet-v2: 192 -> 320 channels (not in the paper)."""
    b0 = conv(x, 96, 1, "Mixed_5b/Branch_0/Conv2d_1x1")
    b1 = conv(x, 48, 1, "Mixed_5b/Branch_1/Conv2d_0a_1x1")
    b1 = conv(b1, 64, 5, "Mixed_5b/Branch_1/Conv2d_0b_5x5")
    b2 = conv(x, 64, 1, "Mixed_5b/Branch_2/Conv2d_0a_1x1")
    b2 = conv(b2, 96, 3, "Mixed_5b/Branch_2/Conv2d_0b_3x3")
    b2 = conv(b2, 96, 3, "Mixed_5b/Branch_2/Conv2d_0c_3x3")
    b3 = avg_pool(x, "Mixed_5b/Branch_3/AvgPool_0a_3x3")
    b3 = conv(b3, 64, 1, "Mixed_5b/Branch_3/Conv2d_0b_1x1")
    return concat([b0, b1, b2, b3], "Mixed_5b")


def _check(depths, scales) -> None:
    if len(depths) != 3 or min(depths) < 1:
        raise ValueError(f"depths must be three positive block counts, got {depths!r}")
    if len(scales) != 3:
        raise ValueError(f"scales must be three residual scales (A, B, C blocks), got {scales!r}")


def InceptionResNetV2(
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    name: str = "inception_resnet_v2",
    *,
    aux_logits: bool = False,
    dropout_rate: float = 0.2,
    bn_momentum: float = SLIM_BN_MOMENTUM,
    width: float = 1.0,
    depths: tuple[int, int, int] = (10, 20, 10),
    scales: tuple[float, float, float] = SLIM_SCALES,
) -> keras.Model:
    """Inception-ResNet-v2 as slim builds it (the public checkpoint's network).

    slim's stem and ``Mixed_5b``, 10/20/10 blocks (the last 8x8 block ``Block8``
    linear with scale 1.0), then ``Conv2d_7b_1x1`` to 1536 channels. ``scales``
    are the residual scales of the 35x35, 17x17 and 8x8 blocks. Other arguments
    as :func:`~keras_inception.InceptionV4`.
    """
    _check(depths, scales)
    a, b, c = depths

    def body(conv: ConvBN, x):
        x = blocks.stem_v3(conv, x)
        x = max_pool(x, "MaxPool_5a_3x3")
        x = mixed_5b(conv, x)
        x = repeat(conv, x, blocks.block35, "Repeat", "block35", a, scales[0])
        x = blocks.reduction_a(conv, x, "Mixed_6a", k=256, l=256, m=384, n=384)
        x = repeat(conv, x, blocks.block17, "Repeat_1", "block17", b, scales[1])
        x = aux = layers.Identity(name="PreAuxLogits")(x)
        x = blocks.reduction_b_residual(conv, x, "Mixed_7a")
        x = repeat(conv, x, blocks.block8, "Repeat_2", "block8", c - 1, scales[2])
        x = blocks.block8(conv, x, "Block8", 1.0, activation=None)
        return conv(x, 1536, 1, "Conv2d_7b_1x1"), aux

    return build(
        SPEC_V2,
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


def InceptionResNetV1(
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    name: str = "inception_resnet_v1",
    *,
    aux_logits: bool = False,
    dropout_rate: float = 0.2,
    bn_momentum: float = SLIM_BN_MOMENTUM,
    width: float = 1.0,
    depths: tuple[int, int, int] = (5, 10, 5),
    scales: tuple[float, float, float] = SLIM_SCALES,
) -> keras.Model:
    """Inception-ResNet-v1 from the paper (Figs. 10-15); no slim code or checkpoint exists.

    Stem of Fig. 14 (ending in a stride-2 ``Conv2d_4b_3x3`` to 256 channels),
    5/10/5 residual blocks, Reduction-A (k, l, m, n) = (192, 192, 256, 384),
    Reduction-B of Fig. 12; 1792 features. Layers follow slim's conventions and
    IRv2's scope names. Arguments as :func:`InceptionResNetV2`.
    """
    _check(depths, scales)
    a, b, c = depths

    def body(conv: ConvBN, x):
        x = blocks.stem_v3(conv, x)
        x = conv(x, 256, 3, "Conv2d_4b_3x3", strides=2, padding="valid")
        x = repeat(conv, x, blocks.block35, "Repeat", "block35", a, scales[0], b2=(32, 32, 32))
        x = blocks.reduction_a(conv, x, "Mixed_6a", k=192, l=192, m=256, n=384)
        x = repeat(conv, x, blocks.block17, "Repeat_1", "block17", b, scales[1], b0=128, b1=(128, 128, 128))
        x = aux = layers.Identity(name="PreAuxLogits")(x)
        x = blocks.reduction_b_residual(conv, x, "Mixed_7a", b1=(256, 256), b2=(256, 256, 256))
        x = repeat(conv, x, blocks.block8, "Repeat_2", "block8", c, scales[2], b1=(192, 192, 192))
        return x, aux

    return build(
        SPEC_V1,
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
