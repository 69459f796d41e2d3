"""Slim checkpoints -> Keras: exact values, strictness, download, cache, CLI."""

import os

import keras
import numpy as np
import pytest
from slim_kit import pack, random_variables, serve, write_checkpoint

import keras_inception as ki
from keras_inception import cli
from keras_inception.core import registry
from keras_inception.models import get
from keras_inception.weights import checkpoint, loading, slim, sources, zoo

V3_ARCHIVE = registry.pretrained_config("inception_v3", "imagenet").archive


@pytest.fixture(scope="module")
def v3_variables():
    return random_variables("inception_v3", seed=1)


@pytest.fixture(scope="module")
def v3_checkpoint(tmp_path_factory, v3_variables):
    """A V1 checkpoint and its official archive in a mirror directory."""
    root = tmp_path_factory.mktemp("v3")
    prefix = write_checkpoint(v3_variables, str(root / "ckpt" / "inception_v3.ckpt"), "V1")
    mirror = root / "mirror"
    mirror.mkdir()
    pack(prefix, str(mirror / V3_ARCHIVE))
    return prefix, mirror


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return zoo.cache_dir()


def cache_entries(directory: str) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def assert_equal_to_source(model, variables, scope, classes=1001):
    for w in model.weights:
        source = variables[slim.slim_name(w.path, scope)]
        if classes == 1000 and source.shape[-1] == 1001:
            source = source[..., 1:]
        np.testing.assert_array_equal(w.numpy(), source, err_msg=w.path)


@pytest.mark.parametrize(
    "family, version",
    [
        ("inception_v3", "V1"),
        pytest.param("inception_resnet_v2", "V2", marks=pytest.mark.slow),
        ("inception_v3", "V2"),
        pytest.param("inception_v4", "V1", marks=pytest.mark.slow),
        pytest.param("inception_v4", "V2", marks=pytest.mark.slow),
        pytest.param("inception_resnet_v2", "V1", marks=pytest.mark.slow),
    ],
)
def test_every_weight_equals_its_source(tmp_path, family, version):
    variables = random_variables(family, seed=2)
    prefix = write_checkpoint(variables, str(tmp_path / f"{family}.ckpt"), version)
    model = get(family)(weights=prefix, classes=1001, aux_logits=True)
    assert len(model.weights) == len(variables)
    assert_equal_to_source(model, variables, registry.family(family).slim_scope)


def test_1000_classes_drop_the_background_row(v3_checkpoint, v3_variables):
    prefix, _ = v3_checkpoint
    model = ki.InceptionV3(weights=prefix)
    assert_equal_to_source(model, v3_variables, "InceptionV3", classes=1000)
    assert model.get_layer("Logits-Conv2d_1c_1x1").kernel.shape == (1, 1, 2048, 1000)


def test_moving_averages_by_default_raw_on_request(tmp_path, v3_variables):
    variables = dict(v3_variables)
    shadows = {f"{n}{slim.EMA_SUFFIX}": v + 1.0 for n, v in v3_variables.items() if n.endswith("/weights")}
    variables.update(shadows)
    variables["global_step"] = np.array(12345, np.int64)
    prefix = write_checkpoint(variables, str(tmp_path / "ema.ckpt"), "V2")
    model = ki.InceptionV3(classes=1001, aux_logits=True)
    report = loading.load(model, sources.resolve(prefix), "inception_v3")
    assert report.ema
    name = "InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights"
    layer = model.get_layer(slim.keras_path(name, "InceptionV3").split("/")[0])
    np.testing.assert_array_equal(layer.kernel.numpy(), v3_variables[name] + 1.0)
    loading.load(model, sources.resolve(prefix), "inception_v3", use_ema=False)
    np.testing.assert_array_equal(layer.kernel.numpy(), v3_variables[name])


def _mutations(variables):
    name = "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights"
    missing = {k: v for k, v in variables.items() if k != name}
    reshaped = {**variables, name: np.zeros((3, 3, 48, 64), np.float32)}
    extra = {**variables, "InceptionV3/Mixed_5c/Branch_9/Conv2d_0a_1x1/weights": np.zeros((1,), np.float32)}
    other = {k.replace("InceptionV3/", "InceptionV4/", 1): v for k, v in variables.items()}
    return [
        (missing, f"no variable {name}"),
        (reshaped, f"shape mismatch for {name}"),
        (extra, "InceptionV3/Mixed_5c/Branch_9/Conv2d_0a_1x1/weights has no place"),
        (other, "checkpoint holds inception_v4, the model is inception_v3"),
    ]


@pytest.mark.parametrize("case", range(4), ids=["missing", "shape", "unknown", "other-family"])
def test_strict_errors_name_the_variable_and_change_nothing(v3_variables, case):
    variables, message = _mutations(v3_variables)[case]
    model = ki.InceptionV3(classes=1001, aux_logits=True)
    before = [w.numpy().copy() for w in model.weights[:20]]
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.assign(model, variables, "inception_v3")
    for w, b in zip(model.weights[:20], before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)


def test_head_variables_are_skipped_only_when_the_head_is_absent(v3_variables):
    model = ki.InceptionV3(include_top=False)
    report = checkpoint.assign(model, v3_variables, "inception_v3")
    assert {n.split("/")[1] for n in report.skipped_heads} == {"Logits", "AuxLogits"}
    assert report.used + len(report.skipped_heads) == len(v3_variables)


def test_imagenet_download_then_offline_cache_hit(v3_checkpoint, v3_variables, cache, monkeypatch):
    _, mirror = v3_checkpoint
    with serve(str(mirror)) as url:
        monkeypatch.setenv(zoo.URL_ENV, url)
        model = ki.InceptionV3(weights="imagenet")
    assert_equal_to_source(model, v3_variables, "InceptionV3", classes=1000)
    assert cache_entries(cache) == ["inception_v3_imagenet.npz"]
    monkeypatch.setenv(zoo.URL_ENV, "http://127.0.0.1:9/unreachable/")  # server gone: cache hit
    again = ki.InceptionV3(weights="imagenet", classes=1001, aux_logits=True)
    assert_equal_to_source(again, v3_variables, "InceptionV3", classes=1001)


def test_file_url_mirror(v3_checkpoint, cache, monkeypatch):
    _, mirror = v3_checkpoint
    monkeypatch.setenv(zoo.URL_ENV, mirror.as_uri())
    zoo.fetch("inception_v3", "imagenet")
    assert cache_entries(cache) == ["inception_v3_imagenet.npz"]


def _bad_mirror(kind, tmp_path, v3_checkpoint, v3_variables):
    prefix, mirror = v3_checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    target = bad / V3_ARCHIVE
    if kind == "truncated":
        data = (mirror / V3_ARCHIVE).read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif kind == "dotdot":
        pack(prefix, str(target), extra={"../escape.txt": b"x"})
    elif kind == "other-family":
        small = {"InceptionV4/Conv2d_1a_3x3/weights": np.zeros((3, 3, 3, 32), np.float32)}
        pack(write_checkpoint(small, str(tmp_path / "v4" / "inception_v3.ckpt")), str(target))
    elif kind == "missing-variable":
        name = "InceptionV3/Mixed_7c/Branch_3/Conv2d_0b_1x1/BatchNorm/beta"
        fewer = {k: v for k, v in v3_variables.items() if k != name}
        pack(write_checkpoint(fewer, str(tmp_path / "few" / "inception_v3.ckpt")), str(target))
    else:
        (bad / V3_ARCHIVE).symlink_to(mirror / V3_ARCHIVE)
    return bad


@pytest.mark.parametrize(
    "kind, error, message",
    [
        ("truncated", zoo.WeightsError, "corrupt or truncated"),
        ("dotdot", zoo.WeightsError, "unsafe path"),
        ("other-family", checkpoint.CheckpointError, "checkpoint holds inception_v4"),
        pytest.param(
            "missing-variable",
            checkpoint.CheckpointError,
            "Mixed_7c/Branch_3/Conv2d_0b_1x1/BatchNorm/beta",
            marks=pytest.mark.slow,
        ),
        ("dropped-connection", zoo.WeightsError, "download of .* (failed|truncated)"),
        ("wrong-sha256", zoo.WeightsError, "expected the pinned"),
    ],
)
def test_bad_downloads_fail_clearly_and_cache_nothing(
    kind, error, message, tmp_path, v3_checkpoint, v3_variables, cache, monkeypatch
):
    mirror = _bad_mirror(kind, tmp_path, v3_checkpoint, v3_variables)
    if kind == "wrong-sha256":
        key = ("inception_v3", "imagenet")
        monkeypatch.setitem(registry.PRETRAINED, key, registry.PRETRAINED[key])
        zoo.pin("inception_v3", "imagenet", "0" * 64)
    cut = 1 << 20 if kind == "dropped-connection" else None
    with serve(str(mirror), cut_after=cut) as url:
        monkeypatch.setenv(zoo.URL_ENV, url)
        with pytest.raises(error, match=message):
            ki.InceptionV3(weights="imagenet")
    assert cache_entries(cache) == []
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.slow  # 19 s; the default run converts on the command line in the tests beside it
def test_local_archive_and_cli_convert(v3_checkpoint, v3_variables, tmp_path, capsys):
    prefix, mirror = v3_checkpoint
    archive = str(mirror / V3_ARCHIVE)
    out_keras = str(tmp_path / "v3.keras")
    assert cli.main(["convert", archive, out_keras, "--classes", "1001", "--aux-logits"]) == 0
    printed = capsys.readouterr().out
    assert "388 of 388 slim variables -> 388 Keras weights" in printed
    assert "output finite yes; every variable used yes" in printed
    restored = keras.saving.load_model(out_keras)
    assert_equal_to_source(restored, v3_variables, "InceptionV3")

    out_h5 = str(tmp_path / "v3.weights.h5")
    assert cli.main(["convert", prefix, out_h5, "--model", "inception_v3"]) == 0
    assert "skipped" not in capsys.readouterr().out
    model = ki.InceptionV3(weights=out_h5)
    assert_equal_to_source(model, v3_variables, "InceptionV3", classes=1000)

    assert cli.main(["convert", prefix, str(tmp_path / "v3.keras"), "--model", "inception_v4"]) == 2
    assert "checkpoint holds inception_v3" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_convert_to_saved_model_versions(v3_checkpoint, tmp_path):
    import tensorflow as tf

    prefix, _ = v3_checkpoint
    base = str(tmp_path / "serving")
    assert cli.main(["convert", prefix, base]) == 0
    assert cli.main(["convert", prefix, base]) == 0
    assert sorted(os.listdir(base)) == ["1", "2"]
    loaded = tf.saved_model.load(os.path.join(base, "1"))
    pixels = tf.zeros((1, 320, 280, 3), tf.uint8)  # any size: resized inside
    served = loaded.signatures["serving_default"](images=pixels)
    assert served["probabilities"].shape == (1, 1000)
    assert served["top_k_names"].shape == (1, 5)


def test_cli_predict_batches_reports_bad_files_and_exits_1(v3_checkpoint, tmp_path, capsys):
    prefix, _ = v3_checkpoint
    h5 = str(tmp_path / "v3.weights.h5")
    ki.InceptionV3(weights=prefix).save_weights(h5)
    photos = os.path.join(os.path.dirname(ki.__file__), "resources", "images")
    bad, missing = tmp_path / "bad.jpg", tmp_path / "missing.jpg"
    bad.write_bytes(b"not a jpeg")
    args = ["predict", photos, str(bad), str(missing), "--model", "inception_v3", "--weights", h5]
    assert cli.main([*args, "--top", "3"]) == 1  # every readable image printed, then a non-zero exit
    out, err = capsys.readouterr()
    names = sorted(f for f in os.listdir(photos) if not f.endswith(".md"))
    assert [line for line in out.splitlines() if not line.startswith("  ")] == [
        f"{os.path.join(photos, f)}:" for f in names
    ]
    classes = {name for _, name in ki.imagenet.classes()}
    scored = [line.split(maxsplit=1) for line in out.splitlines() if line.startswith("  ")]
    assert len(scored) == 3 * len(names) and all(name in classes for _, name in scored)
    assert err.splitlines() == [
        f"weights: {h5}",
        f"cannot read image {bad}: not an image (unknown format)",
        f"cannot read image {missing}: no such file",
    ]


def test_cli_convert_outputs_anywhere_known_suffixes_and_umask(v3_checkpoint, tmp_path, capsys):
    prefix, mirror = v3_checkpoint
    archive = str(mirror / V3_ARCHIVE)
    out = tmp_path / "after_options.weights.h5"
    assert cli.main(["convert", archive, "--model", "inception_v3", str(out), "--classes", "1000"]) == 0
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert cli.main(["convert", archive, "-o", str(tmp_path / "opt.keras")]) == 0
    assert (tmp_path / "opt.keras").is_file()
    capsys.readouterr()
    assert cli.main(["convert", archive, str(tmp_path / "model.h5")]) == 2
    assert "outputs are FILE.keras, FILE.weights.h5 or a SavedModel folder" in capsys.readouterr().err
    assert not (tmp_path / "model.h5").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")] == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_checkpoints_of_slims_trainer_load_and_say_what_was_ignored(tmp_path, v3_variables, capsys):
    """slim's trainer saves optimizer slots and global_step beside the network's variables."""
    variables = dict(v3_variables)
    some = [n for n in v3_variables if n.endswith("/weights")][:3]
    variables.update({f"{n}/RMSProp": np.ones_like(v3_variables[n]) for n in some})
    variables.update({f"{n}/RMSProp_1": np.zeros_like(v3_variables[n]) for n in some})
    variables["global_step"] = np.array(7, np.int64)
    prefix = write_checkpoint(variables, str(tmp_path / "trainer" / "model.ckpt-7"), "V2")
    out = str(tmp_path / "v3.weights.h5")
    assert cli.main(["convert", prefix, out, "--classes", "1001", "--aux-logits"]) == 0
    printed = capsys.readouterr().out
    assert "388 of 388 slim variables -> 388 Keras weights" in printed
    assert "ignored (state of the training run): 7 variables" in printed
    model = ki.InceptionV3(weights=out, classes=1001, aux_logits=True)
    assert_equal_to_source(model, v3_variables, "InceptionV3")


def test_pretrained_first_convolution_adapts_to_any_channel_count(v3_checkpoint, v3_variables, tmp_path):
    """timm's rule: one channel sums the RGB kernels, so gray g gives what RGB [g, g, g] gives;
    N > 3 repeats them scaled by 3/N. The model says so in its config and reloads."""
    prefix, _ = v3_checkpoint
    common = {"weights": prefix, "include_top": False, "pooling": "avg"}
    rgb = ki.InceptionV3(input_shape=(139, 139, 3), **common)
    gray = ki.InceptionV3(input_shape=(139, 139, 1), **common)
    g = np.random.default_rng(0).uniform(-1, 1, (2, 139, 139, 1)).astype("float32")
    expected = rgb.predict(np.repeat(g, 3, axis=-1), verbose=0)
    np.testing.assert_allclose(gray.predict(g, verbose=0), expected, rtol=1e-4, atol=1e-5)

    kernel = v3_variables["InceptionV3/Conv2d_1a_3x3/weights"]
    four = ki.InceptionV3(input_shape=(139, 139, 4), **common)
    adapted = four.get_layer("Conv2d_1a_3x3").kernel.numpy()
    np.testing.assert_allclose(adapted[:, :, :3], kernel * 0.75, rtol=1e-6)
    np.testing.assert_allclose(adapted[:, :, 3], kernel[:, :, 0] * 0.75, rtol=1e-6)
    config = four.get_layer("AdaptedInput").get_config()
    assert (config["channels"], config["pretrained_channels"], config["rule"]) == (4, 3, "repeat, scaled 3/4")
    assert "AdaptedInput" not in [layer.name for layer in rgb.layers]

    gray.save(tmp_path / "gray.keras")
    reloaded = keras.saving.load_model(tmp_path / "gray.keras")
    assert reloaded.get_layer("AdaptedInput").get_config()["rule"] == "sum"
    np.testing.assert_allclose(reloaded.predict(g, verbose=0), expected, rtol=1e-4, atol=1e-5)
