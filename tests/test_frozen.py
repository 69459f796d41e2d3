"""The inference call with its weights as constants (keras_inception.deploy.frozen)."""

import keras
import numpy as np
from conftest import randomize

import keras_inception as ki
from keras_inception.deploy import folding as inference
from keras_inception.deploy import frozen


def test_frozen_call_equals_the_model_and_keeps_its_weights_then():
    model = randomize(
        ki.MODELS["inception_v3"](
            weights=None, input_shape=(107, 107, 3), width=0.25, depths=(1, 1, 1), aux_logits=True, classes=5
        )
    )
    folded = inference.fold_batchnorm(model)
    run = frozen.frozen_call(folded)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 107, 107, 3)).astype("float32")
    expected = folded(x, training=False)
    got = run(x)
    keras.tree.assert_same_structure(got, expected)  # logits and aux logits
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(got), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert run(x[:1]) is not None  # any batch size unless one is given

    for w in folded.weights:  # constants: a later change to the model does not reach the frozen call
        w.assign(np.zeros(w.shape, w.dtype))
    np.testing.assert_allclose(
        np.asarray(keras.tree.flatten(run(x))[0]),
        np.asarray(keras.tree.flatten(expected)[0]),
        rtol=1e-4,
        atol=1e-5,
    )
