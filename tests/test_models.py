"""The four networks as tables: reduced networks for behaviour, slim's own figures for topology.

The end-point tables are slim's (``nets/*_test.py`` in tensorflow/models research/slim:
``testBuildAndCheckAllEndPoints...``, ``testBuildBaseNetwork``, ``testGlobalPool``);
parameter counts and variable manifests are the reference's (``registry.slim_manifest``
is the public checkpoints' list of names and shapes).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize
from slim_kit import random_variables, write_checkpoint

import keras_inception as ki
from keras_inception.core import registry
from keras_inception.models import MODELS, get
from keras_inception.weights import checkpoint, slim
from keras_inception.weights.checkpoint import CheckpointError

FAMILIES = list(MODELS)  # keras.applications' MODEL_LIST, timm's list_models()
SLIM_FAMILIES = [name for name in FAMILIES if registry.family(name).slim_scope]
REDUCED = {"depths": (1, 1, 1), "input_shape": (75, 75, 3)}
NARROW = {"depths": (1, 1, 1), "width": 0.25}
README = os.path.join(os.path.dirname(__file__), "..", "README.md")

# slim's end points of the base networks at 299x299, in order (batch dimension dropped).
SLIM_BASE_END_POINTS = {
    "inception_v3": {
        "Conv2d_1a_3x3": (149, 149, 32), "Conv2d_2a_3x3": (147, 147, 32), "Conv2d_2b_3x3": (147, 147, 64),
        "MaxPool_3a_3x3": (73, 73, 64), "Conv2d_3b_1x1": (73, 73, 80), "Conv2d_4a_3x3": (71, 71, 192),
        "MaxPool_5a_3x3": (35, 35, 192), "Mixed_5b": (35, 35, 256), "Mixed_5c": (35, 35, 288),
        "Mixed_5d": (35, 35, 288), "Mixed_6a": (17, 17, 768), "Mixed_6b": (17, 17, 768),
        "Mixed_6c": (17, 17, 768), "Mixed_6d": (17, 17, 768), "Mixed_6e": (17, 17, 768),
        "Mixed_7a": (8, 8, 1280), "Mixed_7b": (8, 8, 2048), "Mixed_7c": (8, 8, 2048),
    },
    "inception_v4": {
        "Conv2d_1a_3x3": (149, 149, 32), "Conv2d_2a_3x3": (147, 147, 32), "Conv2d_2b_3x3": (147, 147, 64),
        "Mixed_3a": (73, 73, 160), "Mixed_4a": (71, 71, 192), "Mixed_5a": (35, 35, 384),
        **{f"Mixed_5{c}": (35, 35, 384) for c in "bcde"}, "Mixed_6a": (17, 17, 1024),
        **{f"Mixed_6{c}": (17, 17, 1024) for c in "bcdefgh"}, "Mixed_7a": (8, 8, 1536),
        **{f"Mixed_7{c}": (8, 8, 1536) for c in "bcd"},
    },
    "inception_resnet_v2": {
        "Conv2d_1a_3x3": (149, 149, 32), "Conv2d_2a_3x3": (147, 147, 32), "Conv2d_2b_3x3": (147, 147, 64),
        "MaxPool_3a_3x3": (73, 73, 64), "Conv2d_3b_1x1": (73, 73, 80), "Conv2d_4a_3x3": (71, 71, 192),
        "MaxPool_5a_3x3": (35, 35, 192), "Mixed_5b": (35, 35, 320), "Mixed_6a": (17, 17, 1088),
        "PreAuxLogits": (17, 17, 1088), "Mixed_7a": (8, 8, 2080), "Conv2d_7b_1x1": (8, 8, 1536),
    },
}  # fmt: skip
# slim's testGlobalPool / testHalfSizeImages: the last feature map at other input sizes.
SLIM_PRE_POOL = [
    ("inception_v3", (400, 600), (11, 17, 2048)),
    ("inception_v4", (350, 400), (9, 11, 1536)),
    ("inception_resnet_v2", (150, 150), (3, 3, 1536)),
]
PARAMS = {  # the reference's Keras counts (BN statistics included): 1000 classes; 1001 with aux
    "inception_v3": (23_851_784, 27_182_194),
    "inception_v4": (42_711_400, 46_074_066),
    "inception_resnet_v2": (55_873_736, 59_244_594),
}


def images(n: int = 2, size: int = 75, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


# ---------------------------------------------------------------- reduced networks, every family


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("pooling", [None, "avg", "max"])
def test_forward_pass_and_pooling(name, pooling):
    model = get(name)(include_top=False, weights=None, pooling=pooling, **REDUCED)
    out = model(images(), training=False).numpy()
    channels = model.end_points[list(model.end_points)[-1 if pooling is None else -2]].shape[-1]
    assert out.shape == ((2, 1, 1, channels) if pooling is None else (2, channels))  # 75 -> 1x1
    assert np.isfinite(out).all()
    if pooling:
        assert list(model.end_points)[-1] == "global_pool"


@pytest.mark.parametrize("name", FAMILIES)
def test_classifier_heads_and_end_points(name):
    model = get(name)(weights=None, classes=7, aux_logits=True, depths=(1, 1, 1))
    assert model.output_names == ["Predictions", "AuxPredictions"]
    main, aux = (t.numpy() for t in model(images(2, 299), training=False))
    assert main.shape == aux.shape == (2, 7)
    np.testing.assert_allclose(main.sum(axis=1), 1.0, rtol=1e-5)
    points = ki.end_points(model)
    assert list(points)[-5:] == ["global_pool", "Logits", "Predictions", "AuxLogits", "AuxPredictions"]
    assert points["Logits"].shape[-1] == points["AuxLogits"].shape[-1] == 7


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_reaches_every_trainable_weight(name):
    model = randomize(get(name)(weights=None, classes=3, **REDUCED))
    x, y = images(4), tf.one_hot([0, 1, 2, 0], 3)
    with tf.GradientTape() as tape:
        loss = keras.losses.categorical_crossentropy(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    dead = [w.path for w, g in zip(model.trainable_weights, grads, strict=True) if g is None or not np.any(g)]
    assert dead == []
    assert len(grads) == len(model.trainable_weights) > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_keras_round_trip_without_custom_objects(name, tmp_path):
    model = randomize(get(name)(weights=None, classes=5, **REDUCED))
    x = images()
    expected = model(x, training=False)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)  # no custom_objects: ScaleSum is registered
    np.testing.assert_array_equal(restored(x, training=False), expected)
    h5 = str(tmp_path / "m.weights.h5")
    model.save_weights(h5)
    again = get(name)(weights=h5, classes=5, **REDUCED)
    np.testing.assert_array_equal(again(x, training=False), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_final_endpoint_stops_the_build(name):
    full = get(name)(include_top=False, weights=None, **REDUCED)
    names = list(full.end_points)
    for stop in (names[0], names[len(names) // 2], names[-1]):
        model = get(name)(include_top=False, weights=None, final_endpoint=stop, **REDUCED)
        assert list(model.end_points) == names[: names.index(stop) + 1]
        assert model.output_shape == full.end_points[stop].shape
    with pytest.raises(ValueError, match="not an end point"):
        get(name)(include_top=False, weights=None, final_endpoint="Mixed_9z", **REDUCED)


@pytest.mark.parametrize("name", FAMILIES)
def test_non_square_inputs(name):
    model = get(name)(
        include_top=False, weights=None, pooling="avg", depths=(1, 1, 1), input_shape=(101, 163, 3)
    )
    out = model(np.zeros((1, 101, 163, 3), "float32"), training=False)
    assert out.shape == (1, model.output_shape[-1])


# ---------------------------------------------------------------- topology against slim


@pytest.mark.parametrize("name", SLIM_FAMILIES)
def test_end_points_equal_slims_test_tables(name):
    expected = SLIM_BASE_END_POINTS[name]
    model = get(name)(include_top=False, weights=None, input_shape=(299, 299, 3))
    got = {k: tuple(v.shape[1:]) for k, v in model.end_points.items()}
    assert list(got) == list(expected)  # the same end points, in slim's order
    assert got == expected
    if name == "inception_resnet_v2":  # slim's testBuildOnlyUptoFinalEndpoint
        stopped = get(name)(include_top=False, weights=None, final_endpoint="PreAuxLogits")
        assert list(stopped.end_points) == list(expected)[: list(expected).index("PreAuxLogits") + 1]


@pytest.mark.parametrize("name, size, pre_pool", SLIM_PRE_POOL)
def test_pre_pool_shapes_at_other_sizes(name, size, pre_pool):
    model = get(name)(include_top=False, weights=None, input_shape=(*size, 3))
    assert model.output_shape[1:] == pre_pool


@pytest.mark.parametrize("name", SLIM_FAMILIES)
def test_parameter_counts_multiply_adds_and_slim_manifest(name):
    plain, with_aux = PARAMS[name]
    published = get(name)()
    assert published.count_params() == plain
    reference = {"inception_v3": 5.73e9, "inception_v4": 12.28e9, "inception_resnet_v2": 13.18e9}[name]
    macs = ki.multiply_adds(published)
    assert 0.995 * reference < macs <= reference  # ours: convolutions and dense only
    with open(README) as f:
        row = next(line for line in f if line.startswith(f"| `{get(name).__name__}` |"))
    assert f"| {plain:,} | {macs / 1e9:.2f} G | {reference / 1e9:.2f} G |" in row  # the README's columns
    model = get(name)(classes=1001, aux_logits=True)
    assert model.count_params() == with_aux
    scope = registry.family(name).slim_scope
    ours = slim.manifest(model, scope)
    reference = registry.slim_manifest(name)
    assert len(ours) == len(model.weights)  # the name mapping is injective
    assert ours == reference
    for variable in reference:  # and back again
        layer, weight = slim.keras_path(variable, scope).split("/")
        assert any(w.path.endswith(f"{layer}/{weight}") for w in model.get_layer(layer).weights)


def test_inception_resnet_v1_matches_the_paper():
    model = ki.InceptionResNetV1(weights=None, include_top=False, input_shape=(299, 299, 3))
    shapes = {k: tuple(model.end_points[k].shape[1:]) for k in ("Conv2d_4b_3x3", "Mixed_6a", "Mixed_7a")}
    assert shapes == {"Conv2d_4b_3x3": (35, 35, 256), "Mixed_6a": (17, 17, 896), "Mixed_7a": (8, 8, 1792)}
    residual = [layer for layer in model.layers if isinstance(layer, ki.ScaleSum)]
    assert [layer.scale for layer in residual] == [0.17] * 5 + [0.10] * 10 + [0.20] * 5
    assert model.output_shape == (None, 8, 8, 1792)


def test_irv2_last_block_is_linear_and_scales_follow_slim():
    model = ki.InceptionResNetV2(include_top=False, weights=None, input_shape=(299, 299, 3))
    scales = [layer.scale for layer in model.layers if isinstance(layer, ki.ScaleSum)]
    assert scales == [0.17] * 10 + [0.10] * 20 + [0.20] * 9 + [1.0]
    assert model.get_layer("Conv2d_7b_1x1").input is model.get_layer("Block8-ScaleSum").output  # no ReLU


def _copy_from_peer(peer: keras.Model, ours: keras.Model) -> None:
    """keras.applications' layers carry no slim names (``conv2d_17``), so this test alone
    pairs layers by order; shapes must agree, and a mispairing would show in the outputs."""
    a = [layer for layer in peer.layers if layer.weights]
    b = [layer for layer in ours.layers if layer.weights]
    assert len(a) == len(b)
    for src, dst in zip(a, b, strict=True):
        values, targets = src.get_weights(), dst.get_weights()
        assert [v.size for v in values] == [t.size for t in targets], (src.name, dst.name)
        dst.set_weights([v.reshape(t.shape) for v, t in zip(values, targets, strict=True)])


@pytest.mark.parametrize(
    "ours, peer",
    [
        (ki.InceptionResNetV2, keras.applications.InceptionResNetV2),
        pytest.param(ki.InceptionV3, keras.applications.InceptionV3, marks=pytest.mark.slow),
    ],
)
def test_identical_to_keras_applications(ours, peer):
    size = 75 if ours is ki.InceptionResNetV2 else 139  # keras.applications' smallest inputs
    peer = randomize(peer(weights=None, input_shape=(size, size, 3), classifier_activation=None))
    model = ours(input_shape=(size, size, 3), classifier_activation=None)
    _copy_from_peer(peer, model)
    x = images(2, size, seed=1)
    expected = peer(x, training=False).numpy()
    assert np.abs(expected).max() > 0.1  # a real signal, not vanished activations
    assert np.abs(model(x, training=False).numpy() - expected).max() <= 1e-4


# ---------------------------------------------------------------- API contract


def test_mixed_bfloat16_predicts_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = ki.InceptionResNetV2(weights=None, classes=5, **REDUCED)
    assert [layer for layer in model.layers if isinstance(layer, ki.ScaleSum)][0].compute_dtype == "bfloat16"
    out = model.predict(images(), verbose=0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-3)


def test_scale_sum_is_exact_and_serializable():
    layer = ki.ScaleSum(0.17)
    a, b = np.ones((1, 2), "float32"), np.full((1, 2), 2.0, "float32")
    np.testing.assert_allclose(layer([a, b]), 1.34)
    assert ki.ScaleSum.from_config(layer.get_config()).scale == 0.17
    with pytest.raises(ValueError, match="finite"):
        ki.ScaleSum(float("nan"))


def test_width_and_depth_shrink_the_network():
    half = ki.InceptionV4(
        include_top=False, pooling="avg", width=0.5, depths=(1, 2, 1), input_shape=(299, 299, 3)
    )
    assert half.output_shape == (None, 768)
    assert ki.multiply_adds(half) < 12.25e9 / 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (64, 64, 3)}, "at least 75"),
        ({"input_shape": (299, 299, None)}, "channels must be a known positive"),
        ({"input_shape": (299, 299)}, "input_shape must be"),
        ({"include_top": False, "pooling": "mean"}, "pooling must be one of"),
        ({"input_tensor": keras.Input((299, 3))}, "rank 4"),
        ({"weights": "imagenet", "classes": 10}, "classes must be 1000"),
        ({"weights": "no_such_weights"}, "weights must be None"),
        ({"weights": "/nonexistent/model.weights.h5"}, "not found"),
        ({"weights": "/nonexistent/inception_v4.ckpt"}, "no weights at"),
        ({"weights": "ens_adv_imagenet"}, "inception_v4 has no 'ens_adv_imagenet' weights"),
        ({"classes": 0}, "classes must be a positive"),
        ({"aux_logits": True, "include_top": False}, "aux_logits=True needs include_top"),
        ({"aux_logits": True, "input_shape": (None, None, 3)}, "fixed input size"),
        ({"dropout_rate": 1.5}, "dropout_rate"),
        ({"depths": (1, 0, 1)}, "depths must be"),
        ({"final_endpoint": "Mixed_6a"}, "final_endpoint needs include_top=False"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message, monkeypatch):
    built = []
    monkeypatch.setattr(
        keras.layers.Conv2D, "__init__", lambda *a, **k: built.append(1) or pytest.fail("built")
    )
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ki.InceptionV4(**kwargs)
    assert built == []  # refused before any layer was made


def test_input_tensor_is_used():
    tensor = keras.Input((96, 128, 3))
    model = ki.InceptionV3(include_top=False, input_tensor=tensor, pooling="avg", depths=(1, 1, 1))
    assert model.inputs[0] is tensor
    assert model.output_shape == (None, 2048)


def test_feature_extractor_and_reloaded_models(tmp_path):
    model = ki.InceptionV4(include_top=False, weights=None, **REDUCED)
    backbone = ki.feature_extractor(model, ["Mixed_5b", "Mixed_7b"])
    assert [tuple(t.shape[1:]) for t in backbone.outputs] == [(7, 7, 384), (1, 1, 1536)]
    with pytest.raises(ValueError, match="unknown end points"):
        ki.feature_extractor(model, ["Mixed_9z"])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert not hasattr(loaded, "end_points")  # the attribute is not saved: the graph's names are
    points = ki.end_points(loaded)
    assert list(points) == list(model.end_points)
    assert [p.shape for p in points.values()] == [p.shape for p in model.end_points.values()]
    randomize(model)
    model.save(tmp_path / "r.keras")
    again = ki.feature_extractor(keras.saving.load_model(tmp_path / "r.keras"), ["Mixed_5b", "Mixed_7b"])
    for got, want in zip(again(images()), backbone(images()), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model 'plain' has no end points: none of its layers is named"):
        ki.end_points(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")], name="plain"))


END_POINT_VARIANTS = [
    {"classes": 7, "aux_logits": True},
    {"classes": 7, "aux_logits": True, "classifier_activation": None},
    {"include_top": False},
    {"include_top": False, "pooling": "avg"},
    {"include_top": False, "final_endpoint": "Mixed_6a"},
]


@pytest.mark.parametrize("name", FAMILIES)
def test_end_points_read_from_the_graph_are_those_recorded_in_the_build(name):
    for variant in END_POINT_VARIANTS:
        model = get(name)(weights=None, depths=(1, 1, 1), **variant)
        points = ki.end_points(model)
        assert list(points) == list(model.end_points), variant
        assert all(points[k] is model.end_points[k] for k in points), variant


def test_inception_v3_aux_conv_is_named_and_shaped_as_slims_at_every_size():
    """slim's ``_reduced_kernel_size_for_small_input``: the map's size up to 5x5, in the name too;
    a larger map (where slim's squeeze refuses it) is averaged, as timm's aux head does."""
    for size, k, averaged in ((139, 1, False), (203, 3, False), (347, 5, True)):
        model = ki.InceptionV3(input_shape=(size, size, 3), classes=5, aux_logits=True, **NARROW)
        assert model.get_layer(f"AuxLogits-Conv2d_2a_{k}x{k}").kernel.shape[:2] == (k, k)
        assert ("AuxLogits-global_pool" in [layer.name for layer in model.layers]) == averaged
        assert model.output_shape == [(None, 5), (None, 5)]


def test_slim_checkpoint_made_at_139_with_its_aux_head_loads_strictly(tmp_path):
    """slim's Inception-v3 at 139x139 names its aux conv ``Conv2d_2a_1x1`` (a 1x1 map); the
    public checkpoints' ``Conv2d_2a_5x5`` (299x299) has no place in that model."""
    public = random_variables("inception_v3", seed=4)
    old = "InceptionV3/AuxLogits/Conv2d_2a_5x5/"
    at_139 = {
        name.replace(old, old.replace("5x5", "1x1")): value[2:3, 2:3] if name == f"{old}weights" else value
        for name, value in public.items()
    }
    prefix = write_checkpoint(at_139, str(tmp_path / "ckpt" / "model.ckpt"), "V2")
    model = ki.InceptionV3(weights=prefix, input_shape=(139, 139, 3), classes=1001, aux_logits=True)
    kernel = model.get_layer("AuxLogits-Conv2d_2a_1x1").kernel
    np.testing.assert_array_equal(kernel, at_139["InceptionV3/AuxLogits/Conv2d_2a_1x1/weights"])
    assert slim.manifest(model, "InceptionV3") == {name: value.shape for name, value in at_139.items()}
    with pytest.raises(CheckpointError, match="has no variable InceptionV3/AuxLogits/Conv2d_2a_1x1/weights"):
        checkpoint.assign(model, public, "inception_v3")
