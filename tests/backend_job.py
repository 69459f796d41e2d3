"""Run by ``tests/test_backends.py`` under ``KERAS_BACKEND=jax`` or ``torch``.

Loads Inception-v3 from every kind of weights (slim checkpoint, official archive,
``weights="imagenet"`` through the download cache, ``.keras``, ``.weights.h5``), compares
its logits with the TensorFlow backend's, trains a reduced network with ``fit``, and
prints one JSON line of results.

    python tests/backend_job.py WORKDIR
"""

import json
import os
import sys

import keras
import numpy as np

import keras_inception as ki
from keras_inception.core.precision import full_precision
from keras_inception.train import training
from keras_inception.weights import loading, sources


def relative(a, b: np.ndarray) -> float:
    a = keras.ops.convert_to_numpy(a)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main(workdir: str) -> None:
    with np.load(os.path.join(workdir, "reference.npz")) as f:
        images, logits = f["images"], f["logits"]
    prefix = os.path.join(workdir, "ckpt", "inception_v3.ckpt")
    model = ki.InceptionV3(weights=prefix, classes=1001, classifier_activation=None)
    results = {
        "backend": keras.backend.backend(),
        "checkpoint": relative(model(images, training=False), logits),
    }
    by_kind = {  # each loaded into the zeroed model: one full network built, every loader run
        "archive": os.path.join(workdir, "mirror", os.environ["ARCHIVE"]),
        "imagenet": "imagenet",
        "weights.h5": os.path.join(workdir, "tf.weights.h5"),
    }
    for kind, weights in by_kind.items():
        for w in model.weights:
            w.assign(np.zeros(w.shape, w.dtype))
        loading.load(model, sources.resolve(weights, "inception_v3"), "inception_v3")
        results[kind] = relative(model(images, training=False), logits)
    saved = keras.saving.load_model(os.path.join(workdir, "tf.keras"))
    results["keras"] = relative(saved(images, training=False), logits)

    keras.utils.set_random_seed(0)
    model = ki.InceptionResNetV2(weights=None, classes=3, depths=(1, 1, 1), input_shape=(75, 75, 3))
    training.compile_model(model, training.Recipe.slim(ema_decay=None), steps_per_epoch=2)
    before = [w.numpy().copy() for w in model.trainable_weights]
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 75, 75, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 8), 3)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    changed = sum(
        not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True)
    )
    results["fit_loss"] = [float(v) for v in history.history["loss"]]
    results["fit_changed"] = changed / len(before)
    print(json.dumps(results))


if __name__ == "__main__":
    with full_precision():  # float32 at full precision on a GPU too (TF32 off): a parity check
        main(sys.argv[1])
