"""OpenVINO export: float32 equals Keras, bfloat16 and NNCF int8 agree closely, the CLI does what it says."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import randomize

import keras_inception as ki
from keras_inception import cli
from keras_inception.deploy import export

openvino = pytest.importorskip("openvino")

SIZE = (75, 75)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    net = ki.InceptionV4(
        input_shape=(*SIZE, 3), width=0.25, depths=(1, 1, 1), classes=10, classifier_activation=None
    )
    return randomize(net, seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight generated photos: the calibration and check images."""
    from PIL import Image

    path = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return str(path)


@pytest.fixture(scope="module")
def images(folder):
    return np.stack(export.representative_images(folder, SIZE))


@pytest.fixture(scope="module")
def source(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("source") / "m.keras")
    model.save(path)
    return path


FRESH_PROCESS = """
import sys
import numpy as np, openvino as ov
path, images, out = sys.argv[1:]
core = ov.Core()
model = core.read_model(path)
hint = model.get_rt_info(["keras_inception", "inference_precision_hint"]).astype(str)
compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
np.save(out, compiled(np.load(images))[0])
"""


def test_float32_equals_keras_in_a_fresh_process(model, images, tmp_path):
    path = export.export_openvino(model, str(tmp_path / "m.xml"))
    assert sorted(os.listdir(tmp_path)) == ["m.bin", "m.xml"]  # no staging left over
    info = export.openvino_info(path)
    assert info["precision"] == "float32" and info["inference_precision_hint"] == "f32"
    assert json.loads(info["class_names"]) == [str(i) for i in range(10)]
    np.save(tmp_path / "images.npy", images)
    subprocess.run(  # plain OpenVINO, no TensorFlow: the IR and its recorded hint stand alone
        [sys.executable, "-c", FRESH_PROCESS, path, str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
        check=True,
    )
    figures = export.compare(model.predict(images, verbose=0), np.load(tmp_path / "out.npy"))
    assert figures["max_abs_diff"] <= 1e-4 and figures["top1_agreement"] == 1.0, figures


def test_bfloat16_is_the_recorded_compile_hint(model, source, images, tmp_path, capsys):
    out = str(tmp_path / "bf16.xml")
    assert (
        cli.main(["export", source, "--format", "openvino", "--precision", "bfloat16", "--output", out]) == 0
    )
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed
    assert float(printed.split("cosine ")[1].split(",")[0]) > 0.99
    assert export.openvino_info(out)["inference_precision_hint"] == "bf16"
    keras_out = model.predict(images, verbose=0)
    bf16, f32 = export.openvino_runner(out)(images), export.openvino_runner(out, hint="f32")(images)
    assert export.compare(keras_out, bf16)["cosine"] > 0.99
    assert export.compare(keras_out, f32)["max_abs_diff"] <= 1e-4  # same float32 weights
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert not np.array_equal(bf16, f32)  # the hint was applied


def test_int8_with_nncf_calibrated_on_a_folder(source, folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("nncf")
    monkeypatch.chdir(tmp_path)  # the default output goes under saved_models/
    args = ["export", source, "--format", "openvino", "--precision", "int8", "--calibration", folder]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    name = keras.saving.load_model(source).name
    path = os.path.join("saved_models", f"{name}_int8.xml")
    assert f"-> {path}" in printed
    cosine = float(printed.split("cosine ")[1].split(",")[0])
    print(f"int8 cosine against Keras: {cosine:.6f}")
    assert cosine > 0.9  # loose: 8 calibration images
    assert export.openvino_info(path)["precision"] == "int8"
    assert os.path.getsize(path.replace(".xml", ".bin")) < 0.5 * sum(
        int(np.prod(w.shape)) * 4 for w in keras.saving.load_model(source).weights
    )


def test_bad_input_gives_clear_errors(model, source, folder, tmp_path, monkeypatch, capsys):
    def error(*words: str) -> str:
        assert cli.main(["export", source, *words]) == 2
        return capsys.readouterr().err

    assert "calibration" in error("--format", "openvino", "--precision", "int8")
    assert "--precision bfloat16 applies to --format openvino only" in error(
        "--format", "tflite", "--precision", "bfloat16"
    )
    quantized = error("--format", "openvino", "--quantize", "int8")
    assert "--quantize int8 applies to --format tflite only" in quantized
    assert "FILE.xml" in error("--format", "openvino", "--output", str(tmp_path / "m.onnx"))
    (tmp_path / "empty").mkdir()
    assert "no JPEG/PNG" in error("--format", "openvino", "--calibration", str(tmp_path / "empty"))
    with pytest.raises(SystemExit):
        cli.main(["export", source, "--format", "openvino", "--precision", "float16"])
    assert not [f for f in os.listdir(tmp_path) if f != "empty"]
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    assert "pip install 'keras-inception[openvino]'" in error("--format", "openvino")
    with pytest.raises(ValueError, match="precision must be one of"):
        export.export_openvino(model, str(tmp_path / "m.xml"), "fp16")
