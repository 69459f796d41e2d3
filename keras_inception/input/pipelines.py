"""tf.data input pipelines: image folders, slim-layout TFRecords, TFDS; slim's augmentation.

Every source becomes ``(uint8 image, int label)`` pairs, then :func:`pipeline` applies
slim's Inception preprocessing (training or evaluation), batches, one-hot encodes
(for label smoothing, MixUp and CutMix) and prefetches.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from keras_inception.core.startup import import_tensorflow

tf = import_tensorflow(__name__, "tf.data pipelines")

from keras_inception.input import preprocessing  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass
class Source:
    """Decoded examples and what is known about them."""

    dataset: tf.data.Dataset  # (uint8 [H, W, 3], int64 label[, bbox [N, 4]])
    class_names: list[str]
    num_examples: int | None  # when known
    skipped: list[str] = dataclasses.field(default_factory=list)  # unreadable files
    files: list[tuple[str, int]] | None = None  # (path, label), for folders
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)  # skipped file -> why

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- sources


def _class_files(folder: str) -> list[str]:
    """Every file under ``folder``, subfolders included, sorted; hidden ones left out."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, f) for f in sorted(names) if not f.startswith("."))
    return files


def _check_decodable(files: list[str], max_pixels: int | None = None) -> set[str]:
    """The files TensorFlow can decode as images within the pixel limit (one parallel pass).

    Paths go to TensorFlow as bytes, so names that are not valid UTF-8 are read too.
    """

    def decode(path):
        data = preprocessing.check_pixels(tf.io.read_file(path), max_pixels)
        return path, tf.shape(preprocessing.decode_image(data))

    paths = tf.data.Dataset.from_tensor_slices([os.fsencode(f) for f in files])
    decoded = paths.map(decode, num_parallel_calls=AUTOTUNE).ignore_errors()
    return {os.fsdecode(p) for p, _ in decoded.as_numpy_iterator()}


def _why_unreadable(path: str, max_pixels: int | None) -> str:
    """load_image's one-line reason for a file the up-front check refused."""
    try:
        preprocessing.load_image(path, max_pixels)
    except ValueError as error:
        return str(error).removeprefix(f"cannot read image {path}: ")
    return "could not be decoded"


def _check_class_name(name: str, directory: str) -> None:
    """Refuse a class folder name that some export format cannot store: the model carries its
    class names into SavedModel, TFLite and ONNX as UTF-8 text, so a name whose bytes are not
    UTF-8 (read as surrogate escapes) would fail only at export, after training."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise ValueError(
            f"class folder '{shown}' of {directory} is not valid UTF-8, which exported models cannot "
            "store as a class name; rename it"
        ) from None


def image_folder(
    directory: str,
    on_error: str = "skip",
    class_names: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> Source:
    """One subfolder per class (at least two), read recursively. JPEG, PNG (alpha dropped),
    GIF, BMP; grayscale and CMYK become RGB. Unreadable files (not images, corrupt, over
    ``max_pixels``, see :func:`preprocessing.pixel_limit`) are found up front: skipped and
    listed in ``Source.skipped`` with their reasons in ``Source.reasons``
    (``on_error="skip"``), or a ``ValueError`` naming them (``"raise"``). A class with no
    readable image is a ``ValueError``."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no image folder at {directory}")
    names = list(
        class_names or sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    )
    if not names:
        raise ValueError(f"{directory} has no class subfolders (expected one folder per class)")
    for name in names:
        _check_class_name(name, directory)
    if len(names) == 1:
        raise ValueError(
            f"{directory} has only one class folder ({names[0]!r}): a classifier needs at least two classes"
        )
    files, labels = [], []
    for label, name in enumerate(names):
        found = _class_files(os.path.join(directory, name))
        files += found
        labels += [label] * len(found)
    good = _check_decodable(files, max_pixels) if files else set()
    skipped = [f for f in files if f not in good]
    reasons = {f: _why_unreadable(f, max_pixels) for f in skipped}
    if skipped and on_error == "raise":
        shown = "; ".join(f"{os.path.relpath(f, directory)}: {reasons[f]}" for f in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise ValueError(f"{len(skipped)} unreadable files in {directory}: {shown}{more}")
    kept = [(f, y) for f, y in zip(files, labels, strict=True) if f in good]
    if not kept:
        raise ValueError(f"no readable images in {directory}")
    present = {y for _, y in kept}
    empty = [name for label, name in enumerate(names) if label not in present]
    if empty:
        raise ValueError(f"no readable image in class folder(s) {empty} of {directory}")
    return _from_files(kept, names, skipped, reasons)


def _from_files(
    files: list[tuple[str, int]], names: list[str], skipped: list[str], reasons: dict[str, str]
) -> Source:
    paths = [os.fsencode(f) for f, _ in files]
    labels = [y for _, y in files]
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels)).map(
        lambda p, y: (preprocessing.decode_image(tf.io.read_file(p)), tf.cast(y, tf.int64)),
        num_parallel_calls=AUTOTUNE,
    )
    return Source(dataset, names, len(files), skipped, files, reasons)


def split_folder(
    directory: str,
    validation_split: float,
    seed: int = 0,
    on_error: str = "skip",
    max_pixels: int | None = None,
) -> tuple[Source, Source]:
    """Train and validation sources from one image folder: a seeded split per file, in
    shuffled order (so class-sorted folders need no large shuffle buffer)."""
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
    full = image_folder(directory, on_error, max_pixels=max_pixels)
    order = np.random.default_rng(seed).permutation(full.num_examples)
    cut = max(1, round(full.num_examples * validation_split))
    if cut >= full.num_examples:
        raise ValueError(
            f"{full.num_examples} images are too few to hold out {validation_split:.0%} for validation"
        )
    pick = [full.files[i] for i in order[cut:]], [full.files[i] for i in order[:cut]]
    train = _from_files(pick[0], full.class_names, full.skipped, full.reasons)
    return train, _from_files(pick[1], full.class_names, [], {})


TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
}


def tfrecords(pattern: str | Sequence[str], num_classes: int, label_offset: int = 0) -> Source:
    """TFRecords in slim's ImageNet layout (``image/encoded``, ``image/class/label``,
    ``image/object/bbox/*``). slim's ImageNet labels are 1..1000 (0 = background):
    pass ``label_offset=-1`` for 1000 classes. Bounding boxes feed the training crop."""
    files = tf.io.gfile.glob(pattern) if isinstance(pattern, str) else list(pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}")

    def parse(record):
        f = tf.io.parse_single_example(record, TFRECORD_FEATURES)
        box = tf.stack(
            [tf.sparse.to_dense(f[f"image/object/bbox/{k}"]) for k in ("ymin", "xmin", "ymax", "xmax")], 1
        )
        image = preprocessing.decode_image(f["image/encoded"])
        return image, f["image/class/label"] + label_offset, box

    dataset = tf.data.Dataset.from_tensor_slices(sorted(files)).interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    names = [str(i) for i in range(num_classes)]
    return Source(dataset.map(parse, num_parallel_calls=AUTOTUNE), names, None)


def tfds_source(name: str, split: str, data_dir: str | None = None, manual_dir: str | None = None) -> Source:
    """A TFDS dataset with ``image`` and ``label`` features (imagenet2012, tf_flowers, cifar10...)."""
    import tensorflow_datasets as tfds

    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    dataset, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        as_supervised=True,
        with_info=True,
        download_and_prepare_kwargs={"download_config": config} if config else None,
    )

    def rgb(image, label):
        image = tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image
        return tf.cast(image, tf.uint8), tf.cast(label, tf.int64)

    names = info.features["label"].names
    try:
        size = info.splits[split].num_examples
    except KeyError:  # info without split metadata (e.g. TFDS's mock data)
        size = None
    return Source(dataset.map(rgb, num_parallel_calls=AUTOTUNE), list(names), size)


def open_source(spec: str, split: str = "train", data_dir: str | None = None, **kwargs) -> Source:
    """A folder path, a TFRecord glob (``*.tfrecord*`` / ``train-*``), or ``tfds:NAME``."""
    if spec.startswith("tfds:"):
        return tfds_source(spec[5:], split, data_dir, kwargs.get("manual_dir"))
    if os.path.isdir(spec):
        return image_folder(spec, kwargs.get("on_error", "skip"))
    if not kwargs.get("num_classes"):
        raise ValueError(f"{spec!r} is not a folder: as TFRecords it needs num_classes=N")
    return tfrecords(spec, kwargs["num_classes"], kwargs.get("label_offset", 0))


# ---------------------------------------------------------------- pipeline


def pipeline(
    source: Source,
    batch_size: int,
    training: bool,
    image_size: int = 299,
    shuffle_buffer: int = 10_000,
    cache: bool | str = False,
    augment: Sequence[Callable] = (),
    aux_logits: bool = False,
    drop_remainder: bool | None = None,
    seed: int | None = None,
    repeat: bool = False,
    augmentation: str = "inception",
    fast_mode: bool = True,
    use_boxes: bool = False,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(images in [-1, 1], one-hot labels)`` ready for ``model.fit``.

    ``augment`` layers (``keras.layers.RandAugment(value_range=(-1, 1))``, ``MixUp``,
    ``CutMix``, or any Keras / KerasCV layer) run on training batches; layers that take
    ``{"images", "labels"}`` dicts (MixUp, CutMix, KerasCV's FourierMix and Mosaic, or any
    layer with ``takes_labels = True``) get both. With ``aux_logits`` the labels are
    repeated for the aux head. ``augmentation`` is ``"inception"`` (slim's
    training transform, ``fast_mode`` as slim's trainer; ``use_boxes`` crops around the
    TFRecords' object boxes, which slim's trainer does not pass) or ``"flip"`` (resize
    and flip, for tiny images).

    Training data come epoch by epoch, each shuffled anew. With a ``seed`` they are the
    same in every run: epoch ``e``'s order and every image's distortion are drawn
    statelessly from ``(seed, e)`` and the image's place in it (``augment`` layers
    draw from their own generators). With ``repeat`` the epochs follow one another without
    end (batches never straddle two: ``drop_remainder`` applies per epoch), and
    ``start_batch`` starts the stream at that batch (a resumed run's place): the epochs
    before it are not read, the images before it in its epoch are read but not transformed.
    """
    if augmentation not in preprocessing.TRAIN_TRANSFORMS:
        raise ValueError(
            f"augmentation must be one of {sorted(preprocessing.TRAIN_TRANSFORMS)}, got {augmentation!r}"
        )
    if start_batch and not (training and repeat):
        raise ValueError(
            f"start_batch={start_batch} needs training=True and repeat=True (a stream of epochs)"
        )
    dataset = source.dataset
    if cache:
        dataset = dataset.cache(cache if isinstance(cache, str) else "")
    drop = training if drop_remainder is None else drop_remainder

    def transform(image, label, *rest):
        *bbox, element_seed = rest if training else (*rest, None)
        bbox = bbox[0] if bbox and use_boxes else None
        if training and augmentation == "inception":
            x = preprocessing.train_transform(image, image_size, bbox, fast_mode, element_seed)
        elif training:
            x = preprocessing.flip_transform(image, image_size, element_seed)
        else:
            x = preprocessing.eval_transform(image, image_size)
        x.set_shape([image_size, image_size, 3])
        return x, tf.one_hot(label, source.num_classes)

    def batches(examples: tf.data.Dataset) -> tf.data.Dataset:
        examples = examples.map(
            transform, num_parallel_calls=AUTOTUNE, deterministic=not training or seed is not None
        )
        return examples.batch(batch_size, drop_remainder=drop)

    if training:
        dataset = _epochs(
            dataset, source, batch_size, drop, shuffle_buffer, seed, repeat, start_batch, batches
        )
        for layer in augment:
            dataset = dataset.map(_batch_augment(layer), num_parallel_calls=AUTOTUNE)
    else:
        dataset = batches(dataset.repeat() if repeat else dataset)
    if aux_logits:
        dataset = dataset.map(lambda x, y: (x, (y, y)))
    return dataset.prefetch(AUTOTUNE)


def batches_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches in one training epoch of ``num_examples``."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def _epochs(dataset, source, batch_size, drop, shuffle_buffer, seed, repeat, start_batch, batches):
    """The training batches of one epoch (a fresh shuffle each iteration), or with ``repeat``
    every epoch from the one holding ``start_batch`` on; see :func:`pipeline`."""
    base = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)

    def examples(epoch) -> tf.data.Dataset:  # epoch's examples, each with its stateless seed last
        key = tf.stack([tf.constant(base, tf.int64), tf.cast(epoch, tf.int64)])
        order = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
        # Within this traced function, the graph-level seed of the shuffle is this function's
        # own: the order depends on (seed, epoch) alone, not on the caller's global seed.
        tf.random.set_seed(1)
        shuffled = dataset.shuffle(shuffle_buffer, seed=order, reshuffle_each_iteration=False).enumerate()
        return shuffled.map(lambda i, ex: (*ex, tf.random.experimental.stateless_fold_in(key, i)))

    if not repeat:  # each iteration (each fit epoch) draws its epoch number afresh
        keys = tf.data.Dataset.random(seed=base, rerandomize_each_iteration=True).take(1)
        return keys.flat_map(lambda epoch: batches(examples(epoch)))
    known = source.num_examples
    if known is not None and drop and known < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {known} training examples: "
            "every epoch would be empty (use a smaller batch size)"
        )
    if start_batch and known is None:
        raise ValueError(f"start_batch={start_batch} needs the dataset's size, which is unknown (TFRecords)")
    first, skipped = (
        divmod(start_batch, batches_per_epoch(known, batch_size, drop)) if start_batch else (0, 0)
    )
    head = tf.data.Dataset.from_tensors(tf.constant(first, tf.int64))  # (traced, as every epoch)
    head = head.flat_map(lambda epoch: batches(examples(epoch).skip(skipped * batch_size)))
    rest = tf.data.Dataset.counter(first + 1).flat_map(lambda epoch: batches(examples(epoch)))
    return head.concatenate(rest)


LABEL_MIXERS = ("MixUp", "CutMix", "FourierMix", "Mosaic")  # augmentation layers that mix labels too


def _batch_augment(layer: Callable) -> Callable:
    takes_labels = type(layer).__name__ in LABEL_MIXERS or getattr(layer, "takes_labels", False)

    def apply(x, y):
        if takes_labels:
            out = layer({"images": x, "labels": y}, training=True)
            return out["images"], out["labels"]
        return layer(x, training=True), y

    return apply
