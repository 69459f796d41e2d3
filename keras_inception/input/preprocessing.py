"""Image decoding and slim's Inception preprocessing (evaluation and training transforms).

The transforms work on numpy arrays and inside tf.data.

Pixel values are taken in [0, 255] whatever the dtype (keras.applications'
convention); the output is float32 in [-1, 1], what every slim checkpoint expects.
"""

from __future__ import annotations

import os
import re

from keras_inception.core.startup import import_tensorflow

tf = import_tensorflow(__name__, "image decoding and tf.image transforms")

from keras_inception.core import registry  # noqa: E402
from keras_inception.input.imagenet import preprocess_input  # noqa: E402

EVAL_CENTRAL_FRACTION = registry.EVAL_CROP_FRACTION
MAX_PIXELS = 50_000_000  # images larger than this (width x height) are refused before decoding
MAX_PIXELS_ENV = "KERAS_INCEPTION_MAX_PIXELS"
RAISE_LIMIT = f"raise it with {MAX_PIXELS_ENV} or max_pixels="


def to_signed_unit(x: tf.Tensor) -> tf.Tensor:
    """Floats in [0, 1] -> [-1, 1], slim's ``(x - 0.5) * 2`` (the one place the rescale lives)."""
    return (x - 0.5) * 2.0


def pixel_limit(limit: int | None = None) -> int:
    """The pixel limit: ``limit`` if given, else ``$KERAS_INCEPTION_MAX_PIXELS``, else ``MAX_PIXELS``."""
    if limit is not None:
        return int(limit)
    return int(os.environ.get(MAX_PIXELS_ENV) or MAX_PIXELS)


def image_format(data: tf.Tensor) -> tf.Tensor:
    """``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"`` or ``""`` (unknown), from the magic bytes."""
    magic = tf.strings.substr(data, 0, 4)
    formats = [
        (tf.strings.substr(magic, 0, 3) == b"\xff\xd8\xff", "jpeg"),
        (magic == b"\x89PNG", "png"),
        (tf.strings.substr(magic, 0, 3) == b"GIF", "gif"),
        (tf.strings.substr(magic, 0, 2) == b"BM", "bmp"),
    ]
    kind = tf.constant("")
    for match, name in reversed(formats):
        kind = tf.where(match, name, kind)
    return kind


def _header_ints(data: tf.Tensor, offset: int, dtype: tf.DType, little_endian: bool) -> tf.Tensor:
    """Two integers at ``offset`` of an encoded file (zeros when the file is shorter)."""
    nbytes = 2 * dtype.size
    padded = tf.strings.substr(tf.strings.join([data, b"\0" * (offset + nbytes)]), offset, nbytes)
    return tf.ensure_shape(
        tf.cast(tf.io.decode_raw(padded, dtype, little_endian=little_endian), tf.int64), [2]
    )


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def gif_extent(data: tf.Tensor) -> tf.Tensor:
    """``[height, width]`` (int64) that a GIF's frames reach: the largest ``top + height`` and
    ``left + width`` of its image descriptors, read by walking the blocks without decoding.

    The logical screen (in the header) may be 1x1 while a frame is 20000x20000, and the
    decoder allocates the frames, so the pixel limit must read them. One step per block or
    255-byte data sub-block: the walk costs a fraction of the file's size.
    """
    raw = tf.cast(tf.io.decode_raw(tf.strings.join([data, b"\0"]), tf.uint8), tf.int64)  # never empty
    size = tf.size(raw, out_type=tf.int64)
    zero = tf.constant(0, tf.int64)

    def byte(i):  # 0 past the end
        i = tf.convert_to_tensor(i, tf.int64)
        return tf.where(i < size, tf.gather(raw, tf.clip_by_value(i, zero, size - 1)), zero)

    def u16(i):  # little-endian
        return byte(i) + 256 * byte(i + 1)

    def table(flags):  # a colour table follows when bit 7 is set: 3 * 2^(N+1) bytes
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), zero)

    def step(pos, in_blocks, done, height, width):
        block = byte(pos)  # in data sub-blocks: their length, 0 ending them
        marker = block  # between blocks: 0x21 extension, 0x2C image descriptor, else the end
        extension, image = tf.equal(marker, 0x21), tf.equal(marker, 0x2C)
        top_next = tf.where(extension, pos + 2, pos + 11 + table(byte(pos + 9)))
        next_pos = tf.where(in_blocks, pos + 1 + block, top_next)
        next_in = tf.where(in_blocks, block > 0, extension | image)
        found = ~in_blocks & image
        height = tf.where(found, tf.maximum(height, u16(pos + 3) + u16(pos + 7)), height)
        width = tf.where(found, tf.maximum(width, u16(pos + 1) + u16(pos + 5)), width)
        return next_pos, next_in, ~in_blocks & ~(extension | image), height, width

    start = 13 + table(byte(10))  # after the header, the logical screen and its colour table
    _, _, _, height, width = tf.while_loop(
        lambda pos, in_blocks, done, *_: ~done & (pos < size),
        step,
        (start, tf.constant(False), tf.constant(False), zero, zero),
        maximum_iterations=tf.size(raw),  # each step moves forward: a bound, never reached
    )
    return tf.stack([height, width])


def encoded_shape(data: tf.Tensor) -> tf.Tensor:
    """``[height, width]`` (int64) of encoded JPEG / PNG / GIF / BMP bytes, read from the
    headers without decoding; ``[0, 0]`` for other data (left to the decoder to refuse).

    The real sizes the decoder allocates: a JPEG's SOF (libjpeg's own header read), a PNG's
    IHDR (APNG frames must lie within it, and TensorFlow decodes only the default image), a
    BMP's info header (as TensorFlow reads it), a GIF's logical screen or its largest frame
    (:func:`gif_extent`), whichever is larger."""
    kind = image_format(data)

    def jpeg():
        return tf.ensure_shape(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64), [2])

    def png():  # IHDR: big-endian width, height at byte 16
        return tf.reverse(_header_ints(data, 16, tf.int32, little_endian=False), [0])

    def gif():  # logical screen: little-endian uint16 width, height at byte 6; then every frame
        screen = tf.reverse(_header_ints(data, 6, tf.uint16, little_endian=True), [0])
        return tf.maximum(screen, gif_extent(data))

    def bmp():  # BITMAPINFOHEADER: little-endian int32 width, height (negative: top-down) at byte 18
        return tf.abs(tf.reverse(_header_ints(data, 18, tf.int32, little_endian=True), [0]))

    branches = {"jpeg": jpeg, "png": png, "gif": gif, "bmp": bmp}
    shape = tf.zeros([2], tf.int64)
    for name, branch in branches.items():
        shape = tf.cond(tf.equal(kind, name), branch, lambda s=shape: s)
    return shape


def check_pixels(data: tf.Tensor, limit: int | None = None) -> tf.Tensor:
    """``data`` unchanged, after asserting (``InvalidArgumentError``) that the image it
    encodes has at most ``limit`` pixels; for use inside tf.data and serving graphs."""
    limit = pixel_limit(limit)
    height, width = tf.unstack(encoded_shape(data))
    assertion = tf.debugging.Assert(
        height * width <= limit,
        [
            tf.strings.format(
                "image of {}x{} pixels exceeds the limit of {} pixels (" + RAISE_LIMIT + ")",
                (width, height, limit),
            )
        ],
    )
    with tf.control_dependencies([assertion]):
        return tf.identity(data)


EXIF_SCAN_BYTES = 1 << 16  # a JPEG's EXIF segment (APP1) is looked for in its first 64 KB
EXIF_MAX_ENTRIES = 64  # IFD0 entries read for the Orientation tag (cameras write about 10-20)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF Orientation (int32, 1-8) of encoded JPEG bytes: tag 0x0112 of IFD0 in the APP1
    ``Exif`` segment, either byte order; 1 (as stored) when absent, invalid, or not a JPEG.

    Graph ops only (for tf.data and serving graphs); TensorFlow's decoder ignores EXIF."""
    head = tf.strings.substr(tf.strings.join([data, b"\0"]), 0, EXIF_SCAN_BYTES)  # never empty
    raw = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    size = tf.size(raw, out_type=tf.int64)
    zero = tf.constant(0, tf.int64)

    def byte(i):  # 0 outside the bytes read
        i = tf.convert_to_tensor(i, tf.int64)
        inside = (i >= 0) & (i < size)
        return tf.where(inside, tf.gather(raw, tf.clip_by_value(i, zero, size - 1)), zero)

    # "\xff\xe1" + 2 length bytes + "Exif\0\0": the APP1 segment's start
    marker = [0xFF, 0xE1, None, None, 0x45, 0x78, 0x69, 0x66, 0x00, 0x00]
    starts = tf.range(size)
    found = tf.ones_like(starts, tf.bool)
    for offset, value in enumerate(marker):
        if value is not None:
            found &= tf.equal(byte(starts + offset), value)
    first = tf.concat([tf.where(found)[:, 0], tf.constant([-1], tf.int64)], 0)[0]
    tiff = first + len(marker)
    little = tf.equal(byte(tiff), 0x49)  # "II"; "MM" is big-endian
    valid = (first >= 0) & (little | tf.equal(byte(tiff), 0x4D))

    def uint(i, nbytes):
        values = [byte(i + k) for k in range(nbytes)]
        le = sum(v * 256**k for k, v in enumerate(values))
        be = sum(v * 256**k for k, v in enumerate(reversed(values)))
        return tf.where(little, le, be)

    ifd = tiff + uint(tiff + 4, 4)
    entries = ifd + 2 + 12 * tf.range(EXIF_MAX_ENTRIES, dtype=tf.int64)
    hits = tf.equal(uint(entries, 2), 0x0112) & (tf.range(EXIF_MAX_ENTRIES, dtype=tf.int64) < uint(ifd, 2))
    values = tf.boolean_mask(uint(entries + 8, 2), hits)  # a SHORT: the value field's first 2 bytes
    value = tf.concat([values, tf.constant([1], tf.int64)], 0)[0]
    ok = valid & tf.equal(image_format(data), "jpeg") & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(ok, value, 1), tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """``image`` (``(H, W, C)``) as EXIF ``orientation`` (1-8) says to display it, as Pillow's
    ``ImageOps.exif_transpose``: 6 and 8 turn it a quarter clockwise and anticlockwise."""
    transforms = [
        lambda x: x,
        tf.image.flip_left_right,
        lambda x: tf.image.rot90(x, 2),
        tf.image.flip_up_down,
        tf.image.transpose,
        lambda x: tf.image.rot90(x, 3),
        lambda x: tf.image.rot90(tf.image.transpose(x), 2),
        lambda x: tf.image.rot90(x, 1),
    ]
    return tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), [lambda f=f: f(image) for f in transforms])


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG / PNG / GIF / BMP bytes -> uint8 ``(H, W, 3)`` RGB, upright.

    Grayscale is repeated to three channels, an alpha channel dropped, CMYK JPEGs
    converted by the decoder; a JPEG's EXIF orientation is applied
    (:func:`exif_orientation`), so a portrait phone photo stands up.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    image = apply_orientation(image, exif_orientation(data))
    image.set_shape([None, None, 3])
    return image


def _tf_message(error: tf.errors.OpError) -> str:
    """TensorFlow's message without ``{{function_node ...}}`` and ``[Op:...]`` decorations."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message, flags=re.S).strip()


def _local_problem(path: str) -> str | None:
    """Why a local ``path`` cannot be read, or None (remote paths are left to TensorFlow)."""
    if "://" in path:
        return None
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a directory"
    if not os.access(path, os.R_OK):
        return "permission denied"
    if os.path.getsize(path) == 0:
        return "empty file"
    return None


def load_image(path: str | bytes | os.PathLike, max_pixels: int | None = None) -> tf.Tensor:
    """Read and decode an image file to uint8 ``(H, W, 3)`` RGB.

    Images over the pixel limit (see :func:`pixel_limit`) are refused from their header,
    before decoding. Every failure is a one-line ``ValueError``:
    ``cannot read image PATH: REASON``.
    """
    name = os.fsdecode(path)
    limit = pixel_limit(max_pixels)
    reason = _local_problem(name)
    if reason is None:
        try:
            data = tf.io.read_file(os.fsencode(name))
            reason = _header_problem(data, limit)
            if reason is None:
                return decode_image(data)
        except tf.errors.OpError as error:
            reason = f"corrupt image ({_tf_message(error)})"
    raise ValueError(f"cannot read image {name}: {reason}")


def _header_problem(data: tf.Tensor, limit: int) -> str | None:
    """Why encoded ``data`` is refused before decoding (unknown format, too many pixels), or None."""
    if not image_format(data).numpy():
        return "not an image (unknown format)"
    height, width = (int(v) for v in encoded_shape(data))
    if height * width > limit:
        what = f"{width}x{height} pixels"
        if image_format(data).numpy() == b"gif":
            screen = _header_ints(data, 6, tf.uint16, little_endian=True).numpy()
            if (screen[1], screen[0]) != (height, width):
                what = f"a GIF frame reaching {what} (its screen is {screen[0]}x{screen[1]})"
        return f"{what} exceeds the limit of {limit} pixels ({RAISE_LIMIT})"
    return None


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
    x = images[tf.newaxis] if single else images
    if central_fraction and central_fraction < 1.0:
        x = tf.image.central_crop(x, central_fraction)  # on the input dtype: a large image stays uint8
    x = tf.cast(x, tf.float32) / 255.0
    x = tf.raw_ops.ResizeBilinear(
        images=x, size=[height, width], align_corners=False, half_pixel_centers=False
    )
    x = to_signed_unit(x)
    return x[0] if single else x


RESIZE_METHODS = (  # TF1's ResizeMethod order: slim's slow mode picks one at random
    tf.compat.v1.image.ResizeMethod.BILINEAR,
    tf.compat.v1.image.ResizeMethod.NEAREST_NEIGHBOR,
    tf.compat.v1.image.ResizeMethod.BICUBIC,
    tf.compat.v1.image.ResizeMethod.AREA,
)


def resize_tf1(image: tf.Tensor, size: tuple[int, int], method: int = 0) -> tf.Tensor:
    """TF1's ``resize_images`` (``align_corners=False``, no half-pixel centres), as slim resized."""
    return tf.compat.v1.image.resize_images(image, size, RESIZE_METHODS[method], align_corners=False)


def distort_color(
    image: tf.Tensor, ordering: int, fast_mode: bool = True, seed: tf.Tensor | None = None
) -> tf.Tensor:
    """slim's ``distort_color`` on [0, 1] floats, then clipped.

    Fast mode: brightness (32/255) and saturation (0.5-1.5), in ``ordering`` 0 or 1.
    Slow mode: brightness, saturation, hue (0.2) and contrast (0.5-1.5) in one of four orders.
    The draws are TensorFlow's stateless ones, from ``seed`` (a ``[2]`` integer tensor; a
    random one when ``None``): the same seed, the same distortion.
    """
    seeds = tf.random.experimental.stateless_split(_seed(seed), 4)

    def brightness(x):
        return tf.image.stateless_random_brightness(x, 32.0 / 255.0, seeds[0])

    def saturation(x):
        return tf.image.stateless_random_saturation(x, 0.5, 1.5, seeds[1])

    def hue(x):
        return tf.image.stateless_random_hue(x, 0.2, seeds[2])

    def contrast(x):
        return tf.image.stateless_random_contrast(x, 0.5, 1.5, seeds[3])

    orders = (
        [(brightness, saturation), (saturation, brightness)]
        if fast_mode
        else [
            (brightness, saturation, hue, contrast),
            (saturation, brightness, contrast, hue),
            (contrast, hue, brightness, saturation),
            (hue, saturation, contrast, brightness),
        ]
    )
    for op in orders[ordering]:
        image = op(image)
    return tf.clip_by_value(image, 0.0, 1.0)


def _seed(seed: tf.Tensor | None) -> tf.Tensor:
    """``seed`` as a ``[2]`` int64 stateless seed; a random one (stateful draw) when ``None``."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return tf.cast(seed, tf.int64)


def _random_case(x: tf.Tensor, cases: int, fn, seed: tf.Tensor) -> tf.Tensor:
    """slim's ``apply_with_random_selector``: ``fn(x, k)`` for a uniformly random ``k < cases``
    (drawn from the stateless ``seed``)."""
    if cases == 1:
        return fn(x, 0)
    selector = tf.random.stateless_uniform([], seed, maxval=cases, dtype=tf.int32)
    return tf.switch_case(selector, [lambda k=k: fn(x, k) for k in range(cases)])


def train_transform(
    image: tf.Tensor,
    size: int = 299,
    bbox: tf.Tensor | None = None,
    fast_mode: bool = True,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """slim's ``preprocess_for_train``: distorted box crop, resize, flip, colour, [-1, 1].

    ``sample_distorted_bounding_box`` with min_object_covered 0.1, aspect ratio
    0.75-1.33, area 0.05-1.0, 100 attempts, around ``bbox`` (``[N, 4]``, ymin xmin
    ymax xmax; the whole image when none is given, as slim's trainer does). Then
    TF1's resize (fast mode: bilinear; slow mode: one of its four methods at random),
    a random left-right flip, and :func:`distort_color` (fast mode: one ordering, as
    slim's ``train_image_classifier.py``; slow mode: one of four). Every draw is a
    stateless one from ``seed`` (a ``[2]`` integer tensor; a random one when ``None``),
    so a seeded image is distorted the same way in any run, in any order of a parallel map.
    """
    box_seed, resize_seed, flip_seed, order_seed, color_seed = tf.unstack(
        tf.random.experimental.stateless_split(_seed(seed), 5)
    )
    whole = tf.constant([[0.0, 0.0, 1.0, 1.0]])
    if bbox is None or bbox.shape.rank != 2:
        bbox = whole
    bbox = tf.cond(tf.shape(bbox)[0] > 0, lambda: bbox, lambda: whole)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=bbox[tf.newaxis],
        seed=box_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(0.75, 1.33),
        area_range=(0.05, 1.0),
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    x = tf.image.convert_image_dtype(tf.slice(image, begin, crop_size), tf.float32)
    cases = 1 if fast_mode else 4
    x = _random_case(x, cases, lambda x, method: resize_tf1(x, (size, size), method), resize_seed)
    x.set_shape([size, size, 3])
    x = tf.image.stateless_random_flip_left_right(x, flip_seed)
    x = _random_case(
        x, cases, lambda x, ordering: distort_color(x, ordering, fast_mode, color_seed), order_seed
    )
    return to_signed_unit(x)


def flip_transform(image: tf.Tensor, size: int = 299, seed: tf.Tensor | None = None) -> tf.Tensor:
    """A light training transform for small-image experiments: resize, random flip (stateless,
    from ``seed`` as :func:`train_transform`), [-1, 1]."""
    x = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [size, size], method="bilinear")
    return to_signed_unit(tf.image.stateless_random_flip_left_right(x, _seed(seed)))


TRAIN_TRANSFORMS = {"inception": train_transform, "flip": flip_transform}


__all__ = [
    "MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "TRAIN_TRANSFORMS",
    "apply_orientation",
    "check_pixels",
    "decode_image",
    "distort_color",
    "encoded_shape",
    "eval_transform",
    "exif_orientation",
    "flip_transform",
    "gif_extent",
    "image_format",
    "load_image",
    "pixel_limit",
    "preprocess_input",
    "train_transform",
]
