"""Evaluation as in the paper's Tables 2-5: top-1 / top-5 error for 1, 12 and 144 crops,
ensembles (averaged softmax), and the most confused class pairs.

144 crops (GoogLeNet, arXiv 1409.4842): the shorter side resized to 4 scales; the
left, centre and right squares (top, centre, bottom for portrait images); from each
the 4 corner crops, the centre crop and the square resized; and their mirrors:
4 x 3 x 6 x 2. GoogLeNet's scales 256-352 for 224 crops become 342, 384, 427, 470
for 299 (scaled by 299/224). 12 crops: one scale (342), the centre square, 6 crops
x 2 mirrors (the paper does not spell its 12-crop scheme out; this is its natural
reading).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
from collections.abc import Sequence

import keras
import numpy as np

from keras_inception.core.startup import import_tensorflow

tf = import_tensorflow(__name__, "tf.data evaluation")

from keras_inception.core import cpu  # noqa: E402
from keras_inception.deploy import folding as inference  # noqa: E402
from keras_inception.input import preprocessing  # noqa: E402
from keras_inception.nn.layers import output_layers  # noqa: E402

GOOGLENET_SCALES = (256, 288, 320, 352)
CROP_SCHEMES = (1, 12, 144)


def _scales(size: int, count: int) -> list[int]:
    return [round(s * size / 224) for s in GOOGLENET_SCALES[:count]]


def _resize_shorter(image: tf.Tensor, side: int) -> tf.Tensor:
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = side / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(image, tf.maximum(new, side), method="bilinear")


def _squares(image: tf.Tensor, side: int, count: int) -> list[tf.Tensor]:
    """``count`` (1 or 3) squares along the longer side: centre, or start/centre/end."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    long_axis_is_width = w >= h
    extent = tf.where(long_axis_is_width, w, h) - side
    offsets = [extent // 2] if count == 1 else [0, extent // 2, extent]
    out = []
    for off in offsets:
        y = tf.where(long_axis_is_width, 0, off)
        x = tf.where(long_axis_is_width, off, 0)
        out.append(tf.image.crop_to_bounding_box(image, y, x, side, side))
    return out


def _six(square: tf.Tensor, side: int, size: int) -> list[tf.Tensor]:
    """4 corners and the centre (``size`` each), and the whole square resized."""
    m = side - size
    crops = [
        tf.image.crop_to_bounding_box(square, y, x, size, size) for y, x in ((0, 0), (0, m), (m, 0), (m, m))
    ]
    crops.append(tf.image.crop_to_bounding_box(square, m // 2, m // 2, size, size))
    crops.append(tf.image.resize(square, [size, size], method="bilinear"))
    return crops


def crops(image, scheme: int = 1, size: int = 299) -> tf.Tensor:
    """``scheme`` crops (1, 12 or 144) of one uint8 ``(H, W, 3)`` image: ``(n, size, size, 3)`` in [-1, 1]."""
    if scheme not in CROP_SCHEMES:
        raise ValueError(f"crop scheme must be one of {CROP_SCHEMES}, got {scheme}")
    if scheme == 1:
        return preprocessing.eval_transform(image, size)[tf.newaxis]
    x = tf.cast(image, tf.float32) / 255.0
    scales, squares = (_scales(size, 1), 1) if scheme == 12 else (_scales(size, 4), 3)
    views = []
    for side in scales:
        for square in _squares(_resize_shorter(x, side), side, squares):
            views += _six(square, side, size)
    batch = tf.stack(views)
    batch = tf.concat([batch, tf.image.flip_left_right(batch)], axis=0)
    return preprocessing.to_signed_unit(batch)


@dataclasses.dataclass
class Result:
    """Top-1 / top-5 error (%) and the most confused (true, predicted, count) pairs."""

    images: int
    top1_error: float
    top5_error: float
    confused: list[tuple[str, str, int]]


def _class_offset(model: keras.Model, class_names: Sequence[str]) -> int:
    """0 when the model has one output per class, 1 for slim's 1001 (background first)."""
    classes = len(class_names)
    outputs = model.outputs[0].shape[-1]
    recorded = getattr(output_layers(model)[0], "class_names", None)
    if recorded and list(recorded) != list(class_names):
        raise ValueError(
            f"model {model.name} was trained on the classes {recorded[:5]}..., "
            f"the data has {list(class_names)[:5]}..."
        )
    if outputs == classes:
        return 0
    if outputs == classes + 1:
        return 1
    raise ValueError(
        f"model {model.name} has {outputs} outputs, the data {classes} classes: "
        "evaluate a model trained on these classes"
    )


def evaluate(
    models: Sequence[keras.Model],
    dataset: tf.data.Dataset,
    class_names: Sequence[str],
    scheme: int = 1,
    size: int = 299,
    limit: int | None = None,
    top_confused: int = 10,
    total: int | None = None,
    batch_size: int = 32,
    fold_batchnorm: bool = True,
) -> Result:
    """Evaluate a model or an ensemble on ``(uint8 image, label)`` pairs.

    The crops are made in ``tf.data`` (in parallel) and run through each model
    ``batch_size`` crops at a time; each image's softmax is averaged over its crops
    and over the models. Models with 1001 outputs (slim's background first) are read
    as 1000 classes; other mismatches are refused. ``total`` sizes the progress bar.
    Each model runs in its inference form (:func:`inference.fold_batchnorm`) unless
    ``fold_batchnorm`` is false.
    """
    if scheme not in CROP_SCHEMES:
        raise ValueError(f"crop scheme must be one of {CROP_SCHEMES}, got {scheme}")
    offsets = [_class_offset(model, class_names) for model in models]
    for model in models:  # bfloat16 without bfloat16 units: warned once
        cpu.check_precision(model.dtype_policy.name)
    per_batch = max(1, batch_size // scheme)  # images per forward pass
    if fold_batchnorm:
        scale = inference.residual_scale_folds(per_batch * scheme)  # views per call
        models = [inference.fold_batchnorm(model, scale) for model in models]
    views = (
        dataset.take(limit or -1)
        .map(
            lambda image, label, *_: (crops(image, scheme, size), label), num_parallel_calls=tf.data.AUTOTUNE
        )
        .batch(per_batch)
        .prefetch(tf.data.AUTOTUNE)
    )
    top1 = top5 = n = 0
    confusion: collections.Counter = collections.Counter()
    progress = keras.utils.Progbar(min(filter(None, (limit, total)), default=None), unit_name="image")
    for batch, labels in views:
        images = tf.reshape(batch, (-1, size, size, 3)).numpy()  # an array every backend takes
        probabilities = 0.0
        for model, offset in zip(models, offsets, strict=True):
            out = model.predict_on_batch(images)
            out = out[0] if isinstance(out, (list, tuple)) else out
            probabilities = probabilities + np.asarray(out).reshape(len(labels), scheme, -1)[
                ..., offset:
            ].mean(axis=1)
        probabilities = probabilities / len(models)
        for p, label in zip(probabilities, labels.numpy(), strict=True):
            best = np.argsort(-p, kind="stable")[:5]
            top1 += best[0] == label
            top5 += label in best
            if best[0] != label:
                confusion[(class_names[label], class_names[best[0]])] += 1
        n += len(labels)
        with contextlib.redirect_stdout(sys.stderr):  # progress on stderr, results on stdout
            progress.update(n)
    if not n:
        raise ValueError("the evaluation dataset is empty")
    with contextlib.redirect_stdout(sys.stderr):
        progress.update(n, finalize=True)
    confused = [(t, p, c) for (t, p), c in confusion.most_common(top_confused)]
    return Result(n, 100.0 * (1 - top1 / n), 100.0 * (1 - top5 / n), confused)
