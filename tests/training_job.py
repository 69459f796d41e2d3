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

SIZE, BATCH, STEPS = 107, 16, 5
# slim's recipe at a 45th of its learning rate. In float32 each backend's first step is already
# some 3e-5 (absolute) from a float64 run's, TensorFlow's and PyTorch's alike: BatchNorm after
# BatchNorm leaves many gradients (the betas') as small differences of large sums, and each step
# multiplies an earlier difference several times. A small rate keeps five steps' curves together.
RECIPE = training.Recipe.slim(learning_rate=0.001)


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


def prepare(workdir: str) -> dict[str, np.ndarray]:
    """Write ``initial.weights.h5`` and ``batches.npz`` into ``workdir``; returns the initial values."""
    keras.utils.set_random_seed(1)
    model = build()
    model.save_weights(os.path.join(workdir, "initial.weights.h5"))
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (BATCH * STEPS, SIZE, SIZE, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, BATCH * STEPS)]
    np.savez(os.path.join(workdir, "batches.npz"), x=x, y=y)
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def agreement(reference: tuple, other: tuple, initial: dict[str, np.ndarray]) -> dict[str, float]:
    """How far ``other``'s run (losses, variables) is from ``reference``'s.

    ``losses``: the largest relative gap of the per-step losses; per kind of variable
    (``weights`` trained, BatchNorm's moving ``statistics``, parameter ``averages``): the L2
    distance between the two runs' final values over the L2 distance the reference's moved
    from ``initial`` (a kind left where it started on one backend gives 1).
    """
    (losses, variables), (other_losses, other_variables) = reference, other
    assert variables.keys() == other_variables.keys()
    figures = {"losses": float(np.max(np.abs(np.subtract(other_losses, losses)) / np.abs(losses)))}
    for kind in ("weights", "statistics", "averages"):
        keys = [k for k in variables if _kind(k) == kind]
        start = [initial[k.removeprefix("average/")] for k in keys]
        moved = np.sqrt(sum(np.sum((variables[k] - s) ** 2) for k, s in zip(keys, start, strict=True)))
        apart = np.sqrt(sum(np.sum((variables[k] - other_variables[k]) ** 2) for k in keys))
        figures[kind] = float(apart / moved)
    return figures


def _kind(path: str) -> str:
    if path.startswith("average/"):
        return "averages"
    return "statistics" if "moving_" in path else "weights"


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
