"""The units every network is made of: slim's conv unit, pools, the residual scale-sum.

TF-slim builds every convolution as conv -> BatchNorm (no gamma, epsilon 0.001) ->
ReLU under an ``arg_scope`` and records its end points in a dict as it goes.
:class:`Builder` plays both roles for one network being built: ``b.conv(x, 96, 3,
"Mixed_5b/Branch_1/Conv2d_0b_3x3")`` adds three Keras layers named after the slim
scope (``/`` written ``-``, which Keras allows; see :func:`keras_name`), and
``b.add("Mixed_5b", x)`` records an end point, stopping the build at
``final_endpoint``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import re

import keras
from keras import layers, ops

SLIM_BN_EPSILON = 0.001
SLIM_BN_MOMENTUM = 0.9997


SEPARATOR = "-"  # Keras forbids "/" in names, PyTorch "." in parameter names; slim names have no "-"


def keras_name(scope: str) -> str:
    """The Keras layer name for a slim scope: ``Mixed_5b/Branch_0`` -> ``Mixed_5b-Branch_0``."""
    return scope.replace("/", SEPARATOR)


def slim_scope(name: str) -> str:
    """The inverse of :func:`keras_name`."""
    return name.replace(SEPARATOR, "/")


class FinalEndPoint(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by :meth:`Builder.add` at ``final_endpoint``: the build stops there."""

    def __init__(self, name: str, tensor):
        super().__init__(name)
        self.tensor = tensor


@keras.saving.register_keras_serializable(package="keras_inception")
class SlimVarianceScaling(keras.initializers.Initializer):
    """TF1 slim's ``variance_scaling_initializer()``: truncated normal,
    stddev ``sqrt(1.3 * factor / fan_in)``.

    (Keras's ``VarianceScaling`` corrects the truncation with 1 / 0.8796 instead of
    slim's factor 1.3: a 0.6% smaller variance.)
    """

    def __init__(self, factor: float = 2.0, seed=None):
        self.factor, self.seed = factor, seed
        self._generator = keras.random.SeedGenerator(seed)

    def __call__(self, shape, dtype=None):
        fan_in = math.prod(shape[:-1]) or 1
        stddev = math.sqrt(1.3 * self.factor / fan_in)
        return keras.random.truncated_normal(shape, stddev=stddev, dtype=dtype, seed=self._generator)

    def get_config(self) -> dict:
        return {"factor": self.factor, "seed": self.seed}


@dataclasses.dataclass
class Builder:
    """slim's ``arg_scope`` and ``end_points`` for one network being built.

    Attributes:
        bn_momentum: BatchNorm moving-average decay (slim: 0.9997).
        width: channel multiplier applied to every ``filters`` (slim's
            ``depth_multiplier``); 1.0 builds the published networks.
        min_depth: the fewest channels a scaled convolution keeps.
        final_endpoint: stop building at this end point (``None``: build it all).
        kernel_initializer: initial convolution kernels (slim's, per family).
        dilation_rate: the atrous rate of :meth:`conv` (slim's ``rate``; set by :meth:`rate`).
        end_points: the end points recorded so far, in network order.
    """

    bn_momentum: float = SLIM_BN_MOMENTUM
    width: float = 1.0
    min_depth: int = 8
    kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform"
    final_endpoint: str | None = None
    dilation_rate: int = 1
    end_points: dict = dataclasses.field(default_factory=dict)

    def depth(self, filters: int) -> int:
        """``filters`` scaled by :attr:`width`, as slim's ``depth_multiplier`` does."""
        if self.width == 1.0:
            return filters
        return max(int(filters * self.width), self.min_depth)

    def conv(
        self,
        x,
        filters: int,
        kernel_size: int | tuple[int, int],
        scope: str,
        strides: int = 1,
        padding: str = "same",
        activation: str | None = "relu",
        kernel_initializer=None,
    ):
        """``Conv2D`` (no bias) ``scope``, :class:`BatchNorm` (no gamma) ``scope/BatchNorm``,
        ReLU ``scope/Relu`` (slim scopes; Keras names by :func:`keras_name`)."""
        name = keras_name(scope)
        x = Conv2D(
            self.depth(filters),
            kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=self.dilation_rate,
            use_bias=False,
            kernel_initializer=kernel_initializer or self.initializer(),
            name=name,
        )(x)
        x = BatchNorm(
            momentum=self.bn_momentum,
            epsilon=SLIM_BN_EPSILON,
            scale=False,
            name=keras_name(f"{scope}/BatchNorm"),
        )(x)
        if activation is None:
            return x
        return layers.Activation(activation, name=keras_name(f"{scope}/Relu"))(x)

    @contextlib.contextmanager
    def rate(self, rate: int):
        """slim's ``arg_scope([conv2d], rate=rate)``: the :meth:`conv` layers built inside are atrous."""
        outer, self.dilation_rate = self.dilation_rate, rate
        try:
            yield
        finally:
            self.dilation_rate = outer

    def initializer(self):
        """A fresh instance of :attr:`kernel_initializer` (Keras warns on a reused seeded one)."""
        if self.kernel_initializer == "slim_variance_scaling":
            return SlimVarianceScaling()
        return keras.initializers.get(self.kernel_initializer)

    def add(self, name: str, x):
        """Record ``x`` as end point ``name``; stop the build if it is the final one."""
        self.end_points[name] = x
        if name == self.final_endpoint:
            raise FinalEndPoint(name, x)
        return x


def max_pool(x, scope: str, strides: int = 2, padding: str = "valid"):
    """slim's ``max_pool2d(x, [3, 3])`` named after its scope."""
    return layers.MaxPooling2D(3, strides=strides, padding=padding, name=keras_name(scope))(x)


def avg_pool(x, scope: str):
    """The 3x3 stride-1 SAME average pool of the Inception blocks.

    TensorFlow's SAME average pooling divides by the number of real (unpadded)
    cells, as slim's does; Keras on the TensorFlow backend keeps that behaviour.
    """
    return layers.AveragePooling2D(3, strides=1, padding="same", name=keras_name(scope))(x)


def concat(branches: list, scope: str):
    """Channel concatenation in slim's branch order, named after the block."""
    return layers.Concatenate(axis=-1, name=keras_name(scope))(branches)


_RECOMPUTING = contextvars.ContextVar("keras_inception_recomputing", default=False)


@contextlib.contextmanager
def recomputation():
    """Layers called inside it are recomputed for a backward pass: BatchNorm keeps its statistics."""
    token = _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(token)


VARIANCE_UPDATES = ("biased", "unbiased")


@keras.saving.register_keras_serializable(package="keras_inception")
class BatchNorm(layers.BatchNormalization):
    """Keras's ``BatchNormalization``, whose training step runs TensorFlow's fused kernel, as
    slim's ``batch_norm(fused=True)`` and Keras 2 did, and whose moving variance can take
    the batch's unbiased variance, as slim's does.

    Keras 3 normalises a batch in separate float32 ops (cast, moments, normalise), so under
    ``mixed_bfloat16`` every activation is kept twice for the backward pass, once in float32.
    ``FusedBatchNormV3`` takes the bfloat16 activations as they are (statistics in float32)
    and has its own gradient: Inception-ResNet-v2's bfloat16 step at batch 32 went from 3.1
    to 5.5 images/s and its peak RSS from 7.7 to 6.7 GB on a 2-core Xeon. Inference, other
    backends, float64, masks, renorm and synchronised statistics take Keras's ops; the
    variables are Keras's. Recomputed for a backward pass (inside :func:`recomputation`),
    it leaves the moving statistics alone: they had this batch.

    ``variance_update``: which batch variance the moving variance takes, on every path and
    backend. ``"biased"`` (the default, Keras's: the variance the batch is normalised with)
    or ``"unbiased"`` (times ``n / (n - 1)``, ``n`` the values per channel: slim's fused
    batch norm, which slim's arg scopes build, TF1's and PyTorch's);
    :class:`~keras_inception.train.training.Recipe` sets it when a model is compiled. Renorm
    keeps Keras's own update (``"biased"``).
    """

    def __init__(self, *args, variance_update: str = "biased", **kwargs):
        super().__init__(*args, **kwargs)
        self.variance_update = variance_update

    @property
    def variance_update(self) -> str:
        return self._variance_update

    @variance_update.setter
    def variance_update(self, value: str) -> None:
        if value not in VARIANCE_UPDATES:
            raise ValueError(f"variance_update must be one of {VARIANCE_UPDATES}, got {value!r}")
        if value == "unbiased" and self.renorm:
            raise ValueError(f"{self.name}: renorm keeps its own statistics; use variance_update='biased'")
        self._variance_update = value

    def get_config(self) -> dict:
        return {**super().get_config(), "variance_update": self.variance_update}

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        if mask is None and len(inputs.shape) == 4 and self.fused_training():
            return self._fused_step(inputs)
        if self.variance_update == "biased":
            return super().call(inputs, training=training, mask=mask)
        return self._unbiased_step(inputs, mask)

    def fused_training(self) -> bool:
        """Whether a training call (4-D, no mask) runs the fused kernel."""
        return (
            self.trainable
            and not self.renorm
            and not self.synchronized
            and keras.backend.backend() == "tensorflow"
            and self.axis in (-1, 3)
            and self.compute_dtype in ("float16", "bfloat16", "float32")  # the kernel's types
        )

    def _fused_step(self, inputs):
        from keras_inception.nn import layers_tf

        channels = inputs.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        y, mean, variance = layers_tf.fused_batch_norm(inputs, gamma, beta, self.epsilon, self.compute_dtype)
        if _RECOMPUTING.get():  # the backward pass runs this batch again: its statistics are in
            return y
        if self.variance_update == "biased":  # the kernel returns the unbiased variance
            n = ops.cast(ops.size(inputs) // channels, "float32")
            variance = variance * (n - 1.0) / n
        self._update_moving(mean, variance)
        return y

    def _unbiased_step(self, inputs, mask):
        """Keras's training step in Keras ops, the moving variance taking the unbiased variance."""
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, mask)
        n = self._count(x, mask)
        self._update_moving(mean, variance * n / ops.maximum(n - 1.0, 1.0))  # n = 1: 0, as TF's kernel
        outputs = ops.batch_normalization(
            x,
            mean,
            variance,
            axis=self.axis,
            offset=ops.cast(self.beta, x.dtype) if self.center else None,
            scale=ops.cast(self.gamma, x.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def _count(self, x, mask):
        """How many values each channel's statistics were computed from (the global batch's
        when synchronised)."""
        if mask is not None:
            return ops.sum(ops.cast(mask, x.dtype))
        channels = math.prod(x.shape[a] for a in range(len(x.shape)) if a not in self._reduction_axes)
        n = ops.cast(ops.size(x) // channels, x.dtype)
        if self.synchronized and keras.backend.backend() == "tensorflow":  # its moments all-reduce too
            from keras_inception.nn import layers_tf

            n = layers_tf.replica_sum(n)
        return n

    def _update_moving(self, mean, variance) -> None:
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + ops.cast(batch, moving.dtype) * (1.0 - self.momentum))


@keras.saving.register_keras_serializable(package="keras_inception")
class Conv2D(layers.Conv2D):
    """Keras's ``Conv2D``, whose 1x1 convolutions run as a matmul in a TensorFlow training step.

    A 1x1 stride-1 convolution is a matmul over the ``(batch * height * width, channels)``
    rows. The forward pass and the input gradient run as fast either way, but the kernel
    gradient, ``x^T @ dy``, runs 1.2-2.7x faster through TensorFlow's matmul than through its
    ``Conv2DBackpropFilter`` (oneDNN 3.7, bfloat16, Inception-ResNet-v2's shapes at batch 32).
    Inference keeps the convolution, which grappler fuses with its bias and ReLU.
    """

    def call(self, inputs, training=None):
        if not (training and self._pointwise() and keras.backend.backend() == "tensorflow"):
            return super().call(inputs)
        from keras_inception.nn import layers_tf

        bias = self.bias if self.use_bias else None
        outputs = layers_tf.pointwise_conv(inputs, self.kernel, bias, self.filters)
        return outputs if self.activation is None else self.activation(outputs)

    def _pointwise(self) -> bool:
        return (
            tuple(self.kernel_size) == (1, 1)
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
        )


@keras.saving.register_keras_serializable(package="keras_inception")
class ScaleSum(layers.Layer):
    """``shortcut + scale * residual``: the scaled residual sum of Inception-ResNet.

    A registered layer (no ``Lambda``), so a saved ``.keras`` model reloads without
    ``custom_objects``. The constant is made a tensor of the residual's dtype directly (no
    float32 on the way: the same float64 sum on every backend), so the layer is exact under
    ``mixed_float16`` / ``mixed_bfloat16`` policies.
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        self.scale = float(scale)

    def call(self, inputs):
        shortcut, residual = inputs
        if self.scale == 1.0:  # as the inference form has it (the scale folded into the projection)
            return shortcut + residual
        return shortcut + ops.convert_to_tensor(self.scale, residual.dtype) * residual

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="keras_inception")
class AdaptedInput(layers.Identity):
    """Marks a network whose first convolution was adapted from ``pretrained_channels``
    pretrained input channels to the model's own (timm's rule, see
    :func:`keras_inception.weights.checkpoint.adapt_input_kernel`); passes its input through."""

    def __init__(self, channels: int, pretrained_channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.pretrained_channels = int(channels), int(pretrained_channels)

    def get_config(self) -> dict:
        ratio = f"{self.pretrained_channels}/{self.channels}"
        return {
            **super().get_config(),
            "channels": self.channels,
            "pretrained_channels": self.pretrained_channels,
            "rule": "sum" if self.channels == 1 else f"repeat, scaled {ratio}",
        }

    @classmethod
    def from_config(cls, config: dict):
        config.pop("rule", None)
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_inception")
class ClassifierOutput(layers.Activation):
    """A classifier's output: its activation, in float32 under mixed precision, and the
    names of its classes, saved with the model (``.keras``) and read by every export."""

    def __init__(self, activation="softmax", class_names=None, **kwargs):
        if keras.config.dtype_policy().name.startswith("mixed_"):
            kwargs.setdefault("dtype", "float32")
        super().__init__(activation, **kwargs)
        self.class_names = None if class_names is None else [str(name) for name in class_names]

    def get_config(self) -> dict:
        return {**super().get_config(), "class_names": self.class_names}


def output_layers(model: keras.Model) -> list[layers.Layer]:
    """The layers that produce ``model``'s outputs, in output order."""
    names = getattr(model, "output_names", None)
    return [model.get_layer(name) for name in names] if names else [model.layers[-1]]


# slim's end point names: the scopes whose output slim records (``end_points[scope] = net``)
END_POINT = re.compile(
    r"(Conv2d|MaxPool)_\d+[a-z]_\d+x\d+|Mixed_\d+[a-z]|PreAuxLogits|global_pool|(Aux)?(Logits|Predictions)"
)


def end_points(model: keras.Model) -> dict:
    """slim's end points of a model built here, read from its graph: ``{"Mixed_5b": tensor, ...}``.

    Each is the output of the last layer (in the graph's order) of a top-level scope named
    as slim names its end points (:data:`END_POINT`): stem convolutions (their ReLU) and
    pools, ``Mixed_*`` blocks, ``PreAuxLogits``, the heads' ``global_pool``, ``Logits`` /
    ``AuxLogits`` (pre-activation) and ``Predictions``; the aux head's last, as they are
    built. They follow the layer names, so a model loaded from a ``.keras`` file, a folded
    one (:func:`~keras_inception.deploy.folding.fold_batchnorm`) or a KerasHub backbone has them
    too.
    """
    points = {}
    for layer in model.layers:
        if isinstance(layer, ClassifierOutput) and layer.activation is keras.activations.linear:
            continue  # the logits output: the Logits end point's values again, under its name
        scope = layer.name.split(SEPARATOR)[0]
        if END_POINT.fullmatch(scope):
            points[scope] = layer.output
    if not points:
        raise ValueError(
            f"model {model.name!r} has no end points: none of its layers is named after a slim "
            "end point (Conv2d_1a_3x3, Mixed_5b, Logits...); build it with keras_inception"
        )
    return {name: points[name] for name in sorted(points, key=lambda name: name.startswith("Aux"))}
