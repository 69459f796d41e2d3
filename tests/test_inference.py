"""The inference form (BatchNorm folded into the convolutions) and who uses it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize
from PIL import Image

import keras_inception as ki
from keras_inception import cli
from keras_inception.deploy import export, predict
from keras_inception.deploy import folding as inference
from keras_inception.models.base import all_layers
from keras_inception.nn.layers import AdaptedInput, ClassifierOutput, ScaleSum, output_layers
from keras_inception.train import evaluation

REDUCED = {"width": 0.25, "depths": (1, 1, 1)}


def relative(reference, candidate) -> float:
    """Largest difference over the largest magnitude of the reference."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


def batchnorms(model) -> list[str]:
    return [x.name for x in all_layers(model) if isinstance(x, keras.layers.BatchNormalization)]


def images(size: int, n: int = 2, channels: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, channels)).astype("float32")


@pytest.mark.parametrize("family", sorted(ki.MODELS))
@pytest.mark.parametrize(
    "size, kwargs",
    [
        (107, {"classes": 7, "aux_logits": True, "classifier_activation": None}),
        (75, {"include_top": False, "pooling": "avg"}),
    ],
    ids=["top-aux", "features"],
)
def test_folded_equals_unfolded(family, size, kwargs):
    model = randomize(ki.MODELS[family](weights=None, input_shape=(size, size, 3), **REDUCED, **kwargs))
    folded = inference.fold_batchnorm(model, fold_residual_scale=True)
    x = images(size)
    outputs, folded_outputs = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    for a, b in zip(keras.tree.flatten(outputs), keras.tree.flatten(folded_outputs), strict=True):
        assert relative(a, b) < 1e-5

    assert batchnorms(model) and not batchnorms(folded)
    assert sorted(x.name for x in folded.layers) == sorted(
        x.name for x in model.layers if not isinstance(x, keras.layers.BatchNormalization)
    )
    for conv in (x for x in model.layers if isinstance(x, keras.layers.Conv2D)):
        new = folded.get_layer(conv.name)  # the convolution keeps its name, and gains a bias
        was_normalised = f"{conv.name}-BatchNorm" in [x.name for x in model.layers]
        assert new.use_bias and (conv.use_bias or was_normalised)
        assert [w.path for w in new.weights] == [f"{conv.name}/kernel", f"{conv.name}/bias"]
    sums = [x for x in model.layers if isinstance(x, ScaleSum)]  # Inception-ResNet's residual scales
    assert bool(sums) == family.startswith("inception_resnet")
    for layer in sums:  # the scale is in the projection's weights: kernel and bias times the scale
        up = folded.get_layer(layer.name.removesuffix("ScaleSum") + "Conv2d_1x1")
        assert folded.get_layer(layer.name).scale == 1.0
        for w, w0 in zip(up.get_weights(), model.get_layer(up.name).get_weights(), strict=True):
            np.testing.assert_allclose(w, w0 * layer.scale, rtol=1e-6)

    points = ki.end_points(folded)  # the end points, on the new graph
    assert list(points) == list(model.end_points)
    names = [n for n in ("Conv2d_2b_3x3", "Mixed_5b", "Mixed_6a", "PreAuxLogits", "AuxLogits") if n in points]
    ours, theirs = ki.feature_extractor(folded, names), ki.feature_extractor(model, names)
    for a, b in zip(theirs.predict(x, verbose=0), ours.predict(x, verbose=0), strict=True):
        assert relative(a, b) < 1e-5


def test_residual_scale_kept_where_the_fused_sum_is_slow(monkeypatch):
    """``fold_residual_scale=False``: the BatchNorms fold, the residual scales stay in their
    ScaleSums, the outputs are the same. It is the faster form at batch 1 on TensorFlow without
    AVX-512 (here: oneDNN capped at AVX2), and only there."""
    from keras_inception.core import cpu

    model = randomize(ki.InceptionResNetV2(weights=None, input_shape=(75, 75, 3), **REDUCED, classes=5))
    kept = inference.fold_batchnorm(model, fold_residual_scale=False)
    assert not batchnorms(kept)
    sums = [x for x in model.layers if isinstance(x, ScaleSum) and x.scale != 1.0]  # the last Block8: 1
    assert sums
    for layer in sums:
        up = layer.name.removesuffix("ScaleSum") + "Conv2d_1x1"
        assert kept.get_layer(layer.name).scale == layer.scale
        for w, w0 in zip(kept.get_layer(up).get_weights(), model.get_layer(up).get_weights(), strict=True):
            np.testing.assert_array_equal(w, w0)
    x = images(75)
    folded = inference.fold_batchnorm(model)
    assert {folded.get_layer(x.name).scale for x in sums} == {1.0}  # the default folds everything
    assert relative(model.predict(x, verbose=0), kept.predict(x, verbose=0)) < 1e-5
    assert relative(folded.predict(x, verbose=0), kept.predict(x, verbose=0)) < 1e-5

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    # TensorFlow's kernels are oneDNN's (an AVX2 CPU without VNNI runs them with TF_ENABLE_ONEDNN_OPTS=1)
    monkeypatch.setattr(inference, "tensorflow_onednn", lambda: True)
    cpu.current.cache_clear()
    try:
        assert [inference.residual_scale_folds(b) for b in (1, 2, 16, None)] == [False, True, True, True]
        monkeypatch.setattr(inference, "tensorflow_onednn", lambda: False)  # Eigen's kernels: folded
        assert inference.residual_scale_folds(1)
        monkeypatch.setattr(inference, "tensorflow_onednn", lambda: True)
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")  # no fused sum there
        assert inference.residual_scale_folds(1)
    finally:
        monkeypatch.undo()
        cpu.current.cache_clear()
    if "avx512f" in cpu.current().flags:
        assert inference.residual_scale_folds(1)


def test_predict_runs_batch_ones_form_for_one_image_at_a_time(tmp_path, monkeypatch):
    from keras_inception.core import cpu

    asked = []
    monkeypatch.setattr(inference, "fold_batchnorm", lambda model, scale=True: asked.append(scale) or model)
    monkeypatch.setattr(inference, "tensorflow_onednn", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cpu.current.cache_clear()
    try:
        model = ki.InceptionV3(weights=None, input_shape=(75, 75, 3), **REDUCED, classes=5)
        paths = []
        for i in range(2):
            paths.append(str(tmp_path / f"{i}.png"))
            Image.fromarray(np.full((80, 80, 3), 40 * i, np.uint8)).save(paths[-1])
        predict.classify(model, paths[:1])
        predict.classify(model, paths, batch_size=1)
        predict.classify(model, paths)
    finally:
        cpu.current.cache_clear()
    assert asked == [False, False, True]


def test_nested_model_class_names_adapted_input_and_keras_round_trip(tmp_path):
    """A fine-tuned model's shape: a nested base called with training=False, a named head."""
    base = ki.InceptionResNetV2(weights=None, include_top=False, input_shape=(75, 75, 3), **REDUCED)
    inputs = keras.Input((75, 75, 1), name="image")
    x = AdaptedInput(1, name="AdaptedInput")(inputs)
    x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(x, training=False))
    x = keras.layers.Dense(3, name="Logits")(x)
    out = ClassifierOutput("softmax", class_names=["cat", "dog", "fox"], name="Predictions")(x)
    model = randomize(keras.Model(inputs, out, name="transfer"), seed=2)

    folded = inference.fold_batchnorm(model)
    assert batchnorms(model) and not batchnorms(folded)
    assert folded.name == "transfer" and type(folded.get_layer("AdaptedInput")) is AdaptedInput
    assert output_layers(folded)[0].class_names == ["cat", "dog", "fox"]
    x = images(75, channels=1)
    assert relative(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5

    path = str(tmp_path / "folded.keras")
    folded.save(path)
    loaded = keras.saving.load_model(path)
    assert not batchnorms(loaded)
    assert output_layers(loaded)[0].class_names == ["cat", "dog", "fox"]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), folded.predict(x, verbose=0))


def test_generic_folding_and_what_is_left_alone():
    """Conv bias and BatchNorm gamma folded; a BatchNorm that is not alone after a linear
    convolution stays: after a Dense, after a conv with an activation, after a conv whose
    output is read elsewhere too."""
    inputs = keras.Input((9, 9, 2))
    a = keras.layers.Conv2D(4, 3, use_bias=True, name="a")(inputs)
    a = keras.layers.BatchNormalization(scale=True, name="a_bn")(a)
    b = keras.layers.Conv2D(4, 3, activation="relu", name="b")(inputs)
    b = keras.layers.BatchNormalization(name="b_bn")(b)
    c = keras.layers.Conv2D(4, 3, use_bias=False, name="c")(inputs)
    c = keras.layers.Add(name="sum")([keras.layers.BatchNormalization(name="c_bn")(c), c, a, b])
    d = keras.layers.Dense(3, name="d")(keras.layers.Flatten(name="flat")(c))
    d = keras.layers.BatchNormalization(name="d_bn")(d)
    model = randomize(keras.Model(inputs, d), seed=4)
    model.get_layer("a_bn").gamma.assign(np.random.default_rng(5).uniform(0.5, 2.0, 4))

    folded = inference.fold_batchnorm(model)
    assert sorted(batchnorms(folded)) == ["b_bn", "c_bn", "d_bn"]
    assert folded.get_layer("a").use_bias and not folded.get_layer("c").use_bias
    x = images(9, channels=2)
    assert relative(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5

    sequential = keras.Sequential([keras.Input((9, 9, 2)), keras.layers.Conv2D(4, 3, use_bias=False)])
    sequential.add(keras.layers.BatchNormalization())
    randomize(sequential, seed=6)
    folded = inference.fold_batchnorm(sequential)
    assert not batchnorms(folded)
    assert relative(sequential.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5

    plain = keras.Sequential([keras.Input((9, 9, 2)), keras.layers.Flatten(), keras.layers.Dense(3)])
    assert inference.fold_batchnorm(plain) is plain  # nothing to fold: the model itself


def test_shared_layers_and_a_nested_reader_are_left_alone():
    """The graph is traced through its calls: a convolution called twice, a BatchNorm called
    twice, a convolution whose output a nested model reads too, all stay as they are."""
    inputs = keras.Input((9, 9, 2))
    shared = keras.layers.Conv2D(4, 3, use_bias=False, name="shared")
    twice = keras.layers.BatchNormalization(name="twice")
    a = keras.layers.BatchNormalization(name="a_bn")(shared(inputs))
    b = keras.layers.BatchNormalization(name="b_bn")(shared(keras.layers.Rescaling(2.0)(inputs)))
    c = twice(keras.layers.Conv2D(4, 3, use_bias=False, name="c")(inputs))
    d = twice(keras.layers.Conv2D(4, 3, use_bias=False, name="d")(inputs))
    e = keras.layers.Conv2D(4, 3, use_bias=False, name="e")(inputs)
    inner = keras.Sequential([keras.Input((7, 7, 4)), keras.layers.ReLU()], name="inner")
    f = keras.layers.Conv2D(4, 3, use_bias=False, name="f")(inputs)
    parts = [a, b, c, d, keras.layers.BatchNormalization(name="e_bn")(e), inner(e)]
    out = keras.layers.Add(name="sum")([*parts, keras.layers.BatchNormalization(name="f_bn")(f)])
    model = randomize(keras.Model(inputs, out), seed=7)

    folded = inference.fold_batchnorm(model)
    assert sorted(batchnorms(folded)) == ["a_bn", "b_bn", "e_bn", "twice"]  # f_bn folded
    x = images(9, channels=2)
    assert relative(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


def test_mixed_bfloat16():
    model = randomize(ki.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=5, **REDUCED), seed=7)
    x = images(75, n=4)
    reference = model.predict(x, verbose=0)
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = ki.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=5, **REDUCED)
    mixed.set_weights(model.get_weights())
    folded = inference.fold_batchnorm(mixed)
    assert not batchnorms(folded)
    conv = folded.get_layer("Conv2d_1a_3x3")
    assert (conv.compute_dtype, conv.bias.dtype) == ("bfloat16", "float32")
    out = folded.predict(x, verbose=0)
    assert out.dtype == np.float32  # ClassifierOutput stays float32
    assert export.compare(reference, out)["cosine"] > 0.99


# ---------------------------------------------------------------- who uses it


@pytest.fixture(scope="module")
def tiny():
    return randomize(ki.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=3, **REDUCED), seed=8)


@pytest.fixture
def folds(monkeypatch):
    """The models :func:`inference.fold_batchnorm` made during the test."""
    made, fold = [], inference.fold_batchnorm
    monkeypatch.setattr(
        inference, "fold_batchnorm", lambda model, *scale: made.append(fold(model, *scale)) or made[-1]
    )
    return made


def _photo(path) -> str:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 90, 3), np.uint8)).save(path)
    return str(path)


def test_classify_runs_the_folded_model_unless_told(tiny, folds, tmp_path):
    photo = _photo(tmp_path / "a.png")
    results, _ = predict.classify(tiny, [photo], top=3)
    assert len(folds) == 1 and not batchnorms(folds[0])
    batch = ki.preprocessing.eval_transform(ki.preprocessing.load_image(photo), (75, 75))[None]
    scores = folds[0].predict(batch, verbose=0)[0]
    np.testing.assert_allclose([s for _, s in results[0][1]], np.sort(scores)[::-1], rtol=1e-6)
    predict.classify(tiny, [photo], top=3, fold_batchnorm=False)
    assert len(folds) == 1


def test_evaluate_runs_the_folded_models_unless_told(tiny, folds):
    data = tf.data.Dataset.from_tensor_slices((np.zeros((2, 80, 80, 3), np.uint8), np.array([0, 2])))
    folded = evaluation.evaluate([tiny, tiny], data, ["a", "b", "c"], scheme=1, size=75)
    assert len(folds) == 2 and not any(batchnorms(m) for m in folds)
    unfolded = evaluation.evaluate([tiny], data, ["a", "b", "c"], scheme=1, size=75, fold_batchnorm=False)
    assert len(folds) == 2
    assert (folded.top1_error, folded.top5_error) == (unfolded.top1_error, unfolded.top5_error)


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    tiny.save(path)
    return path


def test_cli_predict_and_evaluate_fold_unless_told(tiny_file, folds, tmp_path, capsys):
    photo = _photo(tmp_path / "a.png")
    assert cli.main(["predict", photo, "--model", tiny_file, "--top", "1"]) == 0
    assert len(folds) == 1 and not batchnorms(folds[0])
    assert cli.main(["predict", photo, "--model", tiny_file, "--top", "1", "--no-fold-batchnorm"]) == 0
    assert len(folds) == 1

    for name in "abc":
        (tmp_path / "data" / name).mkdir(parents=True)
        _photo(tmp_path / "data" / name / "x.png")
    command = ["evaluate", "--data", str(tmp_path / "data"), "--model", tiny_file]
    assert cli.main(command) == 0
    assert len(folds) == 2 and not batchnorms(folds[1])
    assert cli.main([*command, "--no-fold-batchnorm"]) == 0
    assert len(folds) == 2
    capsys.readouterr()


def _variables(saved_model: str) -> list[str]:
    return [v.name for v in tf.saved_model.load(saved_model).variables]


@pytest.mark.slow  # 18 s; tests/test_export.py checks every format's export against the folded model
def test_export_writes_the_folded_model_unless_told(tiny, tiny_file, tmp_path, capsys):
    folded = export.export_model(tiny, "savedmodel", str(tmp_path / "folded"))
    names = _variables(folded.path)
    assert "Conv2d_1a_3x3/bias:0" in names and not [n for n in names if "BatchNorm" in n]
    assert folded.agreement["max_abs_diff"] <= 1e-6  # checked against the folded model

    out = str(tmp_path / "cli")
    assert cli.main(["export", tiny_file, "--output", out, "--no-fold-batchnorm"]) == 0
    names = _variables(f"{out}/1")
    assert "Conv2d_1a_3x3-BatchNorm/moving_mean:0" in names and "Conv2d_1a_3x3/bias:0" not in names
    assert cli.main(["export", tiny_file, "--output", out]) == 0
    assert not [n for n in _variables(f"{out}/2") if "BatchNorm" in n]
    assert "against Keras: cosine 1" in capsys.readouterr().out
