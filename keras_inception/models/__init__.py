"""The network builders, by registered name, and models from any source."""

from __future__ import annotations

import dataclasses

import keras

from keras_inception import checkpoint, pretrained, registry
from keras_inception.models.base import end_points, feature_extractor, multiply_adds
from keras_inception.models.inception_resnet import InceptionResNetV1, InceptionResNetV2
from keras_inception.models.inception_v3 import InceptionV3
from keras_inception.models.inception_v4 import InceptionV4

MODELS = {
    "inception_v3": InceptionV3,
    "inception_v4": InceptionV4,
    "inception_resnet_v1": InceptionResNetV1,
    "inception_resnet_v2": InceptionResNetV2,
}
assert set(MODELS) == set(registry.FAMILIES)


def get(name: str):
    """The builder registered as ``name`` (``"inception_v4"`` -> :func:`InceptionV4`)."""
    return MODELS[registry.family(name).name]


def create(source: str, weights=None, **kwargs) -> keras.Model:
    """A model from a registered name (with ``weights``), a ``.keras`` file, or a slim
    checkpoint / archive (family detected from its variables); ``kwargs`` go to the builder."""
    if source in MODELS:
        return MODELS[source](weights=weights, **kwargs)
    resolved = pretrained.resolve_source(source)
    if weights is not None:
        raise ValueError(f"weights= is for model names; {source!r} brings its own")
    if resolved.kind == "keras":
        return keras.saving.load_model(resolved.value)
    if resolved.kind == "weights_h5":
        raise ValueError(f"{source} holds weights only: build the model by name with weights={source!r}")
    return from_checkpoint(resolved, **kwargs)[0]


@dataclasses.dataclass
class Conversion:
    """What :func:`from_checkpoint` read and used."""

    report: checkpoint.LoadReport
    total: int  # slim variables in the checkpoint, after taking moving averages


def from_checkpoint(
    source: pretrained.WeightsSource | str, family: str | None = None, use_ema: bool = True, **kwargs
) -> tuple[keras.Model, Conversion]:
    """A model of the checkpoint's family (or ``family``, checked) holding its variables."""
    if isinstance(source, str):
        source = pretrained.resolve_source(source, family)
    if not source.is_slim:
        raise ValueError(f"{source.value} is not a slim checkpoint, archive or tag")
    source = dataclasses.replace(source, family=family or source.family)
    variables, detected = pretrained.read_variables(source)
    model = get(detected)(weights=None, **kwargs)
    truncated = kwargs.get("final_endpoint") is not None
    report = checkpoint.assign(model, variables, detected, use_ema, truncated)
    return model, Conversion(report, len(checkpoint.resolve_ema(variables, use_ema)[0]))


__all__ = [
    "MODELS",
    "Conversion",
    "InceptionResNetV1",
    "InceptionResNetV2",
    "InceptionV3",
    "InceptionV4",
    "create",
    "end_points",
    "feature_extractor",
    "from_checkpoint",
    "get",
    "multiply_adds",
]
