"""The paper's building blocks, each written once and parametrised by its filters.

Scopes and branch order follow TF-slim (``nets/inception_v4.py``,
``nets/inception_resnet_v2.py``), so a slim variable maps to a Keras weight by
name. Filter arguments read like the paper's figures and Table 1; every block
takes the shared :class:`~keras_inception.layers.ConvBN` as ``conv``.
"""

from __future__ import annotations

from keras import layers

from keras_inception.layers import ConvBN, ScaleSum, avg_pool, concat, keras_name, max_pool


def stem_v3(conv: ConvBN, x):
    """The Inception-v3 stem up to ``Conv2d_4a_3x3`` (299 -> 71x71x192).

    Shared by Inception-v3, slim's Inception-ResNet-v2 and Inception-ResNet-v1
    (paper Fig. 14), which then diverge: a max pool, or a stride-2 convolution.
    """
    x = conv(x, 32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")
    x = conv(x, 32, 3, "Conv2d_2a_3x3", padding="valid")
    x = conv(x, 64, 3, "Conv2d_2b_3x3")
    x = max_pool(x, "MaxPool_3a_3x3")
    x = conv(x, 80, 1, "Conv2d_3b_1x1", padding="valid")
    return conv(x, 192, 3, "Conv2d_4a_3x3", padding="valid")


def stem_v4(conv: ConvBN, x):
    """Inception-v4 / Inception-ResNet-v2 stem of the paper (Fig. 3): 299 -> 35x35x384."""
    x = conv(x, 32, 3, "Conv2d_1a_3x3", strides=2, padding="valid")
    x = conv(x, 32, 3, "Conv2d_2a_3x3", padding="valid")
    x = conv(x, 64, 3, "Conv2d_2b_3x3")
    x = concat(
        [
            max_pool(x, "Mixed_3a/Branch_0/MaxPool_0a_3x3"),
            conv(x, 96, 3, "Mixed_3a/Branch_1/Conv2d_0a_3x3", strides=2, padding="valid"),
        ],
        "Mixed_3a",
    )
    b0 = conv(x, 64, 1, "Mixed_4a/Branch_0/Conv2d_0a_1x1")
    b0 = conv(b0, 96, 3, "Mixed_4a/Branch_0/Conv2d_1a_3x3", padding="valid")
    b1 = conv(x, 64, 1, "Mixed_4a/Branch_1/Conv2d_0a_1x1")
    b1 = conv(b1, 64, (1, 7), "Mixed_4a/Branch_1/Conv2d_0b_1x7")
    b1 = conv(b1, 64, (7, 1), "Mixed_4a/Branch_1/Conv2d_0c_7x1")
    b1 = conv(b1, 96, 3, "Mixed_4a/Branch_1/Conv2d_1a_3x3", padding="valid")
    x = concat([b0, b1], "Mixed_4a")
    return concat(
        [
            conv(x, 192, 3, "Mixed_5a/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid"),
            max_pool(x, "Mixed_5a/Branch_1/MaxPool_1a_3x3"),
        ],
        "Mixed_5a",
    )


def inception_a(conv: ConvBN, x, scope: str):
    """Inception-A, the 35x35 block of Inception-v4 (Fig. 4): 384 channels."""
    b0 = conv(x, 96, 1, f"{scope}/Branch_0/Conv2d_0a_1x1")
    b1 = conv(x, 64, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")
    b1 = conv(b1, 96, 3, f"{scope}/Branch_1/Conv2d_0b_3x3")
    b2 = conv(x, 64, 1, f"{scope}/Branch_2/Conv2d_0a_1x1")
    b2 = conv(b2, 96, 3, f"{scope}/Branch_2/Conv2d_0b_3x3")
    b2 = conv(b2, 96, 3, f"{scope}/Branch_2/Conv2d_0c_3x3")
    b3 = avg_pool(x, f"{scope}/Branch_3/AvgPool_0a_3x3")
    b3 = conv(b3, 96, 1, f"{scope}/Branch_3/Conv2d_0b_1x1")
    return concat([b0, b1, b2, b3], scope)


def inception_b(
    conv: ConvBN,
    x,
    scope: str,
    b0: int = 384,
    b1: tuple[int, int, int] = (192, 224, 256),
    b2: tuple[int, int, int, int, int] = (192, 192, 224, 224, 256),
    b3: int = 128,
):
    """Inception-B, the 17x17 block with factorised 7x7 convolutions.

    Defaults are Inception-v4's (Fig. 5); Inception-v3's ``Mixed_6b``-``6e`` are
    the same block with other filters.
    """
    y0 = conv(x, b0, 1, f"{scope}/Branch_0/Conv2d_0a_1x1")
    p = f"{scope}/Branch_1"
    y1 = conv(x, b1[0], 1, f"{p}/Conv2d_0a_1x1")
    y1 = conv(y1, b1[1], (1, 7), f"{p}/Conv2d_0b_1x7")
    y1 = conv(y1, b1[2], (7, 1), f"{p}/Conv2d_0c_7x1")
    p = f"{scope}/Branch_2"
    y2 = conv(x, b2[0], 1, f"{p}/Conv2d_0a_1x1")
    y2 = conv(y2, b2[1], (7, 1), f"{p}/Conv2d_0b_7x1")
    y2 = conv(y2, b2[2], (1, 7), f"{p}/Conv2d_0c_1x7")
    y2 = conv(y2, b2[3], (7, 1), f"{p}/Conv2d_0d_7x1")
    y2 = conv(y2, b2[4], (1, 7), f"{p}/Conv2d_0e_1x7")
    y3 = avg_pool(x, f"{scope}/Branch_3/AvgPool_0a_3x3")
    y3 = conv(y3, b3, 1, f"{scope}/Branch_3/Conv2d_0b_1x1")
    return concat([y0, y1, y2, y3], scope)


def inception_c(conv: ConvBN, x, scope: str):
    """Inception-C, the 8x8 block of Inception-v4 (Fig. 6): 1536 channels."""
    b0 = conv(x, 256, 1, f"{scope}/Branch_0/Conv2d_0a_1x1")
    p = f"{scope}/Branch_1"
    b1 = conv(x, 384, 1, f"{p}/Conv2d_0a_1x1")
    b1 = concat(
        [conv(b1, 256, (1, 3), f"{p}/Conv2d_0b_1x3"), conv(b1, 256, (3, 1), f"{p}/Conv2d_0c_3x1")],
        f"{p}/concat",
    )
    p = f"{scope}/Branch_2"
    b2 = conv(x, 384, 1, f"{p}/Conv2d_0a_1x1")
    b2 = conv(b2, 448, (3, 1), f"{p}/Conv2d_0b_3x1")
    b2 = conv(b2, 512, (1, 3), f"{p}/Conv2d_0c_1x3")
    b2 = concat(
        [conv(b2, 256, (1, 3), f"{p}/Conv2d_0d_1x3"), conv(b2, 256, (3, 1), f"{p}/Conv2d_0e_3x1")],
        f"{p}/concat",
    )
    b3 = avg_pool(x, f"{scope}/Branch_3/AvgPool_0a_3x3")
    b3 = conv(b3, 256, 1, f"{scope}/Branch_3/Conv2d_0b_1x1")
    return concat([b0, b1, b2, b3], scope)


def reduction_a(conv: ConvBN, x, scope: str, k: int, l: int, m: int, n: int, last: str = "Conv2d_1a_3x3"):  # noqa: E741 - the paper's names
    """Reduction-A (Fig. 7) with the filter bank (k, l, m, n) of the paper's Table 1.

    Inception-v4 (192, 224, 256, 384), Inception-ResNet-v1 (192, 192, 256, 384),
    Inception-ResNet-v2 (256, 256, 384, 384); Inception-v3's ``Mixed_6a`` is
    (64, 96, 96, 384), where slim names the stride-2 convolutions ``last`` =
    ``Conv2d_1a_1x1`` although their kernels are 3x3.
    """
    b0 = conv(x, n, 3, f"{scope}/Branch_0/{last}", strides=2, padding="valid")
    b1 = conv(x, k, 1, f"{scope}/Branch_1/Conv2d_0a_1x1")
    b1 = conv(b1, l, 3, f"{scope}/Branch_1/Conv2d_0b_3x3")
    b1 = conv(b1, m, 3, f"{scope}/Branch_1/{last}", strides=2, padding="valid")
    b2 = max_pool(x, f"{scope}/Branch_2/MaxPool_1a_3x3")
    return concat([b0, b1, b2], scope)


def reduction_b(
    conv: ConvBN,
    x,
    scope: str,
    b0: tuple[int, int] = (192, 192),
    b1: tuple[int, int, int, int] = (256, 256, 320, 320),
):
    """Reduction-B of Inception-v4 (Fig. 8); Inception-v3's ``Mixed_7a`` with other filters."""
    y0 = conv(x, b0[0], 1, f"{scope}/Branch_0/Conv2d_0a_1x1")
    y0 = conv(y0, b0[1], 3, f"{scope}/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid")
    p = f"{scope}/Branch_1"
    y1 = conv(x, b1[0], 1, f"{p}/Conv2d_0a_1x1")
    y1 = conv(y1, b1[1], (1, 7), f"{p}/Conv2d_0b_1x7")
    y1 = conv(y1, b1[2], (7, 1), f"{p}/Conv2d_0c_7x1")
    y1 = conv(y1, b1[3], 3, f"{p}/Conv2d_1a_3x3", strides=2, padding="valid")
    y2 = max_pool(x, f"{scope}/Branch_2/MaxPool_1a_3x3")
    return concat([y0, y1, y2], scope)


def reduction_b_residual(
    conv: ConvBN,
    x,
    scope: str,
    b0: tuple[int, int] = (256, 384),
    b1: tuple[int, int] = (256, 288),
    b2: tuple[int, int, int] = (256, 288, 320),
):
    """Reduction-B of the Inception-ResNets: slim's IRv2 ``Mixed_7a`` by default.

    Inception-ResNet-v1 (Fig. 12) uses ``b1=(256, 256), b2=(256, 256, 256)``.
    """
    y0 = conv(x, b0[0], 1, f"{scope}/Branch_0/Conv2d_0a_1x1")
    y0 = conv(y0, b0[1], 3, f"{scope}/Branch_0/Conv2d_1a_3x3", strides=2, padding="valid")
    y1 = conv(x, b1[0], 1, f"{scope}/Branch_1/Conv2d_0a_1x1")
    y1 = conv(y1, b1[1], 3, f"{scope}/Branch_1/Conv2d_1a_3x3", strides=2, padding="valid")
    y2 = conv(x, b2[0], 1, f"{scope}/Branch_2/Conv2d_0a_1x1")
    y2 = conv(y2, b2[1], 3, f"{scope}/Branch_2/Conv2d_0b_3x3")
    y2 = conv(y2, b2[2], 3, f"{scope}/Branch_2/Conv2d_1a_3x3", strides=2, padding="valid")
    y3 = max_pool(x, f"{scope}/Branch_3/MaxPool_1a_3x3")
    return concat([y0, y1, y2, y3], scope)


def _residual(x, branches: list, scope: str, scale: float, activation: str | None):
    """Concat the branches, project back with a biased 1x1 (no BN), ``relu(x + scale * up)``."""
    mixed = concat(branches, f"{scope}/concat")
    up = layers.Conv2D(x.shape[-1], 1, use_bias=True, name=keras_name(f"{scope}/Conv2d_1x1"))(mixed)
    x = ScaleSum(scale, name=keras_name(f"{scope}/ScaleSum"))([x, up])
    if activation is None:
        return x
    return layers.Activation(activation, name=keras_name(f"{scope}/Relu"))(x)


def block35(
    conv: ConvBN,
    x,
    scope: str,
    scale: float,
    b0: int = 32,
    b1: tuple[int, int] = (32, 32),
    b2: tuple[int, int, int] = (32, 48, 64),
    activation: str | None = "relu",
):
    """Inception-ResNet-A, 35x35 (IRv2 Fig. 16 by default; IRv1 Fig. 10: ``b2=(32, 32, 32)``)."""
    y0 = conv(x, b0, 1, f"{scope}/Branch_0/Conv2d_1x1")
    y1 = conv(x, b1[0], 1, f"{scope}/Branch_1/Conv2d_0a_1x1")
    y1 = conv(y1, b1[1], 3, f"{scope}/Branch_1/Conv2d_0b_3x3")
    y2 = conv(x, b2[0], 1, f"{scope}/Branch_2/Conv2d_0a_1x1")
    y2 = conv(y2, b2[1], 3, f"{scope}/Branch_2/Conv2d_0b_3x3")
    y2 = conv(y2, b2[2], 3, f"{scope}/Branch_2/Conv2d_0c_3x3")
    return _residual(x, [y0, y1, y2], scope, scale, activation)


def _factorized(
    conv: ConvBN, x, scope: str, scale: float, b0: int, b1: tuple[int, int, int], k: int, activation
):
    """1x1 | 1x1 -> 1xk -> kx1, then the scaled residual: Inception-ResNet-B (k=7) and -C (k=3)."""
    y0 = conv(x, b0, 1, f"{scope}/Branch_0/Conv2d_1x1")
    y1 = conv(x, b1[0], 1, f"{scope}/Branch_1/Conv2d_0a_1x1")
    y1 = conv(y1, b1[1], (1, k), f"{scope}/Branch_1/Conv2d_0b_1x{k}")
    y1 = conv(y1, b1[2], (k, 1), f"{scope}/Branch_1/Conv2d_0c_{k}x1")
    return _residual(x, [y0, y1], scope, scale, activation)


def block17(
    conv: ConvBN,
    x,
    scope: str,
    scale: float,
    b0: int = 192,
    b1: tuple[int, int, int] = (128, 160, 192),
    activation: str | None = "relu",
):
    """Inception-ResNet-B, 17x17 (IRv2 Fig. 17; IRv1 Fig. 11: ``b0=128, b1=(128, 128, 128)``)."""
    return _factorized(conv, x, scope, scale, b0, b1, 7, activation)


def block8(
    conv: ConvBN,
    x,
    scope: str,
    scale: float,
    b0: int = 192,
    b1: tuple[int, int, int] = (192, 224, 256),
    activation: str | None = "relu",
):
    """Inception-ResNet-C, 8x8 (IRv2 Fig. 19; IRv1 Fig. 13: ``b1=(192, 192, 192)``)."""
    return _factorized(conv, x, scope, scale, b0, b1, 3, activation)
