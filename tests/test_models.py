"""The four networks: topology against slim's manifests and keras.applications, API, errors."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import REFERENCE, randomize

import keras_inception as ki
from keras_inception import slim
from keras_inception.models import get

SLIM_FAMILIES = ["inception_v3", "inception_v4", "inception_resnet_v2"]
PARAMS = {  # ../shared/reference/README.md, Keras counting (BN statistics included)
    "inception_v3": (23_851_784, 27_182_194),
    "inception_v4": (42_711_400, 46_074_066),
    "inception_resnet_v2": (55_873_736, 59_244_594),
}


def small(builder, **kwargs):
    """A reduced network on the full code path, for the slower checks."""
    depths = {"InceptionV3": {}, "InceptionV4": {"depths": (1, 1, 1)}}.get(
        builder.__name__, {"depths": (1, 1, 2)}
    )
    return builder(**{"input_shape": (75, 75, 3), "weights": None, **depths, **kwargs})


@pytest.mark.parametrize("name", SLIM_FAMILIES)
def test_parameter_counts(name):
    builder, _ = get(name)
    plain, with_aux = PARAMS[name]
    assert builder().count_params() == plain
    assert builder(classes=1001, aux_logits=True).count_params() == with_aux


@pytest.mark.parametrize("name", SLIM_FAMILIES)
def test_weights_map_one_to_one_onto_slim_manifest(name):
    builder, spec = get(name)
    model = builder(classes=1001, aux_logits=True)
    with open(os.path.join(REFERENCE, "slim_checkpoints", f"{name}.json")) as f:
        reference = {k: tuple(v) for k, v in json.load(f).items()}
    ours = slim.manifest(model, spec.slim_scope)
    assert len(ours) == len(model.weights)  # the mapping is injective
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}
    for name_ in list(reference)[:50]:  # and back again
        assert model.get_layer(slim.keras_path(name_, spec.slim_scope).split("/")[0])


def _copy_from_peer(peer: keras.Model, ours: keras.Model) -> None:
    """Copy keras.applications weights across. The peer's layers carry no slim names
    (``conv2d_17``), so this test helper alone pairs layers by order; shapes must agree,
    and any mispairing would show in the outputs."""
    a = [layer for layer in peer.layers if layer.weights]
    b = [layer for layer in ours.layers if layer.weights]
    assert len(a) == len(b)
    for src, dst in zip(a, b, strict=True):
        values = src.get_weights()
        targets = dst.get_weights()
        assert [v.size for v in values] == [t.size for t in targets], (src.name, dst.name)
        dst.set_weights([v.reshape(t.shape) for v, t in zip(values, targets, strict=True)])


@pytest.mark.parametrize(
    "ours, peer",
    [
        (ki.InceptionResNetV2, keras.applications.InceptionResNetV2),
        (ki.InceptionV3, keras.applications.InceptionV3),
    ],
)
def test_identical_to_keras_applications(ours, peer):
    peer = randomize(peer(weights=None, input_shape=(139, 139, 3), classifier_activation=None))
    model = ours(input_shape=(139, 139, 3), classifier_activation=None)
    _copy_from_peer(peer, model)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 139, 139, 3)).astype("float32")
    expected = peer.predict(x, verbose=0)
    got = model.predict(x, verbose=0)
    assert np.abs(expected).max() > 0.1  # a real signal, not vanished activations
    assert np.abs(got - expected).max() <= 1e-4


def test_inception_resnet_v1_matches_the_paper():
    model = ki.InceptionResNetV1(weights=None, include_top=False, input_shape=(299, 299, 3))
    stages = ki.feature_extractor(model, ["Conv2d_4b_3x3", "Mixed_6a", "Mixed_7a"])
    shapes = [tuple(t.shape[1:]) for t in stages.outputs]
    assert shapes == [(35, 35, 256), (17, 17, 896), (8, 8, 1792)]  # Figs. 14, 7, 12
    assert model.output_shape == (None, 8, 8, 1792)
    residual = [layer for layer in model.layers if isinstance(layer, ki.ScaleSum)]
    assert len(residual) == 5 + 10 + 5
    assert {layer.scale for layer in residual} == {0.17, 0.10, 0.20}


def test_inception_v4_end_point_shapes():
    model = ki.InceptionV4(include_top=False, input_shape=(299, 299, 3))
    points = ki.end_points(model)
    assert tuple(points["Mixed_5a"].shape[1:]) == (35, 35, 384)  # stem, Fig. 3
    assert tuple(points["Mixed_6h"].shape[1:]) == (17, 17, 1024)
    assert tuple(points["Mixed_7d"].shape[1:]) == (8, 8, 1536)
    assert list(points)[:3] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"]


def test_irv2_last_block_is_linear_and_scales_follow_slim():
    model = ki.InceptionResNetV2(include_top=False, input_shape=(299, 299, 3))
    scales = [layer.scale for layer in model.layers if isinstance(layer, ki.ScaleSum)]
    assert scales == [0.17] * 10 + [0.10] * 20 + [0.20] * 9 + [1.0]
    after_block8 = model.get_layer("Conv2d_7b_1x1")
    assert after_block8.input is model.get_layer("Block8.ScaleSum").output  # no ReLU after Block8


def test_feature_extractor_and_aux_end_points():
    model = ki.InceptionResNetV2(classes=1001, aux_logits=True, classifier_activation=None)
    points = ki.end_points(model)
    for name in [
        "Conv2d_1a_3x3",
        "MaxPool_5a_3x3",
        "Mixed_5b",
        "Mixed_6a",
        "PreAuxLogits",
        "Mixed_7a",
        "Conv2d_7b_1x1",
        "global_pool",
        "Logits",
        "AuxLogits",
    ]:
        assert name in points, name
    assert tuple(points["PreAuxLogits"].shape[1:]) == (17, 17, 1088)
    assert tuple(points["AuxLogits"].shape[1:]) == (1001,)
    with pytest.raises(ValueError, match="unknown end points"):
        ki.feature_extractor(model, ["Mixed_9z"])


@pytest.mark.parametrize(
    "builder", [ki.InceptionV3, ki.InceptionV4, ki.InceptionResNetV1, ki.InceptionResNetV2]
)
def test_non_square_inputs_and_pooling(builder):
    model = small(builder, include_top=False, input_shape=(101, 163, 3), pooling="avg")
    out = model.predict(np.zeros((1, 101, 163, 3), "float32"), verbose=0)
    assert out.shape == (1, model.output_shape[-1])
    larger = builder(
        weights=None,
        include_top=False,
        pooling="max",
        **({} if builder is ki.InceptionV3 else {"depths": (1, 1, 2)}),
    )
    assert larger.predict(np.zeros((1, 331, 400, 3), "float32"), verbose=0).shape[0] == 1


def test_aux_logits_returns_two_outputs():
    model = ki.InceptionV4(classes=10, aux_logits=True, depths=(1, 1, 1))
    assert model.output_names == ["Predictions", "AuxPredictions"]
    main, aux = model.predict(np.zeros((2, 299, 299, 3), "float32"), verbose=0)
    assert main.shape == aux.shape == (2, 10)
    np.testing.assert_allclose(main.sum(axis=1), 1.0, rtol=1e-5)


def test_keras_round_trip_without_custom_objects(tmp_path):
    model = randomize(small(ki.InceptionResNetV2, classes=7))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 75, 75, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)  # no custom_objects: ScaleSum is registered
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    weights = str(tmp_path / "m.weights.h5")
    model.save_weights(weights)
    again = small(ki.InceptionResNetV2, classes=7, weights=weights)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    from_keras_file = small(ki.InceptionResNetV2, classes=7, weights=path)
    np.testing.assert_array_equal(from_keras_file.predict(x, verbose=0), model.predict(x, verbose=0))


def test_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = small(ki.InceptionResNetV1, classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 75, 75, 3)).astype("float32")
    y = rng.integers(0, 3, 8)
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


def test_mixed_bfloat16_predicts_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = small(ki.InceptionResNetV2, classes=5)
    scale_sums = [layer for layer in model.layers if isinstance(layer, ki.ScaleSum)]
    assert scale_sums[0].compute_dtype == "bfloat16"
    out = model.predict(np.random.default_rng(0).uniform(-1, 1, (2, 75, 75, 3)).astype("float32"), verbose=0)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-3)


def test_scale_sum_is_exact_and_serializable():
    layer = ki.ScaleSum(0.17)
    a, b = np.ones((1, 2), "float32"), np.full((1, 2), 2.0, "float32")
    np.testing.assert_allclose(layer([a, b]), 1.34)
    assert ki.ScaleSum.from_config(layer.get_config()).scale == 0.17
    with pytest.raises(ValueError, match="finite"):
        ki.ScaleSum(float("nan"))


def test_width_and_depth_shrink_the_network():
    full = ki.InceptionV4(weights=None, include_top=False, pooling="avg")
    half = ki.InceptionV4(weights=None, include_top=False, pooling="avg", width=0.5, depths=(1, 2, 1))
    assert half.output_shape == (None, 768)
    assert half.count_params() < full.count_params() / 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (64, 64, 3)}, "at least 75"),
        ({"input_shape": (299, 299, 1)}, "3 \\(RGB\\) channels"),
        ({"input_shape": (299, 299)}, "input_shape must be"),
        ({"include_top": False, "pooling": "mean"}, "pooling must be one of"),
        ({"input_tensor": keras.Input((299, 3))}, "rank 4"),
        ({"weights": "imagenet", "classes": 10}, "classes must be 1000"),
        ({"weights": "no_such_weights"}, "weights must be None"),
        ({"weights": "/nonexistent/model.weights.h5"}, "not found"),
        ({"classes": 0}, "classes must be a positive"),
        ({"aux_logits": True, "include_top": False}, "aux_logits=True needs include_top"),
        ({"aux_logits": True, "input_shape": (None, None, 3)}, "fixed input size"),
        ({"dropout_rate": 1.5}, "dropout_rate"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ki.InceptionV4(**kwargs)


def test_input_tensor_is_used():
    tensor = keras.Input((96, 128, 3))
    model = ki.InceptionV3(include_top=False, input_tensor=tensor, pooling="avg")
    assert model.inputs[0] is tensor
    assert model.output_shape == (None, 2048)
