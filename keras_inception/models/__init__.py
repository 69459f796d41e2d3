"""The network families and their registry (name -> builder, spec)."""

from keras_inception.models.base import Spec, end_points, feature_extractor
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
    "get",
]
