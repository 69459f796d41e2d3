"""Sibling 1x1 convolutions fused into one (keras_inception.deploy.pointwise), on the inference form."""

import keras
import numpy as np
import pytest
from conftest import randomize

import keras_inception as ki
from keras_inception.deploy import folding as inference
from keras_inception.deploy import pointwise

REDUCED = {"width": 0.25, "depths": (1, 1, 1)}


def relative(reference, candidate) -> float:
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


@pytest.mark.parametrize(  # Inception-v4 and Inception-ResNet-v1 fuse as their siblings do: -m slow
    "family",
    [
        f if f in ("inception_v3", "inception_resnet_v2") else pytest.param(f, marks=pytest.mark.slow)
        for f in sorted(ki.MODELS)
    ],
)
def test_fused_equals_unfused_with_the_weights_mapped(family, tmp_path):
    model = randomize(
        ki.MODELS[family](weights=None, input_shape=(107, 107, 3), classes=7, aux_logits=True, **REDUCED)
    )
    folded = inference.fold_batchnorm(model)
    groups = pointwise.fusable_groups(folded)
    fused = pointwise.fuse_pointwise(folded)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 107, 107, 3)).astype("float32")
    for a, b in zip(keras.tree.flatten(folded(x)), keras.tree.flatten(fused(x)), strict=True):
        assert relative(a, b) < 1e-5

    assert groups and all(len(g) > 1 for g in groups)
    for convs in groups:  # the kernel of member i is the fused kernel's slice i, bias too
        block = pointwise._block_name([c.name for c in convs])
        conv = fused.get_layer(f"{block}-Pointwise_fused")
        split = fused.get_layer(f"{block}-Pointwise_split")
        assert conv.get_config()["activation"] == "relu" and split.sizes == [c.filters for c in convs]
        assert split.names == [f"{c.name}-Relu" for c in convs]
        start = 0
        for c in convs:
            for w, w0 in zip(conv.get_weights(), c.get_weights(), strict=True):
                np.testing.assert_array_equal(w[..., start : start + c.filters], w0)
            start += c.filters
        assert not any(c.name in [x.name for x in fused.layers] for c in convs)
    assert len(fused.layers) < len(folded.layers)
    assert list(ki.end_points(fused)) == list(ki.end_points(folded))
    names = [n for n in ("Mixed_5b", "Mixed_6a", "PreAuxLogits") if n in ki.end_points(fused)]
    ours, theirs = ki.feature_extractor(fused, names), ki.feature_extractor(folded, names)
    for a, b in zip(theirs(x), ours(x), strict=True):
        assert relative(a, b) < 1e-5

    path = str(tmp_path / "fused.keras")  # ChannelSplit is registered: the model reloads as it is
    fused.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path)(x)[0], fused(x)[0], rtol=1e-5, atol=1e-6)


def test_nothing_to_fuse_and_what_is_left_alone():
    x = keras.Input((8, 8, 4))
    a = keras.layers.Conv2D(3, 1, name="a")(x)  # reads x
    b = keras.layers.Conv2D(5, 3, padding="same", name="b")(x)  # 3x3: not pointwise
    c = keras.layers.Conv2D(2, 1, strides=2, name="c")(x)  # strided: not fused
    model = keras.Model(x, [a, b, c])
    assert pointwise.fusable_groups(model) == [] and pointwise.fuse_pointwise(model) is model

    d = keras.layers.Conv2D(4, 1, name="d")(x)  # a and d fuse; no Activation after them: linear
    e = keras.layers.Activation("relu", name="e")(d)
    model = keras.Model(x, [a, b, c, e])
    fused = pointwise.fuse_pointwise(model)
    (group,) = pointwise.fusable_groups(model)
    names = [c.name for c in group]
    assert sorted(names) == ["a", "d"]
    conv = fused.get_layer(f"{names[0]}-Pointwise_fused")  # no block name in common: the first's
    assert conv.filters == 7 and conv.get_config()["activation"] == "linear"
    assert fused.get_layer(f"{names[0]}-Pointwise_split").names == names
    assert "e" in [x.name for x in fused.layers]
    data = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    for p, q in zip(model(data), fused(data), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
