"""float32 at full precision: TensorFloat-32 off for matmuls and convolutions.

with full_precision():
    reference = model.predict(x)   # float32 products at float32's precision, on a GPU too

On NVIDIA GPUs since Ampere the frameworks may run float32 matmuls and convolutions as
TensorFloat-32 (10-bit mantissa): JAX by default, PyTorch for convolutions by default and
TensorFlow by default. Results then differ from a float32 CPU reference by about 1e-3
relative instead of 1e-6 (docs/gpu.md has the figures). Within :func:`full_precision`,
every framework already imported in this process computes float32 at full precision;
on exit each setting is restored. No framework is imported here (a CPU runs float32 at
full precision either way).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Within: JAX's default matmul precision ``"highest"``, PyTorch's
    ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` False,
    TensorFlow's TensorFloat-32 execution off, for each of them already imported (Keras
    imports its backend); the previous settings are restored on exit.
    """
    with contextlib.ExitStack() as stack:
        if "jax" in sys.modules:
            stack.enter_context(sys.modules["jax"].default_matmul_precision("highest"))
        if "torch" in sys.modules:
            stack.enter_context(_torch_full_precision(sys.modules["torch"]))
        if "tensorflow" in sys.modules:
            stack.enter_context(_tensorflow_full_precision(sys.modules["tensorflow"]))
        yield


@contextlib.contextmanager
def _torch_full_precision(torch) -> Iterator[None]:
    backends = torch.backends
    saved = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def _tensorflow_full_precision(tf) -> Iterator[None]:
    saved = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(saved)


def state() -> dict[str, object]:
    """The float32 precision settings of every framework imported here, by name (what the
    benchmark reports beside each float32 figure)."""
    settings: dict[str, object] = {}
    if "jax" in sys.modules:
        settings["jax_default_matmul_precision"] = sys.modules["jax"].config.jax_default_matmul_precision
    if "torch" in sys.modules:
        backends = sys.modules["torch"].backends
        settings["torch_matmul_allow_tf32"] = backends.cuda.matmul.allow_tf32
        settings["torch_cudnn_allow_tf32"] = backends.cudnn.allow_tf32
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        settings["tensorflow_tf32"] = tf.config.experimental.tensor_float_32_execution_enabled()
    return settings
