"""Loading weights into a built model: the one entry point, :func:`load`, and its :class:`LoadReport`.

``load`` takes what :func:`keras_inception.weights.sources.resolve` named (or slim variables
already read by :func:`read`): a ``.keras`` / ``.weights.h5`` file goes to Keras's
``load_weights``; slim variables (a tag from the zoo, a checkpoint or an archive) are
assigned by name, strictly (:func:`keras_inception.weights.checkpoint.assign`).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import warnings
import zipfile

import keras
import numpy as np

from keras_inception.core import registry
from keras_inception.weights import archive, checkpoint, sources, zoo
from keras_inception.weights.checkpoint import LoadReport


@dataclasses.dataclass(frozen=True)
class SlimVariables:
    """The variables of a slim checkpoint (moving-average shadows included) and their family."""

    family: str
    arrays: dict[str, np.ndarray]


def read(source: sources.WeightsSource) -> SlimVariables:
    """The slim variables of a tag, checkpoint or archive, and the family they belong to."""
    if source.kind == "pretrained":
        return SlimVariables(source.family, zoo.fetch(source.family, source.value))
    if source.kind == "archive":
        with tempfile.TemporaryDirectory() as tmp:
            arrays = checkpoint.read(archive.extract_checkpoint(source.value, tmp))
    elif source.kind == "checkpoint":
        arrays = checkpoint.read(source.value)
    else:
        raise ValueError(f"{source.value} holds Keras weights, not slim variables")
    return SlimVariables(checkpoint.family_of(arrays), arrays)


def load(
    model: keras.Model,
    weights: sources.WeightsSource | SlimVariables,
    family: str,
    use_ema: bool = True,
    truncated: bool = False,
) -> LoadReport:
    """Load ``weights`` (resolved, or slim variables already read) into ``model`` of ``family``.

    Moving-average shadows, where the checkpoint has them, replace the raw variables
    unless ``use_ema=False``. ``truncated``: the model stops at a ``final_endpoint``
    (slim variables of the blocks after it are skipped). Slim variables of another
    family are refused (:func:`keras_inception.weights.checkpoint.check_family`).
    """
    if isinstance(weights, sources.WeightsSource) and not weights.is_slim:
        load_keras_weights(model, weights.value)
        count = len(model.weights)
        return LoadReport(family, count, count, [], ema=False, total=count)
    if registry.family(family).slim_scope is None:
        raise ValueError(f"{family} has no slim checkpoints; use a .weights.h5 or .keras file")
    if isinstance(weights, sources.WeightsSource):
        weights = read(dataclasses.replace(weights, family=family))
    return checkpoint.assign(model, weights.arrays, family, use_ema, truncated)


def load_keras_weights(model: keras.Model, path: str) -> None:
    """``model.load_weights(path)``, or one line saying why the file does not fit ``model``."""
    sources.check_keras_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns once per layer it cannot match
        try:
            model.load_weights(path)
        except (OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"weights={path!r} is damaged ({error}); save or download it again") from None
        except ValueError as error:
            missing = re.search(r"A total of (\d+) objects could not be loaded", str(error))
            what = (
                f"{missing[1]} of its layers have no weights in the file"
                if missing
                else str(error).strip().splitlines()[0]
            )
            raise ValueError(
                f"weights={path!r} does not fit {model.name}: {what}; give weights saved from "
                f"{model.name} built with the same classes and heads"
            ) from None
