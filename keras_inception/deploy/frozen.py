"""A model's inference call as a TensorFlow graph whose weights are constants.

    run = frozen_call(fold_batchnorm(model))   # run(images) -> the model's outputs, as tensors

TensorFlow's oneDNN convolutions keep weights in a blocked layout of their own. When a
convolution's filter is a variable, it is reordered into that layout on every call; when it is
a constant, oneDNN reorders it once and keeps it. ``ONEDNN_VERBOSE=1`` on Inception-v3 at
batch 16 shows it: 95 weight reorders per call through the Keras model, none through the
frozen graph. The saving is per call, not per image, so it matters most at small batches.
The frozen call is for inference only: it holds a copy of the weights, and does not see later
changes to the model's variables.

At batch 1 it changes the kernels too. TensorFlow hands oneDNN a batch-1 convolution's variable
filter in its plain layout, which with AVX2 (no AVX-512) only oneDNN's GEMM convolution takes
(im2col and GEMM, ``x64:gemm:jit``); a constant filter may take oneDNN's layout, so the blocked
brgemm kernels run (``brg_conv_fwd:avx2``, ``brgconv_1x1:avx2``: ``ONEDNN_VERBOSE=1``). Under
``ONEDNN_MAX_CPU_ISA=AVX2`` (an Intel Xeon, family 6 model 167) the three networks ran 1.32-1.45x
faster frozen at batch 1, level at batch 16 (docs/cpu.md). Call it before any Keras model of the
same shapes runs at batch 1 in the process: TensorFlow and oneDNN cache kernels process-wide, and a
frozen call made after the Keras model ran mostly its GEMM kernels. Freezing Inception-v3 takes
seconds (3.4-3.6 s, then about 3 s for the first call), so it stays opt-in: for a server answering
one image a call (it pays back after about 150 images), not for ``predict`` on a few files.
"""

from __future__ import annotations

from collections.abc import Callable

import keras


def frozen_call(model: keras.Model, batch: int | None = None) -> Callable:
    """``model(images, training=False)`` as a graph with its variables turned into constants
    (TensorFlow backend), for inputs of ``batch`` images of the model's input shape (None: any)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (  # TensorFlow's own freezing
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((batch, *model.input_shape[1:]), model.inputs[0].dtype)
    concrete = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs

    def call(images):
        return tf.nest.pack_sequence_as(structure, frozen(tf.convert_to_tensor(images)))

    return call
