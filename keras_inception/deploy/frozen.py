"""A model's inference call as a TensorFlow graph whose weights are constants.

    run = frozen_call(fold_batchnorm(model))   # run(images) -> the model's outputs, as tensors

TensorFlow's oneDNN convolutions keep weights in a blocked layout of their own. When a
convolution's filter is a variable, it is reordered into that layout on every call; when it is
a constant, oneDNN reorders it once and keeps it. ``ONEDNN_VERBOSE=1`` on Inception-v3 at
batch 16 shows it: 95 weight reorders per call through the Keras model, none through the
frozen graph. The saving is per call, not per image, so it matters most at small batches.
The frozen call is for inference only: it holds a copy of the weights, and does not see later
changes to the model's variables.

At batch 1 it changes the kernels too. TensorFlow hands oneDNN a batch-1 convolution's variable
filter in its plain layout, which with AVX2 (no AVX-512) only oneDNN's GEMM convolution takes
(im2col and GEMM, ``x64:gemm:jit``); a constant filter may take oneDNN's layout, so the blocked
brgemm kernels run (``brg_conv_fwd:avx2``, ``brgconv_1x1:avx2``: ``ONEDNN_VERBOSE=1``). Under
``ONEDNN_MAX_CPU_ISA=AVX2`` (an Intel Xeon, family 6 model 167) the three networks ran 1.27-1.45x
faster frozen at batch 1 (four runs), 0.98-1.06x at batch 16 (docs/cpu.md). Call it before any Keras
model of the same shapes runs at batch 1 in the process: TensorFlow and oneDNN cache kernels
process-wide, and a frozen call made after the Keras model ran mostly its GEMM kernels.

The graph is frozen on its own (each variable a constant, its reads identities of it) and runs
in a TensorFlow session with one pass of Grappler. To its first output at batch 1 (the Xeon
above, under the cap), Inception-v3 takes 2.0 s against the Keras model's 0.6 s,
Inception-ResNet-v2 4.7-4.9 s against 1.8 s (re-timed with TensorFlow's
``convert_variables_to_constants_v2``: 4.6 s and 12.5 s). So it stays opt-in: for a server
answering one image a call (it pays back after about 60 images), not for ``predict`` on a few
files. Only calls that read their variables freeze; one that writes a variable or passes one to
another op (a loop, a lookup table) is refused.

``towers=2`` splits each batch in two halves that run side by side, each through the frozen graph,
in the session, which then has as many inter-op threads as towers. One stream of ops leaves a core
idle part of the time (between ops, and in ops that run on fewer threads than there are cores); a
second half batch fills those gaps. Under ``ONEDNN_MAX_CPU_ISA=AVX2`` on the 2-core Xeon above,
the three networks ran 1.02-1.09x faster than the folded model at batch 16 (two runs),
Inception-v3 and Inception-ResNet-v2 1.13-1.17x keras.applications; with its AVX-512 kernels,
1.04-1.06x and 1.17-1.19x (docs/cpu.md, "Batch 16 without AVX-512"). A batch that does not divide
evenly runs in towers a row apart; one of fewer images than towers runs whole.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np


def frozen_call(model: keras.Model, batch: int | None = None, towers: int = 1) -> Callable:
    """``model(images, training=False)`` as a graph with its variables turned into constants
    (TensorFlow backend), for inputs of ``batch`` images of the model's input shape (None: any),
    each batch split into ``towers`` parts that run side by side (1: the whole batch at once)."""
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"frozen_call needs the TensorFlow backend, not {keras.backend.backend()!r}")
    if len(model.inputs) != 1:
        raise ValueError(f"frozen_call takes a model of one input, got {len(model.inputs)}")
    if isinstance(towers, bool) or not isinstance(towers, int) or towers < 1:
        raise ValueError(f"towers must be a whole number of at least 1, got {towers!r}")
    spec = tf.TensorSpec((batch, *model.input_shape[1:]), model.inputs[0].dtype)

    def forward(images):
        whole = model(images, training=False)
        if towers == 1:
            return whole
        n = tf.shape(images)[0]  # towers a row apart at most, the larger first
        sizes = (n + tf.range(towers - 1, -1, -1)) // towers
        parts = [model(part, training=False) for part in tf.split(images, sizes, num=towers)]
        return whole, tf.nest.map_structure(lambda *outs: tf.concat(outs, 0), *parts)

    concrete = tf.function(forward).get_concrete_function(spec)
    structure = concrete.structured_outputs if towers == 1 else concrete.structured_outputs[0]
    # The graph runs in a v1 session: towers run concurrently only with an inter-op pool of the
    # session's own (a tf.function's ops share the process's pools). With towers, the graph holds
    # the whole-batch form too, for batches of fewer images than towers (TensorFlow's oneDNN
    # convolutions fail on an empty tower); both share the constants.
    graph_def, graph = _constant_graph(concrete), tf.Graph()
    with graph.as_default():
        feed = tf.compat.v1.placeholder(spec.dtype, spec.shape, name="frozen_call_images")
        outputs = tf.graph_util.import_graph_def(
            graph_def,
            input_map={concrete.inputs[0].name: feed},
            return_elements=[t.name for t in concrete.outputs],
            name="",
        )
    half = len(outputs) // (1 if towers == 1 else 2)  # with towers: (whole, split) outputs
    whole, split = outputs[:half], outputs[half:]
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=towers if towers > 1 else 0)
    rewrite = config.graph_options.rewrite_options  # one pass of Grappler: a second finds nothing
    rewrite.meta_optimizer_iterations = rewrite.ONE  # here, and each copies the constants
    rewrite.memory_optimization = rewrite.NO_MEM_OPT  # (inference: nothing to swap or recompute)
    session = tf.compat.v1.Session(graph=graph, config=config)

    def call(images):
        images = np.asarray(images, spec.dtype.as_numpy_dtype)
        got = session.run(split if towers > 1 and len(images) >= towers else whole, {feed: images})
        return tf.nest.pack_sequence_as(structure, [tf.convert_to_tensor(o) for o in got])

    return call


def _constant_graph(concrete) -> object:
    """``concrete``'s GraphDef with each captured variable turned into a constant of its value now,
    each read of it into an ``Identity`` of that constant (the calls of a variable share it), and
    each captured tensor into a constant: TensorFlow's freezing, on the graph alone."""
    import tensorflow as tf

    captured = {inner.op.name: outer for outer, inner in concrete.graph.captures}
    variables = {name for name, outer in captured.items() if outer.dtype == tf.resource}
    values = {name: outer for name, outer in captured.items() if name not in variables}
    graph_def = concrete.graph.as_graph_def()
    for node in graph_def.node:
        if node.op == "ReadVariableOp" and (handle := node.input[0]) in variables:
            dtype = node.attr["dtype"].type
            if handle not in values:  # read once, however many calls read it
                values[handle] = tf.raw_ops.ReadVariableOp(resource=captured[handle], dtype=dtype)
            node.op = "Identity"
            node.attr.clear()
            node.attr["T"].type = dtype
        elif variables.intersection(name.lstrip("^") for name in node.input):
            raise ValueError(
                f"cannot freeze {node.op} {node.name}: it takes a variable or other resource itself "
                "(frozen_call turns only reads of variables into constants)"
            )
    for node in graph_def.node:
        if node.name in values:
            value = values[node.name]
            node.op = "Const"
            node.attr.clear()
            node.attr["dtype"].type = value.dtype.as_datatype_enum
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.numpy()))
    return graph_def
