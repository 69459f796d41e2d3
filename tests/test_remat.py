"""Rematerialisation: the stem recomputed in the backward pass, the step unchanged."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_inception as ki
from keras_inception.nn.layers import Builder, concat, max_pool
from keras_inception.train import remat, training

recompute = remat.recompute

X = np.random.default_rng(0).uniform(-1, 1, (4, 107, 107, 3)).astype(np.float32)
Y = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]


def small(builder=ki.InceptionV3, seed=0, **kwargs) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return builder(weights=None, input_shape=X.shape[1:], classes=10, width=0.25, **kwargs)


def stem_like(seed=0) -> keras.Model:
    """A small network with slim's stem end points, of the package's conv units."""
    keras.utils.set_random_seed(seed)
    b = Builder()
    inputs = keras.Input((32, 32, 3))
    x = max_pool(b.conv(inputs, 8, 3, "Conv2d_1a_3x3"), "MaxPool_3a_3x3")
    x = max_pool(b.conv(x, 8, 3, "Conv2d_4a_3x3"), "MaxPool_5a_3x3")
    branches = [b.conv(x, 8, 1, f"Mixed_5b/Branch_{i}/Conv2d_0a_1x1") for i in range(2)]
    x = keras.layers.GlobalAveragePooling2D(name="pool")(concat(branches, "Mixed_5b"))
    return keras.Model(inputs, keras.layers.Dense(10, name="Logits")(x))


def traced_step(model: keras.Model, x=X, run=None) -> tuple[tf.Graph, tf.types.experimental.ConcreteFunction]:
    """A gradient step of ``model`` in graph mode, its forward pass ``run`` (default: the plain one)."""
    run = run or (lambda x: model(x, training=True))

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.losses.categorical_crossentropy(y, run(x))
        return tape.gradient(loss, model.trainable_variables)

    concrete = step.get_concrete_function(
        tf.constant(x[:, : model.input_shape[1], : model.input_shape[2]]), tf.constant(Y)
    )
    return concrete.graph, concrete


def kept_for_backward(graph: tf.Graph) -> dict[str, str]:
    """Forward tensors the backward pass reads: name -> the producing op's type.

    The forward pass is every op made before the first gradient op (a recomputed
    segment's ops are made while the gradient is built, after it)."""
    ops = graph.get_operations()
    first_gradient = next(i for i, op in enumerate(ops) if "gradient_tape" in op.name)
    kept = {}
    for op in ops[:first_gradient]:
        for tensor in op.outputs:
            if any("gradient_tape" in consumer.name for consumer in tensor.consumers()):
                kept[tensor.name] = op.type
    return kept


@pytest.mark.parametrize(
    "builder, policy, kwargs",
    [
        (ki.InceptionV4, "float32", {"depths": (1, 1, 1)}),
        (ki.InceptionResNetV2, "mixed_bfloat16", {"depths": (1, 1, 1), "aux_logits": True}),
    ],
    ids=["v4", "irv2-bf16-aux"],
)
def test_a_rematerialized_training_step_equals_the_plain_one(builder, policy, kwargs, monkeypatch):
    """compile_model's default recomputes the stem's two segments; one train_on_batch gives the
    same weights, moving statistics and optimizer slots as without it."""
    keras.config.set_dtype_policy(policy)
    segments = []
    monkeypatch.setattr(remat, "recompute", lambda seg: segments.append(seg.name) or recompute(seg))
    results = []
    for end_points in ((), None):
        model = small(builder, **kwargs)
        training.compile_model(model, training.Recipe.plain(), steps_per_epoch=1, remat=end_points)
        assert ("train_step" in vars(model)) == (end_points is None) and "call" not in vars(model)
        loss = model.train_on_batch(X, [Y, Y] if len(model.outputs) == 2 else Y)
        results.append((loss, [v.numpy() for v in model.weights + model.optimizer.variables]))
    assert len(set(segments)) == 2, segments  # the remat path ran (once per trace)
    (loss, plain), (loss_remat, rematerialized) = results
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    assert len(plain) == len(rematerialized)
    for a, b in zip(plain, rematerialized, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_the_stem_is_recomputed_and_not_kept():
    plain = small()
    graph, _ = traced_step(plain)
    model = small()
    graph_remat, _ = traced_step(model, run=remat.forward(model, ["MaxPool_3a_3x3", "MaxPool_5a_3x3"]))

    def count(g, op_type):
        return sum(op.type == op_type for op in g.get_operations())

    # the stem's 5 BatchNorms run again in the backward pass, their statistics updated once
    assert count(graph_remat, "FusedBatchNormV3") == count(graph, "FusedBatchNormV3") + 5
    assert count(graph_remat, "AssignVariableOp") == count(graph, "AssignVariableOp")

    def stem_relus(kept):
        return [name for name, kind in kept.items() if kind == "Relu" and "Conv2d_2b_3x3" in name]

    assert stem_relus(kept_for_backward(graph)), "the plain step keeps Conv2d_2b_3x3's ReLU"
    assert not stem_relus(kept_for_backward(graph_remat))

    def kept_bytes(g):
        kept = kept_for_backward(g)
        tensors = [t for op in g.get_operations() for t in op.outputs if t.name in kept]
        return sum(np.prod(t.shape.as_list()) * t.dtype.size for t in tensors if t.shape.is_fully_defined())

    assert kept_bytes(graph_remat) < 0.8 * kept_bytes(graph)


def test_the_model_itself_is_unchanged(tmp_path):
    model = stem_like()
    x = X[:, :32, :32]
    before = model.predict(x, verbose=0)
    config = model.get_config()
    remat.rematerialize(model)
    assert "train_step" in vars(model) and "call" not in vars(model)
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    assert model.get_config() == config
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert "train_step" not in vars(reloaded)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), before, rtol=1e-6)
    remat.rematerialize(model, ())
    assert "train_step" not in vars(model)


def test_bad_end_points_and_batchnorms_that_cannot_be_recomputed():
    model = stem_like()
    with pytest.raises(ValueError, match="no layer 'Mixed_9z'"):
        remat.rematerialize(model, ["Mixed_9z"])
    with pytest.raises(ValueError, match="cannot rematerialize up to Mixed_5b-Branch_0"):
        remat.rematerialize(model, ["Mixed_5b-Branch_0-Conv2d_0a_1x1"])  # a branch, not the trunk

    with pytest.raises(TypeError, match="sequence of layer names"):
        remat.rematerialize(model, "MaxPool_3a_3x3")
    remat.rematerialize(model)
    with pytest.raises(ValueError, match="no layer"):
        remat.rematerialize(model, ["Mixed_9z"])
    assert "train_step" in vars(model), "a refused call keeps the earlier rematerialisation"

    keras.config.set_dtype_policy("float64")  # Keras's own BatchNorm path would update twice
    with pytest.raises(ValueError, match="moving statistics again"):
        remat.rematerialize(stem_like(), ["MaxPool_3a_3x3"])
    convolutions = [
        sum(op.type == "Conv2D" for op in traced_step(m, run=run(m))[0].get_operations())
        for m, run in ((stem_like(), lambda m: None), (stem_like(), remat.forward))  # the default: all of it
    ]
    assert convolutions[0] == convolutions[1] > 0


def test_random_layers_are_not_recomputed():
    inputs = keras.Input((8,))
    x = keras.layers.Dropout(0.5, name="drop")(keras.layers.Dense(8, name="d1")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d2")(x))
    with pytest.raises(ValueError, match="drop: it is random"):
        remat.rematerialize(model, ["drop"])


def test_the_default_cuts_only_inside_the_model_and_takes_bools(monkeypatch):
    segments = []
    monkeypatch.setattr(remat, "recompute", lambda seg: segments.append(seg.name) or recompute(seg))
    model = small(include_top=False, final_endpoint="MaxPool_5a_3x3")
    tf.function(remat.forward(model, True))(tf.constant(X))  # MaxPool_5a_3x3 is the output: one segment
    assert segments == [f"{model.name}_up_to_MaxPool_3a_3x3"]
    stem = small(include_top=False, final_endpoint="MaxPool_3a_3x3")
    remat.rematerialize(stem)
    assert "train_step" not in vars(stem)
    remat.rematerialize(model)
    assert "train_step" in vars(model)
    remat.rematerialize(model, False)
    assert "train_step" not in vars(model)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert "train_step" not in vars(remat.rematerialize(Subclassed()))  # no inputs: nothing to cut
