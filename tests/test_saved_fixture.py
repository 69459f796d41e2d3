"""A ``.keras`` file written before the TensorFlow fast paths left ``layers.py`` still loads.

``tests/fixtures/saved_irv2.keras`` (a reduced Inception-ResNet-v2, random weights) was
written by ``tools/write_saved_fixture.py`` with the code of 2026-12-05; its config names
the layers by their registered names (``keras_inception>BatchNorm`` ...) and by the module
they were in then. It must load without ``custom_objects`` wherever the classes live now,
on every backend, and give the outputs it gave then.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_inception  # noqa: F401 - registers the classes

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(FIXTURES, "saved_irv2.keras")
REGISTERED = ("BatchNorm", "Conv2D", "ScaleSum", "ClassifierOutput")


def load_and_compare() -> None:
    """Load the fixture and assert its outputs are those it was saved with (any backend)."""
    expected = np.load(os.path.join(FIXTURES, "saved_irv2.npz"))
    model = keras.saving.load_model(MODEL, compile=False)
    for name in REGISTERED:
        cls = keras.saving.get_registered_object(f"keras_inception>{name}")
        assert any(type(layer) is cls for layer in model.layers), name
    inference = keras.ops.convert_to_numpy(model(expected["images"], training=False))
    np.testing.assert_allclose(inference, expected["inference"], rtol=1e-4, atol=1e-6)
    training = keras.ops.convert_to_numpy(model(expected["images"], training=True))  # the fast paths on TF
    np.testing.assert_allclose(training, expected["training"], rtol=1e-4, atol=1e-6)


def test_saved_file_from_before_loads_with_its_outputs():
    load_and_compare()


# JAX compiles every op on a CPU (a minute here): under -m slow; PyTorch in the default run
@pytest.mark.parametrize("backend", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_saved_file_loads_without_the_tensorflow_fast_paths(backend):
    pytest.importorskip(backend)
    code = "import sys; sys.path.insert(0, 'tests'); import test_saved_fixture as t; t.load_and_compare()"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
