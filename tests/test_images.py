"""Reading images safely: clear errors, a pixel limit from the header, folders, empty batches, classify."""

import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

import keras_inception as ki
from keras_inception.deploy import export, predict
from keras_inception.input import pipelines as data
from keras_inception.input import preprocessing


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _claiming(fmt: str, width: int, height: int) -> bytes:
    """A small real file whose header claims ``width`` x ``height`` (too big to decode here)."""
    encoded = bytearray(_encode(_pixels(8, 8), fmt))
    if fmt == "JPEG":
        sof = encoded.index(b"\xff\xc0")
        encoded[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    elif fmt == "PNG":
        encoded[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    elif fmt == "GIF":
        encoded[6:10] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    else:  # BMP
        encoded[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    return bytes(encoded)


# ---------------------------------------------------------------- 1. load_image errors


def test_load_image_errors_are_one_line_without_tensorflow_internals(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(_encode(_pixels(64, 64), "JPEG")[:200])
    (tmp_path / "truncated.png").write_bytes(_encode(_pixels(64, 64), "PNG")[:100])
    (tmp_path / "folder.jpg").mkdir()
    expected = {
        "missing.jpg": "no such file",
        "folder.jpg": "is a directory",
        "notes.txt": "not an image (unknown format)",
        "empty.jpg": "empty file",
        "truncated.jpg": "corrupt image (Invalid JPEG data, size 200)",
        "truncated.png": "corrupt image (Invalid PNG data, size 100)",
    }
    for name, reason in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(ValueError) as caught:
            preprocessing.load_image(path)
        assert str(caught.value) == f"cannot read image {path}: {reason}"


# ---------------------------------------------------------------- 2. pixel limit


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_encoded_shape_reads_the_header(fmt):
    encoded = _encode(_pixels(30, 50), fmt)
    assert preprocessing.image_format(encoded).numpy().decode() == fmt.lower()
    np.testing.assert_array_equal(preprocessing.encoded_shape(encoded), [30, 50])
    in_graph = tf.data.Dataset.from_tensors(encoded).map(preprocessing.encoded_shape)
    np.testing.assert_array_equal(next(iter(in_graph)), [30, 50])
    np.testing.assert_array_equal(preprocessing.encoded_shape(b"not an image"), [0, 0])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_default_limit_refuses_a_huge_header_before_decoding(fmt, tmp_path):
    path = tmp_path / f"huge.{fmt.lower()}"
    path.write_bytes(_claiming(fmt, 12000, 12000))
    with pytest.raises(ValueError) as caught:
        preprocessing.load_image(str(path))
    assert str(caught.value) == (
        f"cannot read image {path}: 12000x12000 pixels exceeds the limit of 50000000 pixels "
        "(raise it with KERAS_INCEPTION_MAX_PIXELS or max_pixels=)"
    )


def _gif(screen: tuple[int, int], frames: list[tuple[int, int, int, int]]) -> bytes:
    """A GIF built by hand: a ``screen`` (width, height) with a two-colour table, and one image
    descriptor per ``(left, top, width, height)`` frame, each with a minimal LZW payload
    (clear code, end code) and a graphic control extension before it."""
    out = b"GIF89a" + screen[0].to_bytes(2, "little") + screen[1].to_bytes(2, "little") + b"\x80\x00\x00"
    out += bytes(6)  # the colour table: black, black
    for left, top, width, height in frames:
        out += b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # graphic control extension: one sub-block
        out += b"\x2c" + b"".join(v.to_bytes(2, "little") for v in (left, top, width, height)) + b"\x00"
        out += b"\x02\x01\x2c\x00"  # LZW minimum code size 2; one sub-block: clear (4), end (5)
    return out + b"\x3b"


def test_gif_frame_larger_than_its_screen_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "frame.gif"
    path.write_bytes(_gif((1, 1), [(0, 0, 1, 1), (0, 0, 20000, 20000)]))
    assert path.stat().st_size < 100
    np.testing.assert_array_equal(preprocessing.encoded_shape(path.read_bytes()), [20000, 20000])

    def decode(data):
        raise AssertionError("decoded")

    monkeypatch.setattr(preprocessing, "decode_image", decode)
    with pytest.raises(ValueError) as caught:
        preprocessing.load_image(str(path))
    assert str(caught.value) == (
        f"cannot read image {path}: a GIF frame reaching 20000x20000 pixels (its screen is 1x1) exceeds "
        "the limit of 50000000 pixels (raise it with KERAS_INCEPTION_MAX_PIXELS or max_pixels=)"
    )
    in_graph = tf.data.Dataset.from_tensors(path.read_bytes()).map(preprocessing.check_pixels)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 20000x20000 pixels exceeds the limit"):
        next(iter(in_graph))
    offset = _gif((8, 8), [(0, 0, 8, 8), (9000, 0, 100, 100)])  # a frame placed far off its screen
    np.testing.assert_array_equal(preprocessing.encoded_shape(offset), [100, 9100])


def test_gif_extent_of_real_animations():
    frames = [Image.fromarray(_pixels(30, 50, seed)) for seed in range(3)]
    frames[2] = frames[1].copy()
    frames[2].paste((255, 0, 0), (10, 5, 20, 12))  # Pillow stores only the changed box
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50)
    np.testing.assert_array_equal(preprocessing.gif_extent(out.getvalue()), [30, 50])
    np.testing.assert_array_equal(preprocessing.encoded_shape(out.getvalue()), [30, 50])


def test_pixel_limit_argument_env_and_constant(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_encode(_pixels(300, 300), "PNG"))
    assert preprocessing.load_image(str(path), max_pixels=300 * 300).shape == (300, 300, 3)
    with pytest.raises(ValueError, match=r"big.png: 300x300 pixels exceeds the limit of 89999 pixels"):
        preprocessing.load_image(str(path), max_pixels=300 * 300 - 1)
    monkeypatch.setenv("KERAS_INCEPTION_MAX_PIXELS", "1000")
    with pytest.raises(ValueError, match="limit of 1000 pixels"):
        preprocessing.load_image(str(path))
    monkeypatch.delenv("KERAS_INCEPTION_MAX_PIXELS")
    monkeypatch.setattr(preprocessing, "MAX_PIXELS", 2000)
    with pytest.raises(ValueError, match="limit of 2000 pixels"):
        preprocessing.load_image(str(path))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 300x300 pixels exceeds the limit"):
        preprocessing.check_pixels(path.read_bytes())


@pytest.mark.parametrize(
    "shape, size", [((1, 40, 60), (33, 47)), ((2, 300, 300), (299, 299)), ((1, 37, 513), (75, 75))]
)
def test_eval_transform_unchanged_by_cropping_before_the_cast(shape, size):
    """Bit-identical to the former order: cast to float, central crop 0.875, TF1 bilinear resize."""
    images = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    x = tf.image.central_crop(tf.cast(images, tf.float32) / 255.0, 0.875)
    x = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=False, half_pixel_centers=False)
    former = ((x - 0.5) * 2.0).numpy()
    np.testing.assert_array_equal(preprocessing.eval_transform(images, size).numpy(), former)
    np.testing.assert_array_equal(preprocessing.eval_transform(images[0], size).numpy(), former[0])


def test_eval_transform_casts_the_crop_not_the_whole_image():
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8)
    graph = tf.function(lambda x: preprocessing.eval_transform(x, 75)).get_concrete_function(spec).graph
    casts = [op for op in graph.get_operations() if op.type == "Cast" and op.inputs[0].dtype == tf.uint8]
    assert [op.inputs[0].op.type for op in casts] == ["Slice"]


# ---------------------------------------------------------------- EXIF orientation

ORIENTED = {  # what Pillow's ImageOps.exif_transpose does for each EXIF orientation
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif(orientation: int, big_endian: bool = False) -> bytes:
    """An APP1 EXIF payload whose IFD0 holds a DateTime-like entry, then the Orientation."""
    order = "big" if big_endian else "little"

    def u(value, n):
        return value.to_bytes(n, order)

    entries = u(0x010F, 2) + u(2, 2) + u(4, 4) + b"Cam\0"  # Make, an ASCII value held inline
    entries += u(0x0112, 2) + u(3, 2) + u(1, 4) + u(orientation, 2) + b"\0\0"
    return b"Exif\0\0" + (b"MM" if big_endian else b"II") + u(42, 2) + u(8, 4) + u(2, 2) + entries + u(0, 4)


def _oriented_jpeg(pixels: np.ndarray, orientation: int | None, big_endian: bool = False) -> bytes:
    out = io.BytesIO()
    exif = {} if orientation is None else {"exif": _exif(orientation, big_endian)}
    Image.fromarray(pixels).save(out, "JPEG", quality=95, **exif)
    return out.getvalue()


def test_exif_orientation_is_honoured_by_load_image_and_the_pipelines(tmp_path):
    pixels = _pixels(20, 30)
    stored = preprocessing.decode_image(_oriented_jpeg(pixels, None)).numpy()  # as the file stores it
    for orientation in range(1, 9):
        for big_endian in (False, True) if orientation in (6, 8) else (False,):
            encoded = _oriented_jpeg(pixels, orientation, big_endian)
            assert int(preprocessing.exif_orientation(encoded)) == orientation
            path = tmp_path / f"{orientation}{'be' if big_endian else 'le'}.jpg"
            path.write_bytes(encoded)
            upright = Image.fromarray(stored).transpose(ORIENTED[orientation]) if orientation > 1 else stored
            np.testing.assert_array_equal(preprocessing.load_image(str(path)), np.asarray(upright))
        # Pillow's own reading agrees on the shape (its decoder differs by a few levels)
        assert ImageOps.exif_transpose(Image.open(path)).size == Image.fromarray(np.asarray(upright)).size
    for name, orientation in (("a", 6), ("b", 8)):  # the tf.data pipeline: image folders, TFRecords
        (tmp_path / name).mkdir()
        (tmp_path / name / "0.jpg").write_bytes(_oriented_jpeg(pixels, orientation))
    source = data.image_folder(str(tmp_path), class_names=["a", "b"])
    images = [image.numpy() for image, _ in source.dataset]
    np.testing.assert_array_equal(images[0], np.asarray(Image.fromarray(stored).transpose(ORIENTED[6])))
    np.testing.assert_array_equal(images[1], np.asarray(Image.fromarray(stored).transpose(ORIENTED[8])))
    batch = next(iter(data.pipeline(source, 2, training=False, image_size=30)))
    assert batch[0].shape == (2, 30, 30, 3)


def test_exif_orientation_ignores_what_is_not_one():
    pixels = _pixels(8, 12)
    for encoded in (
        _oriented_jpeg(pixels, None),
        _oriented_jpeg(pixels, 9),  # out of range: as stored
        _encode(pixels, "PNG") + _exif(6),  # not a JPEG
        b"\xff\xd8\xff\xe1\x00\x10Exif\0\0II",  # cut short
    ):
        assert int(preprocessing.exif_orientation(encoded)) == 1


# ---------------------------------------------------------------- 4. image folders


def _class_folder(root, name: str, count: int, seed: int = 0) -> None:
    os.makedirs(root / name, exist_ok=True)
    for i in range(count):
        Image.fromarray(_pixels(20, 24, seed + i)).save(root / name / f"{i}.png")


def test_image_folder_skips_images_over_the_limit_and_says_why(tmp_path, monkeypatch):
    _class_folder(tmp_path, "a", 2)
    _class_folder(tmp_path, "b", 2)
    Image.fromarray(_pixels(300, 300)).save(tmp_path / "b" / "big.png")
    assert data.image_folder(str(tmp_path)).num_examples == 5
    source = data.image_folder(str(tmp_path), max_pixels=300 * 300 - 1)
    big = str(tmp_path / "b" / "big.png")
    assert source.num_examples == 4 and source.skipped == [big]
    assert source.reasons == {
        big: "300x300 pixels exceeds the limit of 89999 pixels "
        "(raise it with KERAS_INCEPTION_MAX_PIXELS or max_pixels=)"
    }
    monkeypatch.setenv("KERAS_INCEPTION_MAX_PIXELS", str(300 * 300 - 1))
    with pytest.raises(ValueError, match=r"1 unreadable files in .*: b/big.png: 300x300 pixels exceeds"):
        data.image_folder(str(tmp_path), on_error="raise")


def test_image_folder_nested_odd_names_and_bad_layouts(tmp_path):
    _class_folder(tmp_path, "a", 2)
    _class_folder(tmp_path, "b", 1)
    _class_folder(tmp_path / "b", "nested", 2, seed=5)  # b/nested/0.png, b/nested/1.png
    odd = os.path.join(os.fsencode(tmp_path / "a"), b"caf\xe9.png")  # not valid UTF-8
    Image.fromarray(_pixels(20, 24, 9)).save(odd)
    source = data.image_folder(str(tmp_path))
    files = [os.path.relpath(f, tmp_path) for f, _ in source.files]
    assert files == [
        "a/0.png",
        "a/1.png",
        os.fsdecode(b"a/caf\xe9.png"),
        "b/0.png",
        "b/nested/0.png",
        "b/nested/1.png",
    ]
    assert [int(y) for _, y in source.dataset] == [0, 0, 0, 1, 1, 1]
    assert source.skipped == []

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"no readable image in class folder\(s\) \['c'\]"):
        data.image_folder(str(tmp_path))

    only = tmp_path / "only"
    _class_folder(only, "cats", 2)
    with pytest.raises(
        ValueError, match=r"only one class folder \('cats'\): a classifier needs at least two"
    ):
        data.image_folder(str(only))


def test_non_utf8_class_folder_is_refused_at_loading(tmp_path):
    """Every export format stores class names as UTF-8: a folder whose name is not is refused
    before training, naming it (escaped) and what to do."""
    _class_folder(tmp_path, "a", 2)
    os.makedirs(os.path.join(os.fsencode(tmp_path), b"caf\xe9"))
    Image.fromarray(_pixels(20, 24)).save(os.path.join(os.fsencode(tmp_path), b"caf\xe9", b"0.png"))
    message = (
        f"class folder 'caf\\xe9' of {tmp_path} is not valid UTF-8, which exported models cannot store "
        "as a class name; rename it"
    )
    for load in (data.image_folder, lambda d: data.split_folder(d, 0.5), data.open_source):
        with pytest.raises(ValueError) as caught:
            load(str(tmp_path))
        assert str(caught.value) == message
    os.rename(os.path.join(os.fsencode(tmp_path), b"caf\xe9"), tmp_path / "café")  # renamed: accepted
    assert data.image_folder(str(tmp_path)).class_names == ["a", "café"]


# ---------------------------------------------------------------- 2-3. serving


@pytest.fixture(scope="module")
def tiny_v3():
    keras.utils.set_random_seed(0)
    return ki.InceptionV3(weights=None, input_shape=(75, 75, 3), classes=3, depths=(1, 1, 1))


def test_saved_model_empty_batches_and_pixel_limit(tiny_v3, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_INCEPTION_MAX_PIXELS", str(300 * 300 - 1))  # read when exporting
    served = tf.saved_model.load(export.export_saved_model(tiny_v3, str(tmp_path / "serving"), top_k=2))
    monkeypatch.delenv("KERAS_INCEPTION_MAX_PIXELS")
    pixels = served.signatures["serving_default"](images=tf.zeros((0, 80, 90, 3), tf.uint8))
    encoded = served.signatures["serve_image_bytes"](image_bytes=tf.constant([], tf.string))
    for out in (pixels, encoded):
        assert out["probabilities"].shape == (0, 3)
        assert out["top_k_classes"].shape == out["top_k_names"].shape == out["top_k_scores"].shape == (0, 2)

    small = _pixels(90, 80)
    one = served.signatures["serve_image_bytes"](image_bytes=tf.constant([_encode(small, "PNG")]))
    expected = tiny_v3.predict(preprocessing.eval_transform(small[np.newaxis], (75, 75)), verbose=0)
    np.testing.assert_allclose(one["probabilities"], expected, atol=1e-5)
    big = tf.constant([_encode(small, "PNG"), _encode(_pixels(300, 300), "PNG")])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"image of 300x300 pixels exceeds the limit of 89999 pixels"
    ):
        served.signatures["serve_image_bytes"](image_bytes=big)


# ---------------------------------------------------------------- 5. classify


def test_classify_batches_skips_bad_files_and_keeps_order(tiny_v3, tmp_path, monkeypatch):
    good = []
    for i, (fmt, shape) in enumerate([("PNG", (90, 80)), ("JPEG", (75, 75)), ("BMP", (60, 130))]):
        path = str(tmp_path / f"{i}.{fmt.lower()}")
        Image.fromarray(_pixels(*shape, seed=i)).save(path, fmt)
        good.append(path)
    corrupt, missing = str(tmp_path / "3-corrupt.jpg"), str(tmp_path / "missing.jpg")
    with open(corrupt, "wb") as f:
        f.write(_encode(_pixels(64, 64), "JPEG")[:200])
    (tmp_path / "notes.txt").write_text("not an image, and not an image name")

    calls = []
    predict_fn = tiny_v3.predict
    monkeypatch.setattr(tiny_v3, "predict", lambda x, **kw: calls.append(len(x)) or predict_fn(x, **kw))
    results, failures = predict.classify(  # the model as built: its own predict is watched
        tiny_v3, [good[0], corrupt, good[1], missing, good[2]], batch_size=2, top=2, fold_batchnorm=False
    )
    assert calls == [2, 1]  # batched, not one predict per image
    assert [p for p, _ in results] == good
    assert failures == [(corrupt, "corrupt image (Invalid JPEG data, size 200)"), (missing, "no such file")]
    for (_, top), path in zip(results, good, strict=True):
        single = predict_fn(
            preprocessing.eval_transform(preprocessing.load_image(path), (75, 75))[None], verbose=0
        )[0]
        best = np.argsort(-single)[:2]
        assert [name for name, _ in top] == [str(i) for i in best]
        np.testing.assert_allclose([score for _, score in top], single[best], atol=1e-5)

    from_dir, dir_failures = predict.classify(tiny_v3, [str(tmp_path)], top=1, class_names=["x", "y", "z"])
    assert [p for p, _ in from_dir] == good
    assert dir_failures == [(corrupt, "corrupt image (Invalid JPEG data, size 200)")]
    assert from_dir[0][1][0][0] in ("x", "y", "z")


@pytest.mark.parametrize("classes, first", [(1000, "goldfish"), (1001, "background"), (4, "1")])
def test_classify_names_imagenet_outputs(classes, first, tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(classes)])
    bias = np.zeros(classes, np.float32)
    bias[0 if classes == 1001 else 1] = 1.0
    model.layers[-1].set_weights([np.zeros((192, classes), np.float32), bias])
    Image.fromarray(_pixels(8, 8)).save(tmp_path / "a.png")
    results, failures = predict.classify(model, [str(tmp_path / "a.png")], top=1)
    assert failures == [] and results[0][1] == [(first, 1.0)]
