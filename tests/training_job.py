"""Trains a reduced network with slim's recipe on fixed batches; run by ``tests/test_backends.py``
in its TensorFlow process and, as a script, under ``KERAS_BACKEND=jax`` or ``torch``.

From ``WORKDIR/initial.weights.h5`` on ``WORKDIR/batches.npz``: SlimRMSprop (TF1's kernel on
TensorFlow, its Keras-ops path elsewhere), the L2 loss on kernels and biases, label smoothing,
the aux head and the parameter averages; no dropout (its random draws differ by backend).
The script writes ``WORKDIR/<backend>.npz`` (per-step losses, final weights and averages)
and prints one JSON line: the warnings ``compile_model`` gave for two compiles.

    KERAS_BACKEND=torch python tests/training_job.py WORKDIR
"""

import json
import os
import sys
import warnings

import keras
import numpy as np

import keras_inception as ki
from keras_inception.core.precision import full_precision
from keras_inception.train import training

SIZE, BATCH, STEPS = 107, 16, 2  # from the third step on, float32 rounding grows into other curves
# slim's recipe at a fifth of its learning rate: 0.045 makes this small random network's steps
# chaotic (float32 rounding in the gradients would grow into different curves)
RECIPE = training.Recipe.slim(learning_rate=0.01)


def build() -> keras.Model:
    """Inception-ResNet-v2 with one block per stage at a quarter width, aux head: every block kind."""
    return ki.InceptionResNetV2(
        weights=None,
        classes=3,
        depths=(1, 1, 1),
        width=0.25,
        input_shape=(SIZE, SIZE, 3),
        dropout_rate=0.0,
        aux_logits=True,
    )


def train_steps(workdir: str) -> tuple[list[float], dict[str, np.ndarray]]:
    """The per-step losses and the final weights and averages (by path)."""
    model = build()
    model.load_weights(os.path.join(workdir, "initial.weights.h5"))  # before the averages start
    training.compile_model(model, RECIPE, steps_per_epoch=2, l2_biases=True)
    with np.load(os.path.join(workdir, "batches.npz")) as f:
        x, y = f["x"], f["y"]
    losses = []
    for i in range(STEPS):
        part = slice(i * BATCH, (i + 1) * BATCH)
        logs = model.train_on_batch(x[part], (y[part], y[part]), return_dict=True)
        losses.append(float(logs["loss"]))
    optimizer = model.optimizer
    variables = {w.path: w for w in model.weights} | {
        f"average/{w.path}": a for w, a in zip(optimizer.averaged_variables, optimizer.averages, strict=True)
    }
    return losses, {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}


def main(workdir: str) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = build()
        for _ in range(2):
            training.compile_model(model, RECIPE, steps_per_epoch=2)
    losses, variables = train_steps(workdir)
    np.savez(os.path.join(workdir, f"{keras.backend.backend()}.npz"), losses=np.array(losses), **variables)
    print(json.dumps({"backend": keras.backend.backend(), "warnings": [str(w.message) for w in seen]}))


if __name__ == "__main__":
    with full_precision():  # float32 at full precision on a GPU too (TF32 off): a parity check
        main(sys.argv[1])
