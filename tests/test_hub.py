"""KerasHub presets of our models: ``from_preset`` on a local folder, then ``fit``.

keras-hub is optional: only ``keras_inception.deploy.hub`` imports it.
"""

from __future__ import annotations

import ast
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomize

import keras_inception as ki
from keras_inception.input import pipelines as data

TINY = {"width": 0.25, "depths": (1, 1, 1)}
SIZE = 75
PACKAGE = pathlib.Path(ki.__file__).parent

pytestmark = pytest.mark.filterwarnings(
    "ignore:`shuffle=True` was passed",  # KerasHub feeds fit a tf.data pipeline of its own
    "ignore:Skipping variable loading for optimizer",  # task.weights.h5 holds the optimizer too
)


@pytest.fixture(scope="module")
def kh():
    return pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def hub(kh):
    from keras_inception.deploy import hub

    return hub


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def features(model: keras.Model) -> keras.Model:
    """Our model's final feature map (what the backbone outputs)."""
    return keras.Model(model.input, model.get_layer("global_pool").input)


def imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module or ""}
    return names


def test_only_the_hub_module_imports_keras_hub():
    for path in PACKAGE.rglob("*.py"):
        found = imports(path)
        if path.name != "hub.py":
            assert not any(n.split(".")[0] == "keras_hub" for n in found), path
        assert "keras_inception.deploy.hub" not in found, path


@pytest.mark.slow  # 16 s; the default run saves and reloads a fine-tuned preset in the next test
def test_classifier_preset_loads_and_fine_tunes(kh, hub, tmp_path):
    model = randomize(ki.InceptionV3(input_shape=(SIZE, SIZE, 3), classes=3, **TINY))
    saved = hub.save_preset(model, str(tmp_path / "v3"), "inception_v3", **TINY)
    assert isinstance(saved, hub.InceptionImageClassifier)
    config = json.loads((tmp_path / "v3" / "config.json").read_text())
    assert config["config"]["family"] == "inception_v3" and config["config"]["depths"] == [1, 1, 1]
    task = json.loads((tmp_path / "v3" / "task.json").read_text())
    assert task["config"]["dropout"] == 0.2  # the model's Logits/Dropout_1b, found by its name

    x = ki.preprocess_input(images(4))
    backbone = kh.models.Backbone.from_preset(str(tmp_path / "v3"))
    assert isinstance(backbone, hub.InceptionBackbone)
    np.testing.assert_allclose(backbone(x), features(model)(x), atol=1e-5)

    classifier = kh.models.ImageClassifier.from_preset(str(tmp_path / "v3"))
    assert isinstance(classifier, hub.InceptionImageClassifier)
    np.testing.assert_allclose(keras.ops.softmax(classifier(x)), model(x), atol=1e-5)
    # predict runs the preprocessor: uint8 images in, our preprocessing inside
    probabilities = keras.ops.softmax(classifier.predict(images(4), verbose=0))
    np.testing.assert_allclose(probabilities, model.predict(x, verbose=0), atol=1e-5)

    before = [w.numpy().copy() for w in classifier.trainable_weights]
    history = classifier.fit(images(8, seed=1), np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = [w.numpy() for w in classifier.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))

    classifier.save_to_preset(str(tmp_path / "tuned"))
    reloaded = hub.InceptionImageClassifier.from_preset(str(tmp_path / "tuned"))
    np.testing.assert_allclose(reloaded(x), classifier(x), atol=1e-6)


def test_fine_tuned_inception_v3_keeps_its_dense_head_and_dropout(kh, hub, tmp_path):
    from keras_inception.train import finetune

    model, _ = finetune.transfer_model(
        "inception_v3", ["a", "b", "c"], weights=None, image_size=SIZE, dropout_rate=0.3, **TINY
    )
    randomize(model)
    saved = hub.save_preset(model, str(tmp_path / "tuned"), "inception_v3", **TINY)
    assert isinstance(saved, hub.InceptionImageClassifier)  # not a backbone preset without the head
    task = json.loads((tmp_path / "tuned" / "task.json").read_text())
    assert task["config"]["dropout"] == 0.3 and task["config"]["num_classes"] == 3
    plain = ki.InceptionV3(include_top=False, weights=None, **TINY)
    assert list(saved.backbone.end_points) == list(plain.end_points)  # read from the backbone's graph
    x = ki.preprocess_input(images(2))
    np.testing.assert_allclose(keras.ops.softmax(saved(x)), model(x), atol=1e-5)


@pytest.mark.slow
def test_backbone_preset_takes_a_new_head(kh, hub, tmp_path):
    args = {**TINY, "scales": (0.3, 0.2, 0.1)}  # not slim's: the preset must keep them
    model = randomize(ki.InceptionResNetV2(include_top=False, input_shape=(SIZE, SIZE, 3), **args))
    with pytest.raises(ValueError, match="another width"):
        hub.save_preset(model, str(tmp_path / "wrong"), "inception_resnet_v2", **{**args, "width": 0.5})
    saved = hub.save_preset(model, str(tmp_path / "irv2"), "inception_resnet_v2", image_size=SIZE, **args)
    assert isinstance(saved, hub.InceptionBackbone)

    classifier = kh.models.ImageClassifier.from_preset(str(tmp_path / "irv2"), num_classes=3)
    x = ki.preprocess_input(images(2))
    assert tuple(classifier(x).shape) == (2, 3)
    np.testing.assert_allclose(classifier.backbone(x), model(x), atol=1e-5)
    assert classifier.preprocessor.image_converter.image_size == (SIZE, SIZE)

    # our pipeline's batches are preprocessed already, with one-hot labels
    for c in range(3):
        (tmp_path / "folder" / f"class{c}").mkdir(parents=True)
        for i, pixels in enumerate(images(2, seed=c)):
            tf.io.write_file(str(tmp_path / "folder" / f"class{c}" / f"{i}.png"), tf.io.encode_png(pixels))
    train = data.pipeline(data.image_folder(str(tmp_path / "folder")), 4, training=True, image_size=SIZE)
    classifier.preprocessor = None
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    classifier.compile(optimizer="adam", loss=loss, metrics=["categorical_accuracy"])
    kernel = classifier.output_dense.kernel.numpy().copy()
    classifier.fit(train, epochs=1, verbose=0)
    assert not np.array_equal(kernel, classifier.output_dense.kernel.numpy())


def test_a_head_not_found_by_its_slim_names_is_refused(hub, tmp_path):
    """The head's layers are looked up by name: a miss fails naming the layer, never falls back
    to dropout 0.0 or to a backbone preset without the classifier."""
    from keras_inception.nn.layers import ClassifierOutput

    def head(*layers):
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        for layer in layers:
            x = layer(x)
        return keras.Model(inputs, ClassifierOutput("softmax", name="Predictions")(x), name="net")

    no_dropout = head(keras.layers.Dense(3, name="Logits-Logits"))
    message = "net's classifier 'Logits-Logits' has no dropout layer 'Logits-Dropout_1b'"
    with pytest.raises(ValueError, match=message):
        hub.save_preset(no_dropout, str(tmp_path / "a"), "inception_v4", **TINY)
    renamed = head(keras.layers.Dropout(0.2, name="Logits-Dropout_1b"), keras.layers.Dense(3, name="fc"))
    message = "net has a classifier output but no classifier layer named 'Logits-Conv2d_1c_1x1' or 'Logits-"
    with pytest.raises(ValueError, match=message):
        hub.save_preset(renamed, str(tmp_path / "b"), "inception_v3", **TINY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
