"""Image decoding and slim's evaluation transform, for numpy arrays and inside tf.data.

Pixel values are taken in [0, 255] whatever the dtype (keras.applications'
convention); the output is float32 in [-1, 1], what every slim checkpoint expects.
"""

from __future__ import annotations

import tensorflow as tf

from keras_inception.imagenet import preprocess_input

EVAL_CENTRAL_FRACTION = 0.875


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG / PNG / GIF / BMP bytes -> uint8 ``(H, W, 3)`` RGB.

    Grayscale is repeated to three channels, an alpha channel dropped, CMYK JPEGs
    converted by the decoder.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def load_image(path: str) -> tf.Tensor:
    """Read and decode an image file to uint8 ``(H, W, 3)`` RGB."""
    try:
        return decode_image(tf.io.read_file(path))
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        raise ValueError(f"cannot read image {path}: {error.message}") from None


def eval_transform(
    images, size: int | tuple[int, int] = 299, central_fraction: float = EVAL_CENTRAL_FRACTION
):
    """slim's ``preprocess_for_eval``: central crop, bilinear resize, scale to [-1, 1].

    ``images`` is one ``(H, W, 3)`` image or a ``(N, H, W, 3)`` batch in [0, 255].
    The resize is TF1's ``resize_bilinear(align_corners=False)`` (no half-pixel
    centres), exactly as the checkpoints were evaluated.
    """
    height, width = (size, size) if isinstance(size, int) else size
    images = tf.convert_to_tensor(images)
    single = images.shape.rank == 3
    x = tf.cast(images, tf.float32) / 255.0
    if single:
        x = x[tf.newaxis]
    if central_fraction and central_fraction < 1.0:
        x = tf.image.central_crop(x, central_fraction)
    x = tf.raw_ops.ResizeBilinear(
        images=x, size=[height, width], align_corners=False, half_pixel_centers=False
    )
    x = (x - 0.5) * 2.0
    return x[0] if single else x


__all__ = ["decode_image", "eval_transform", "load_image", "preprocess_input"]
