"""ImageNet conventions of the slim checkpoints: [-1, 1] inputs, 1001 classes."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from keras import ops

BACKGROUND = ("background", "background")


@functools.cache
def classes() -> list[tuple[str, str]]:
    """The 1000 ILSVRC-2012 classes as ``(wordnet_id, name)``, bundled with the package."""
    text = resources.files("keras_inception").joinpath("resources/imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return [(synset, names.split(",")[0].strip()) for _, synset, names in rows]


def preprocess_input(x, data_format: str | None = None):
    """RGB in [0, 255] (any dtype) -> float32 in [-1, 1], as slim's ``x / 127.5 - 1``.

    Works on numpy arrays (returns a new array; the input is never modified) and on
    tensors (inside ``tf.data`` or a model).
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"only channels_last is supported, got data_format={data_format!r}")
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        return np.asarray(x, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    return ops.cast(x, "float32") / 127.5 - 1.0


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Top classes per row as ``(wordnet_id, name, score)``, like keras.applications.

    ``preds`` has 1000 columns (ImageNet) or 1001 (slim's, column 0 = background).
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] not in (1000, 1001):
        raise ValueError(
            f"decode_predictions expects a batch of shape (samples, 1000) or (samples, 1001), "
            f"got {preds.shape}"
        )
    labels = classes() if preds.shape[1] == 1000 else [BACKGROUND, *classes()]
    top = min(top, preds.shape[1])
    results = []
    for row in preds:
        best = np.argsort(row, kind="stable")[::-1][:top]
        results.append([(*labels[i], float(row[i])) for i in best])
    return results
