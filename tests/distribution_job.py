"""Run by ``tests/test_backends.py`` under ``KERAS_BACKEND=jax`` with two host devices.

Trains a reduced network with slim's recipe (:func:`training.compile_model`) for two
steps twice from the same weights on the same global batches: on one device, and under
``keras.distribution.DataParallel`` over both. Prints one JSON line: the largest relative
difference of the final weights, BatchNorm statistics and averages, and the two losses.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax python tests/distribution_job.py DIR
"""

import json
import os
import sys

import keras
import numpy as np

import keras_inception as ki
from keras_inception.train import training

# two steps: this small random network's training is chaotic from the third on (float32
# rounding, grown through BatchNorm over near-constant channels, changes the curve on one device too)
BATCH, STEPS = 8, 2


def build() -> keras.Model:
    model = ki.InceptionResNetV2(
        weights=None, classes=3, depths=(1, 1, 1), width=0.25, input_shape=(75, 75, 3), dropout_rate=0.0
    )
    training.compile_model(model, training.Recipe.slim(), steps_per_epoch=STEPS)
    return model


def run(weights: str, x: np.ndarray, y: np.ndarray) -> tuple[dict[str, np.ndarray], list[float]]:
    model = build()
    model.load_weights(weights)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    optimizer = model.optimizer
    variables = {w.path: w for w in model.weights} | {
        f"average/{w.path}": a for w, a in zip(optimizer.averaged_variables, optimizer.averages, strict=True)
    }
    return {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}, history.history["loss"]


def main(workdir: str) -> None:
    import jax

    devices = jax.devices()
    keras.utils.set_random_seed(0)
    weights = os.path.join(workdir, "initial.weights.h5")
    build().save_weights(weights)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (BATCH * STEPS, 75, 75, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, BATCH * STEPS), 3)
    one, one_loss = run(weights, x, y)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    two, two_loss = run(weights, x, y)
    assert one.keys() == two.keys()
    difference = {k: float(np.max(np.abs(one[k] - two[k]))) for k in one}
    worst = max(difference, key=difference.get)
    print(
        json.dumps(
            {
                "devices": len(devices),
                "variables": len(one),
                "largest_value": max(float(np.max(np.abs(v))) for v in one.values()),
                "largest_difference": difference[worst],
                "worst": worst,
                "one_device_loss": one_loss,
                "data_parallel_loss": two_loss,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
