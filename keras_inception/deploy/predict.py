"""Classify image files with a Keras model: slim's evaluation transform, batched predictions.

results, failures = classify(model, ["photos/", "cat.jpg"], top=3)
for path, top in results:
    print(path, top)  # [(class_name, score), ...]
for path, reason in failures:
    print(f"skipped {path}: {reason}")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import keras
import numpy as np

from keras_inception.core import cpu
from keras_inception.deploy import export
from keras_inception.deploy import folding as inference
from keras_inception.input import preprocessing
from keras_inception.input.pipelines import IMAGE_EXTENSIONS

Prediction = tuple[str, list[tuple[str, float]]]


def image_files(directory: str) -> list[str]:
    """The image files (by extension) directly in ``directory``, sorted."""
    names = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(directory, f) for f in names]


def _batches(
    paths: Iterable[str], size: tuple[int, int], batch_size: int, failures: list[tuple[str, str]]
) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(paths, transformed images)`` batches of the readable files; the others go to ``failures``."""
    names, images = [], []
    for path in paths:
        try:
            image = preprocessing.load_image(path)
        except ValueError as error:
            failures.append((path, str(error).removeprefix(f"cannot read image {path}: ")))
            continue
        names.append(path)
        images.append(preprocessing.eval_transform(image, size).numpy())
        if len(images) == batch_size:
            yield names, np.stack(images)
            names, images = [], []
    if images:
        yield names, np.stack(images)


def classify(
    model: keras.Model,
    paths: Sequence[str | os.PathLike],
    *,
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 32,
    top: int = 5,
    class_names: Sequence[str] | None = None,
    fold_batchnorm: bool = True,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top ``top`` classes of each image file: ``(results, failures)``.

    ``paths`` are image files or directories (their image files, sorted). Each image is
    read with :func:`preprocessing.load_image`, put through slim's evaluation transform
    at ``image_size`` (default: the model's input size) and classified ``batch_size`` at
    a time. ``results`` is ``[(path, [(class_name, score), ...]), ...]`` in input order;
    ``failures`` is ``[(path, one-line reason), ...]`` for the files that could not be
    read, which never stop the others. Class names default to the model's own (a
    fine-tuned model carries them), else ImageNet's for 1000 or 1001 (slim's,
    background first) outputs, else the class index. The images run through the model's
    inference form (:func:`inference.fold_batchnorm`) unless ``fold_batchnorm`` is false.
    """
    for name, value in (("top", top), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    cpu.check_precision(model.dtype_policy.name)  # bfloat16 without bfloat16 units: warned once
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    size = size or export.input_size(model)
    results: list[Prediction] = []
    failures: list[tuple[str, str]] = []
    files = []
    for path in map(os.fsdecode, paths):
        if not os.path.isdir(path):
            files.append(path)
        elif found := image_files(path):
            files += found
        else:
            failures.append((path, "no image files in directory"))
    names = None if class_names is None else list(class_names)
    if fold_batchnorm and files:  # one image a call: batch 1's form (the residual scale, deploy.folding)
        batch = 1 if batch_size == 1 or len(files) == 1 else None
        model = inference.fold_batchnorm(model, inference.residual_scale_folds(batch))
    for batch_paths, images in _batches(files, size, batch_size, failures):
        scores = model.predict(images, batch_size=batch_size, verbose=0)
        if isinstance(scores, (list, tuple)):  # a model with an aux head: the main output
            scores = scores[0]
        names = names or export.class_names(model)
        for path, row in zip(batch_paths, scores, strict=True):
            best = np.argsort(-row, kind="stable")[:top]
            results.append((path, [(names[i], float(row[i])) for i in best]))
    return results, failures
