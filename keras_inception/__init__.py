"""Inception-v3, Inception-v4 and Inception-ResNet-v1/-v2 for Keras 3, mirroring TF-slim.

import keras_inception as ki
model = ki.InceptionV4(weights="imagenet")
preds = model.predict(ki.preprocess_input(images))
ki.decode_predictions(preds, top=5)
"""

from keras_inception import startup as _startup

with _startup.quiet_tensorflow():
    import keras  # noqa: F401 - TensorFlow's start-up happens here

from keras_inception import preprocessing, pretrained, registry  # noqa: E402
from keras_inception.imagenet import decode_predictions, preprocess_input
from keras_inception.layers import ScaleSum
from keras_inception.models import (
    MODELS,
    InceptionResNetV1,
    InceptionResNetV2,
    InceptionV3,
    InceptionV4,
    end_points,
    feature_extractor,
    multiply_adds,
)

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "InceptionResNetV1",
    "InceptionResNetV2",
    "InceptionV3",
    "InceptionV4",
    "ScaleSum",
    "decode_predictions",
    "end_points",
    "feature_extractor",
    "multiply_adds",
    "preprocess_input",
    "preprocessing",
    "pretrained",
    "registry",
]
