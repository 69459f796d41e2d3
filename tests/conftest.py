import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# pytest-xdist's workers share the cores, so a worker's OpenMP threads (PyTorch, ONNX Runtime, in
# its subprocesses too) wait passively: spinning ones lose whole time slices to the other worker
# (docs/cpu.md, "Threads on a shared or small machine"); PyTorch's backend tests ran 1.6x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(__file__), "data")  # slim_checkpoints/*.json


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give every weight random values, BN statistics included (variance positive)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith(("moving_mean", "beta", "bias")):
            value = rng.normal(0.0, 0.1, shape)
        else:  # kernels: He-normal keeps activations O(1) through the deep stacks
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        v.assign(value.astype(v.dtype))
    return model


@pytest.fixture(autouse=True, scope="session")
def _onednn_reads_its_isa_before_a_test_caps_it():
    """oneDNN reads ONEDNN_MAX_CPU_ISA once, at its first kernel of the process. Tests that set the
    cap to see how the package reads it must not run that first kernel, or the whole xdist worker
    runs AVX2 code, where TensorFlow's bfloat16 kernels abort (a later bfloat16 test failed so)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.nn.conv2d(tf.ones([1, 4, 4, 2]), tf.ones([1, 1, 2, 2]), 1, "SAME")
    yield


@pytest.fixture(autouse=True)
def _clean_keras_state():
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
