"""The network families and their registry (name -> builder, spec)."""

from keras_inception.models.base import Spec, end_points, feature_extractor, multiply_adds
from keras_inception.models.inception_resnet import SPEC_V1 as _IRV1
from keras_inception.models.inception_resnet import SPEC_V2 as _IRV2
from keras_inception.models.inception_resnet import InceptionResNetV1, InceptionResNetV2
from keras_inception.models.inception_v3 import SPEC as _V3
from keras_inception.models.inception_v3 import InceptionV3
from keras_inception.models.inception_v4 import SPEC as _V4
from keras_inception.models.inception_v4 import InceptionV4

MODELS = {
    _V3.name: (InceptionV3, _V3),
    _V4.name: (InceptionV4, _V4),
    _IRV1.name: (InceptionResNetV1, _IRV1),
    _IRV2.name: (InceptionResNetV2, _IRV2),
}


def get(name: str):
    """``(builder, spec)`` for a registered model name such as ``"inception_v4"``."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None


__all__ = [
    "MODELS",
    "InceptionResNetV1",
    "InceptionResNetV2",
    "InceptionV3",
    "InceptionV4",
    "Spec",
    "end_points",
    "feature_extractor",
    "multiply_adds",
    "get",
    "create",
]


def create(source: str, weights=None, **kwargs):
    """A model from a registered name (with ``weights``), a ``.keras`` file, or a slim
    checkpoint / archive (family detected from its variables)."""
    import os

    import keras

    from keras_inception import checkpoint
    from keras_inception import weights as weights_lib

    if source in MODELS:
        builder, _ = MODELS[source]
        return builder(weights=weights, **kwargs)
    if source.endswith(".keras"):
        if not os.path.exists(source):
            raise FileNotFoundError(f"model file not found: {source}")
        return keras.saving.load_model(source)
    if (
        source.endswith(weights_lib.ARCHIVE_SUFFIXES)
        or os.path.exists(source)
        or os.path.exists(f"{source}.index")
    ):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            prefix = (
                weights_lib.extract_checkpoint(source, tmp)
                if source.endswith(weights_lib.ARCHIVE_SUFFIXES)
                else source
            )
            variables = checkpoint.read(prefix)
        family = checkpoint.family_of(variables)
        model = MODELS[family][0](weights=None, **kwargs)
        checkpoint.assign(model, variables, family)
        return model
    raise ValueError(f"{source!r} is neither a model name ({sorted(MODELS)}), a .keras file nor a checkpoint")
