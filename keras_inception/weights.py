"""Weights: the pretrained configurations (as data) and loading any ``weights=`` value."""

from __future__ import annotations

import os

import keras

# Filled by the pretrained-weights layer (slim checkpoints); see ``PRETRAINED``.
PRETRAINED: dict[tuple[str, str], dict] = {}

KERAS_SUFFIXES = (".weights.h5", ".keras")


def pretrained_names(model_name: str) -> list[str]:
    """The ``weights=`` tags published for ``model_name`` (``"imagenet"``, ...)."""
    return [tag for (name, tag) in PRETRAINED if name == model_name]


def is_pretrained_name(weights) -> bool:
    return isinstance(weights, str) and any(tag == weights for (_, tag) in PRETRAINED)


def looks_like_path(weights) -> bool:
    """A value meant as a file: an existing path, or one with a weights suffix."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.path.exists(weights) or weights.endswith(KERAS_SUFFIXES) or os.sep in weights
    )


def load(model: keras.Model, weights, spec) -> None:
    """Load ``weights`` (a ``.weights.h5`` or ``.keras`` file saved by this package) into ``model``.

    Keras matches weights by layer name, and every layer is named after its slim
    scope, so a file loads into any model with the same layers whatever their order.
    """
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.endswith(KERAS_SUFFIXES):
        raise ValueError(f"weights file must end with {KERAS_SUFFIXES}, got {path}")
    model.load_weights(path)
