"""What a ``weights=`` value is, resolved once and checked before any layer is built.

A published tag (``"imagenet"``), a ``.keras`` or ``.weights.h5`` file, a slim checkpoint
(V1 file or V2 prefix) or an official ``.tar.gz`` archive. Nothing is read here:
:func:`keras_inception.weights.loading.load` reads and loads what :func:`resolve` named.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

from keras_inception.core import registry
from keras_inception.weights import checkpoint

KERAS_SUFFIXES = (".weights.h5", ".keras")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
KINDS = ("pretrained", "keras", "weights_h5", "checkpoint", "archive")


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """A checked ``weights=`` value.

    Attributes:
        kind: one of :data:`KINDS`.
        value: the tag, or the path (a checkpoint's prefix).
        family: the network the weights are for, where the value says it
            (a tag's family; ``None`` for files until they are read).
    """

    kind: str
    value: str
    family: str | None = None

    @property
    def is_slim(self) -> bool:
        """Slim variables (a tag, a checkpoint or an archive), loaded by name."""
        return self.kind in ("pretrained", "checkpoint", "archive")


def resolve(value, family: str | None = None) -> WeightsSource:
    """What ``value`` is, checked without reading it: a tag of ``family``, or an existing file.

    Raises:
        ValueError: an unknown tag, or a tag ``family`` has not published.
        FileNotFoundError: a path that does not exist (naming what was looked for).
    """
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"weights must be None, a tag or a path, got {value!r}")
    tags = registry.pretrained_tags(family)
    if path in registry.pretrained_tags():
        if family is None:
            raise ValueError(
                f"weights={path!r} is a tag: say which model (one of {sorted(registry.FAMILIES)})"
            )
        registry.pretrained_config(family, path)  # raises, listing the family's tags
        return WeightsSource("pretrained", path, family)
    if path.endswith(KERAS_SUFFIXES):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {path}")
        return WeightsSource("keras" if path.endswith(".keras") else "weights_h5", path, family)
    if path.endswith(ARCHIVE_SUFFIXES):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"archive not found: {path}")
        return WeightsSource("archive", path, family)
    if os.path.isfile(path) or os.path.isfile(f"{path}.index") or path.endswith((".index", ".meta")):
        return WeightsSource("checkpoint", checkpoint.checkpoint_prefix(path), family)
    if os.sep in path or path.endswith(".ckpt") or os.path.exists(path):
        raise FileNotFoundError(
            f"no weights at {path} (neither a .keras / .weights.h5 file, an archive, "
            f"a V1 checkpoint nor a V2 prefix with {path}.index)"
        )
    raise ValueError(
        f"weights must be None, one of {tags or registry.pretrained_tags()} or a path to a .keras / "
        f".weights.h5 file, a slim checkpoint or archive, got {path!r}"
    )


def check_keras_file(path: str) -> None:
    """Refuse, in one line, a ``.keras`` / ``.weights.h5`` path that is not such a file.

    Keras reports an empty or truncated ``.keras`` as "File not found", and an empty
    ``.weights.h5`` with a raw h5py traceback.
    """
    import h5py  # a dependency of Keras

    if path.endswith(".keras"):
        fits, what = zipfile.is_zipfile(path), "a .keras file (a zip archive)"
    else:
        fits, what = h5py.is_hdf5(path), "a .weights.h5 file (HDF5)"
    if not fits:
        raise ValueError(
            f"{path} is not {what}: it is empty, truncated or of another format; "
            "save or download it again"
        )
