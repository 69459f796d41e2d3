"""KerasHub presets: the networks as a ``keras_hub`` Backbone and ImageClassifier.

Only this module imports ``keras_hub`` (``pip install keras-hub``); importing it
registers the classes, so ``keras_hub.models.ImageClassifier.from_preset(folder)``
finds them::

    import keras_hub
    import keras_inception as ki
    import keras_inception.deploy.hub as kih

    kih.save_preset(ki.InceptionV4(weights="imagenet"), "inception_v4_imagenet", "inception_v4")
    classifier = keras_hub.models.ImageClassifier.from_preset("inception_v4_imagenet")
    classifier = keras_hub.models.ImageClassifier.from_preset("inception_v4_imagenet", num_classes=5)
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import keras_hub

from keras_inception import models
from keras_inception.core import registry
from keras_inception.models.base import all_layers
from keras_inception.nn.layers import (
    SLIM_BN_MOMENTUM,
    ClassifierOutput,
    end_points,
    keras_name,
    output_layers,
)

PACKAGE = "keras_inception"


@keras.saving.register_keras_serializable(package=PACKAGE)
class InceptionBackbone(keras_hub.models.Backbone):
    """A network without its head (``include_top=False``): images in [-1, 1] to its final
    feature map ``[batch, h, w, channels]``. The config is the family and the builder's
    arguments, so a preset rebuilds it; slim's end points are in :attr:`end_points`."""

    def __init__(
        self,
        family: str = "inception_v4",
        image_shape: Sequence[int | None] = (None, None, 3),
        width: float = 1.0,
        depths: Sequence[int] | None = None,
        bn_momentum: float = SLIM_BN_MOMENTUM,
        scales: Sequence[float] | None = None,
        dtype=None,
        **kwargs,
    ):
        depths = tuple(depths or registry.family(family).depths)
        builder_kwargs = {"width": width, "depths": depths, "bn_momentum": bn_momentum}
        if scales is not None:  # the Inception-ResNets' residual scales
            builder_kwargs["scales"] = tuple(scales)
        net = models.get(family)(include_top=False, input_shape=tuple(image_shape), **builder_kwargs)
        kwargs.setdefault("name", family)
        super().__init__(inputs=net.input, outputs=net.output, dtype=dtype, **kwargs)
        self.family, self.image_shape, self.width = family, tuple(image_shape), width
        self.depths, self.bn_momentum, self.scales = depths, bn_momentum, builder_kwargs.get("scales")

    @property
    def end_points(self) -> dict:
        """slim's end points, read from the graph (:func:`keras_inception.end_points`)."""
        return end_points(self)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "family": self.family,
            "image_shape": list(self.image_shape),
            "width": self.width,
            "depths": list(self.depths),
            "bn_momentum": self.bn_momentum,
            "scales": None if self.scales is None else list(self.scales),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class InceptionImageConverter(keras_hub.layers.ImageConverter):
    """Resizes (cropping to a square) and maps [0, 255] to slim's [-1, 1] (``x / 127.5 - 1``).

    Not slim's evaluation crop (central 87.5%): for that, feed
    :func:`keras_inception.input.preprocessing.eval_transform` outputs with ``preprocessor=None``.
    """

    backbone_cls = InceptionBackbone

    def __init__(self, image_size=(299, 299), scale=1 / 127.5, offset=-1.0, **kwargs):
        super().__init__(image_size=image_size, scale=scale, offset=offset, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class InceptionImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """The classifier's preprocessing: an :class:`InceptionImageConverter`."""

    backbone_cls = InceptionBackbone
    image_converter_cls = InceptionImageConverter


@keras.saving.register_keras_serializable(package=PACKAGE)
class InceptionImageClassifier(keras_hub.models.ImageClassifier):
    """KerasHub's image classifier (global average pool, dropout, dense) on an
    :class:`InceptionBackbone`: our networks' own head.

    Keep KerasHub's default ``activation=None`` (logits; softmax gives our models'
    ``Predictions``): ``ImageClassifier`` compiles itself before it records
    ``activation``, so with ``"softmax"`` its default loss would take the
    probabilities for logits.
    """

    backbone_cls = InceptionBackbone
    preprocessor_cls = InceptionImageClassifierPreprocessor


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    layers = {layer.name: layer for layer in all_layers(source)}
    for layer in all_layers(target):
        if not layer.weights:
            continue
        if layer.name not in layers:
            raise ValueError(
                f"the model has no layer {layer.name!r}: is it a {target.name} of these width and depths?"
            )
        values = layers[layer.name].get_weights()
        shapes = [tuple(v.shape) for v in layer.weights]
        if [v.shape for v in values] != shapes:
            raise ValueError(
                f"layer {layer.name!r}: the model's weights have shapes {[v.shape for v in values]}, "
                f"the backbone's {shapes} (another width?)"
            )
        layer.set_weights(values)


def _head(model: keras.Model, family: registry.Family) -> tuple[keras.layers.Layer, float] | None:
    """The classifier layer of ``model`` and its dropout rate; ``None`` for a model without a
    head. Found by their slim names: a classifier output without them is refused, never taken
    for a backbone (nor a head for one without dropout)."""
    found = {layer.name: layer for layer in all_layers(model)}
    # a fine-tuned Inception-v3 has a dense head where slim's has a 1x1 convolution
    names = list(dict.fromkeys([keras_name(family.logits_scope), keras_name(registry.DENSE_LOGITS_SCOPE)]))
    logits = next((found[name] for name in names if name in found), None)
    if logits is None:
        if any(isinstance(layer, ClassifierOutput) for layer in output_layers(model)):
            raise ValueError(
                f"{model.name} has a classifier output but no classifier layer named "
                f"{' or '.join(map(repr, names))}: is it a {family.name}?"
            )
        return None
    dropout = found.get(keras_name(registry.HEAD_DROPOUT_SCOPE))
    if dropout is None:
        raise ValueError(
            f"{model.name}'s classifier {logits.name!r} has no dropout layer "
            f"{keras_name(registry.HEAD_DROPOUT_SCOPE)!r} before it (build it with dropout_rate=0.0 for none)"
        )
    return logits, float(dropout.rate)


def save_preset(
    model: keras.Model | str,
    preset_dir: str,
    family: str,
    image_size: int | None = None,
    **builder_kwargs,
) -> InceptionImageClassifier | InceptionBackbone:
    """Write a KerasHub preset folder from one of our models (or a ``.keras`` file).

    ``family`` and ``builder_kwargs`` (``width``, ``depths``, ``bn_momentum``, ``scales``) must be
    those the model was built with. A model with its classifier (``include_top=True``, or
    a fine-tuned one) gives a full :class:`InceptionImageClassifier` preset holding that
    classifier (it outputs logits); one without gives a backbone preset (load it with
    ``num_classes=``). The image converter resizes to ``image_size`` (default: the model's
    input side, else the family's 299). Returns what was saved.
    """
    if isinstance(model, str):
        model = keras.saving.load_model(model, compile=False)
    spec = registry.family(family)
    side = model.input_shape[1] if image_size is None else image_size
    side = side or spec.default_size
    head = _head(model, spec)
    backbone = InceptionBackbone(family, **builder_kwargs)
    _copy_weights(model, backbone)
    preprocessor = InceptionImageClassifierPreprocessor(InceptionImageConverter(image_size=(side, side)))
    if head is None:
        backbone.save_to_preset(preset_dir)
        preprocessor.save_to_preset(preset_dir)
        return backbone
    logits, dropout = head
    kernel, bias = logits.get_weights()
    classifier = InceptionImageClassifier(backbone, bias.shape[0], preprocessor, dropout=dropout)
    classifier.output_dense.set_weights([kernel.reshape(kernel.shape[-2:]), bias])  # 1x1 conv -> dense
    classifier.save_to_preset(preset_dir)
    return classifier


__all__ = [
    "InceptionBackbone",
    "InceptionImageClassifier",
    "InceptionImageClassifierPreprocessor",
    "InceptionImageConverter",
    "save_preset",
]
