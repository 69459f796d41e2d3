"""The NumPy evaluation transform (no TensorFlow) against the tf.image one it replaces."""

import numpy as np
import pytest

import keras_inception as ki
from keras_inception.input import preprocessing, transform

SHAPES = [(299, 299), (300, 400), (400, 300), (37, 53), (1, 1), (8, 500), (333, 250), (75, 75)]
SIZES = [299, (75, 75), (150, 100), 1]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_numpy_eval_transform_equals_the_tf_image_one(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for dtype in (np.uint8, np.float32):
        batch = (rng.random((2, *shape, 3)) * 255).astype(dtype)
        for size in SIZES:
            for fraction in (0.875, 1.0, 0.33):
                expected = preprocessing.eval_transform(batch, size, fraction).numpy()
                got = transform.eval_transform(batch, size, fraction)
                assert got.dtype == np.float32 and got.shape == expected.shape
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"{size} {fraction}")
        single = transform.eval_transform(batch[0])
        np.testing.assert_allclose(single, preprocessing.eval_transform(batch[0]).numpy(), atol=1e-5)


def test_numpy_eval_transform_is_the_package_level_one_and_refuses_bad_input():
    assert ki.eval_transform is transform.eval_transform
    with pytest.raises(ValueError, match=r"central_fraction must be in \(0, 1\], got 0"):
        transform.eval_transform(np.zeros((4, 4, 3)), 2, central_fraction=0)
    with pytest.raises(ValueError, match=r"an \(H, W, C\) image or an \(N, H, W, C\) batch, got \(4, 4\)"):
        transform.eval_transform(np.zeros((4, 4)), 2)
