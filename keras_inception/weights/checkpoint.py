"""Read TF-slim checkpoints (V1 single files and V2 index + data) into Keras models.

Strict by design: every Keras weight must find its slim variable by name and shape,
and every slim variable must be used or be a head the model was built without (or,
for a model built up to a ``final_endpoint``, a block after it); anything else raises
an error that names the variable. Never a partial load.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

from keras_inception.core import registry
from keras_inception.nn.layers import SEPARATOR
from keras_inception.weights import slim, tf_checkpoint
from keras_inception.weights.tf_checkpoint import CheckpointError

HEAD_SCOPES = ("Logits", "AuxLogits")


@dataclasses.dataclass
class LoadReport:
    """What a load used: counts for the CLI and the tests."""

    family: str
    assigned: int  # Keras weights set
    used: int  # slim variables read
    skipped_heads: list[str]  # slim head variables the model was built without
    ema: bool  # ExponentialMovingAverage shadows were taken
    ignored: list[str] = dataclasses.field(default_factory=list)  # global_step, optimizer slots
    skipped_tail: list[str] = dataclasses.field(default_factory=list)  # blocks after final_endpoint
    total: int = 0  # slim variables in the checkpoint, after taking moving averages


def checkpoint_prefix(path: str) -> str:
    """The prefix TensorFlow reads: ``model.ckpt`` for V1 files and V2 ``.index`` + ``.data``."""
    path = os.fspath(path)
    for suffix in (".index", ".meta"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    if ".data-" in os.path.basename(path):
        path = path.split(".data-")[0]
    if not (os.path.isfile(path) or os.path.isfile(f"{path}.index")):
        raise FileNotFoundError(f"no TF checkpoint at {path} (neither a V1 file nor {path}.index)")
    return path


def read(path: str) -> dict[str, np.ndarray]:
    """Every variable of a V1 or V2 checkpoint, as numpy arrays keyed by name (no TensorFlow:
    :mod:`keras_inception.weights.tf_checkpoint`); a missing, short or corrupt file raises a
    one-line :class:`CheckpointError` naming it."""
    return tf_checkpoint.read(checkpoint_prefix(path))


def family_of(variables: dict[str, np.ndarray]) -> str:
    """The registered model name whose slim scope the checkpoint's variables are under."""
    scopes = {name.split("/", 1)[0] for name in variables if not slim.is_trainer_state(name)}
    known = [f.name for scope in sorted(scopes) if (f := registry.family_for_scope(scope))]
    if len(known) != 1:
        slim_scopes = sorted(f.slim_scope for f in registry.FAMILIES.values() if f.slim_scope)
        raise CheckpointError(
            f"not a checkpoint of one of {slim_scopes}: top-level scopes {sorted(scopes)[:5]}"
        )
    return known[0]


def check_family(variables: dict[str, np.ndarray], family: str) -> None:
    """Refuse the variables of another family than ``family`` (the one place this is checked)."""
    held = family_of(variables)
    if held != family:
        raise CheckpointError(f"checkpoint holds {held}, the model is {family}")


def resolve_ema(variables: dict[str, np.ndarray], use_ema: bool = True) -> tuple[dict, bool]:
    """Drop ``global_step`` and optimizer slots; replace each variable by its moving-average
    shadow if asked."""
    shadows = {
        name.removesuffix(slim.EMA_SUFFIX): value
        for name, value in variables.items()
        if name.endswith(slim.EMA_SUFFIX)
    }
    plain = {
        name: value
        for name, value in variables.items()
        if not name.endswith(slim.EMA_SUFFIX) and not slim.is_trainer_state(name)
    }
    orphans = sorted(set(shadows) - set(plain))
    if orphans:
        raise CheckpointError(f"moving average without its variable: {orphans[0]}{slim.EMA_SUFFIX}")
    if use_ema and shadows:
        plain.update(shadows)
    return plain, bool(use_ema and shadows)


def _fit_classes(value: np.ndarray, target: tuple) -> np.ndarray:
    """slim's 1001 classes into a 1000-class layer: drop output 0 (background)."""
    if value.shape[-1] == 1001 and target[-1] == 1000 and value.shape[:-1] == target[:-1]:
        return value[..., 1:]
    return value


FIRST_CONV = "Conv2d_1a_3x3/weights"  # every network's first convolution, the one reading the image


def adapt_input_kernel(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A first-convolution kernel ``(h, w, c, out)`` for ``channels`` inputs, as timm adapts it.

    One channel: the sum over the RGB kernels (a grayscale ``g`` then gives what RGB
    ``[g, g, g]`` gives). More: the kernels repeated to ``channels`` and scaled by
    ``c / channels``, so the response to equal inputs keeps its size.
    """
    if channels == kernel.shape[2]:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeats = -(-channels // kernel.shape[2])
    return np.tile(kernel, (1, 1, repeats, 1))[:, :, :channels] * (kernel.shape[2] / channels)


def assign(
    model: keras.Model,
    variables: dict[str, np.ndarray],
    family: str,
    use_ema: bool = True,
    truncated: bool = False,
) -> LoadReport:
    """Set every weight of ``model`` from slim ``variables`` (strictly; see module doc).

    ``truncated``: the model was built up to a ``final_endpoint``, so the variables of
    blocks it lacks altogether (``Mixed_7a``, ``Repeat_2``, ...) are skipped, not refused.
    """
    scope = registry.family(family).slim_scope
    check_family(variables, family)
    ignored = sorted(name for name in variables if slim.is_trainer_state(name))
    variables, ema = resolve_ema(variables, use_ema)
    values = []
    for weight in model.weights:
        name = slim.slim_name(weight.path, scope)
        if name not in variables:
            raise CheckpointError(f"checkpoint has no variable {name} (Keras weight {weight.path})")
        value = _fit_classes(variables[name], tuple(weight.shape))
        if name == f"{scope}/{FIRST_CONV}" and value.ndim == 4 and value.shape[2] != weight.shape[2]:
            value = adapt_input_kernel(value, weight.shape[2])
        if value.shape != tuple(weight.shape):
            raise CheckpointError(
                f"shape mismatch for {name}: checkpoint {tuple(variables[name].shape)}, "
                f"Keras weight {weight.path} {tuple(weight.shape)}"
            )
        values.append((weight, value, name))
    used = {name for _, _, name in values}
    skipped, tail, unknown = [], [], []
    for name in sorted(set(variables) - used):
        block = name.split("/")[1]
        lacks = _model_lacks(model, block)
        (skipped if lacks and block in HEAD_SCOPES else tail if lacks and truncated else unknown).append(name)
    if unknown:
        raise CheckpointError(
            f"checkpoint variable {unknown[0]} has no place in the model ({len(unknown)} unused)"
        )
    for weight, value, _ in values:  # nothing is assigned until everything checked out
        weight.assign(value.astype(weight.dtype))
    return LoadReport(family, len(values), len(used), skipped, ema, ignored, tail, len(variables))


def check_manifest(variables: dict[str, np.ndarray], manifest: dict[str, tuple[int, ...]]) -> None:
    """Every variable of ``manifest`` present with its shape, and nothing else (trainer state
    and moving averages set aside; a moving average without its variable refused)."""
    variables, _ = resolve_ema(variables, use_ema=False)
    for name, shape in manifest.items():
        if name not in variables:
            raise CheckpointError(f"checkpoint has no variable {name}")
        if tuple(variables[name].shape) != shape:
            raise CheckpointError(
                f"shape mismatch for {name}: checkpoint {tuple(variables[name].shape)}, expected {shape}"
            )
    unknown = sorted(set(variables) - set(manifest))
    if unknown:
        raise CheckpointError(
            f"checkpoint variable {unknown[0]} has no place in the model ({len(unknown)} unused)"
        )


def _model_lacks(model: keras.Model, scope: str) -> bool:
    return not any(layer.name.split(SEPARATOR)[0] == scope and layer.weights for layer in model.layers)
