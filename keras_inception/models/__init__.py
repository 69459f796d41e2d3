"""The network builders, by registered name, and models from any source."""

from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
import zipfile

import keras

from keras_inception.core import registry
from keras_inception.models.base import end_points, feature_extractor, multiply_adds
from keras_inception.weights import loading, sources

# Each family module declares its family, weights and builder when imported (registry.register),
# so the order of these imports is the registry's order.
# isort: off
from keras_inception.models.inception_v3 import InceptionV3
from keras_inception.models.inception_v4 import InceptionV4
from keras_inception.models.inception_resnet import InceptionResNetV1, InceptionResNetV2
# isort: on

MODELS = registry.BUILDERS  # name -> builder, derived from the family modules' declarations


def get(name: str):
    """The builder registered as ``name`` (``"inception_v4"`` -> :func:`InceptionV4`)."""
    return MODELS[registry.family(name).name]


def create(source: str, weights=None, **kwargs) -> keras.Model:
    """A model from a registered name (with ``weights``), a ``.keras`` file, or a slim
    checkpoint / archive (family detected from its variables); ``kwargs`` go to the builder."""
    if source in MODELS:
        return MODELS[source](weights=weights, **kwargs)
    if not is_path(source):
        close = difflib.get_close_matches(_plain(source), [_plain(n) for n in MODELS], n=1)
        hint = f" (did you mean {next(n for n in MODELS if _plain(n) == close[0])}?)" if close else ""
        raise ValueError(
            f"unknown model {source!r}{hint}; choose one of {list(MODELS)}, or give a .keras file, "
            "a slim checkpoint or an archive"
        )
    if source.endswith(".keras") and not os.path.isfile(source):
        raise FileNotFoundError(f"model file not found: {source}")
    resolved = sources.resolve(source)
    if weights is not None:
        raise ValueError(f"weights= is for model names; {source} holds its own weights: leave weights= out")
    if resolved.kind == "keras":
        return load_model(resolved.value)
    if resolved.kind == "weights_h5":
        raise ValueError(f"{source} holds weights only: build the model by name with weights={source!r}")
    return from_checkpoint(resolved, **kwargs)[0]


def _plain(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def is_path(source: str) -> bool:
    """``source`` names a file (existing or not, a checkpoint prefix included), not a model."""
    suffixes = (*sources.KERAS_SUFFIXES, *sources.ARCHIVE_SUFFIXES, ".h5", ".ckpt", ".index")
    exists = os.path.exists(source) or os.path.exists(f"{source}.index")
    return exists or os.sep in source or source.endswith(suffixes)


def load_model(path: str) -> keras.Model:
    """A ``.keras`` image classifier, or one line saying why ``path`` is not one."""
    sources.check_keras_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = keras.saving.load_model(path)
        except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"cannot load {path}: {reason}") from None
    shape = tuple(model.inputs[0].shape) if len(getattr(model, "inputs", None) or ()) == 1 else None
    if shape is None or len(shape) != 4 or len(model.outputs[0].shape) != 2:
        shapes = [tuple(t.shape) for t in model.inputs] if getattr(model, "inputs", None) else "unknown"
        raise ValueError(
            f"{path} is not an image classifier (inputs {shapes}; expected one (batch, height, width, "
            "channels) input and class scores out): give a model written by keras-inception "
            "(convert, finetune or train)"
        )
    return model


def from_checkpoint(
    source: sources.WeightsSource | str, family: str | None = None, use_ema: bool = True, **kwargs
) -> tuple[keras.Model, loading.LoadReport]:
    """A model of the checkpoint's family (or ``family``, checked) holding its variables."""
    if isinstance(source, str):
        source = sources.resolve(source, family)
    if not source.is_slim:
        raise ValueError(f"{source.value} is not a slim checkpoint, archive or tag")
    variables = loading.read(dataclasses.replace(source, family=family or source.family))
    family = family or variables.family
    model = get(family)(weights=None, **kwargs)
    truncated = kwargs.get("final_endpoint") is not None
    return model, loading.load(model, variables, family, use_ema, truncated)


__all__ = [
    "MODELS",
    "InceptionResNetV1",
    "InceptionResNetV2",
    "InceptionV3",
    "InceptionV4",
    "create",
    "end_points",
    "feature_extractor",
    "from_checkpoint",
    "get",
    "is_path",
    "load_model",
    "multiply_adds",
]
