"""TF-slim variable names <-> Keras weights: a pure function of the name, never of order.

``InceptionV4/Mixed_5b/Branch_1/Conv2d_0b_3x3/BatchNorm/moving_mean`` is the
``moving_mean`` of the Keras layer ``Mixed_5b-Branch_1-Conv2d_0b_3x3-BatchNorm``;
``.../weights`` and ``.../biases`` are a layer's ``kernel`` and ``bias``.
"""

from __future__ import annotations

import keras

from keras_inception.nn.layers import keras_name, slim_scope

_BN_VARS = ("beta", "moving_mean", "moving_variance")
_TO_KERAS = {"weights": "kernel", "biases": "bias"}
_TO_SLIM = {v: k for k, v in _TO_KERAS.items()}
EMA_SUFFIX = "/ExponentialMovingAverage"
IGNORED = ("global_step",)
OPTIMIZER_SLOTS = ("/RMSProp", "/RMSProp_1", "/Momentum", "/Adam", "/Adam_1")  # TF1 optimizers' slots
OPTIMIZER_STATE = ("beta1_power", "beta2_power")


def is_trainer_state(name: str) -> bool:
    """A variable of the training run, not of the network: ``global_step``, optimizer slots."""
    return name in IGNORED or name in OPTIMIZER_STATE or name.endswith(OPTIMIZER_SLOTS)


def keras_path(slim_name: str, scope: str) -> str:
    """The Keras variable path (``layer/variable``) of a slim variable name.

    Raises:
        ValueError: the name is outside ``scope`` or not a kind of variable these
            networks have.
    """
    prefix = f"{scope}/"
    if not slim_name.startswith(prefix):
        raise ValueError(f"variable {slim_name!r} is not in the {scope!r} scope")
    layer, var = slim_name[len(prefix) :].rsplit("/", 1)
    if var in _BN_VARS and layer.endswith("/BatchNorm"):
        return f"{keras_name(layer)}/{var}"
    if var in _TO_KERAS:
        return f"{keras_name(layer)}/{_TO_KERAS[var]}"
    raise ValueError(f"variable {slim_name!r} is not a weight, bias or BatchNorm statistic")


def slim_name(variable_path: str, scope: str) -> str:
    """The slim variable name of a Keras variable path; inverse of :func:`keras_path`."""
    layer, var = variable_path.rsplit("/", 1)
    if slim_scope(layer).endswith("/BatchNorm") and var in _BN_VARS:
        return f"{scope}/{slim_scope(layer)}/{var}"
    if var in _TO_SLIM:
        return f"{scope}/{slim_scope(layer)}/{_TO_SLIM[var]}"
    raise ValueError(f"Keras variable {variable_path!r} has no slim counterpart")


def manifest(model: keras.Model, scope: str) -> dict[str, tuple[int, ...]]:
    """``{slim name: shape}`` of every weight of ``model``, as the checkpoint would list it."""
    return {slim_name(v.path, scope): tuple(v.shape) for v in model.weights}
