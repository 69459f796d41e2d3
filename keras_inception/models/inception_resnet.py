"""Inception-ResNet-v1 (paper only) and -v2 (slim ``nets/inception_resnet_v2.py``).

Both are: stem, 35x35 residual blocks, Reduction-A, 17x17 residual blocks,
Reduction-B, 8x8 residual blocks. Residual branches are scaled by ``scales``
(paper section 3.3: 0.1-0.3; slim 0.17 / 0.10 / 0.20) before the sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from keras_inception.core import registry
from keras_inception.models.base import build, check_depths
from keras_inception.nn import blocks
from keras_inception.nn.layers import SLIM_BN_MOMENTUM, Builder, max_pool

V1 = registry.Family(
    "inception_resnet_v1", None, depths=(5, 10, 5), conv_initializer="glorot_uniform", l2_biases=True
)
V2 = registry.Family(
    "inception_resnet_v2",
    "InceptionResnetV2",
    depths=(10, 20, 10),
    conv_initializer="glorot_uniform",
    l2_biases=True,
)
SLIM_SCALES = (0.17, 0.10, 0.20)
# slim's inception_resnet_v2_base end points, in order; output_stride=8 builds up to PreAuxLogits.
V2_END_POINTS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_5a_3x3", "Mixed_5b", "Mixed_6a", "PreAuxLogits", "Mixed_7a", "Conv2d_7b_1x1",
)  # fmt: skip
OUTPUT_STRIDES = (8, 16)


def repeat(b: Builder, x, block, scope: str, count: int, scale: float, **filters):
    """slim's ``slim.repeat``: ``count`` blocks named ``{scope}/{block}_1`` ... ``_{count}``."""
    for i in range(1, count + 1):
        x = block(b, x, f"{scope}/{block.__name__}_{i}", scale, **filters)
    return x


def _scales(scales: Sequence[float]) -> tuple[float, float, float]:
    if len(scales) != 3:
        raise ValueError(f"scales must be three residual scales (A, B, C blocks), got {scales!r}")
    return tuple(scales)  # type: ignore[return-value]


def _check_backbone(output_stride, align_feature_maps, final_endpoint: str | None) -> None:
    """slim's checks of ``inception_resnet_v2_base``, made before any layer exists."""
    if output_stride not in OUTPUT_STRIDES or isinstance(output_stride, bool):
        raise ValueError(f"output_stride must be 8 or 16 (as slim), got {output_stride!r}")
    if not isinstance(align_feature_maps, bool):
        raise ValueError(f"align_feature_maps must be True or False, got {align_feature_maps!r}")
    atrous_end_points = V2_END_POINTS[: V2_END_POINTS.index("PreAuxLogits") + 1]
    if output_stride == 8 and final_endpoint not in atrous_end_points:
        raise ValueError(
            "output_stride=8 builds Inception-ResNet-v2 only up to PreAuxLogits (as slim): pass "
            f"include_top=False and final_endpoint one of {list(atrous_end_points)}, got {final_endpoint!r}"
        )


@registry.register(V1)
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
    depths: tuple[int, int, int] = V1.depths,
    scales: tuple[float, float, float] = SLIM_SCALES,
    final_endpoint: str | None = None,
) -> keras.Model:
    """Inception-ResNet-v1 from the paper (Figs. 10-15); no slim code or checkpoint exists.

    Stem of Fig. 14 (ending in a stride-2 ``Conv2d_4b_3x3`` to 256 channels),
    5/10/5 residual blocks, Reduction-A (k, l, m, n) = (192, 192, 256, 384),
    Reduction-B of Fig. 12; 1792 features. Layers follow slim's conventions and
    IRv2's scope names. Arguments as :func:`InceptionResNetV2`.
    """
    n35, n17, n8 = check_depths(depths)
    s35, s17, s8 = _scales(scales)

    def body(b: Builder, x):
        x = blocks.stem_v3(b, x)
        x = b.add("Conv2d_4b_3x3", b.conv(x, 256, 3, "Conv2d_4b_3x3", strides=2, padding="valid"))
        x = repeat(b, x, blocks.block35, "Repeat", n35, s35, b2=(32, 32, 32))
        x = b.add("Mixed_6a", blocks.reduction_a(b, x, "Mixed_6a", k=192, l=192, m=256, n=384))
        x = repeat(b, x, blocks.block17, "Repeat_1", n17, s17, b0=128, b1=(128, 128, 128))
        x = aux = b.add("PreAuxLogits", layers.Identity(name="PreAuxLogits")(x))
        x = b.add(
            "Mixed_7a", blocks.reduction_b_residual(b, x, "Mixed_7a", b1=(256, 256), b2=(256, 256, 256))
        )
        x = repeat(b, x, blocks.block8, "Repeat_2", n8, s8, b1=(192, 192, 192))
        return x, aux

    return build(
        V1, body, include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, name=name, aux_logits=aux_logits,
        dropout_rate=dropout_rate, bn_momentum=bn_momentum, width=width, final_endpoint=final_endpoint,
    )  # fmt: skip


@registry.register(
    V2,
    registry.PretrainedConfig("imagenet", "inception_resnet_v2_2016_08_30.tar.gz", top1=80.4, top5=95.3),
    registry.PretrainedConfig("adv_imagenet", "adv_inception_resnet_v2_2017_12_18.tar.gz"),
    registry.PretrainedConfig("ens_adv_imagenet", "ens_adv_inception_resnet_v2_2017_08_18.tar.gz"),
)
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
    depths: tuple[int, int, int] = V2.depths,
    scales: tuple[float, float, float] = SLIM_SCALES,
    final_endpoint: str | None = None,
    output_stride: int = 16,
    align_feature_maps: bool = False,
) -> keras.Model:
    """Inception-ResNet-v2 as slim builds it (the public checkpoint's network).

    slim's stem and ``Mixed_5b``, 10/20/10 blocks (the last 8x8 block ``Block8``
    linear with scale 1.0), then ``Conv2d_7b_1x1`` to 1536 channels. ``scales``
    are the residual scales of the 35x35, 17x17 and 8x8 blocks. Other arguments
    as :func:`~keras_inception.InceptionV4`.

    ``output_stride`` and ``align_feature_maps`` are slim's ``inception_resnet_v2_base``
    options for detection and segmentation backbones. ``output_stride=8`` keeps
    ``Mixed_6a`` at stride 1 and dilates the 17x17 blocks (rate 2); slim allows it only
    up to ``final_endpoint="PreAuxLogits"``. ``align_feature_maps=True`` makes the VALID
    convolutions and pools of the stem, ``Mixed_6a`` and ``Mixed_7a`` SAME (299 ->
    150, 75, 38, 19, 10). Neither changes a kernel's shape or a layer's name, so the
    same weights load.
    """
    _check_backbone(output_stride, align_feature_maps, final_endpoint)
    n35, n17, n8 = check_depths(depths)
    s35, s17, s8 = _scales(scales)
    atrous = output_stride == 8
    padding = "same" if align_feature_maps else "valid"

    def body(b: Builder, x):
        x = blocks.stem_v3(b, x, padding)
        x = b.add("MaxPool_5a_3x3", max_pool(x, "MaxPool_5a_3x3", padding=padding))
        x = b.add("Mixed_5b", blocks.inception_a(
            b, x, "Mixed_5b", b0=96, b1=(48, 64), b2=(64, 96, 96), b3=64, k1=5,
            rename={"Branch_0/Conv2d_0a_1x1": "Branch_0/Conv2d_1x1"},
        ))  # fmt: skip
        x = repeat(b, x, blocks.block35, "Repeat", n35, s35)
        x = b.add("Mixed_6a", blocks.reduction_a(
            b, x, "Mixed_6a", k=256, l=256, m=384, n=384, strides=1 if atrous else 2, padding=padding
        ))  # fmt: skip
        with b.rate(2 if atrous else 1):
            x = repeat(b, x, blocks.block17, "Repeat_1", n17, s17)
        x = aux = b.add("PreAuxLogits", layers.Identity(name="PreAuxLogits")(x))
        x = b.add("Mixed_7a", blocks.reduction_b_residual(b, x, "Mixed_7a", padding=padding))
        x = repeat(b, x, blocks.block8, "Repeat_2", n8 - 1, s8)
        x = blocks.block8(b, x, "Block8", 1.0, activation=None)
        return b.add("Conv2d_7b_1x1", b.conv(x, 1536, 1, "Conv2d_7b_1x1")), aux

    return build(
        V2, body, include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, name=name, aux_logits=aux_logits,
        dropout_rate=dropout_rate, bn_momentum=bn_momentum, width=width, final_endpoint=final_endpoint,
    )  # fmt: skip
