"""Deployment: every format loads in a fresh process and agrees with the Keras model."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize

import keras_inception as ki
from keras_inception import cli
from keras_inception.deploy import export
from keras_inception.input import preprocessing

SIZE = (75, 75)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return randomize(
        ki.InceptionResNetV2(
            input_shape=(*SIZE, 3), depths=(1, 1, 2), classes=10, classifier_activation=None
        ),
        seed=3,
    )


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (4, 90, 120, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    return export.export_saved_model(model, str(tmp_path_factory.mktemp("serving") / "irv2"), top_k=3)


FRESH_PROCESS = """
import json, sys
import numpy as np, tensorflow as tf
path, pixels_file, out_file = sys.argv[1:]
pixels = np.load(pixels_file)
model = tf.saved_model.load(path)
a = model.signatures["serving_default"](images=tf.constant(pixels))
encoded = tf.stack([tf.io.encode_png(p) for p in pixels])
b = model.signatures["serve_image_bytes"](image_bytes=encoded)
np.savez(out_file, pixels=a["probabilities"].numpy(), encoded=b["probabilities"].numpy(),
         names=b["top_k_names"].numpy().astype(str), classes=b["top_k_classes"].numpy())
"""


def test_saved_model_in_a_fresh_process(model, pixels, saved_model, tmp_path):
    assert saved_model.endswith(os.path.join("irv2", "1"))
    np.save(tmp_path / "pixels.npy", pixels)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            saved_model,
            str(tmp_path / "pixels.npy"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
        env=env,
    )
    served = np.load(tmp_path / "out.npz")
    expected = model.predict(preprocessing.eval_transform(pixels, SIZE), verbose=0)
    np.testing.assert_allclose(served["pixels"], expected, atol=1e-4)
    np.testing.assert_allclose(served["encoded"], expected, atol=1e-4)  # PNG is lossless
    np.testing.assert_array_equal(served["classes"], np.argsort(-expected, axis=1)[:, :3])
    assert served["names"][0, 0] == str(served["classes"][0, 0])  # no ImageNet names for 10 classes


@pytest.mark.slow
def test_saved_model_cli_shows_both_signatures(saved_model):
    cli_path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli_path, "show", "--dir", saved_model, "--all"], capture_output=True, text=True, check=True
    ).stdout
    assert "signature_def['serving_default']" in shown
    assert "signature_def['serve_image_bytes']" in shown
    assert "dtype: DT_UINT8" in shown and "dtype: DT_STRING" in shown
    for output in ("probabilities", "top_k_classes", "top_k_names", "top_k_scores"):
        assert output in shown


def test_saved_model_rejects_bad_input_clearly(saved_model):
    served = tf.saved_model.load(saved_model)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        served.signatures["serve_image_bytes"](image_bytes=tf.constant([b"not an image"]))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        served.signatures["serving_default"](images=tf.zeros((1, 80, 80, 3), tf.float32))


@pytest.mark.parametrize(
    "quantize, min_cosine, max_abs",
    [
        pytest.param("none", 1.0 - 1e-6, 1e-4, marks=pytest.mark.slow),
        pytest.param("int8", 0.98, None, marks=pytest.mark.slow),
        pytest.param("float16", 0.999, None, marks=pytest.mark.slow),
        pytest.param("dynamic", 0.99, None, marks=pytest.mark.slow),
    ],
)
def test_tflite_agrees_with_keras(model, pixels, tmp_path, quantize, min_cosine, max_abs):
    images = preprocessing.eval_transform(pixels, SIZE).numpy()
    path = export.export_tflite(
        model, str(tmp_path / f"m_{quantize}.tflite"), quantize, calibration=list(images)
    )
    result = export.compare(model.predict(images, verbose=0), export.TFLiteRunner(path)(images))
    assert result["cosine"] >= min_cosine, result
    if max_abs is not None:
        assert result["max_abs_diff"] <= max_abs, result
    assert os.path.getsize(path) > 0
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".partial-")]


def test_tflite_int8_needs_calibration(model, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        export.export_tflite(model, str(tmp_path / "m.tflite"), "int8")
    assert not os.path.exists(tmp_path / "m.tflite")


def test_onnx_agrees_with_onnxruntime(model, pixels, tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    images = preprocessing.eval_transform(pixels, SIZE).numpy()
    path = export.export_onnx(model, str(tmp_path / "m.onnx"))
    result = export.compare(model.predict(images, verbose=0), export.onnx_runner(path)(images))
    assert result["max_abs_diff"] <= 1e-4, result


def test_cli_export_tflite_from_a_keras_file(model, tmp_path, capsys):
    source = str(tmp_path / "m.keras")
    model.save(source)
    out = str(tmp_path / "m16.tflite")
    assert cli.main(["export", source, "--format", "tflite", "--quantize", "float16", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "latency_ms_batch1" in printed
    assert float(printed.split("cosine ")[1].split(",")[0]) >= 0.999  # float16 weights
    labels = export.labels_path(out)
    with open(labels) as f:
        assert f.read().splitlines() == [str(i) for i in range(10)]  # the class names beside it
    assert cli.main(["export", source, "--format", "tflite", "--quantize", "int8", "--output", out]) == 2
    assert "calibration" in capsys.readouterr().err
    figures = export.compare(np.ones((1, 3)), np.ones((1, 3)))
    assert figures == {"cosine": pytest.approx(1.0), "top1_agreement": 1.0, "max_abs_diff": 0.0}
    assert all(type(v) is float for v in figures.values())  # plain floats: JSON-ready


def test_cli_export_saved_model_checks_itself(model, tmp_path, capsys):
    source = str(tmp_path / "m.keras")
    model.save(source)
    out = str(tmp_path / "serving")
    assert cli.main(["export", source, "--format", "savedmodel", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert f"-> {os.path.join(out, '1')}" in printed
    agreement = float(printed.split("max_abs_diff ")[1].split()[0].rstrip(","))
    assert agreement <= 1e-4


def test_saved_model_holds_each_variable_once(model, saved_model, tmp_path):
    keras_file = str(tmp_path / "m.keras")
    model.save(keras_file)
    weights = sum(v.numpy().nbytes for v in model.variables)
    variables = export.disk_size(os.path.join(saved_model, "variables"))
    assert weights <= variables < 1.05 * weights  # not twice (variables/* and _all_variables/*)
    assert export.disk_size(saved_model) < 1.05 * os.path.getsize(keras_file)
    names = [v.name for v in tf.saved_model.load(saved_model).variables]
    assert len(names) == len(set(names)) == len(model.variables)
