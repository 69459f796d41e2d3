"""The one build path every network goes through: validation, inputs, heads, weights.

A family module supplies a ``body(b, x)`` that builds the network with a
:class:`~keras_inception.nn.layers.Builder`, records its end points, and returns the
final feature map and the tensor the auxiliary head reads; :func:`build` checks
every argument before any layer exists, then does the rest the keras.applications
way.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator, Sequence

import keras
from keras import layers

from keras_inception.core import registry
from keras_inception.nn.layers import (
    SLIM_BN_MOMENTUM,
    AdaptedInput,
    Builder,
    ClassifierOutput,
    FinalEndPoint,
    end_points,
    keras_name,
)
from keras_inception.weights import loading, sources

POOLINGS = (None, "avg", "max")

Body = Callable[[Builder, keras.KerasTensor], tuple[keras.KerasTensor, keras.KerasTensor]]


def build(
    family: registry.Family,
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
    final_endpoint: str | None = None,
) -> keras.Model:
    """Validate the arguments, build ``body`` with its heads, load ``weights``.

    The model's :attr:`end_points` holds slim's end points as they were recorded;
    :func:`~keras_inception.nn.layers.end_points` reads the same from the graph (saved files too).
    """
    validate(
        family,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        aux_logits=aux_logits,
        dropout_rate=dropout_rate,
        width=width,
        final_endpoint=final_endpoint,
    )
    source = None if weights is None else sources.resolve(weights, family.name)
    if source is not None:
        validate_weights(
            source, include_top=include_top, classes=classes,
            classifier_activation=classifier_activation, width=width,
        )  # fmt: skip
    inputs = _inputs(input_tensor, input_shape, include_top, family)
    if aux_logits and None in tuple(inputs.shape[1:3]):
        raise ValueError("aux_logits=True needs a fixed input size (e.g. input_shape=(299, 299, 3))")
    b = Builder(
        bn_momentum=bn_momentum,
        width=width,
        final_endpoint=final_endpoint,
        kernel_initializer=family.conv_initializer,
    )
    x = inputs
    if source is not None and source.is_slim and inputs.shape[-1] != 3:
        x = AdaptedInput(inputs.shape[-1], name="AdaptedInput")(x)  # slim's RGB kernels, adapted on load
    try:
        x, aux_source = body(b, x)
    except FinalEndPoint as stop:
        x, aux_source = stop.tensor, None
    else:
        if final_endpoint is not None:
            raise ValueError(
                f"final_endpoint {final_endpoint!r} is not an end point of {family.name}; "
                f"its end points: {list(b.end_points)}"
            )

    if include_top:
        outputs = [_main_head(b, family, x, classes, dropout_rate, classifier_activation)]
        if aux_logits:
            outputs.append(_aux_head(b, family, aux_source, classes, classifier_activation))
        outputs = outputs if aux_logits else outputs[0]
    elif pooling is not None:
        pool = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
        outputs = b.add("global_pool", pool(name="global_pool")(x))
    else:
        outputs = x

    model_inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else inputs
    model = keras.Model(model_inputs, outputs, name=name or family.name)
    model.end_points = dict(b.end_points)
    if source is not None:
        loading.load(model, source, family.name, truncated=final_endpoint is not None)
    return model


def validate(
    family: registry.Family,
    *,
    include_top: bool,
    pooling,
    classes: int,
    aux_logits: bool,
    dropout_rate: float,
    width: float,
    final_endpoint: str | None = None,
) -> None:
    """Raise naming what is allowed for every argument that is not (``weights``: :func:`validate_weights`)."""
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
    if final_endpoint is not None and include_top:
        raise ValueError("final_endpoint needs include_top=False: the classifier reads the last end point")


def validate_weights(
    source: sources.WeightsSource, *, include_top: bool, classes: int, classifier_activation, width: float
) -> None:
    """Raise naming the argument that does not fit the resolved ``weights=``."""
    weights = source.value
    if source.kind in ("keras", "weights_h5"):
        sources.check_keras_file(source.value)
    if source.is_slim and width != 1.0:
        raise ValueError(f"slim checkpoints exist only for width=1.0, got width={width}")
    if source.kind == "pretrained" and include_top:
        if classes not in (1000, 1001):
            raise ValueError(
                f"with weights={weights!r} and include_top=True, classes must be 1000 "
                f"(ImageNet) or 1001 (slim's background class first), got {classes}"
            )
        if classifier_activation not in (None, "softmax"):
            raise ValueError(
                "with pretrained weights, classifier_activation must be None or 'softmax', "
                f"got {classifier_activation!r}"
            )


def check_depths(depths: Sequence[int]) -> tuple[int, int, int]:
    """Three positive block counts (35x35, 17x17, 8x8 stages)."""
    depths = tuple(depths)
    if len(depths) != 3 or not all(isinstance(d, int) and 1 <= d <= 25 for d in depths):
        raise ValueError(f"depths must be three block counts from 1 to 25, got {depths!r}")
    return depths


def stage_names(depths: Sequence[int]) -> tuple[list[str], list[str], list[str]]:
    """slim's scopes of the blocks after each grid's first: ``Mixed_5b``.., ``Mixed_6b``.., ``Mixed_7b``.."""
    counts = check_depths(depths)
    return tuple(  # type: ignore[return-value]
        [f"Mixed_{grid}{letter}" for letter in string.ascii_lowercase[1 : n + 1]]
        for grid, n in zip("567", counts, strict=True)
    )


def _inputs(input_tensor, input_shape, include_top: bool, family: registry.Family):
    """The model input, checked: rank 4, known channels, spatial size at least ``min_size``."""
    if input_tensor is not None:
        if not keras.backend.is_keras_tensor(input_tensor):
            input_tensor = keras.Input(tensor=input_tensor)
        shape = tuple(input_tensor.shape)
        if len(shape) != 4:
            raise ValueError(
                f"input_tensor must have rank 4 (batch, height, width, channels), got shape {shape}"
            )
        _check_shape(shape[1:], family.min_size)
        return input_tensor
    if input_shape is None:
        size = family.default_size
        input_shape = (size, size, 3) if include_top else (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    _check_shape(input_shape, family.min_size)
    return keras.Input(shape=input_shape, name="image")


def _check_shape(shape: Sequence, min_size: int) -> None:
    height, width, channels = shape
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"input channels must be a known positive number, got shape {tuple(shape)}")
    for side in (height, width):
        if side is not None and side < min_size:
            raise ValueError(f"input height and width must be at least {min_size}, got shape {tuple(shape)}")


def _classifier(x, classes: int, scope: str, conv_logits: bool, initializer):
    """slim's logits layer: fully connected, or (Inception-v3) a 1x1 conv on a 1x1 map."""
    if not conv_logits:
        return layers.Dense(classes, kernel_initializer=initializer, name=keras_name(scope))(x)
    x = layers.Conv2D(classes, 1, kernel_initializer=initializer, name=keras_name(scope))(x)
    return layers.Flatten(name=keras_name(f"{scope.split('/')[0]}/SpatialSqueeze"))(x)


def _output(b: Builder, logits, activation, prefix: str):
    """The model output, float32 under mixed precision, named ``Predictions`` or ``Logits``.

    Records the end points ``{prefix}Logits`` and ``{prefix}Predictions``.
    """
    b.end_points[f"{prefix}Logits"] = logits
    name = f"{prefix}Predictions" if activation is not None else f"{prefix}Logits"
    out = ClassifierOutput(activation or "linear", name=name)(logits)
    if activation is not None:
        b.end_points[name] = out
    return out


def _main_head(b: Builder, family: registry.Family, x, classes: int, dropout_rate: float, activation):
    x = layers.GlobalAveragePooling2D(keepdims=family.conv_logits, name="global_pool")(x)
    b.end_points["global_pool"] = x
    x = layers.Dropout(dropout_rate, name=keras_name(registry.HEAD_DROPOUT_SCOPE))(x)
    initializer = b.initializer() if family.conv_logits else "glorot_uniform"
    logits = _classifier(x, classes, family.logits_scope, family.conv_logits, initializer)
    return _output(b, logits, activation, "")


def reduced_kernel_size(size: tuple[int, int], kernel: tuple[int, int]) -> tuple[int, int]:
    """slim's ``_reduced_kernel_size_for_small_input``: ``kernel``, no larger than the map ``size``."""
    return min(size[0], kernel[0]), min(size[1], kernel[1])


def _aux_head(b: Builder, family: registry.Family, x, classes: int, activation):
    """avg-pool 5x5/3 -> 1x1 conv 128 -> conv 768 -> logits.

    The 768-filter convolution spans the whole map, or (Inception-v3) slim's reduced
    kernel, named after it: ``Conv2d_2a_5x5`` at 299x299, ``Conv2d_2a_1x1`` at 139x139.
    Where that leaves a map larger than 1x1 (Inception-v3 from 347x347 up, where slim's
    spatial squeeze refuses it), the map is averaged, as timm's aux head does.
    """
    size = tuple(x.shape[1:3])
    if None in size or min(size) < 5:
        raise ValueError(
            "aux_logits=True needs a fixed input size whose 17x17 stage is at least 5x5 "
            f"(e.g. 299x299); this input gives {size}"
        )
    x = layers.AveragePooling2D(5, strides=3, padding="valid", name=keras_name("AuxLogits/AvgPool_1a_5x5"))(x)
    conv_init, logits_init = (
        [keras.initializers.TruncatedNormal(stddev=s) for s in family.aux_stddevs]
        if family.aux_stddevs
        else [None, b.initializer() if family.conv_logits else "glorot_uniform"]
    )
    x = b.conv(x, 128, 1, "AuxLogits/Conv2d_1b_1x1")
    kernel = tuple(x.shape[1:3])
    if family.aux_kernel is not None:
        kernel = reduced_kernel_size(kernel, (family.aux_kernel, family.aux_kernel))
    scope = family.aux_conv_scope.format(*kernel)
    x = b.conv(x, 768, kernel, scope, padding="valid", kernel_initializer=conv_init)
    if tuple(x.shape[1:3]) != (1, 1):
        x = layers.GlobalAveragePooling2D(keepdims=True, name=keras_name("AuxLogits/global_pool"))(x)
    if not family.conv_logits:
        x = layers.Flatten(name=keras_name("AuxLogits/Flatten"))(x)
    logits = _classifier(x, classes, family.aux_logits_scope, family.conv_logits, logits_init)
    return _output(b, logits, activation, "Aux")


def all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer, nested models' included (no private Keras API)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer


def multiply_adds(model: keras.Model) -> int:
    """Multiply-accumulates of one image through the convolutions and dense layers.

    Pooling, BatchNorm, activations and sums are not counted. The model needs a fixed
    input size.
    """
    if None in tuple(model.input_shape[1:3]):
        raise ValueError(f"multiply_adds needs a fixed input size; {model.name} takes {model.input_shape}")
    total = 0
    for layer in all_layers(model):
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += h * w * kh * kw * c_in * c_out
        elif isinstance(layer, layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return int(total)


def feature_extractor(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """A model sharing ``model``'s layers whose outputs are the named end points."""
    points = end_points(model)
    unknown = [n for n in names if n not in points]
    if unknown:
        raise ValueError(f"unknown end points {unknown}; this model has {list(points)}")
    return keras.Model(model.inputs, [points[n] for n in names], name=f"{model.name}_features")
