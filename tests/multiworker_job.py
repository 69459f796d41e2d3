"""One worker of the multi-worker test (or the single-process reference).

    python multiworker_job.py OUT.npz BN [--single]

TF_CONFIG set: one of the workers; ``--single``: one process on the same global
batches. BN is ``inference`` (BatchNorm frozen, as in fine-tuning) or ``sync``
(synchronized batch statistics).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_inception as ki  # noqa: E402
from keras_inception.train import training  # noqa: E402

GLOBAL_BATCH, STEPS, WORKERS = 8, 3, 2


def examples() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (GLOBAL_BATCH * STEPS, 75, 75, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, GLOBAL_BATCH * STEPS)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Worker i takes rows [i*b, (i+1)*b) of every global batch: together, the same batches."""
    per = context.get_per_replica_batch_size(GLOBAL_BATCH)
    start = context.input_pipeline_id * per
    return examples().map(lambda x, y: (x[start : start + per], y[start : start + per]))


def build(bn: str):
    import keras

    keras.utils.set_random_seed(1)
    model = ki.InceptionResNetV1(
        input_shape=(75, 75, 3), width=0.25, depths=(1, 1, 1), classes=3, dropout_rate=0.0
    )
    if bn == "sync":
        training.sync_batch_norm(model)  # global-batch statistics, as the single process has
    else:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return model


def main() -> None:
    out, bn, single = sys.argv[1], sys.argv[2], "--single" in sys.argv
    strategy = tf.distribute.get_strategy() if single else tf.distribute.MultiWorkerMirroredStrategy()
    recipe = training.Recipe(learning_rate=0.01, label_smoothing=0.1, weight_decay=4e-5)
    model, losses = training.distributed_fit(
        strategy,
        lambda: build(bn),
        (lambda ctx: examples()) if single else dataset_fn,
        GLOBAL_BATCH,
        STEPS,
        recipe,
        STEPS,
    )
    weights = {f"arr_{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    np.savez(out, losses=np.array(losses), **weights)


if __name__ == "__main__":
    main()
