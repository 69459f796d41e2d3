"""The TensorFlow kernels behind two layers' training steps (TensorFlow backend only).

:class:`~keras_inception.nn.layers.BatchNorm` and :class:`~keras_inception.nn.layers.Conv2D`
are registered Keras layers on every backend; in a training call on TensorFlow they hand
their work to these functions. Only those layers import this module, and only once
they run on TensorFlow, so the other backends never import TensorFlow.
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops


def fused_batch_norm(inputs, gamma, beta, epsilon: float, dtype: str):
    """``FusedBatchNormV3`` in training (NHWC): ``(outputs, batch mean, unbiased batch variance)``.

    The kernel takes float16 and bfloat16 inputs as they are (statistics in float32) and
    has its own gradient; ``gamma`` and ``beta`` are float32 per-channel vectors.
    """
    empty = ops.zeros((0,), "float32")
    y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=ops.cast(inputs, dtype),
        scale=gamma,
        offset=beta,
        mean=empty,
        variance=empty,
        epsilon=epsilon,
        data_format="NHWC",
        is_training=True,
    )
    return y, mean, variance


def pointwise_conv(inputs, kernel, bias, filters: int):
    """A 1x1 stride-1 convolution as a matmul over the ``(batch * height * width, channels)``
    rows (``kernel`` of shape ``(1, 1, in, out)``, ``bias`` or ``None``), no activation."""
    rows = tf.reshape(inputs, [-1, inputs.shape[-1]])
    kernel = tf.reshape(kernel, kernel.shape[2:])  # (a slice's gradient would copy)
    outputs = tf.matmul(rows, ops.cast(kernel, rows.dtype))
    outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [filters]], 0))
    outputs.set_shape([*inputs.shape[:-1], filters])
    if bias is not None:
        outputs = tf.nn.bias_add(outputs, ops.cast(bias, outputs.dtype))
    return outputs


def replica_sum(value):
    """``value`` summed over the replicas of the current ``tf.distribute`` strategy (itself
    outside one)."""
    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value) if context else value
