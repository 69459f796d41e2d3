"""slim's evaluation transform in NumPy: the same pixels as the tf.image version, without TensorFlow.

:func:`eval_transform` equals :func:`keras_inception.input.preprocessing.eval_transform` (to float32
rounding): ``tf.image.central_crop``'s offsets, then TF1's ``resize_bilinear`` with
``align_corners=False`` and no half-pixel centres, as the checkpoints were evaluated.
"""

from __future__ import annotations

import numpy as np

from keras_inception.core import registry


def eval_transform(
    images, size: int | tuple[int, int] = 299, central_fraction: float = registry.EVAL_CROP_FRACTION
) -> np.ndarray:
    """slim's ``preprocess_for_eval``: central crop, bilinear resize, scale to [-1, 1] (float32).

    ``images`` is one ``(H, W, 3)`` image or a ``(N, H, W, 3)`` batch in [0, 255], any dtype.
    """
    height, width = (size, size) if isinstance(size, int) else size
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"eval_transform expects an (H, W, C) image or an (N, H, W, C) batch, got {x.shape}")
    if not 0.0 < central_fraction <= 1.0:
        raise ValueError(f"central_fraction must be in (0, 1], got {central_fraction}")
    single = x.ndim == 3
    x = x[np.newaxis] if single else x
    if central_fraction < 1.0:  # tf.image.central_crop: offsets truncated, the crop keeps the centre
        top, left = (int((n - n * central_fraction) / 2) for n in x.shape[1:3])
        x = x[:, top : x.shape[1] - top, left : x.shape[2] - left]
    x = _resize_bilinear_tf1(x.astype(np.float32) / np.float32(255.0), height, width)
    x = (x - np.float32(0.5)) * np.float32(2.0)
    return x[0] if single else x


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF1's legacy bilinear taps: source ``i * in / out`` in float32; lower, upper index, weight."""
    source = np.arange(out_size, dtype=np.float32) * (np.float32(in_size) / np.float32(out_size))
    lower = np.floor(source)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(np.intp)
    return lower.astype(np.intp), upper, (source - lower)


def _resize_bilinear_tf1(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.raw_ops.ResizeBilinear(align_corners=False, half_pixel_centers=False)`` on an NHWC batch."""
    y0, y1, dy = _taps(x.shape[1], height)
    x0, x1, dx = _taps(x.shape[2], width)
    dx = dx[:, np.newaxis]

    def row(y: np.ndarray) -> np.ndarray:
        return y[:, :, x0] + (y[:, :, x1] - y[:, :, x0]) * dx

    top, bottom = row(x[:, y0]), row(x[:, y1])
    return top + (bottom - top) * dy[:, np.newaxis, np.newaxis]
