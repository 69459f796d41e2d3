"""Inception-v4 (paper Figs. 3-9; slim ``nets/inception_v4.py``)."""

from __future__ import annotations

import keras

from keras_inception.core import registry
from keras_inception.models.base import build, stage_names
from keras_inception.nn import blocks
from keras_inception.nn.layers import SLIM_BN_MOMENTUM, Builder

FAMILY = registry.Family(
    "inception_v4",
    "InceptionV4",
    depths=(4, 7, 3),
    aux_conv_scope="AuxLogits/Conv2d_2a",
    aux_logits_scope="AuxLogits/Aux_logits",
)


@registry.register(
    FAMILY,
    registry.PretrainedConfig("imagenet", "inception_v4_2016_09_09.tar.gz", top1=80.2, top5=95.2),
)
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
    depths: tuple[int, int, int] = FAMILY.depths,
    final_endpoint: str | None = None,
) -> keras.Model:
    """Inception-v4: stem, 4 Inception-A, Reduction-A, 7 Inception-B, Reduction-B, 3 Inception-C.

    Arguments are keras.applications' (see :mod:`keras_inception`), plus
    ``aux_logits`` (slim's auxiliary head on ``Mixed_6h``; the model then returns
    ``[predictions, aux_predictions]``), ``dropout_rate``, ``bn_momentum``,
    ``width`` (channel multiplier), ``depths`` (blocks per stage) and
    ``final_endpoint`` (stop at that end point; needs ``include_top=False``).
    """
    grid35, grid17, grid8 = stage_names(depths)

    def body(b: Builder, x):
        x = blocks.stem_v4(b, x)
        for scope in grid35:
            x = b.add(scope, blocks.inception_a(b, x, scope))
        x = b.add("Mixed_6a", blocks.reduction_a(b, x, "Mixed_6a", k=192, l=224, m=256, n=384))
        for scope in grid17:
            x = b.add(scope, blocks.inception_b(b, x, scope))
        aux = x
        x = b.add("Mixed_7a", blocks.reduction_b(b, x, "Mixed_7a"))
        for scope in grid8:
            x = b.add(scope, blocks.inception_c(b, x, scope))
        return x, aux

    return build(
        FAMILY, body, include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, name=name, aux_logits=aux_logits,
        dropout_rate=dropout_rate, bn_momentum=bn_momentum, width=width, final_endpoint=final_endpoint,
    )  # fmt: skip
