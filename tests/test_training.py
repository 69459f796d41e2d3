"""Input pipelines, the paper's recipe, resume, transfer learning, multi-crop evaluation, tf.distribute."""

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_inception as ki
from keras_inception import cli
from keras_inception.deploy import export
from keras_inception.input import pipelines as data
from keras_inception.input import preprocessing
from keras_inception.train import evaluation, finetune, remat, runs, training

HERE = os.path.dirname(__file__)
CIFAR = os.path.join(HERE, "..", "..", "shared", "datasets", "cifar10", "cifar10-train.tar.gz")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of real files: JPEG, PNG with alpha, grayscale, CMYK, plus broken ones."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        d = root / label
        d.mkdir()
        for i in range(6):
            pixels = np.clip(rng.normal(colour, 20, (60 + i, 80, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"{i}.jpg", "JPEG")
        rgba = np.concatenate(
            [np.full((50, 50, 3), colour, np.uint8), np.full((50, 50, 1), 128, np.uint8)], -1
        )
        Image.fromarray(rgba, "RGBA").save(d / "alpha.png", "PNG")
        Image.fromarray(np.full((40, 40), 90, np.uint8), "L").save(d / "gray.png", "PNG")
        Image.fromarray(np.full((40, 40, 3), colour, np.uint8)).convert("CMYK").save(d / "cmyk.jpg", "JPEG")
    (root / "red" / "notes.txt").write_text("not an image")
    good = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good, "JPEG")
    (root / "blue" / "truncated.jpg").write_bytes(good.getvalue()[:200])
    return root


def test_image_folder_decodes_all_kinds_and_counts_the_broken(folder):
    source = data.image_folder(str(folder))
    assert source.class_names == ["blue", "red"]
    assert source.num_examples == 2 * 9
    assert sorted(os.path.basename(f) for f in source.skipped) == ["notes.txt", "truncated.jpg"]
    for image, label in source.dataset:
        assert image.dtype == tf.uint8 and image.shape[-1] == 3
        assert int(label) in (0, 1)
    with pytest.raises(ValueError, match="2 unreadable files"):
        data.image_folder(str(folder), on_error="raise")


def test_cmyk_and_alpha_become_rgb_with_their_colour(folder):
    cmyk = ki.preprocessing.load_image(str(folder / "red" / "cmyk.jpg")).numpy()
    assert cmyk.shape == (40, 40, 3) and cmyk[..., 0].mean() > 150 > cmyk[..., 2].mean()
    alpha = ki.preprocessing.load_image(str(folder / "blue" / "alpha.png")).numpy()
    np.testing.assert_array_equal(alpha[0, 0], (30, 30, 200))


def test_training_pipeline_with_keras_augmentation_layers(folder):
    train, _ = data.split_folder(str(folder), 0.25, seed=0)
    augment = [keras.layers.RandAugment(value_range=(-1, 1)), keras.layers.MixUp(), keras.layers.CutMix()]
    ds = data.pipeline(train, 4, training=True, image_size=75, augment=augment, seed=0)
    x, y = next(iter(ds))
    assert x.shape == (4, 75, 75, 3) and y.shape == (4, 2)
    assert float(tf.reduce_min(x)) >= -1.0 and float(tf.reduce_max(x)) <= 1.0
    np.testing.assert_allclose(tf.reduce_sum(y, axis=1), 1.0, rtol=1e-5)  # mixed labels stay distributions
    x2, (y_main, y_aux) = next(iter(data.pipeline(train, 4, training=False, image_size=75, aux_logits=True)))
    np.testing.assert_array_equal(y_main, y_aux)


def test_train_transform_follows_slim(folder):
    image = ki.preprocessing.load_image(str(folder / "red" / "0.jpg"))
    outs = np.stack([preprocessing.train_transform(image, 75).numpy() for _ in range(8)])
    assert outs.shape == (8, 75, 75, 3) and outs.min() >= -1.0 and outs.max() <= 1.0
    assert np.std(outs, axis=0).mean() > 0.01  # random crops, flips and colours differ
    box = tf.constant([[0.25, 0.25, 0.75, 0.75]])
    assert preprocessing.train_transform(image, 75, box).shape == (75, 75, 3)
    slow = np.stack([preprocessing.train_transform(image, 75, fast_mode=False).numpy() for _ in range(8)])
    assert slow.min() >= -1.0 and slow.max() <= 1.0


@pytest.mark.parametrize("method", range(4))
def test_train_resize_is_tf1s(method):
    """The deterministic part of slim's training transform against tf.compat.v1's own ops:
    resize_images with align_corners=False, which TF2's tf.image.resize does not reproduce."""
    crop = np.random.default_rng(method).uniform(0, 1, (37, 53, 3)).astype("float32")
    ours = preprocessing.resize_tf1(crop, (75, 75), method).numpy()
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        reference = session.run(tf.compat.v1.image.resize_images(crop, (75, 75), method, align_corners=False))
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    if method == 0:  # and TF2's half-pixel resize is a different function
        assert np.abs(tf.image.resize(crop, (75, 75)).numpy() - reference).max() > 1e-3


def test_fast_mode_colour_is_brightness_then_saturation():
    """slim's fast-mode order, against TensorFlow's own adjustments: brightness by a delta within
    32/255, then saturation by a factor within 0.5-1.5 (found by search), then clipped."""
    image = tf.fill((8, 8, 3), 0.5) + tf.constant([0.2, 0.0, -0.2])
    fast = preprocessing.distort_color(image, 0, fast_mode=True, seed=tf.constant([1, 2])).numpy()
    best = min(
        (
            float(
                np.abs(tf.clip_by_value(tf.image.adjust_saturation(image + d, f), 0, 1).numpy() - fast).max()
            ),
            d,
            f,
        )
        for d in np.linspace(-32 / 255, 32 / 255, 65)
        for f in np.linspace(0.5, 1.5, 101)
    )
    assert best[0] < 0.01, best
    again = preprocessing.distort_color(image, 0, fast_mode=True, seed=tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(fast, again)  # stateless: the seed decides
    other = preprocessing.distort_color(image, 0, fast_mode=True, seed=tf.constant([1, 3])).numpy()
    assert np.abs(other - fast).max() > 1e-3


def test_seeded_training_data_are_the_same_in_every_run_and_resume_mid_stream(folder):
    """Every epoch's order and every distortion come from (seed, epoch, place): two pipelines
    give the same batches; one started at batch k gives the stream's batches from k on, in
    the middle of an epoch too; epochs and seeds differ; a pipeline without repeat
    reshuffles at each iteration."""
    source = data.image_folder(str(folder))  # 18 images: 4 batches of 4 per epoch

    def batches(n, **kwargs):
        stream = data.pipeline(source, 4, True, 33, seed=5, repeat=True, **kwargs)
        return [x.numpy() for x, _ in stream.take(n)]

    stream = batches(10)
    assert all(np.array_equal(a, b) for a, b in zip(stream, batches(10), strict=True))
    for start in (4, 6):  # an epoch's start, and its middle
        assert all(
            np.array_equal(a, b)
            for a, b in zip(stream[start:], batches(10 - start, start_batch=start), strict=True)
        )
    assert not np.array_equal(stream[0], stream[4])  # epoch 2 is not epoch 1 again
    other = data.pipeline(source, 4, True, 33, seed=6, repeat=True)
    assert not np.array_equal(stream[0], next(iter(other))[0])
    finite = data.pipeline(source, 4, True, 33, seed=5)
    first, second = ([x.numpy() for x, _ in finite] for _ in range(2))
    assert len(first) == len(second) == 4 and not np.array_equal(first[0], second[0])
    with pytest.raises(ValueError, match="start_batch=3 needs training=True and repeat=True"):
        data.pipeline(source, 4, True, 33, seed=5, start_batch=3)
    with pytest.raises(ValueError, match="batch_size=32 is larger than the 18 training examples"):
        data.pipeline(source, 32, True, 33, seed=5, repeat=True)


def _example(image: np.ndarray, label: int) -> bytes:
    encoded = tf.io.encode_jpeg(image).numpy()
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
        "image/object/bbox/ymin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.2])),
        "image/object/bbox/xmax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.9])),
        "image/object/bbox/ymax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.8])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _records(folder) -> data.Source:
    """Two slim-layout shards of three examples (labels 1-3, background at 0)."""
    for shard in range(2):
        with tf.io.TFRecordWriter(str(folder / f"train-{shard:05d}-of-00002")) as writer:
            for i in range(3):
                writer.write(_example(np.full((40, 50, 3), 20 * i, np.uint8), label=1 + i))
    return data.tfrecords(str(folder / "train-*"), num_classes=3, label_offset=-1)


def test_tfrecords_in_slim_layout(tmp_path):
    source = _records(tmp_path)
    items = list(source.dataset)
    assert len(items) == 6
    assert sorted(int(y) for _, y, _ in items) == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(items[0][2].numpy(), [[0.2, 0.1, 0.8, 0.9]])
    x, y = next(iter(data.pipeline(source, 6, training=True, image_size=75)))
    assert x.shape == (6, 75, 75, 3) and y.shape == (6, 3)
    with pytest.raises(
        ValueError, match=r"^start_batch=2 needs the dataset's size, which is unknown \(TFRecords\)$"
    ):
        data.pipeline(source, 2, True, 75, repeat=True, start_batch=2)


def test_training_on_tfrecords_resumes_from_the_stream_start_and_says_so(tmp_path, capsys):
    source = _records(tmp_path)
    shape = {"width": 0.25, "depths": (1, 1, 1), "remat": False, "recipe": training.Recipe.slim()}
    for epochs in (1, 2):  # the second call resumes the first's folder at epoch 2
        training.train_network(
            "inception_resnet_v1",
            source,
            None,
            str(tmp_path / "run"),
            epochs=epochs,
            steps_per_epoch=1,
            batch_size=2,
            image_size=75,
            verbose=1,
            **shape,
        )
    err = capsys.readouterr().err
    assert err.count("resuming with the data stream from its start: the dataset's size is unknown\n") == 1


def test_tfds_through_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=8):
        source = data.open_source("tfds:cifar10", "train")
        assert len(source.class_names) == 10
        batches = list(data.pipeline(source, 4, training=True, image_size=75))
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape == (4, 75, 75, 3) and y.shape == (4, 10)


def _rmsprop_case():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 3, 4, 8)).astype("float32"), rng.normal(size=(8,)).astype("float32")]
    return start, [[rng.normal(size=w.shape).astype("float32") for w in start] for _ in range(3)]


def _slim_rmsprop_steps(start, grads, path=None) -> tuple[list[np.ndarray], tf.Graph]:
    """SlimRMSprop's weights after ``grads`` (``path`` forces ``"_apply_ops"`` or
    ``"_apply_kernel"``), and the traced step's graph."""
    ours = [keras.Variable(w) for w in start]
    optimizer = training.SlimRMSprop(0.045)
    optimizer.build(ours)
    if path:
        forced = getattr(optimizer, path)

        def update_step(gradient, variable, learning_rate):
            i = optimizer._get_variable_index(variable)
            forced(gradient, variable, optimizer._mean_squares[i], optimizer._moments[i], learning_rate)

        optimizer.update_step = update_step
    apply = tf.function(lambda *gs: optimizer.apply(list(gs), ours))
    for g in grads:
        apply(*map(tf.constant, g))
    graph = apply.get_concrete_function(*[tf.TensorSpec(w.shape) for w in start]).graph
    return [w.numpy() for w in ours], graph


def test_slim_rmsprop_is_tf1s_rmsprop_kernel_for_kernel():
    """Three steps of SlimRMSprop against TF1's own ``RMSPropOptimizer`` in a ``tf.compat.v1``
    graph (what slim trains with): equal to the last bit, one fused op per variable. (Under
    tf.distribute: the multi-worker tests, -m slow.)"""
    start, grads = _rmsprop_case()
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        weights = [v1.Variable(w, use_resource=True) for w in start]
        feeds = [v1.placeholder(tf.float32, w.shape) for w in start]
        step = v1.train.RMSPropOptimizer(0.045, decay=0.9, momentum=0.9, epsilon=1.0).apply_gradients(
            zip(feeds, weights, strict=True)
        )
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for g in grads:
                session.run(step, dict(zip(feeds, g, strict=True)))
            expected = session.run(weights)
    ours, traced = _slim_rmsprop_steps(start, grads)
    for got, want in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [op.type for op in traced.get_operations()].count("ResourceApplyRMSProp") == len(start)


def test_slim_rmsprop_keras_ops_equal_the_kernel():
    """The Keras-op path (JAX, PyTorch, sparse gradients) computes what the kernel does."""
    start, grads = _rmsprop_case()
    by_ops, _ = _slim_rmsprop_steps(start, grads, path="_apply_ops")
    by_kernel, _ = _slim_rmsprop_steps(start, grads, path="_apply_kernel")
    for a, b, w in zip(by_ops, by_kernel, start, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        assert np.abs(a - w).max() > 0.01  # it trained


def test_recipe_optimizer_and_schedule():
    recipe = training.Recipe.slim(warmup_epochs=1.0)
    opt = training.make_optimizer(recipe, steps_per_epoch=100)
    assert isinstance(opt, training.SlimRMSprop)
    assert (opt.rho, opt.momentum, opt.epsilon, opt.ema_decay, opt.weight_decay) == (
        0.9,
        0.9,
        1.0,
        0.9999,
        None,
    )
    schedule = opt._learning_rate
    assert float(schedule(49)) == pytest.approx(0.045 * 50 / 100)  # warm-up
    assert float(schedule(150)) == pytest.approx(0.045)
    assert float(schedule(200)) == pytest.approx(0.045 * 0.94)  # x0.94 every 2 epochs
    assert float(schedule(450)) == pytest.approx(0.045 * 0.94**2)
    restored = training.WarmupExponentialDecay.from_config(schedule.get_config())
    assert float(restored(450)) == pytest.approx(float(schedule(450)))
    decoupled = training.make_optimizer(training.Recipe.slim(weight_decay_mode="decoupled"), 100)
    assert decoupled.weight_decay == 4e-5
    with pytest.raises(ValueError, match="weight_decay_mode"):
        training.Recipe.slim(weight_decay_mode="l1")


def _tiny_model(classes=3, **kwargs):
    return ki.InceptionResNetV1(
        input_shape=(75, 75, 3), width=0.25, depths=(1, 1, 1), classes=classes, **kwargs
    )


def _random_data(n=16, classes=3, aux=False):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 75, 75, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, n)]
    ds = tf.data.Dataset.from_tensor_slices((x, (y, y) if aux else y)).batch(8).repeat()
    return ds


def test_compiled_loss_is_slims_total_loss():
    """CE(logits) + 0.4 CE(aux logits), label smoothing 0.1, plus the L2 loss 4e-5 * sum(w^2) / 2."""
    model = ki.InceptionResNetV1(
        input_shape=(139, 139, 3), width=0.25, depths=(1, 1, 1), classes=3, aux_logits=True
    )
    training.compile_model(model, training.Recipe.slim(), steps_per_epoch=10, l2_biases=True)
    x, (y, _) = next(iter(_random_data(aux=True, n=8).map(lambda x, y: (tf.image.resize(x, (139, 139)), y))))
    main, aux = model(x, training=False)
    ce = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    weights = [w for w in model.trainable_weights if w.path.endswith(("kernel", "bias"))]
    l2 = sum(2e-5 * float(np.sum(np.square(w))) for w in weights)
    assert float(sum(model.losses)) == pytest.approx(l2, rel=1e-4)  # biases too, for the Inception-ResNets
    expected = float(ce(y, main)) + 0.4 * float(ce(y, aux)) + l2
    logs = model.evaluate(x, (y, y), verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)
    assert training.outputs_logits(model) is False


def test_transfer_model_keeps_batchnorm_in_inference_mode():
    model, base = finetune.transfer_model(
        "inception_resnet_v1", list("abcd"), weights=None, image_size=75, depths=(1, 1, 1)
    )
    assert not base.trainable
    count = finetune.unfreeze(base, "Mixed_7a")
    assert count > 0
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable and all(n.startswith(("Mixed_7a", "Repeat_2")) for n in trainable)
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in base.layers
    )
    bn = base.get_layer("Conv2d_1a_3x3-BatchNorm")
    before = bn.moving_mean.numpy().copy()
    model.compile("adam", "categorical_crossentropy")
    model.fit(np.random.rand(4, 75, 75, 3).astype("float32"), np.eye(4), epochs=1, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)  # statistics untouched
    with pytest.raises(ValueError, match="no block 'Mixed_9a'"):
        finetune.unfreeze(base, "Mixed_9a")


def test_cli_finetune_on_a_folder_talks_and_resumes(folder, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "ft")
    args = [
        "finetune",
        "--data",
        str(folder),
        "--model",
        "inception_v3",
        "--weights",
        "none",
        "--output",
        out,
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "75",
        "--validation-split",
        "0.25",
    ]
    assert cli.main([*args[:-2], "--epochs", "0"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err
    end_epoch = runs.Run.end_epoch

    def ctrl_c_after_the_first_epoch(run, *args):
        end_epoch(run, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.Run, "end_epoch", ctrl_c_after_the_first_epoch)
    assert cli.main(args) == 130
    printed, said = capsys.readouterr()
    assert printed == ""  # progress and the story go to stderr
    lines = said.splitlines()
    assert lines[0] == "2 classes: blue, red"
    assert lines[1].startswith("images: 14 train, 4 validation; 2 unreadable files skipped: ")
    assert lines[2] == (
        "phase 1: new head, frozen base, 1 epoch at learning rate 0.001; "
        "phase 2: unfreezing from Mixed_7a, 1 epoch at learning rate 0.0001"
    )
    assert lines[-1] == (
        f"interrupted: 1 of 2 epochs are saved in {out}; rerun the same command to resume from epoch 2"
    )
    assert "Traceback" not in said
    monkeypatch.setattr(runs.Run, "end_epoch", end_epoch)
    assert cli.main(args) == 0
    printed, said = capsys.readouterr()
    assert "resuming from epoch 2 of 2 (phase 2)" in said.splitlines()
    assert re.search(
        r"^phase 2: unfreezing from Mixed_7a \(\d+ layers with weights\), 1 epoch at learning rate 0.0001$",
        said,
        re.M,
    )
    for name in ("best.keras", "history.csv", "history.json", "curves.png"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "history.json")) as f:
        summary = json.load(f)
    assert len(summary["history"]["val_top1"]) == 2  # one frozen epoch, one fine-tuning epoch
    assert "val_top5" not in summary["history"]  # 2 classes: top-5 means nothing
    assert summary["best"] == max(summary["history"]["val_top1"])
    best_epoch = summary["history"]["val_top1"].index(summary["best"]) + 1
    best = os.path.join(out, "best.keras")
    assert printed == f"best validation top-1 {summary['best']:.2%} (epoch {best_epoch}); model: {best}\n"
    model = keras.saving.load_model(best)
    assert export.class_names(model) == ["blue", "red"]  # the class names travel with the model
    photo = str(folder / "red" / "0.jpg")
    assert cli.main(["predict", photo, "--model", best, "--top", "2"]) == 0
    assert sorted(line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]) == ["blue", "red"]


@pytest.mark.parametrize(
    ("command", "function", "setting", "option"),
    [
        ("finetune", (finetune, "finetune"), "fine_tune_learning_rate", "--fine-tune-learning-rate"),
        ("train", (training, "train_network"), "recipe.learning_rate", "--learning-rate"),
    ],
)
def test_cli_says_a_diverged_run_in_one_line_and_fails(
    folder, tmp_path, capsys, monkeypatch, command, function, setting, option
):
    what = "loss became nan in epoch 2 of 3 (phase 2, learning rate 1000); best.keras is unchanged (epoch 1)"

    def diverge(*args, **kwargs):
        raise runs.DivergedError(what, setting, 2)

    monkeypatch.setattr(*function, diverge)
    assert cli.main([command, "--data", str(folder), "--output", str(tmp_path / "out")]) == 1
    printed, said = capsys.readouterr()
    assert printed == ""
    assert said == f"\nstopped: {what}. Lower {option} and rerun: the run resumes from epoch 2.\n"


def _cifar_folder(root, classes: list[str], per_class: int):
    import tarfile

    with tarfile.open(CIFAR) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile()
            and m.name.split("/")[-2] in classes
            and int(m.name.rsplit("/", 1)[1].split(".")[0]) < per_class
        ]
        tar.extractall(root, members=members, filter="data")
    return root / "train"


@pytest.mark.skipif(not os.path.exists(CIFAR), reason="../shared/datasets/cifar10 not present")
@pytest.mark.slow
def test_short_finetune_on_cifar10_beats_chance(tmp_path):
    """No ImageNet weights can be had here, so the base is pretrained on five CIFAR-10
    classes first; fine-tuning then transfers it to the five others."""
    # BatchNorm statistics at slim's 0.9997 would stay near their start in 200 steps, and the
    # frozen base uses them: 0.99 lets the short pretraining leave usable statistics.
    small = {"width": 0.5, "depths": (1, 2, 1), "bn_momentum": 0.99}
    keras.utils.set_random_seed(0)
    source = data.image_folder(
        str(_cifar_folder(tmp_path / "a", ["airplane", "automobile", "bird", "cat", "deer"], 400))
    )
    base = ki.InceptionResNetV1(include_top=False, pooling="avg", input_shape=(75, 75, 3), **small)
    head = keras.layers.Dense(5, activation="softmax")(base.output)
    pretrain = keras.Model(base.input, head)
    pretrain.compile(keras.optimizers.Adam(2e-3), "categorical_crossentropy")
    pretrain.fit(data.pipeline(source, 32, True, 75, seed=0), epochs=3, verbose=0)
    base.save_weights(str(tmp_path / "base.weights.h5"))

    target = _cifar_folder(tmp_path / "b", ["dog", "frog", "horse", "ship", "truck"], 120)
    summary = finetune.finetune(
        str(target),
        "inception_resnet_v1",
        weights=str(tmp_path / "base.weights.h5"),
        output_dir=str(tmp_path / "out"),
        epochs=4,
        learning_rate=3e-3,
        batch_size=32,
        image_size=75,
        validation_split=0.2,
        verbose=0,
        model_kwargs=small,
    )
    best = max(summary["history"]["val_top1"])
    print(f"fine-tune on 480 CIFAR-10 images of 5 new classes: validation top-1 {best:.3f} (chance 0.2)")
    assert best > 0.30  # 1.5x chance; measured 0.39


def test_crop_schemes():
    landscape = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
    for scheme, count in ((1, 1), (12, 12), (144, 144)):
        views = evaluation.crops(landscape, scheme, size=75)
        assert views.shape == (count, 75, 75, 3)
        assert float(tf.reduce_min(views)) >= -1.0 and float(tf.reduce_max(views)) <= 1.0
    views = evaluation.crops(landscape, 12, size=75).numpy()
    np.testing.assert_allclose(views[6:], views[:6, :, ::-1], atol=1e-6)  # the mirrors
    portrait = np.transpose(landscape, (1, 0, 2))
    assert evaluation.crops(portrait, 144, size=75).shape == (144, 75, 75, 3)
    with pytest.raises(ValueError, match="crop scheme"):
        evaluation.crops(landscape, 10)


def _fixed_model(classes: int, answer: int, size: int = 75) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Dense(classes, kernel_initializer="zeros", bias_initializer="zeros")(x)
    model = keras.Model(inputs, keras.layers.Activation("softmax")(x))
    model.layers[-2].bias.assign(np.eye(classes, dtype="float32")[answer] * 5.0)
    return model


def test_evaluate_errors_ensembles_and_confusion():
    images = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 80, 80, 3), np.uint8), np.array([0, 0, 1, 2], np.int64))
    )
    names = ["a", "b", "c"]
    result = evaluation.evaluate([_fixed_model(3, 0)], images, names, scheme=1, size=75)
    assert (result.images, result.top1_error) == (4, 50.0)
    assert result.top5_error == 0.0
    assert result.confused[0] in (("b", "a", 1), ("c", "a", 1))
    ensemble = evaluation.evaluate(
        [_fixed_model(3, 1), _fixed_model(3, 1), _fixed_model(3, 2)], images, names, 12, 75
    )
    assert ensemble.top1_error == 75.0  # averaged softmax picks class 1 for every image
    slim_style = evaluation.evaluate(
        [_fixed_model(4, 3)], images, names, 1, 75
    )  # 1001-style: column 0 dropped
    assert slim_style.top1_error == 75.0
    with pytest.raises(ValueError, match="has 7 outputs, the data 3 classes"):
        evaluation.evaluate([_fixed_model(7, 3)], images, names, 1, 75)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_job(tmp_path, bn: str) -> tuple[dict, dict, dict]:
    job = os.path.join(HERE, "multiworker_job.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(
            subprocess.Popen(
                [sys.executable, job, str(tmp_path / f"{bn}_w{index}.npz"), bn],
                env={**env, "TF_CONFIG": tf_config},
            )
        )
    for w in workers:
        assert w.wait(timeout=300) == 0
    subprocess.run(
        [sys.executable, job, str(tmp_path / f"{bn}_single.npz"), bn, "--single"],
        env=env,
        check=True,
        timeout=300,
    )
    return tuple(dict(np.load(tmp_path / f"{bn}_{n}.npz")) for n in ("w0", "w1", "single"))


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a if k.startswith("arr_"))


@pytest.mark.slow
def test_two_workers_agree_and_equal_one_process(tmp_path):
    w0, w1, single = _run_job(tmp_path, "inference")
    print(f"workers differ by {_max_diff(w0, w1):.1e}, from one process by {_max_diff(w0, single):.1e}")
    assert _max_diff(w0, w1) == 0.0
    assert _max_diff(w0, single) <= 1e-5
    np.testing.assert_allclose(w0["losses"], single["losses"], rtol=1e-5)
    assert w0["losses"][-1] != w0["losses"][0]  # it trained


@pytest.mark.slow
def test_two_workers_with_synchronized_batchnorm_stay_identical(tmp_path):
    w0, w1, single = _run_job(tmp_path, "sync")
    print(
        f"sync BN: workers differ by {_max_diff(w0, w1):.1e}, from one process by {_max_diff(w0, single):.1e}"
    )
    assert _max_diff(w0, w1) == 0.0
    assert w0["losses"][0] == pytest.approx(single["losses"][0], rel=1e-5)  # global batch statistics


def test_cli_train_writes_a_model_of_the_data_and_its_history(folder, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "train")
    recomputed = []  # --no-remat: the stem's activations are kept, not recomputed
    monkeypatch.setattr(remat, "recompute", lambda segment: recomputed.append(segment) or segment)
    assert (
        cli.main(
            [
                "train",
                "--data",
                str(folder),
                "--model",
                "inception_resnet_v1",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--image-size",
                "75",
                "--width",
                "0.25",
                "--depths",
                "1",
                "1",
                "1",
                "--output",
                out,
                "--no-remat",
            ]
        )
        == 0
    )
    assert recomputed == []
    printed, said = capsys.readouterr()
    assert printed == f"wrote {os.path.join(out, 'final.keras')}\n"
    assert said.splitlines()[:2] == [
        "2 classes: blue, red; 18 training images",
        "training inception_resnet_v1 from scratch: 1 epoch of 4 steps (batch 4) at learning rate 0.045",
    ]
    model = keras.saving.load_model(os.path.join(out, "final.keras"))
    assert model.output_shape == (None, 2) and model.input_shape == (
        None,
        75,
        75,
        3,
    )  # the folder's 2 classes
    with open(os.path.join(out, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0]
    assert np.isfinite(float(rows[0]["loss"]))


def test_cli_evaluate_single_crops_and_ensembles(folder, tmp_path, capsys):
    path = str(tmp_path / "m.keras")
    _tiny_model(classes=2).save(path)
    assert cli.main(["evaluate", "--data", str(folder), "--models", path, path, "--crops", "1", "12"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| 1 |") or line.startswith("| 12 |")]
    assert len(rows) == 2 and all("| 18 |" in row for row in rows)  # 18 readable images, 2 skipped
    assert "most confused" in printed
