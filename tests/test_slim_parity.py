"""slim's training step, step for step: our ``compile_model`` + ``train_on_batch`` against an
independent TF1 graph built with ``tf.compat.v1`` from the same network and initial weights.

The reference is what slim's ``train_image_classifier.py`` runs: ``RMSPropOptimizer(decay
0.9, momentum 0.9, epsilon 1.0)``, ``softmax_cross_entropy(label_smoothing=0.1)`` for the
logits and, weighted 0.4, the aux logits, the L2 losses ``4e-5 * l2_loss(w)``, BatchNorm as
slim's arg scope builds it (``fused=None``, so ``tf.compat.v1.nn.fused_batch_norm``, whose
moving variance takes the unbiased batch variance; decay 0.9997), and
``ExponentialMovingAverage(0.9999, num_updates=global_step)`` over every model variable
after each step. At 139x139 the aux head's maps are 1x1: at batch 4, ``n / (n - 1)`` is 4/3.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_inception as ki
from keras_inception.core.precision import full_precision
from keras_inception.train import training

BATCH, SIZE, CLASSES = 4, 139, 5


def reduced_network(dtype: str):
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)  # the losses too
    keras.utils.set_random_seed(3)
    return ki.InceptionV3(
        weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES, aux_logits=True, width=0.25,
        depths=(1, 1, 1), dropout_rate=0.0, classifier_activation=None,
    )  # fmt: skip


@pytest.fixture
def floatx():
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_floatx("float32")


def batches(steps: int, dtype: str):
    rng = np.random.default_rng(7)
    for _ in range(steps):
        x = rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(dtype)
        y = np.eye(CLASSES, dtype=dtype)[rng.integers(0, CLASSES, BATCH)]
        yield x, y


def slim_batch_norm(x, beta, moving_mean, moving_variance, layer):
    """slim's ``batch_norm(fused=True, scale=False)`` in training: ``tf.compat.v1.nn.fused_batch_norm``
    and ``assign_moving_average`` of its mean and variance, the batch's unbiased variance (the
    kernel's Bessel correction ``n / max(n - 1, 1)``). The kernel takes no float64: there its
    computation runs in float64 ops (normalised with the biased variance, as the kernel does)."""
    if x.dtype == tf.float32:
        ones = tf.ones(x.shape[-1:], tf.float32)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, ones, beta, epsilon=layer.epsilon, is_training=True
        )
    else:
        mean, biased = tf.nn.moments(x, [0, 1, 2])
        y = (x - mean) * tf.math.rsqrt(biased + layer.epsilon) + beta
        n = x.shape.num_elements() // x.shape[-1]
        variance = biased * (n / max(n - 1, 1))
    updates = [
        moving.assign_sub((1 - layer.momentum) * (moving - value))
        for moving, value in ((moving_mean, mean), (moving_variance, variance))
    ]
    return y, updates


def tf1_reference(model, initial: dict[str, np.ndarray], steps: int, dtype: str):
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

        images = v1.placeholder(dtype, (BATCH, SIZE, SIZE, 3))
        labels = v1.placeholder(dtype, (BATCH, CLASSES))
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
            elif kind in ("BatchNormalization", "BatchNorm"):
                moving = [var(layer, name) for name in ("moving_mean", "moving_variance")]
                y, updates = slim_batch_norm(x, var(layer, "beta"), *moving, layer)
                bn_updates += updates
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
            feeds = batches(steps, dtype)
            losses = [session.run([step, loss], {images: x, labels: y})[1] for x, y in feeds]
            weights, averages = session.run(  # one call: each one prunes the whole graph anew
                (variables, {path: ema.average(v) for path, v in variables.items()})
            )
    return losses, weights, averages


def train_ours(model, recipe: training.Recipe, steps: int, dtype: str):
    training.compile_model(model, recipe, steps_per_epoch=1000, top_k_metrics=False)
    losses = [float(model.train_on_batch(x, [y, y])[0]) for x, y in batches(steps, dtype)]
    weights = {w.path: w.numpy() for w in model.weights}
    optimizer = model.optimizer
    averages = {
        v.path: a.numpy() for v, a in zip(optimizer.averaged_variables, optimizer.averages, strict=True)
    }
    return losses, weights, averages


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def agreement(ours: dict, reference: dict, initial: dict) -> dict[str, float]:
    """The largest relative difference per kind of variable; for BatchNorm statistics also
    on their step (``value - initial``), which their decay of 0.9997 keeps small."""
    kinds = {"moving_mean": [], "moving_variance": [], "weights": []}
    for path in ours:
        kinds[next((k for k in kinds if path.endswith(f"/{k}")), "weights")].append(path)
    out = {kind: max(relative(ours[p], reference[p]) for p in paths) for kind, paths in kinds.items()}
    for kind in ("moving_mean", "moving_variance"):
        steps = [relative(ours[p] - initial[p], reference[p] - initial[p]) for p in kinds[kind]]
        out[f"{kind} step"] = max(steps)
    return out


def compare(dtype: str, steps: int, moving_variance: str = "unbiased") -> dict[str, float]:
    """Train ours and slim's reference from the same start; their agreement (and the loss's)."""
    model = reduced_network(dtype)
    initial = {w.path: w.numpy() for w in model.weights}
    reference_losses, reference, reference_averages = tf1_reference(model, initial, steps, dtype)
    recipe = training.Recipe.slim(moving_variance=moving_variance)
    losses, ours, averages = train_ours(model, recipe, steps, dtype)
    assert set(averages) == set(ours)  # BatchNorm statistics are averaged too
    out = agreement(ours, reference, initial)
    out["averages"] = max(relative(averages[p], reference_averages[p]) for p in averages)
    out["losses"] = relative(np.array(losses), np.array(reference_losses))
    out["moved"] = max(relative(ours[p], initial[p]) for p in ours if p.endswith("/kernel"))
    print(f"{dtype}, {steps} steps, {moving_variance}: " + ", ".join(f"{k} {v:.1e}" for k, v in out.items()))
    return out


def test_one_step_equals_slims_fused_batch_norm_step_in_float32(floatx):
    """Our fused kernel beside slim's, one step: the moving variances agree as values do in
    float32 (the biased update would be 0.0003 * v / 4 off on the aux head's statistics)."""
    with full_precision():  # TF32 off on a GPU: float32 against float32
        out = compare("float32", 1)
    assert out["moving_variance"] <= 1e-6 and out["moving_mean"] <= 1e-6
    assert out["weights"] <= 1e-4 and out["averages"] <= 1e-4 and out["losses"] <= 1e-5


@pytest.mark.slow  # about 2 minutes on 2 cores (float64 convolutions have no oneDNN kernels)
def test_training_steps_equal_slims_tf1_graph_in_float64(floatx):
    out = compare("float64", 3)
    assert out["moved"] > 1e-2  # it trained
    assert out["losses"] <= 1e-6
    assert max(out[k] for k in ("weights", "moving_mean", "moving_variance", "averages")) <= 1e-5
    assert out["moving_variance step"] <= 1e-4 and out["moving_mean step"] <= 1e-4
    # Keras's biased update: the aux head's variances (1x1 maps, batch 4) take 3/4 of slim's
    biased = compare("float64", 3, "biased")
    assert biased["moving_variance step"] >= 1e-2 and biased["moving_variance"] >= 1e-6
