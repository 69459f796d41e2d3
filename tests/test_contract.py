"""keras.applications' contract, checked on our four builders (reduced depths).

The checks are those of Keras's own ``keras/src/applications/applications_test.py``
(channels_last): any number of input channels without a top, a custom input shape, a
custom input tensor, pooling, the classifier activation, and a model that predicts,
decodes and survives serialisation. This file runs on every Keras backend:
``tests/test_backends.py`` runs it again under JAX and PyTorch.
"""

import keras
import numpy as np
import pytest

import keras_inception as ki
from keras_inception.models import MODELS, get

REDUCED = {"depths": (1, 1, 1)}
FEATURES = {  # channels of each network's last feature map
    "inception_v3": 2048,
    "inception_v4": 1536,
    "inception_resnet_v1": 1792,
    "inception_resnet_v2": 1536,
}


@pytest.fixture(params=list(MODELS))
def app(request):
    return request.param, get(request.param), FEATURES[request.param]


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_notop_variable_input_channels(app, channels):
    _, builder, last_dim = app
    model = builder(weights=None, include_top=False, input_shape=(None, None, channels), **REDUCED)
    assert list(model.outputs[0].shape) == [None, None, None, last_dim]
    out = model(np.zeros((1, 75, 75, channels), "float32"), training=False)  # eager: no XLA compile on JAX
    assert tuple(out.shape) == (1, 1, 1, last_dim)


def test_notop_custom_input_shape(app):
    _, builder, last_dim = app
    model = builder(weights=None, include_top=False, input_shape=(123, 123, 3), **REDUCED)
    assert model.outputs[0].shape[-1] == last_dim


def test_notop_custom_input_tensor(app):
    _, builder, last_dim = app
    inputs = keras.Input(shape=(200, 200, 4), name="custom_input")
    x = keras.layers.Conv2D(3, (2, 2), padding="valid", strides=(2, 2))(inputs)
    model = builder(weights=None, include_top=False, input_tensor=x, **REDUCED)
    assert model.outputs[0].shape[-1] == last_dim
    assert model.inputs[0] is inputs


def test_pooling(app):
    _, builder, last_dim = app
    model = builder(weights=None, include_top=False, pooling="max", **REDUCED)
    assert list(model.outputs[0].shape) == [None, last_dim]


def test_classifier_activation(app):
    _, builder, _ = app
    model = builder(weights=None, include_top=True, classifier_activation="softmax", **REDUCED)
    assert model.layers[-1].activation.__name__ == "softmax"


def test_base_predicts_decodes_and_serialises(app):
    name, builder, _ = app
    model = builder(weights=None, **REDUCED)
    size = model.input_shape[1]
    x = ki.preprocess_input(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)))
    preds = keras.ops.convert_to_numpy(model(x, training=False))
    decoded = ki.decode_predictions(preds, top=3)[0]
    assert len(decoded) == 3 and all(isinstance(label, str) for _, label, _ in decoded)
    config = keras.saving.serialize_keras_object(model)
    reconstructed = keras.saving.deserialize_keras_object(config)
    assert len(reconstructed.weights) == len(model.weights)
    assert reconstructed.name == name
