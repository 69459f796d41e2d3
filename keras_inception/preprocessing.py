"""Image decoding and slim's Inception preprocessing (evaluation and training transforms).

The transforms work on numpy arrays and inside tf.data.

Pixel values are taken in [0, 255] whatever the dtype (keras.applications'
convention); the output is float32 in [-1, 1], what every slim checkpoint expects.
"""

from __future__ import annotations

import tensorflow as tf

from keras_inception.imagenet import preprocess_input

EVAL_CENTRAL_FRACTION = 0.875


def to_signed_unit(x: tf.Tensor) -> tf.Tensor:
    """Floats in [0, 1] -> [-1, 1], slim's ``(x - 0.5) * 2`` (the one place the rescale lives)."""
    return (x - 0.5) * 2.0


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
    x = to_signed_unit(x)
    return x[0] if single else x


def distort_color(image: tf.Tensor, ordering: tf.Tensor) -> tf.Tensor:
    """slim's ``distort_color`` on [0, 1] floats, one of its four orderings, then clipped."""

    def brightness(x):
        return tf.image.random_brightness(x, max_delta=32.0 / 255.0)

    def saturation(x):
        return tf.image.random_saturation(x, lower=0.5, upper=1.5)

    def hue(x):
        return tf.image.random_hue(x, max_delta=0.2)

    def contrast(x):
        return tf.image.random_contrast(x, lower=0.5, upper=1.5)

    orders = [
        (brightness, saturation, hue, contrast),
        (saturation, brightness, contrast, hue),
        (contrast, hue, brightness, saturation),
        (hue, saturation, contrast, brightness),
    ]

    def apply(ops):
        def run():
            x = image
            for op in ops:
                x = op(x)
            return x

        return run

    image = tf.switch_case(ordering, [apply(o) for o in orders])
    return tf.clip_by_value(image, 0.0, 1.0)


def train_transform(image: tf.Tensor, size: int = 299, bbox: tf.Tensor | None = None) -> tf.Tensor:
    """slim's ``preprocess_for_train``: distorted box crop, resize, flip, colour, [-1, 1].

    ``sample_distorted_bounding_box`` with min_object_covered 0.1, aspect ratio
    0.75-1.33, area 0.05-1.0, 100 attempts (the whole image when no box is given).
    """
    if bbox is None or bbox.shape.rank != 2:
        bbox = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    bbox = tf.cond(tf.shape(bbox)[0] > 0, lambda: bbox, lambda: tf.constant([[0.0, 0.0, 1.0, 1.0]]))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=bbox[tf.newaxis],
        seed=tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32),
        min_object_covered=0.1,
        aspect_ratio_range=(0.75, 1.33),
        area_range=(0.05, 1.0),
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    x = tf.slice(image, begin, crop_size)
    x = tf.cast(x, tf.float32) / 255.0
    x = tf.image.resize(x, [size, size], method="bilinear")
    x = tf.image.random_flip_left_right(x)
    x = distort_color(x, tf.random.uniform([], maxval=4, dtype=tf.int32))
    return to_signed_unit(x)


def flip_transform(image: tf.Tensor, size: int = 299) -> tf.Tensor:
    """A light training transform for small-image experiments: resize, random flip, [-1, 1]."""
    x = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [size, size], method="bilinear")
    return to_signed_unit(tf.image.random_flip_left_right(x))


TRAIN_TRANSFORMS = {"inception": train_transform, "flip": flip_transform}


__all__ = [
    "TRAIN_TRANSFORMS",
    "decode_image",
    "distort_color",
    "eval_transform",
    "flip_transform",
    "load_image",
    "preprocess_input",
    "train_transform",
]
