"""Backbone options against slim: ``final_endpoint``, and IRv2's ``output_stride`` / ``align_feature_maps``.

Shape tables are slim's own tests (tensorflow/models ``research/slim/nets/``
``inception_resnet_v2_test.py``, ``inception_v3_test.py``, ``inception_v4_test.py``) at
their 299x299 input, one image instead of five. Inception-ResNet-v2's end points and
their shapes do not depend on the block counts, so its tables are checked on
``depths=(1, 1, 1)``; Inception-v3 and -v4 name end points after blocks, so they are
built at full depth.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize
from slim_kit import write_checkpoint
from test_models import SLIM_BASE_END_POINTS

import keras_inception as ki
from keras_inception.models import get
from keras_inception.models.inception_resnet import V2_END_POINTS
from keras_inception.weights import checkpoint, slim

SHALLOW = {"depths": (1, 1, 1)}
STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
CHANNELS = dict(zip([*STEM, "MaxPool_5a_3x3", "Mixed_5b", "Mixed_6a", "PreAuxLogits"],
                    [32, 32, 64, 64, 80, 192, 192, 320, 1088, 1088], strict=True))  # fmt: skip


def _table(*sides: int) -> dict[str, tuple[int, int, int]]:
    return {name: (side, side, CHANNELS[name]) for name, side in zip(CHANNELS, sides, strict=True)}


# inception_resnet_v2_test.py, final_endpoint="PreAuxLogits", 299x299:
IRV2_PRE_AUX_LOGITS = [
    # testBuildAndCheckAllEndPointsUptoPreAuxLogits
    ({}, _table(149, 147, 147, 73, 73, 71, 35, 35, 17, 17)),
    # testBuildAndCheckAllEndPointsUptoPreAuxLogitsWithAlignedFeatureMaps
    ({"align_feature_maps": True}, _table(150, 150, 150, 75, 75, 75, 38, 38, 19, 19)),
    # testBuildAndCheckAllEndPointsUptoPreAuxLogitsWithOutputStrideEight
    ({"output_stride": 8}, _table(149, 147, 147, 73, 73, 71, 35, 35, 33, 33)),
    # not a slim test: both, as the Object Detection API's Faster R-CNN builds it with
    # first_stage_features_stride=8 (slim's code: Mixed_6a at stride 1 keeps SAME's 38)
    ({"output_stride": 8, "align_feature_maps": True}, _table(150, 150, 150, 75, 75, 75, 38, 38, 38, 38)),
]


def _irv2(**kwargs) -> keras.Model:
    return ki.InceptionResNetV2(**{"include_top": False, "weights": None, **SHALLOW, **kwargs})


def _shapes(model: keras.Model) -> dict[str, tuple]:
    return {name: tuple(t.shape[1:]) for name, t in model.end_points.items()}


@pytest.mark.parametrize(
    "options, expected", IRV2_PRE_AUX_LOGITS, ids=["slim", "aligned", "os8", "os8_aligned"]
)
def test_irv2_end_points_up_to_pre_aux_logits_equal_slims(options, expected):
    model = _irv2(input_shape=(299, 299, 3), final_endpoint="PreAuxLogits", **options)
    assert _shapes(model) == expected
    assert list(model.end_points) == list(expected)  # in slim's order
    assert model.output_shape[1:] == expected["PreAuxLogits"]


def test_irv2_base_network_and_final_endpoints_equal_slims():
    # testBuildBaseNetwork: every end point, the last (8, 8, 1536)
    full = _irv2(input_shape=(299, 299, 3))
    assert tuple(full.end_points) == V2_END_POINTS
    assert full.output_shape[1:] == (8, 8, 1536)
    # testBuildOnlyUptoFinalEndpoint: each end point stops the build there
    for index, stop in enumerate(V2_END_POINTS):
        model = _irv2(input_shape=(299, 299, 3), final_endpoint=stop)
        assert tuple(model.end_points) == V2_END_POINTS[: index + 1]
        assert model.outputs[0] is model.end_points[stop]
        assert model.output_shape == full.end_points[stop].shape
    # align_feature_maps also makes Mixed_7a SAME (slim's code; no slim test goes past PreAuxLogits)
    aligned = _irv2(input_shape=(299, 299, 3), align_feature_maps=True)
    assert _shapes(aligned)["Mixed_7a"] == (10, 10, 2080)
    assert aligned.output_shape[1:] == (10, 10, 1536)


# inception_v3_test.py / inception_v4_test.py testBuildOnlyUptoFinalEndpoint, with the
# shapes of testBuildAndCheckAllEndPointsUptoMixed7c / testAllEndPointsShapes (the tables
# of test_models.py); one end point per grid here, every one with -m slow.
FINAL_ENDPOINTS = [
    ("inception_v3", "MaxPool_5a_3x3"),
    ("inception_v3", "Mixed_5d"),
    ("inception_v3", "Mixed_6e"),
    ("inception_v4", "Mixed_5a"),
    ("inception_v4", "Mixed_5e"),
    ("inception_v4", "Mixed_6h"),
]
EVERY_ENDPOINT = [
    (name, stop) for name in ("inception_v3", "inception_v4") for stop in SLIM_BASE_END_POINTS[name]
]


def _check_final_endpoint(name: str, stop: str) -> None:
    expected = SLIM_BASE_END_POINTS[name]
    names = list(expected)
    model = get(name)(include_top=False, weights=None, input_shape=(299, 299, 3), final_endpoint=stop)
    assert list(model.end_points) == names[: names.index(stop) + 1]
    assert _shapes(model) == {n: expected[n] for n in names[: names.index(stop) + 1]}
    assert model.outputs[0] is model.end_points[stop]


@pytest.mark.parametrize("name, stop", FINAL_ENDPOINTS)
def test_v3_v4_final_endpoint_equals_slims(name, stop):
    _check_final_endpoint(name, stop)


@pytest.mark.slow
@pytest.mark.parametrize("name, stop", EVERY_ENDPOINT)
def test_v3_v4_every_final_endpoint_equals_slims(name, stop):
    _check_final_endpoint(name, stop)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_stride": 8}, "output_stride=8 builds Inception-ResNet-v2 only up to PreAuxLogits"),
        ({"output_stride": 8, "include_top": False}, "final_endpoint one of .*'PreAuxLogits'\\], got None"),
        ({"output_stride": 8, "include_top": False, "final_endpoint": "Mixed_7a"}, "got 'Mixed_7a'"),
        ({"output_stride": 8, "include_top": False, "final_endpoint": "Conv2d_7b_1x1"}, "only up to"),
        ({"output_stride": 32}, "output_stride must be 8 or 16"),
        ({"output_stride": True}, "output_stride must be 8 or 16"),
        ({"align_feature_maps": "yes"}, "align_feature_maps must be True or False"),
    ],
)
def test_backbone_arguments_are_refused_before_building(kwargs, message, monkeypatch):
    # slim raises for output_stride=8 past PreAuxLogits only once it gets there; here nothing is built
    built = []
    monkeypatch.setattr(
        keras.layers.Conv2D, "__init__", lambda *a, **k: built.append(1) or pytest.fail("built")
    )
    with pytest.raises(ValueError, match=message):
        ki.InceptionResNetV2(**kwargs)
    assert built == []


@pytest.fixture(scope="module")
def irv2_weights(tmp_path_factory):
    """A normal IRv2 (slim's padding and strides, full network), randomised, saved as Keras
    weights and as a slim checkpoint (the public checkpoint's names)."""
    directory = tmp_path_factory.mktemp("irv2")
    model = randomize(_irv2(input_shape=(75, 75, 3)), seed=1)
    values = {v.path: v.numpy() for v in model.weights}
    h5 = str(directory / "irv2.weights.h5")
    model.save_weights(h5)
    prefix = write_checkpoint(
        {slim.slim_name(path, "InceptionResnetV2"): value for path, value in values.items()},
        str(directory / "model.ckpt"),
        version="V2",
    )
    keras.backend.clear_session()
    return values, {"slim": prefix, "keras": h5}


BACKBONES = [
    {"output_stride": 8, "final_endpoint": "PreAuxLogits"},
    {"output_stride": 8, "align_feature_maps": True, "final_endpoint": "PreAuxLogits"},
    {"align_feature_maps": True, "final_endpoint": "PreAuxLogits"},
    {"align_feature_maps": True},
    {"output_stride": 8, "final_endpoint": "Mixed_5b"},
]


@pytest.mark.parametrize("kind", ["slim", "keras"])
@pytest.mark.parametrize("options", BACKBONES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_weights_of_the_normal_network_load_by_name(irv2_weights, kind, options):
    values, files = irv2_weights
    model = _irv2(weights=files[kind], **options)
    assert model.weights
    for v in model.weights:  # the same names and kernel shapes: every weight is its source's
        np.testing.assert_array_equal(v.numpy(), values[v.path], err_msg=v.path)
    if options.get("output_stride") == 8:
        rates = {layer.dilation_rate for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
        assert rates == ({(1, 1), (2, 2)} if options["final_endpoint"] == "PreAuxLogits" else {(1, 1)})


def test_truncated_loads_stay_strict(irv2_weights):
    values, _ = irv2_weights
    variables = {slim.slim_name(path, "InceptionResnetV2"): value for path, value in values.items()}
    model = _irv2(final_endpoint="PreAuxLogits", output_stride=8)
    report = checkpoint.assign(model, variables, "inception_resnet_v2", truncated=True)
    assert {name.split("/")[1] for name in report.skipped_tail} == {"Mixed_7a", "Block8", "Conv2d_7b_1x1"}
    with pytest.raises(checkpoint.CheckpointError, match="has no place"):  # not built, and not said so
        checkpoint.assign(model, variables, "inception_resnet_v2")
    stray = {**variables, "InceptionResnetV2/Mixed_6a/Branch_3/Conv2d_1x1/weights": np.zeros((1, 1, 1, 1))}
    with pytest.raises(checkpoint.CheckpointError, match="Branch_3"):  # a block it has: still refused
        checkpoint.assign(model, stray, "inception_resnet_v2", truncated=True)


def test_output_stride_8_is_the_stride_16_network_on_every_phase():
    """Atrous identity: a stride-1 SAME stack of rate-2 convolutions on a map equals the
    undilated stack on each of its four 2x2 phases. Mixed_6a at stride 1 (VALID) is the
    stride-2 Mixed_6a on the even phase, so output_stride=8's PreAuxLogits on the even
    phase is output_stride=16's, and on every phase the 17x17 blocks of the stride-16
    network applied to that phase of its Mixed_6a."""
    m16 = randomize(_irv2(final_endpoint="PreAuxLogits"), seed=2)
    m8 = _irv2(final_endpoint="PreAuxLogits", output_stride=8)
    source = {v.path: v for v in m16.weights}
    for v in m8.weights:
        v.assign(source[v.path])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 299, 299, 3)).astype("float32")
    a16, p16 = (np.asarray(t) for t in ki.feature_extractor(m16, ["Mixed_6a", "PreAuxLogits"])([x]))
    a8, p8 = (np.asarray(t) for t in ki.feature_extractor(m8, ["Mixed_6a", "PreAuxLogits"])([x]))
    assert a8.shape == p8.shape == (1, 33, 33, 1088) and p16.shape == (1, 17, 17, 1088)
    np.testing.assert_allclose(a8[:, ::2, ::2], a16, rtol=0, atol=1e-5)
    np.testing.assert_allclose(p8[:, ::2, ::2], p16, rtol=0, atol=1e-5)
    blocks17 = keras.Model(m16.end_points["Mixed_6a"], m16.end_points["PreAuxLogits"])
    for i in (0, 1):
        for j in (0, 1):
            phase = np.asarray(blocks17(a8[:, i::2, j::2]))
            np.testing.assert_allclose(p8[:, i::2, j::2], phase, rtol=0, atol=1e-5, err_msg=f"phase {i}{j}")
    np.testing.assert_array_equal(np.asarray(ki.feature_extractor(m8, ["PreAuxLogits"])([x])), p8)


def test_one_layer_each_against_tf_nn():
    """The dilated and the aligned layers compute tf.nn's atrous and SAME operations."""
    model = randomize(_irv2(final_endpoint="PreAuxLogits", output_stride=8, align_feature_maps=True))
    names = ["Conv2d_1a_3x3", "Mixed_6a-Branch_2-MaxPool_1a_3x3", "Repeat_1-block17_1-Branch_1-Conv2d_0b_1x7"]
    probes = [model.get_layer(n) for n in names]
    probe = keras.Model(model.inputs, [t for layer in probes for t in (layer.input, layer.output)])
    x = np.random.default_rng(1).uniform(-1, 1, (1, 147, 147, 3)).astype("float32")
    image, out1, pool_in, pool_out, atrous_in, atrous_out = (np.asarray(t) for t in probe([x]))
    np.testing.assert_allclose(
        out1, tf.nn.conv2d(image, probes[0].kernel, 2, "SAME"), rtol=1e-5, atol=1e-5
    )  # fmt: skip
    np.testing.assert_array_equal(pool_out, tf.nn.max_pool2d(pool_in, 3, 1, "SAME"))
    expected = tf.nn.conv2d(atrous_in, probes[2].kernel, 1, "SAME", dilations=2)
    np.testing.assert_allclose(atrous_out, expected, rtol=1e-5, atol=1e-4)
    assert out1.shape[1:3] == (74, 74) and atrous_out.shape[1:3] == pool_out.shape[1:3] == (19, 19)
