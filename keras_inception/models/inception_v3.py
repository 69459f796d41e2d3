"""Inception-v3, the paper's baseline (slim ``nets/inception_v3.py``).

Every block is a shared one of :mod:`keras_inception.nn.blocks` with Inception-v3's
filters and slim's few irregular names.
"""

from __future__ import annotations

import keras

from keras_inception.core import registry
from keras_inception.models.base import build, stage_names
from keras_inception.nn import blocks
from keras_inception.nn.layers import SLIM_BN_MOMENTUM, Builder, max_pool

FAMILY = registry.Family(
    "inception_v3",
    "InceptionV3",
    depths=(3, 4, 2),
    logits_scope="Logits/Conv2d_1c_1x1",
    aux_conv_scope="AuxLogits/Conv2d_2a_{}x{}",
    aux_logits_scope="AuxLogits/Conv2d_2b_1x1",
    aux_kernel=5,
    conv_logits=True,
    aux_stddevs=(0.01, 0.001),
)

# slim's irregular names: Mixed_5c's 5x5 tower, Mixed_6a's 3x3s called 1x1, Mixed_7b's split.
MIXED_5C = {
    "Branch_1/Conv2d_0a_1x1": "Branch_1/Conv2d_0b_1x1",
    "Branch_1/Conv2d_0b_5x5": "Branch_1/Conv_1_0c_5x5",
}
MIXED_6A = {
    "Branch_0/Conv2d_1a_3x3": "Branch_0/Conv2d_1a_1x1",
    "Branch_1/Conv2d_1a_3x3": "Branch_1/Conv2d_1a_1x1",
}
MIXED_7B = {"Branch_1/Conv2d_0c_3x1": "Branch_1/Conv2d_0b_3x1"}


@registry.register(
    FAMILY,
    registry.PretrainedConfig("imagenet", "inception_v3_2016_08_28.tar.gz", top1=78.0, top5=93.9),
    registry.PretrainedConfig("adv_imagenet", "adv_inception_v3_2017_08_18.tar.gz"),
    registry.PretrainedConfig("ens3_adv_imagenet", "ens3_adv_inception_v3_2017_08_18.tar.gz"),
    registry.PretrainedConfig("ens4_adv_imagenet", "ens4_adv_inception_v3_2017_08_18.tar.gz"),
)
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
    depths: tuple[int, int, int] = FAMILY.depths,
    final_endpoint: str | None = None,
) -> keras.Model:
    """Inception-v3 as slim builds it (aux head on the last 17x17 block, ``Mixed_6e``; its
    768-filter convolution takes slim's reduced kernel, named after it: ``Conv2d_2a_5x5`` at
    299x299, ``Conv2d_2a_1x1`` at 139x139).

    Same arguments as :func:`~keras_inception.InceptionV4`; ``width`` is slim's
    ``depth_multiplier``, ``depths`` the 35x35, 17x17 and 8x8 block counts (slim 3, 4, 2;
    other counts repeat the middle blocks' filters).
    """
    grid35, grid17, grid8 = stage_names(depths)

    def c7(i: int) -> int:  # 17x17 bottleneck widths: 128, 160, ..., 160, 192
        return 128 if i == 0 else 192 if i == len(grid17) - 1 else 160

    def body(b: Builder, x):
        x = blocks.stem_v3(b, x)
        x = b.add("MaxPool_5a_3x3", max_pool(x, "MaxPool_5a_3x3"))
        for i, scope in enumerate(grid35):
            rename = MIXED_5C if scope == "Mixed_5c" else None
            x = b.add(scope, blocks.inception_a(
                b, x, scope, b0=64, b1=(48, 64), b2=(64, 96, 96), b3=32 if i == 0 else 64, k1=5, rename=rename
            ))  # fmt: skip
        x = b.add("Mixed_6a", blocks.reduction_a(b, x, "Mixed_6a", k=64, l=96, m=96, n=384, rename=MIXED_6A))
        for i, scope in enumerate(grid17):
            f = c7(i)
            x = b.add(
                scope, blocks.inception_b(b, x, scope, b0=192, b1=(f, f, 192), b2=(f, f, f, f, 192), b3=192)
            )
        aux = x
        x = b.add("Mixed_7a", blocks.reduction_b(b, x, "Mixed_7a", b0=(192, 320), b1=(192, 192, 192, 192)))
        for scope in grid8:
            x = b.add(scope, blocks.inception_c(
                b, x, scope, b0=320, b1=(384, 384), b2=((448, 1), (384, 3)), split2=384, b3=192,
                rename=MIXED_7B if scope == "Mixed_7b" else None,
            ))  # fmt: skip
        return x, aux

    return build(
        FAMILY, body, include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, name=name, aux_logits=aux_logits,
        dropout_rate=dropout_rate, bn_momentum=bn_momentum, width=width, final_endpoint=final_endpoint,
    )  # fmt: skip
