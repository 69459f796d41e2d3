"""The paper's building blocks, each written once and parametrised by its filters.

Every Inception block is a few *towers* of convolutions side by side, concatenated
(:func:`mixed`); a reduction is the same with stride-2 tower ends and a max pool
(:func:`reduction`); a residual block adds the towers back onto its input
(:func:`residual`). A tower is a list of ``(filters, kernel)`` steps, named as slim
names them: ``Branch_<i>/Conv2d_0a_1x1``, ``Conv2d_0b_3x3``, ... in order (SAME
padding); a ``(filters, kernel, strides)`` step is a VALID convolution that shrinks
the grid, ``Conv2d_1a_3x3``; a ``(filters, SPLIT)`` step is Inception-C's parallel
1x3 and 3x1 convolutions. ``rename`` carries slim's few irregular names. slim's
``align_feature_maps`` is ``padding="same"`` for the VALID steps and pools.

The named blocks below are the paper's figures and Table 1 as parameters; their
defaults are Inception-v4's and Inception-ResNet-v2's, and the other networks pass
their own filters.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

from keras import layers

from keras_inception.nn.layers import Builder, Conv2D, ScaleSum, avg_pool, concat, keras_name, max_pool

SPLIT = "split"  # a step of parallel 1x3 and 3x1 convolutions, concatenated
Step = tuple  # (filters, kernel), (filters, kernel, strides) for a VALID conv, or (filters, SPLIT)
Tower = Sequence[Step]


def _kernel_name(kernel) -> str:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return f"{kh}x{kw}"


def tower(b: Builder, x, scope: str, steps: Tower, rename: Mapping[str, str] | None = None, padding="valid"):
    """One branch: ``steps`` in sequence, named ``Conv2d_0a_..``, ``Conv2d_0b_..`` (slim's lettering);
    the ``Conv2d_1a`` steps are ``padding``."""
    rename = rename or {}
    letters = iter(string.ascii_lowercase)

    def conv(x, filters, kernel, strides=None):
        index = f"0{next(letters)}" if strides is None else "1a"
        name = f"{scope}/Conv2d_{index}_{_kernel_name(kernel)}"
        pad = "same" if strides is None else padding
        return b.conv(x, filters, kernel, rename.get(name, name), strides=strides or 1, padding=pad)

    for filters, kernel, *strides in steps:
        if kernel == SPLIT:
            x = concat([conv(x, filters, (1, 3)), conv(x, filters, (3, 1))], f"{scope}/concat")
        else:
            x = conv(x, filters, kernel, *strides)
    return x


def _towers(b: Builder, x, scope: str, towers: Sequence[Tower], rename=None, padding="valid") -> list:
    rename = {f"{scope}/{old}": f"{scope}/{new}" for old, new in (rename or {}).items()}
    return [tower(b, x, f"{scope}/Branch_{i}", steps, rename, padding) for i, steps in enumerate(towers)]


def mixed(b: Builder, x, scope: str, towers: Sequence[Tower], pool_filters: int, rename=None):
    """An Inception block: ``towers``, then a 3x3 average pool and a 1x1 conv, concatenated."""
    branches = _towers(b, x, scope, towers, rename)
    pool = f"{scope}/Branch_{len(towers)}"
    branches.append(b.conv(avg_pool(x, f"{pool}/AvgPool_0a_3x3"), pool_filters, 1, f"{pool}/Conv2d_0b_1x1"))
    return concat(branches, scope)


def reduction(b: Builder, x, scope: str, towers: Sequence[Tower], rename=None, strides=2, padding="valid"):
    """A grid reduction: towers ending in a stride-2 VALID conv, and a 3x3/2 max pool.

    ``strides`` is the pool's (the towers' are in their steps); ``padding`` the tower
    ends' and the pool's.
    """
    branches = _towers(b, x, scope, towers, rename, padding)
    branches.append(max_pool(x, f"{scope}/Branch_{len(towers)}/MaxPool_1a_3x3", strides, padding))
    return concat(branches, scope)


def residual(b: Builder, x, scope: str, towers: Sequence[Tower], scale: float, activation="relu"):
    """An Inception-ResNet block: ``activation(x + scale * up(concat(towers)))``.

    ``up`` is the biased linear 1x1 projection back to ``x``'s channels (no BatchNorm).
    """
    branches = _towers(b, x, scope, towers, {"Branch_0/Conv2d_0a_1x1": "Branch_0/Conv2d_1x1"})
    mixed_ = concat(branches, f"{scope}/concat")
    up = Conv2D(
        x.shape[-1],
        1,
        use_bias=True,
        kernel_initializer=b.initializer(),
        name=keras_name(f"{scope}/Conv2d_1x1"),
    )(mixed_)
    x = ScaleSum(scale, name=keras_name(f"{scope}/ScaleSum"))([x, up])
    if activation is None:
        return x
    return layers.Activation(activation, name=keras_name(f"{scope}/Relu"))(x)


# ---------------------------------------------------------------- the paper's blocks


def inception_a(b: Builder, x, scope: str, b0=96, b1=(64, 96), b2=(64, 96, 96), b3=96, k1=3, rename=None):
    """Inception-A, 35x35 (Fig. 4): 1x1 | 1x1-kxk | 1x1-3x3-3x3 | avg-1x1.

    Inception-v3's ``Mixed_5b``-``5d`` and slim's IRv2 ``Mixed_5b`` are this block with
    a 5x5 second tower (``k1=5``) and other filters.
    """
    towers = [[(b0, 1)], [(b1[0], 1), (b1[1], k1)], [(b2[0], 1), (b2[1], 3), (b2[2], 3)]]
    return mixed(b, x, scope, towers, b3, rename)


def inception_b(b: Builder, x, scope: str, b0=384, b1=(192, 224, 256), b2=(192, 192, 224, 224, 256), b3=128):
    """Inception-B, 17x17 with factorised 7x7 convolutions (Fig. 5; Inception-v3's ``Mixed_6b``-``6e``)."""
    towers = [
        [(b0, 1)],
        [(b1[0], 1), (b1[1], (1, 7)), (b1[2], (7, 1))],
        [(b2[0], 1), (b2[1], (7, 1)), (b2[2], (1, 7)), (b2[3], (7, 1)), (b2[4], (1, 7))],
    ]
    return mixed(b, x, scope, towers, b3)


def inception_c(
    b: Builder, x, scope: str, b0=256, b1=(384, 256), b2=((384, 1), (448, (3, 1)), (512, (1, 3))), split2=256,
    b3=256, rename=None,
):  # fmt: skip
    """Inception-C, 8x8 with split 1x3 / 3x1 outputs (Fig. 6).

    Inception-v3's ``Mixed_7b`` / ``7c`` are this block with ``b2=((448, 1), (384, 3))``.
    """
    towers = [[(b0, 1)], [(b1[0], 1), (b1[1], SPLIT)], [*b2, (split2, SPLIT)]]
    return mixed(b, x, scope, towers, b3, rename)


def reduction_a(
    b: Builder, x, scope: str, k: int, l: int, m: int, n: int, rename=None, strides=2, padding="valid"  # noqa: E741
):  # fmt: skip
    """Reduction-A (Fig. 7) with the filter bank (k, l, m, n) of the paper's Table 1.

    Inception-v4 (192, 224, 256, 384), Inception-ResNet-v1 (192, 192, 256, 384),
    Inception-ResNet-v2 (256, 256, 384, 384); Inception-v3's ``Mixed_6a`` is
    (64, 96, 96, 384). ``strides=1`` keeps the grid (slim IRv2's ``output_stride=8``).
    """
    towers = [[(n, 3, strides)], [(k, 1), (l, 3), (m, 3, strides)]]
    return reduction(b, x, scope, towers, rename, strides, padding)


def reduction_b(b: Builder, x, scope: str, b0=(192, 192), b1=(256, 256, 320, 320)):
    """Reduction-B of Inception-v4 (Fig. 8); Inception-v3's ``Mixed_7a`` with other filters."""
    towers = [[(b0[0], 1), (b0[1], 3, 2)], [(b1[0], 1), (b1[1], (1, 7)), (b1[2], (7, 1)), (b1[3], 3, 2)]]
    return reduction(b, x, scope, towers)


def reduction_b_residual(
    b: Builder, x, scope: str, b0=(256, 384), b1=(256, 288), b2=(256, 288, 320), padding="valid"
):
    """Reduction-B of the Inception-ResNets: slim's IRv2 ``Mixed_7a``; IRv1 (Fig. 12) is
    ``b1=(256, 256), b2=(256, 256, 256)``."""
    towers = [
        [(b0[0], 1), (b0[1], 3, 2)],
        [(b1[0], 1), (b1[1], 3, 2)],
        [(b2[0], 1), (b2[1], 3), (b2[2], 3, 2)],
    ]
    return reduction(b, x, scope, towers, padding=padding)


def block35(b: Builder, x, scope: str, scale: float, b0=32, b1=(32, 32), b2=(32, 48, 64), activation="relu"):
    """Inception-ResNet-A, 35x35 (IRv2 Fig. 16; IRv1 Fig. 10: ``b2=(32, 32, 32)``)."""
    towers = [[(b0, 1)], [(b1[0], 1), (b1[1], 3)], [(b2[0], 1), (b2[1], 3), (b2[2], 3)]]
    return residual(b, x, scope, towers, scale, activation)


def block17(b: Builder, x, scope: str, scale: float, b0=192, b1=(128, 160, 192), activation="relu"):
    """Inception-ResNet-B, 17x17 (IRv2 Fig. 17; IRv1 Fig. 11: ``b0=128, b1=(128, 128, 128)``)."""
    return residual(
        b, x, scope, [[(b0, 1)], [(b1[0], 1), (b1[1], (1, 7)), (b1[2], (7, 1))]], scale, activation
    )


def block8(b: Builder, x, scope: str, scale: float, b0=192, b1=(192, 224, 256), activation="relu"):
    """Inception-ResNet-C, 8x8 (IRv2 Fig. 19; IRv1 Fig. 13: ``b1=(192, 192, 192)``)."""
    return residual(
        b, x, scope, [[(b0, 1)], [(b1[0], 1), (b1[1], (1, 3)), (b1[2], (3, 1))]], scale, activation
    )


# ---------------------------------------------------------------- stems


def stem_v3(b: Builder, x, padding="valid"):
    """The Inception-v3 stem up to ``Conv2d_4a_3x3`` (299 -> 71x71x192), recording its end points.

    Shared by Inception-v3, slim's Inception-ResNet-v2 and Inception-ResNet-v1
    (paper Fig. 14), which then diverge: a max pool, or a stride-2 convolution.
    ``padding`` replaces VALID everywhere (``Conv2d_2b_3x3`` is always SAME).
    """
    for scope, filters, kernel, strides, pad in (
        ("Conv2d_1a_3x3", 32, 3, 2, padding),
        ("Conv2d_2a_3x3", 32, 3, 1, padding),
        ("Conv2d_2b_3x3", 64, 3, 1, "same"),
        ("MaxPool_3a_3x3", None, 3, 2, padding),
        ("Conv2d_3b_1x1", 80, 1, 1, padding),
        ("Conv2d_4a_3x3", 192, 3, 1, padding),
    ):
        if filters is None:
            x = b.add(scope, max_pool(x, scope, padding=pad))
        else:
            x = b.add(scope, b.conv(x, filters, kernel, scope, strides=strides, padding=pad))
    return x


def stem_v4(b: Builder, x):
    """Inception-v4 / paper Inception-ResNet-v2 stem (Fig. 3): 299 -> 35x35x384."""
    for scope, filters, strides, padding in (
        ("Conv2d_1a_3x3", 32, 2, "valid"),
        ("Conv2d_2a_3x3", 32, 1, "valid"),
        ("Conv2d_2b_3x3", 64, 1, "same"),
    ):
        x = b.add(scope, b.conv(x, filters, 3, scope, strides=strides, padding=padding))
    x = b.add(
        "Mixed_3a",
        concat(
            [
                max_pool(x, "Mixed_3a/Branch_0/MaxPool_0a_3x3"),
                b.conv(x, 96, 3, "Mixed_3a/Branch_1/Conv2d_0a_3x3", strides=2, padding="valid"),
            ],
            "Mixed_3a",
        ),
    )
    towers = [[(64, 1), (96, 3, 1)], [(64, 1), (64, (1, 7)), (64, (7, 1)), (96, 3, 1)]]
    x = b.add("Mixed_4a", concat(_towers(b, x, "Mixed_4a", towers), "Mixed_4a"))
    return b.add("Mixed_5a", reduction(b, x, "Mixed_5a", [[(192, 3, 2)]]))
