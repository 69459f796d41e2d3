"""Write tests/fixtures/saved_irv2: a small ``.keras`` model and its outputs on a fixed input.

python tools/write_saved_fixture.py

The file stands for the models users saved before a layer moved: test_saved_fixture.py
loads it through the registered class names (``keras_inception>BatchNorm``, ``>Conv2D``,
``>ScaleSum``, ``>ClassifierOutput``, ``>SlimVarianceScaling``) and compares the outputs.
Written once (2026-12-05, commit c08b8a6's layers); rewriting it would test nothing.
"""

from __future__ import annotations

import os

import numpy as np

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def main() -> None:
    import keras_inception as ki

    model = ki.InceptionResNetV2(
        weights=None, classes=3, input_shape=(75, 75, 3), width=0.05, depths=(1, 1, 1), dropout_rate=0.0
    )
    rng = np.random.default_rng(0)
    for v in model.weights:  # random values, BN statistics included (variance positive)
        shape = tuple(v.shape)
        if v.path.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith(("moving_mean", "beta", "bias")):
            value = rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, np.sqrt(1.0 / max(int(np.prod(shape[:-1])), 1)), shape)
        v.assign(value.astype(v.dtype))
    images = rng.uniform(-1.0, 1.0, (2, 75, 75, 3)).astype("float32")
    os.makedirs(FOLDER, exist_ok=True)
    model.save(os.path.join(FOLDER, "saved_irv2.keras"))
    inference = np.asarray(model(images, training=False))
    training = np.asarray(model(images, training=True))  # the batch's statistics: the fast paths
    np.savez(os.path.join(FOLDER, "saved_irv2.npz"), images=images, inference=inference, training=training)
    print(f"wrote {FOLDER}/saved_irv2.keras and saved_irv2.npz")


if __name__ == "__main__":
    main()
