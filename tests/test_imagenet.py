"""ImageNet conventions: [-1, 1] inputs, 1000 / 1001 classes, slim's eval transform."""

import numpy as np
import pytest
import tensorflow as tf

import keras_inception as ki
from keras_inception.input import imagenet, preprocessing


def test_preprocess_input_maps_to_minus_one_one_without_touching_input():
    x = np.array([[0.0, 127.5, 255.0]], np.float32)
    original = x.copy()
    np.testing.assert_allclose(ki.preprocess_input(x), [[-1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(x, original)
    np.testing.assert_allclose(ki.preprocess_input(np.array([0, 255], np.uint8)), [-1.0, 1.0])
    np.testing.assert_allclose(ki.preprocess_input(tf.constant([255], tf.uint8)).numpy(), [1.0])


def test_decode_predictions_handles_1000_and_1001_columns():
    assert len(imagenet.classes()) == 1000
    assert imagenet.classes()[0] == ("n01440764", "tench")
    p = np.zeros((2, 1000), np.float32)
    p[0, 1], p[1, 999] = 0.9, 0.8
    top = ki.decode_predictions(p, top=2)
    assert top[0][0] == ("n01443537", "goldfish", pytest.approx(0.9))
    assert top[1][0][:2] == imagenet.classes()[999]
    q = np.zeros((1, 1001), np.float32)
    q[0, 2] = 1.0  # slim index 2 = ImageNet class 1
    assert ki.decode_predictions(q, top=1)[0][0][:2] == ("n01443537", "goldfish")
    q[0, 0] = 2.0
    assert ki.decode_predictions(q, top=1)[0][0][:2] == ("background", "background")
    with pytest.raises(ValueError, match="1000\\) or \\(samples, 1001"):
        ki.decode_predictions(np.zeros((1, 10)))


def test_eval_transform_is_slims_crop_and_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = preprocessing.eval_transform(image, size=(16, 24)).numpy()
    # slim: central_crop(0.875) then resize_bilinear(align_corners=False) then (x - 0.5) * 2
    crop = image[2:38, 3:57].astype(np.float32) / 255.0  # central_crop: offset int((40 - 35) / 2) = 2
    expected = tf.compat.v1.image.resize_bilinear(crop[None], [16, 24], align_corners=False)[0].numpy()
    np.testing.assert_allclose(out, (expected - 0.5) * 2.0, atol=1e-6)
    assert out.min() >= -1.0 and out.max() <= 1.0
    batch = preprocessing.eval_transform(np.stack([image, image]), size=16)
    assert batch.shape == (2, 16, 16, 3)


def test_decode_image_grayscale_and_alpha_become_rgb():
    gray = tf.io.encode_png(np.full((5, 7, 1), 200, np.uint8))
    rgba = tf.io.encode_png(np.full((5, 7, 4), 100, np.uint8))
    assert preprocessing.decode_image(gray).shape == (5, 7, 3)
    np.testing.assert_array_equal(preprocessing.decode_image(rgba).numpy(), np.full((5, 7, 3), 100))
    with pytest.raises(ValueError, match="cannot read image"):
        preprocessing.load_image("/nonexistent.jpg")
