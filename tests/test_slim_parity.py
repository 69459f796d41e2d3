"""slim's training step, step for step: our ``compile_model`` + ``train_on_batch`` against an
independent TF1 graph built with ``tf.compat.v1`` from the same network and initial weights.

The reference is what slim's ``train_image_classifier.py`` runs: ``RMSPropOptimizer(decay
0.9, momentum 0.9, epsilon 1.0)``, ``softmax_cross_entropy(label_smoothing=0.1)`` for the
logits and, weighted 0.4, the aux logits, the L2 losses ``4e-5 * l2_loss(w)``,
BatchNorm moving averages (decay 0.9997, the batch's variance as slim's non-fused
``batch_norm`` takes it), and ``ExponentialMovingAverage(0.9999, num_updates=global_step)``
over every model variable after each step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_inception as ki
from keras_inception import training

STEPS, BATCH, SIZE, CLASSES = 3, 4, 139, 5


def reduced_network():
    """In float64 on both sides, so that what differs is the algorithm, not round-off."""
    keras.config.set_dtype_policy("float64")
    keras.config.set_floatx("float64")  # the losses too
    keras.utils.set_random_seed(3)
    return ki.InceptionV3(
        weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES, aux_logits=True, width=0.25,
        depths=(1, 1, 1), dropout_rate=0.0, classifier_activation=None,
    )  # fmt: skip


def batches():
    rng = np.random.default_rng(7)
    for _ in range(STEPS):
        x = rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3))
        y = np.eye(CLASSES)[rng.integers(0, CLASSES, BATCH)]
        yield x, y


def tf1_reference(model, initial: dict[str, np.ndarray]):
    """The network rebuilt layer by layer in a TF1 graph, trained as slim trains."""
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        variables = {
            path: v1.Variable(value, name=f"v{i}", trainable="moving" not in path)
            for i, (path, value) in enumerate(initial.items())
        }

        def var(layer, name):
            return variables[next(w.path for w in layer.weights if w.path.endswith(f"/{name}"))]

        images = v1.placeholder(tf.float64, (BATCH, SIZE, SIZE, 3))
        labels = v1.placeholder(tf.float64, (BATCH, CLASSES))
        tensors, bn_updates = {id(model.inputs[0]): images}, []
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            inputs = layer.input if isinstance(layer.input, list) else [layer.input]
            xs = [tensors[id(t)] for t in inputs]
            x = xs[0]
            kind = type(layer).__name__
            if kind == "Conv2D":
                y = tf.nn.conv2d(x, var(layer, "kernel"), layer.strides, layer.padding.upper())
                y = y + var(layer, "bias") if layer.use_bias else y
            elif kind in ("BatchNormalization", "BatchNorm"):  # ours is Keras's, fused in training
                mean, variance = tf.nn.moments(x, [0, 1, 2])
                y = (x - mean) * tf.math.rsqrt(variance + layer.epsilon) + var(layer, "beta")
                for name, value in (("moving_mean", mean), ("moving_variance", variance)):
                    moving = var(layer, name)
                    bn_updates.append(moving.assign_sub((1 - layer.momentum) * (moving - value)))
            elif kind in ("Activation", "ClassifierOutput"):
                y = {"relu": tf.nn.relu, "linear": tf.identity}[layer.activation.__name__](x)
            elif kind == "MaxPooling2D":
                y = tf.nn.max_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
            elif kind == "AveragePooling2D":
                y = tf.nn.avg_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
            elif kind == "Concatenate":
                y = tf.concat(xs, axis=-1)
            elif kind == "ScaleSum":
                y = xs[0] + layer.scale * xs[1]
            elif kind == "GlobalAveragePooling2D":
                y = tf.reduce_mean(x, [1, 2], keepdims=layer.keepdims)
            elif kind in ("Dropout", "Identity"):
                y = x
            elif kind == "Flatten":
                y = tf.reshape(x, (BATCH, -1))
            elif kind == "Dense":
                y = tf.matmul(x, var(layer, "kernel")) + var(layer, "bias")
            else:
                raise NotImplementedError(kind)
            tensors[id(layer.output)] = y
        logits, aux_logits = (tensors[id(t)] for t in model.outputs)
        loss = v1.losses.softmax_cross_entropy(labels, logits, label_smoothing=0.1)
        loss += v1.losses.softmax_cross_entropy(labels, aux_logits, label_smoothing=0.1, weights=0.4)
        kernels = [v for path, v in variables.items() if path.endswith("/kernel")]
        loss += tf.add_n([4e-5 * tf.nn.l2_loss(k) for k in kernels])
        global_step = v1.train.get_or_create_global_step()
        optimizer = v1.train.RMSPropOptimizer(0.045, decay=0.9, momentum=0.9, epsilon=1.0)
        train_op = optimizer.minimize(loss, global_step=global_step)
        ema = v1.train.ExponentialMovingAverage(0.9999, num_updates=global_step)
        with tf.control_dependencies([train_op, *bn_updates]):
            step = ema.apply(list(variables.values()))
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            losses = [session.run([step, loss], {images: x, labels: y})[1] for x, y in batches()]
            weights = {path: session.run(v) for path, v in variables.items()}
            averages = {path: session.run(ema.average(v)) for path, v in variables.items()}
    return losses, weights, averages


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.slow  # about 2 minutes on 2 cores (float64 convolutions have no oneDNN kernels)
def test_training_step_equals_slims_tf1_graph():
    try:
        check_against_tf1()
    finally:
        keras.config.set_floatx("float32")


def check_against_tf1():
    model = reduced_network()
    initial = {w.path: w.numpy() for w in model.weights}
    reference_losses, reference, reference_averages = tf1_reference(model, initial)

    training.compile_model(
        model, training.Recipe.slim(), steps_per_epoch=1000, top_k_metrics=False
    )  # float32 only
    losses = [float(model.train_on_batch(x, [y, y])[0]) for x, y in batches()]
    ours = {w.path: w.numpy() for w in model.weights}
    optimizer = model.optimizer
    averages = {
        v.path: a.numpy() for v, a in zip(optimizer.averaged_variables, optimizer.averages, strict=True)
    }

    np.testing.assert_allclose(losses, reference_losses, rtol=1e-4)
    worst = max(relative(ours[p], reference[p]) for p in ours)
    worst_average = max(relative(averages[p], reference_averages[p]) for p in averages)
    moved = max(relative(ours[p], initial[p]) for p in ours)
    print(f"after {STEPS} steps: weights {worst:.2e}, averages {worst_average:.2e} (moved {moved:.2e})")
    assert moved > 1e-2  # it trained
    assert worst <= 1e-4 and worst_average <= 1e-4
    assert set(averages) == set(ours)  # BatchNorm statistics are averaged too
