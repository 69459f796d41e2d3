"""The one build path every network goes through: validation, inputs, heads, weights.

A family module supplies its :class:`Spec` and a ``body(conv, x)`` that returns the
final feature map and the tensor the auxiliary head reads; :func:`build` does the
rest the keras.applications way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras
from keras import layers

from keras_inception.layers import SLIM_BN_MOMENTUM, ConvBN, keras_name

MIN_SIZE = 75
POOLINGS = (None, "avg", "max")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What differs between families outside their bodies: names of the heads.

    Attributes:
        name: registry and default model name, e.g. ``"inception_v4"``.
        slim_scope: the checkpoint's top-level scope (``"InceptionV4"``), or ``None``
            when slim has no such network.
        logits: scope of the classifier layer.
        aux_conv: scope of the aux head's 768-filter convolution.
        aux_logits: scope of the aux classifier layer.
        conv_logits: classifiers are 1x1 convolutions (Inception-v3) rather than
            fully connected layers.
    """

    name: str
    slim_scope: str | None
    logits: str = "Logits/Logits"
    aux_conv: str = "AuxLogits/Conv2d_2a_5x5"
    aux_logits: str = "AuxLogits/Logits"
    conv_logits: bool = False
    default_size: int = 299


Body = Callable[[ConvBN, keras.KerasTensor], tuple[keras.KerasTensor, keras.KerasTensor]]


def build(
    spec: Spec,
    body: Body,
    *,
    include_top: bool,
    weights,
    input_tensor,
    input_shape,
    pooling: str | None,
    classes: int,
    classifier_activation,
    name: str | None,
    aux_logits: bool,
    dropout_rate: float,
    bn_momentum: float = SLIM_BN_MOMENTUM,
    width: float = 1.0,
) -> keras.Model:
    """Validate the arguments, build ``body`` with its heads, load ``weights``."""
    from keras_inception import weights as weights_lib  # weights imports the model registry

    validate(
        spec,
        include_top=include_top,
        weights=weights,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        aux_logits=aux_logits,
        dropout_rate=dropout_rate,
        width=width,
    )
    inputs = _inputs(input_tensor, input_shape, include_top, spec.default_size)
    conv = ConvBN(bn_momentum=bn_momentum, width=width)
    x, aux_source = body(conv, inputs)

    if include_top:
        outputs = [_main_head(spec, x, classes, dropout_rate, classifier_activation)]
        if aux_logits:
            outputs.append(_aux_head(spec, conv, aux_source, classes, classifier_activation))
        outputs = outputs if aux_logits else outputs[0]
    elif pooling == "avg":
        outputs = layers.GlobalAveragePooling2D(name="global_pool")(x)
    elif pooling == "max":
        outputs = layers.GlobalMaxPooling2D(name="global_pool")(x)
    else:
        outputs = x

    model_inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else inputs
    model = keras.Model(model_inputs, outputs, name=name or spec.name)
    if weights is not None:
        weights_lib.load(model, weights, spec)
    return model


def validate(
    spec: Spec,
    *,
    include_top: bool,
    weights,
    pooling,
    classes: int,
    classifier_activation,
    aux_logits: bool,
    dropout_rate: float,
    width: float,
) -> None:
    """Raise ``ValueError`` naming what is allowed for every argument that is not."""
    from keras_inception import weights as weights_lib

    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "keras_inception models are channels_last only; "
            f"keras.config.image_data_format() is {keras.config.image_data_format()!r}"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive integer, got {classes!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    if aux_logits and not include_top:
        raise ValueError("aux_logits=True needs include_top=True: the aux head is a classifier")
    if weights is None:
        return
    pretrained = weights_lib.is_pretrained_name(weights)
    if isinstance(weights, str) and not pretrained and not weights_lib.looks_like_path(weights):
        raise ValueError(
            f"weights must be None, one of {weights_lib.pretrained_names(spec.name)} or a path "
            f"to a .weights.h5 / .keras file or a slim checkpoint, got {weights!r}"
        )
    if pretrained:
        if weights not in weights_lib.pretrained_names(spec.name):
            raise ValueError(
                f"{spec.name} has no {weights!r} weights; available: "
                f"{weights_lib.pretrained_names(spec.name) or 'none (build with weights=None)'}"
            )
        if include_top and classes not in (1000, 1001):
            raise ValueError(
                f"with weights={weights!r} and include_top=True, classes must be 1000 "
                f"(ImageNet) or 1001 (slim's background class first), got {classes}"
            )
        if include_top and classifier_activation not in (None, "softmax"):
            raise ValueError(
                "with pretrained weights, classifier_activation must be None or 'softmax', "
                f"got {classifier_activation!r}"
            )
        if width != 1.0:
            raise ValueError(f"pretrained weights exist only for width=1.0, got width={width}")


def _inputs(input_tensor, input_shape, include_top: bool, default_size: int):
    """The model input, checked: rank 4, 3 channels, spatial size at least 75."""
    if input_tensor is not None:
        if not keras.backend.is_keras_tensor(input_tensor):
            input_tensor = keras.Input(tensor=input_tensor)
        shape = tuple(input_tensor.shape)
        if len(shape) != 4:
            raise ValueError(f"input_tensor must have rank 4 (batch, height, width, 3), got shape {shape}")
        _check_shape(shape[1:])
        return input_tensor
    if input_shape is None:
        input_shape = (default_size, default_size, 3) if include_top else (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape}")
    _check_shape(input_shape)
    return keras.Input(shape=input_shape, name="image")


def _check_shape(shape: Sequence) -> None:
    height, width, channels = shape
    if channels != 3:
        raise ValueError(f"input must have 3 (RGB) channels, got shape {tuple(shape)}")
    for side in (height, width):
        if side is not None and side < MIN_SIZE:
            raise ValueError(f"input height and width must be at least {MIN_SIZE}, got shape {tuple(shape)}")


def _classifier(x, classes: int, scope: str, conv_logits: bool):
    """slim's logits layer: fully connected, or (Inception-v3) a 1x1 conv on a 1x1 map."""
    if not conv_logits:
        return layers.Dense(classes, name=keras_name(scope))(x)
    x = layers.Conv2D(classes, 1, name=keras_name(scope))(x)
    return layers.Flatten(name=keras_name(f"{scope.split('/')[0]}/SpatialSqueeze"))(x)


def _output(x, activation, prefix: str):
    """The model output, float32 under mixed precision, named ``Predictions`` or ``Logits``."""
    name = f"{prefix}Predictions" if activation is not None else f"{prefix}Logits"
    return layers.Activation(activation or "linear", dtype="float32", name=name)(x)


def _main_head(spec: Spec, x, classes: int, dropout_rate: float, activation):
    x = layers.GlobalAveragePooling2D(keepdims=spec.conv_logits, name="global_pool")(x)
    x = layers.Dropout(dropout_rate, name="Logits.Dropout_1b")(x)
    return _output(_classifier(x, classes, spec.logits, spec.conv_logits), activation, "")


def _aux_head(spec: Spec, conv: ConvBN, x, classes: int, activation):
    """avg-pool 5x5/3 -> 1x1 conv 128 -> conv 768 over the whole map -> logits."""
    size = tuple(x.shape[1:3])
    if None in size or min(size) < 5:
        raise ValueError(
            "aux_logits=True needs a fixed input size whose 17x17 stage is at least 5x5 "
            f"(e.g. 299x299); this input gives {size}"
        )
    x = layers.AveragePooling2D(5, strides=3, padding="valid", name="AuxLogits.AvgPool_1a_5x5")(x)
    x = conv(x, 128, 1, "AuxLogits/Conv2d_1b_1x1")
    x = conv(x, 768, tuple(x.shape[1:3]), spec.aux_conv, padding="valid")
    if not spec.conv_logits:
        x = layers.Flatten(name="AuxLogits.Flatten")(x)
    return _output(_classifier(x, classes, spec.aux_logits, spec.conv_logits), activation, "Aux")


def multiply_adds(model: keras.Model) -> int:
    """Multiply-accumulates of one image through the convolutions and dense layers."""
    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += h * w * kh * kw * c_in * c_out
        elif isinstance(layer, layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return int(total)


def end_points(model: keras.Model) -> dict[str, keras.KerasTensor]:
    """The model's slim end points, in network order: ``{"Mixed_5b": tensor, ...}``.

    End points are the top-level slim scopes: stem convolutions (their ReLU output),
    pools, ``Mixed_*`` blocks, ``PreAuxLogits``, ``global_pool``, and the heads'
    ``Logits`` / ``AuxLogits`` (pre-activation) and ``Predictions``.
    """
    names = {layer.name for layer in model.layers}
    points: dict[str, keras.KerasTensor] = {}
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, keras.layers.InputLayer) or f"{name}.Relu" in names:
            continue
        if name.endswith(".Relu"):
            name = name.removesuffix(".Relu")
        head = name.split(".")[0]
        if head in ("Logits", "AuxLogits") and "." in name and "Dropout" not in name:
            name = head  # the last layer of a head's scope holds its logits
        if "." not in name:
            points[name] = layer.output
    return points


def feature_extractor(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """A model sharing ``model``'s layers whose outputs are the named end points."""
    points = end_points(model)
    unknown = [n for n in names if n not in points]
    if unknown:
        raise ValueError(f"unknown end points {unknown}; this model has {list(points)}")
    return keras.Model(model.inputs, [points[n] for n in names], name=f"{model.name}_features")
