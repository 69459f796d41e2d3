"""Every mistake a user can make on the command line is one line on stderr: what happened, what to do.

Each case runs ``cli.main`` in this process on small files made here (a tiny image classifier,
a foreign ``keras.Sequential``, empty, truncated and garbage files); no case downloads anything,
and all but one fail before a network is built.
"""

import errno
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from keras_inception import cli
from keras_inception.core import registry
from keras_inception.weights import loading, zoo

ROOT = os.path.join(os.path.dirname(__file__), "..")

TAGS_V3 = "['adv_imagenet', 'ens3_adv_imagenet', 'ens4_adv_imagenet', 'imagenet']"
MODELS = "['inception_v3', 'inception_v4', 'inception_resnet_v1', 'inception_resnet_v2']"
NOT_KERAS = (
    "is not a .keras file (a zip archive): it is empty, truncated or of another format; "
    "save or download it again"
)
NOT_H5 = (
    "is not a .weights.h5 file (HDF5): it is empty, truncated or of another format; save or download it again"
)
NOT_CLASSIFIER = (
    "{T}/foreign.keras is not an image classifier (inputs [(None, 4)]; expected one (batch, height, "
    "width, channels) input and class scores out): give a model written by keras-inception "
    "(convert, finetune or train)"
)

# (command line, exit status, the one line on stderr; "..." matches any text). {T}: the files' folder.
CASES = [
    # model names and model files
    ("predict --model inception_v5 {T}/a.png", 2,
     f"predict: error: unknown model 'inception_v5' (did you mean inception_v4?); choose one of {MODELS}, "
     "or give a .keras file, a slim checkpoint or an archive"),
    ("predict --model InceptionV4 --weights imagenet {T}/a.png", 2,
     "predict: error: unknown model 'InceptionV4' (did you mean inception_v4?); choose one of ..."),
    ("predict --model {T}/zero.keras {T}/a.png", 2, f"predict: error: {{T}}/zero.keras {NOT_KERAS}"),
    ("predict --model {T}/truncated.keras {T}/a.png", 2, f"predict: error: {{T}}/truncated.keras "
        f"{NOT_KERAS}"),
    ("predict --model {T}/missing.keras {T}/a.png", 2, "predict: error: model file not found: "
        "{T}/missing.keras"),
    ("predict --model {T}/foreign.keras {T}/a.png", 2, f"predict: error: {NOT_CLASSIFIER}"),
    ("predict --model {T}/tiny.keras --weights imagenet {T}/a.png", 2,
     "predict: error: --weights is for model names; {T}/tiny.keras holds its own weights: leave --weights "
     "out"),
    # --weights
    ("predict --model inception_v3 --weights imagenet_v9 {T}/a.png", 2,
     f"predict: error: inception_v3 has no weights 'imagenet_v9': give one of {TAGS_V3}, a .keras / "
     ".weights.h5 file, a slim checkpoint, or none (random initialisation)"),
    ("predict --model inception_resnet_v1 {T}/a.png", 2,
     "predict: error: inception_resnet_v1 has no weights 'imagenet': give a .keras / .weights.h5 file, "
     "a slim checkpoint, or none (random initialisation)"),
    ("predict --model inception_v3 --weights {T}/zero.weights.h5 {T}/a.png", 2,
     f"predict: error: {{T}}/zero.weights.h5 {NOT_H5}"),
    ("predict --model inception_v3 --weights {T}/truncated.keras {T}/a.png", 2,
     f"predict: error: {{T}}/truncated.keras {NOT_KERAS}"),
    ("predict --model inception_v3 --weights {T}/missing.weights.h5 {T}/a.png", 2,
     "predict: error: weights file not found: {T}/missing.weights.h5"),
    ("export inception_v3 --weights {T}/model.ckpt", 2,
     "export: error: no weights at {T}/model.ckpt (neither a .keras / .weights.h5 file, an archive, "
     "a V1 checkpoint nor a V2 prefix with {T}/model.ckpt.index)"),
    # images
    ("predict --model {T}/tiny.keras {T}/bad.jpg", 1, "cannot read image {T}/bad.jpg: not an image "
        "(unknown format)"),
    ("predict --model {T}/tiny.keras {T}/nothere.jpg", 1, "cannot read image {T}/nothere.jpg: no such file"),
    ("predict --model {T}/tiny.keras {T}/empty", 1, "cannot read image {T}/empty: no image files in "
        "directory"),
    ("predict --model {T}/tiny.keras --top 0 {T}/a.png", 2,
     "predict: error: --top must be a positive integer, got 0"),
    ("predict --model {T}/tiny.keras --batch-size 0 {T}/a.png", 2,
     "predict: error: --batch-size must be a positive integer, got 0"),
    # usage
    ("predict", 2, "predict: error: the following arguments are required: images; see keras-inception "
        "predict --help"),
    ("predict {T}/a.png --bogus", 2,
     "predict: error: unrecognized arguments: --bogus; see keras-inception predict --help"),
    ("export inception_v3 --format xyz", 2,
     "export: error: argument --format: invalid choice: 'xyz' (choose from 'savedmodel', 'tflite', 'onnx', "
     "'openvino'); see keras-inception export --help"),
    ("evaluate --data {T}/data --model {T}/tiny.keras --crops 5", 2,
     "evaluate: error: argument --crops: invalid choice: 5 (choose from 1, 12, 144); see ..."),
    ("finetune --data {T}/data --model inception_v5", 2, "finetune: error: argument --model: invalid "
        "choice: ..."),
    # export options, refused before any network is built
    ("export inception_v3 --quantize int8", 2, "export: error: --quantize int8 applies to --format tflite "
        "only"),
    ("export inception_v3 --precision bfloat16", 2,
     "export: error: --precision bfloat16 applies to --format openvino only"),
    ("export inception_v3 --format tflite --quantize int8", 2,
     "export: error: int8 quantization needs calibration images: --calibration DIR"),
    ("export inception_v3 --format tflite --calibration {T}/nodir", 2,
     "export: error: calibration folder not found: {T}/nodir"),
    ("export inception_v3 --output {T}/m.tflite", 2,
     "export: error: --format savedmodel writes a folder (no suffix); --output '{T}/m.tflite' has .tflite "
     "(for .tflite: --format tflite)"),
    ("export inception_v3 --format openvino --output {T}/m.onnx", 2,
     "export: error: --format openvino writes FILE.xml; --output '{T}/m.onnx' has .onnx (for .onnx: "
     "--format onnx)"),
    ("export {T}/foreign.keras", 2, f"export: error: {NOT_CLASSIFIER}"),
    ("export {T}/zero.keras --format tflite --output {T}/m.tflite", 2, f"export: error: {{T}}/zero.keras "
        f"{NOT_KERAS}"),
    # convert
    ("convert imagenet {T}/x.keras", 2,
     "convert: error: 'imagenet' is a tag: say which model with --model (one of ['inception_resnet_v1', "
     "...])"),
    ("convert {T}/model.ckpt {T}/x.h5", 2,
     "convert: error: cannot write '{T}/x.h5': outputs are FILE.keras, FILE.weights.h5 or a SavedModel "
     "folder "
     "(no suffix), not '.h5'"),
    ("convert {T}/garbage.ckpt {T}/x.keras -o {T}/y.keras", 2,
     "convert: error: give the output once: as OUTPUT or as -o/--output"),
    ("convert {T}/tiny.keras {T}/x.keras", 2, "convert: error: {T}/tiny.keras is not a slim checkpoint, "
        "archive or tag"),
    ("convert {T}/garbage.ckpt {T}/x.keras", 2, "convert: error: cannot read checkpoint {T}/garbage.ckpt: "
        "..."),
    ("convert {T}/truncated.tar.gz {T}/x.keras", 2, "convert: error: archive truncated.tar.gz is corrupt "
        "or truncated..."),
    ("convert {T}/model.ckpt --classes 10", 2,
     "convert: error: argument --classes: invalid choice: 10 (choose from 1000, 1001); see ..."),
    # evaluate, finetune, train
    ("evaluate --data {T}/data --model inception_v5", 2, "evaluate: error: unknown model 'inception_v5' ..."),
    ("evaluate --data {T}/data --model {T}/foreign.keras", 2, f"evaluate: error: {NOT_CLASSIFIER}"),
    ("finetune --data {T}/nodata", 2, "finetune: error: no image folder at {T}/nodata"),
    ("finetune --data {T}/empty", 2, "finetune: error: {T}/empty has no class subfolders (expected one "
        "folder per class)"),
    ("train --data {T}/data --epochs 0", 2, "train: error: --epochs must be at least 1, got 0"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> str:
    """The folder of every file the cases name."""
    folder = tmp_path_factory.mktemp("mistakes")
    tiny = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    tiny.save(folder / "tiny.keras")
    foreign = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    foreign.save(folder / "foreign.keras")
    foreign.save_weights(folder / "foreign.weights.h5")
    whole = (folder / "foreign.keras").read_bytes()
    (folder / "truncated.keras").write_bytes(whole[: len(whole) // 2])
    h5 = (folder / "foreign.weights.h5").read_bytes()
    (folder / "truncated.weights.h5").write_bytes(h5[: len(h5) // 2])
    for name in ("zero.keras", "zero.weights.h5"):
        (folder / name).write_bytes(b"")
    (folder / "bad.jpg").write_bytes(b"not an image")
    (folder / "garbage.ckpt").write_bytes(np.random.default_rng(0).bytes(300))
    (folder / "truncated.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + np.random.default_rng(1).bytes(50))
    (folder / "empty").mkdir()
    pixels = np.zeros((40, 40, 3), np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    for label in ("cat", "dog"):
        (folder / "data" / label).mkdir(parents=True)
        Image.fromarray(pixels).save(folder / "data" / label / "x.png")
    return str(folder)


def run(words: list[str], capsys) -> tuple[int, list[str], list[warnings.WarningMessage]]:
    """Exit status, stderr's lines and the warnings of ``keras-inception WORDS``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = cli.main(words)
        except SystemExit as done:
            status = done.code
    return status, capsys.readouterr().err.splitlines(), caught


def check(line: str, expected: str) -> None:
    """``line`` is ``expected``, where ``...`` in it stands for any text."""
    parts = expected.split("...")
    assert line.startswith(parts[0]) and line.endswith(parts[-1]), f"{line!r} is not {expected!r}"
    position = 0
    for part in parts:
        position = line.index(part, position) + len(part)


@pytest.mark.parametrize("command, status, expected", CASES, ids=[c[0].replace("{T}/", "") for c in CASES])
def test_each_mistake_is_one_line(files, capsys, command, status, expected):
    words = [w.replace("{T}", files) for w in command.split()]
    code, lines, caught = run(words, capsys)
    assert code == status
    said = [line for line in lines if not line.startswith("weights: ")]  # the line naming the weights
    assert len(said) == 1, lines
    prefix = "" if status == 1 else "keras-inception "
    check(said[0], prefix + expected.replace("{T}", files))
    assert not caught, [str(w.message) for w in caught]


def test_foreign_weights_are_one_line_without_warnings(files, capsys):
    """Keras warns once per layer and lists them all (about 250 lines): here, one line."""
    words = ["predict", "--model", "inception_v3", "--weights", f"{files}/foreign.keras", f"{files}/a.png"]
    code, lines, caught = run(words, capsys)
    assert code == 2 and not caught
    assert lines == [
        f"keras-inception predict: error: --weights '{files}/foreign.keras' does not fit inception_v3: "
        "189 of its layers have no weights in the file; give weights saved from inception_v3 built with "
        "the same classes and heads"
    ]


def test_damaged_weights_files_are_one_line(files):
    model = keras.saving.load_model(f"{files}/tiny.keras")
    damaged = r"^weights='.*truncated.weights.h5' is damaged \(.*\); save or download it again$"
    with pytest.raises(ValueError, match=damaged):
        loading.load_keras_weights(model, f"{files}/truncated.weights.h5")
    with pytest.raises(ValueError, match=r"^weights='.*foreign.weights.h5' does not fit sequential: "):
        loading.load_keras_weights(model, f"{files}/foreign.weights.h5")


def test_each_command_names_its_weights(files, capsys):
    assert cli.main(["predict", "--model", f"{files}/tiny.keras", f"{files}/a.png"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"weights: those saved in {files}/tiny.keras"]
    assert out.startswith(f"{files}/a.png:")  # results alone on stdout


def test_random_weights_are_said(monkeypatch, capsys):
    built = []
    monkeypatch.setattr("keras_inception.models.create", lambda source, weights=None: built.append(weights))
    cli.load_model("inception_v3", "none")
    cli.load_model("inception_v3", "Random")
    assert built == [None, None]
    assert capsys.readouterr().err.splitlines() == [
        "weights: none, random initialisation (--weights none; give a tag or a file to load some)"
    ] * 2
    cli.load_model("inception_v3", None)  # default: imagenet, as keras.applications
    assert built[-1] == "imagenet"
    assert capsys.readouterr().err == (
        "weights: imagenet (inception_v3, TF-slim checkpoint inception_v3_2016_08_28.tar.gz)\n"
    )


def test_flags_replace_parameter_names():
    command = cli.parser().commands["export"]
    flagged = cli.in_flags("weights=None is odd; calibration=DIR", command)
    assert flagged == "--weights none is odd; --calibration DIR"
    assert cli.in_flags("top must be 1; format=tflite", command) == "top must be 1; --format tflite"


def test_training_errors_name_parameters_and_the_command_names_flags():
    train = cli.parser().commands["train"]
    assert cli.in_flags("does not support validation=DATA, xla=True", train) == (
        "does not support --val-data DATA, --xla"
    )
    assert cli.in_flags("pass steps_per_epoch=N", train) == "pass --steps-per-epoch N"
    assert cli.in_flags("it needs num_classes=N", train) == "it needs --num-classes N"


def test_the_download_shows_its_progress_on_stderr(tmp_path, monkeypatch, capsys):
    entry = registry.pretrained_config("inception_v3", "imagenet")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / entry.archive).write_bytes(b"x" * 5000)
    monkeypatch.setenv(zoo.URL_ENV, str(tmp_path / "mirror"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    (tmp_path / "cache").mkdir()
    zoo.download(entry, str(tmp_path / "cache"))
    out, err = capsys.readouterr()
    assert out == ""  # stdout is for results
    assert f"Downloading {zoo.url_for(entry)}" in err and "5000/5000" in err


def test_importing_the_package_prints_nothing():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", "import keras_inception"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # no oneDNN / CUDA-probe notices


def test_a_full_disk_is_one_line_with_the_path():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/model.keras")
    line = "No space left on device: /data/out/model.keras; free some space or write elsewhere"
    assert cli.error_line(full) == line
    assert cli.error_line(ValueError("what happened:\n  - detail\n")) == "what happened"


def test_every_help_states_one_default_and_the_true_one():
    """Each option's help gives its default once: an option whose unset value (None) means
    something else states that ("imagenet", "the next free one") instead of "None"."""
    import argparse
    import re

    from keras_inception import cli

    top = cli.parser()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        assert not re.search(r"\(default: [^)]*\) \(default:", text), (name, text)
        if "--weights" in sub._option_string_actions:
            assert "(default: imagenet)" in text, name
    export = " ".join(commands["export"].format_help().split())
    assert "--version VERSION SavedModel version (default: the next free one) --" in export
