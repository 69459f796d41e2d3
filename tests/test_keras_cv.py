"""keras-cv's augmentation layers inside our tf.data pipeline (``data.pipeline(augment=...)``).

keras-cv is optional and archived: the package never imports it. A wrapper passes
each batch through a keras-cv layer and returns input and output side by side
(channels 0-2 and 3-5, labels likewise), so every check compares the very batch the
layer saw (slim's training transform is random, so two pipelines never agree).
"""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from keras_inception.input import pipelines as data

SIZE = 75
BATCH = 4
PACKAGE = pathlib.Path(data.__file__).parent


@pytest.fixture(scope="module")
def kcv():
    return pytest.importorskip("keras_cv")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> data.Source:
    """Three classes of four CIFAR-sized (32x32) PNGs."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(4):
            png = tf.io.encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            tf.io.write_file(str(root / f"class{c}" / f"{i}.png"), png)
    return data.image_folder(str(root))


class SideBySide:
    """A keras-cv layer that returns its input beside its output (takes labels when it mixes)."""

    def __init__(self, layer, takes_labels: bool = False):
        self.layer, self.takes_labels = layer, takes_labels

    def __call__(self, inputs, training=None):
        if not self.takes_labels:
            return tf.concat([inputs, self.layer(inputs, training=training)], -1)
        x, y = inputs["images"], inputs["labels"]
        out = self.layer({"images": x, "labels": y}, training=training)
        return {"images": tf.concat([x, out["images"]], -1), "labels": tf.concat([y, out["labels"]], -1)}


def batches(source: data.Source, augment, count: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    dataset = data.pipeline(source, BATCH, training=True, image_size=SIZE, seed=0, augment=augment)
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def before_after(source, layer, takes_labels: bool = False):
    """``(x, y, x_out, y_out)`` per batch: what ``layer`` got and returned in the pipeline."""
    n = source.num_classes
    out = []
    for x, y in batches(source, [SideBySide(layer, takes_labels)]):
        out.append((x[..., :3], y[:, :n], x[..., 3:], y[:, n:] if takes_labels else y))
    return out


def changed(x, x_out) -> np.ndarray:
    """Per pixel: did any channel change? ``[batch, h, w]``."""
    return np.any(x != x_out, axis=-1)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def test_package_never_imports_keras_cv():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "keras_cv" for n in names), path


def test_rand_augment_changes_images_in_range_and_keeps_labels(kcv, source):
    for x, y, x_out, y_out in before_after(source, kcv.layers.RandAugment(value_range=(-1, 1), seed=1)):
        assert x_out.shape == (BATCH, SIZE, SIZE, 3) and x_out.dtype == np.float32
        assert x_out.min() >= -1 and x_out.max() <= 1
        assert changed(x, x_out).any()
        np.testing.assert_array_equal(y_out, y)


def test_random_cutout_fills_one_rectangle_and_leaves_the_rest(kcv, source):
    layer = kcv.layers.RandomCutout(0.3, 0.3, fill_value=-1.0, seed=1)
    for x, y, x_out, y_out in before_after(source, layer):
        for image, out, mask in zip(x, x_out, changed(x, x_out), strict=True):
            box = bounding_box(mask)
            assert np.all(out[box] == -1.0)  # the whole rectangle, pixels that were -1 included
            outside = np.ones(mask.shape, bool)
            outside[box] = False
            np.testing.assert_array_equal(out[outside], image[outside])
        np.testing.assert_array_equal(y_out, y)


def test_mixup_mixes_images_and_one_hot_labels_with_the_same_weight(kcv, source):
    for x, y, x_out, y_out in before_after(source, kcv.layers.MixUp(seed=1), takes_labels=True):
        np.testing.assert_allclose(y_out.sum(1), 1, atol=1e-6)
        for i in range(BATCH):
            fits = []  # (residual, j, lam): x_out[i] = lam x[i] + (1 - lam) x[j]
            for j in range(BATCH):
                d = (x[i] - x[j]).ravel()
                lam = 1.0 if j == i else float(d @ (x_out[i] - x[j]).ravel() / (d @ d))
                fits.append((np.abs(lam * x[i] + (1 - lam) * x[j] - x_out[i]).max(), j, lam))
            residual, j, lam = min(fits)
            assert residual < 1e-5 and 0 <= lam <= 1
            np.testing.assert_allclose(y_out[i], lam * y[i] + (1 - lam) * y[j], atol=1e-5)


def test_cutmix_pastes_a_square_and_weights_labels_by_its_area(kcv, source):
    """keras-cv pastes a square of side ``k`` from a partner image and gives the partner's
    label the weight ``k**2 / size**2``, the part of the square cut off by the border included."""
    for x, y, x_out, y_out in before_after(source, kcv.layers.CutMix(seed=1), takes_labels=True):
        np.testing.assert_allclose(y_out.sum(1), 1, atol=1e-6)
        for i, mask in enumerate(changed(x, x_out)):
            if not mask.any():  # pasted from itself
                np.testing.assert_array_equal(y_out[i], y[i])
                continue
            box = bounding_box(mask)
            assert mask[box].all()
            np.testing.assert_array_equal(x_out[i][~mask], x[i][~mask])
            (j,) = [j for j in range(BATCH) if np.array_equal(x_out[i][box], x[j][box])]
            if np.array_equal(y[i], y[j]):
                np.testing.assert_array_equal(y_out[i], y[i])
                continue
            side = np.sqrt(float(y_out[i] @ y[j])) * SIZE
            assert side == pytest.approx(round(side), abs=1e-3)
            for s in box:  # the square's side where the border does not cut it
                length = s.stop - s.start
                assert length == round(side) if s.start > 0 and s.stop < SIZE else length <= round(side)


# keras-cv layers tried in the pipeline, built from keras_cv.layers
LAYERS = {
    "RandAugment": lambda cv: cv.RandAugment(value_range=(-1, 1), seed=1),
    "RandomCutout": lambda cv: cv.RandomCutout(0.5, 0.5, seed=1),
    "CutMix": lambda cv: cv.CutMix(seed=1),
    "MixUp": lambda cv: cv.MixUp(seed=1),
    "AugMix": lambda cv: cv.AugMix(value_range=(-1, 1), seed=1),
    "GridMask": lambda cv: cv.GridMask(seed=1),
    "RandomAugmentationPipeline": lambda cv: cv.RandomAugmentationPipeline(
        [cv.RandomFlip(), cv.RandomSharpness(0.5, value_range=(-1, 1)), cv.Solarization(value_range=(-1, 1))],
        augmentations_per_image=2,
        seed=1,
    ),
    "JitteredResize": lambda cv: cv.JitteredResize(
        target_size=(SIZE, SIZE), scale_factor=(0.8, 1.25), bounding_box_format="xywh", seed=1
    ),
    "FourierMix": lambda cv: cv.FourierMix(seed=1),
    "Mosaic": lambda cv: cv.Mosaic(seed=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYERS)
def test_layer_runs_in_the_pipeline(kcv, source, name):
    """The layers themselves, as a user passes them (the label mixers are found by name)."""
    layer = LAYERS[name](kcv.layers)
    for x, y in batches(source, [layer]):
        assert x.shape == (BATCH, SIZE, SIZE, 3) and x.dtype == np.float32
        assert x.min() >= -1 - 1e-5 and x.max() <= 1 + 1e-5
        assert y.shape == (BATCH, source.num_classes)
        np.testing.assert_allclose(y.sum(1), 1, atol=1e-5)
        if name not in data.LABEL_MIXERS:
            assert set(np.unique(y)) <= {0.0, 1.0}


def test_layers_without_value_range_assume_0_255(kcv, source):
    """RandomColorDegeneration clips to [0, 255]: our [-1, 1] images lose their negative half."""
    for x, _, x_out, _ in before_after(source, kcv.layers.RandomColorDegeneration(0.5, seed=1)):
        assert x.min() < -0.5 and x_out.min() >= 0.0
