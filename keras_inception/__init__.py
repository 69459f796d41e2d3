"""Inception-v3, Inception-v4 and Inception-ResNet-v1/-v2 for Keras 3, mirroring TF-slim.

import keras_inception as ki
model = ki.InceptionV4(weights="imagenet")
preds = model.predict(ki.preprocess_input(images))
ki.decode_predictions(preds, top=5)

The models and their weights need only Keras (any backend). The modules that are
TensorFlow's by nature (``preprocessing``'s image decoding, ``data``, ``evaluation``,
``export``, ``training``) are imported on first use and need ``keras-inception[tensorflow]``.
"""

import importlib as _importlib

from keras_inception.core import startup as _startup

with _startup.quiet_tensorflow():
    try:
        import keras  # noqa: F401 - TensorFlow's start-up happens here
    except ModuleNotFoundError as _error:
        if _error.name != "tensorflow":
            raise
        raise ModuleNotFoundError(
            "Keras's backend is TensorFlow (its default), which is not installed: set KERAS_BACKEND=jax "
            "or torch, or pip install 'keras-inception[tensorflow]'",
            name="tensorflow",
        ) from None

from keras_inception.core import registry  # noqa: E402
from keras_inception.input.imagenet import decode_predictions, preprocess_input
from keras_inception.input.transform import eval_transform
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
from keras_inception.nn.layers import ScaleSum

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
    "eval_transform",
    "feature_extractor",
    "multiply_adds",
    "preprocess_input",
    "pretrained",
    "registry",
]

# The package's short names for its modules (``ki.data``, ``from keras_inception import predict``),
# imported when first used: most need TensorFlow, and ``import keras_inception`` must not.
_ON_FIRST_USE = {
    "preprocessing": "input.preprocessing",
    "data": "input.pipelines",
    "evaluation": "train.evaluation",
    "export": "deploy.export",
    "training": "train.training",
    "finetune": "train.finetune",
    "runs": "train.runs",
    "predict": "deploy.predict",
    "hub": "deploy.hub",
    "inference": "deploy.folding",
    "pretrained": "weights.zoo",  # keras_inception.pretrained.pin(...), as the zoo's messages say
    "imagenet": "input.imagenet",
    "transform": "input.transform",
    "layers": "nn.layers",
}


def __getattr__(name: str):
    """``ki.data`` and the package's other short names, imported when first used."""
    if name in _ON_FIRST_USE:
        return _importlib.import_module(f"{__name__}.{_ON_FIRST_USE[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
