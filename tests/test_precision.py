"""full_precision(): TensorFloat-32 off on every framework imported, each setting restored."""

import importlib.util

import pytest

from keras_inception.core.precision import full_precision, state


def needs(name: str):
    return pytest.mark.skipif(not importlib.util.find_spec(name), reason=f"{name} not installed")


FULL = {
    "jax": {"jax_default_matmul_precision": "highest"},
    "torch": {"torch_matmul_allow_tf32": False, "torch_cudnn_allow_tf32": False},
    "tensorflow": {"tensorflow_tf32": False},
}


@pytest.mark.parametrize("framework", [pytest.param(f, marks=needs(f)) for f in FULL])
def test_full_precision_sets_and_restores_each_framework(framework):
    importlib.import_module(framework)
    before = state()
    assert set(FULL[framework]) <= set(before)
    with full_precision():
        inside = state()
    assert {k: inside[k] for k in FULL[framework]} == FULL[framework]
    assert state() == before


@pytest.mark.parametrize("framework", [pytest.param(f, marks=needs(f)) for f in ("torch", "tensorflow")])
def test_full_precision_restores_a_changed_setting_and_after_an_error(framework):
    """A setting the caller changed comes back as the caller left it, also when the block raises."""
    if framework == "torch":
        import torch

        flags = torch.backends.cuda.matmul

        def read():
            return flags.allow_tf32

        def write(value):
            flags.allow_tf32 = value
    else:
        import tensorflow as tf

        read = tf.config.experimental.tensor_float_32_execution_enabled
        write = tf.config.experimental.enable_tensor_float_32_execution
    saved = read()
    try:
        write(True)
        with pytest.raises(RuntimeError, match="inside"), full_precision():
            assert read() is False
            raise RuntimeError("inside")
        assert read() is True
    finally:
        write(saved)
