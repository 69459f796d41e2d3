"""Batched evaluation against one ``model.predict`` per image, in one run, interleaved.

    python tools/evaluate_speed.py ../shared/datasets/imagenet_sample/images --model inception_v3

The images get one label each (0: no labels are needed to time the work). The
per-image loop is the evaluation of earlier versions: crops of one image, one
``predict`` call. Prints images/s of both and the ratio, median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from keras_inception import models  # noqa: E402
from keras_inception.deploy import predict  # noqa: E402
from keras_inception.input import preprocessing  # noqa: E402
from keras_inception.train import evaluation  # noqa: E402


def per_image(model, images, scheme: int, size: int) -> None:
    for image in images:
        model.predict(evaluation.crops(image, scheme, size), verbose=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a folder of images")
    p.add_argument("--model", default="inception_v3")
    p.add_argument("--crops", type=int, default=1, choices=evaluation.CROP_SCHEMES)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = models.create(args.model, classifier_activation="softmax")
    size = model.input_shape[1]
    paths = predict.image_files(args.folder)[: args.limit]
    images = [preprocessing.load_image(path).numpy() for path in paths]
    dataset = tf.data.Dataset.from_generator(  # images of any sizes
        lambda: ((image, 0) for image in images),
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int64)),
    )
    names = [str(i) for i in range(model.outputs[0].shape[-1])]
    per_image(model, images[:2], args.crops, size)  # warm-up of both paths
    evaluation.evaluate([model], dataset.take(2), names, args.crops, size)
    loop, batched = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        per_image(model, images, args.crops, size)
        loop.append(len(images) / (time.perf_counter() - start))
        start = time.perf_counter()
        evaluation.evaluate([model], dataset, names, args.crops, size)
        batched.append(len(images) / (time.perf_counter() - start))
    a, b = statistics.median(loop), statistics.median(batched)
    print(f"{args.model}, {len(images)} images, {args.crops} crop(s): per-image loop {a:.2f} images/s, "
          f"batched {b:.2f} images/s: {b / a:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
