"""Pretrained weights: every ``weights=`` value, resolved once, and the slim model zoo's cache.

:func:`resolve_source` says what a ``weights=`` value (or a CLI source) is, and
checks it before any layer is built: a published tag (``"imagenet"``), a ``.keras``
or ``.weights.h5`` file, a slim checkpoint (V1 file or V2 prefix) or an official
``.tar.gz`` archive. A tag downloads its archive once, verifies it (size,
structure, a pinned sha256, and every variable of the full network against the
checkpoint's manifest), converts it to a ``.npz`` of slim-named arrays and caches
that atomically under the Keras cache directory; later runs load the cache
offline. Set ``KERAS_INCEPTION_WEIGHTS_URL`` to a mirror (``https://...`` or
``file:///...``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.request

import keras
import numpy as np

from keras_inception import checkpoint, files, registry, slim

DEFAULT_BASE_URL = "http://download.tensorflow.org/models/"
URL_ENV = "KERAS_INCEPTION_WEIGHTS_URL"
KERAS_SUFFIXES = (".weights.h5", ".keras")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
KINDS = ("pretrained", "keras", "weights_h5", "checkpoint", "archive")


class WeightsError(ValueError):
    """A download or archive that cannot be trusted; nothing was cached."""


def pin(family: str, tag: str, sha256: str) -> None:
    """Require the archive of ``weights=tag`` for ``family`` to have this sha256."""
    entry = registry.pretrained_config(family, tag)
    registry.PRETRAINED[(family, tag)] = dataclasses.replace(entry, sha256=sha256.lower())


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


def resolve_source(value, family: str | None = None) -> WeightsSource:
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


def read_variables(source: WeightsSource) -> tuple[dict[str, np.ndarray], str]:
    """The slim variables of a tag, checkpoint or archive (moving-average shadows
    included), and the family they belong to."""
    if source.kind == "pretrained":
        return fetch(source.family, source.value), source.family
    if source.kind == "archive":
        with tempfile.TemporaryDirectory() as tmp:
            variables = checkpoint.read(extract_checkpoint(source.value, tmp))
    elif source.kind == "checkpoint":
        variables = checkpoint.read(source.value)
    else:
        raise ValueError(f"{source.value} holds Keras weights, not slim variables")
    family = checkpoint.family_of(variables)
    if source.family and family != source.family:
        raise checkpoint.CheckpointError(f"checkpoint holds {family}, the model is {source.family}")
    return variables, family


def load(model: keras.Model, source: WeightsSource, family: str, use_ema: bool = True):
    """Load ``source`` into ``model`` (of ``family``); the load report, or ``None`` for Keras files.

    Moving-average shadows, where the checkpoint has them, replace the raw variables
    unless ``use_ema=False``.
    """
    if not source.is_slim:
        model.load_weights(source.value)
        return None
    if registry.family(family).slim_scope is None:
        raise ValueError(f"{family} has no slim checkpoints; use a .weights.h5 or .keras file")
    variables, _ = read_variables(dataclasses.replace(source, family=family))
    return checkpoint.assign(model, variables, family, use_ema)


def cache_dir() -> str:
    """``$KERAS_HOME/models/keras_inception`` (``~/.keras/...`` by default)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models", "keras_inception")


def fetch(model: str, tag: str) -> dict[str, np.ndarray]:
    """The slim variables of a published checkpoint: from the cache, or downloaded once."""
    entry = registry.pretrained_config(model, tag)
    cached = os.path.join(cache_dir(), f"{model}_{tag}.npz")
    if os.path.exists(cached):
        with np.load(cached) as data:
            return {key: data[key] for key in data.files}
    with files.atomic_path(cached) as staged:  # a later run sees the whole file or none
        work = os.path.dirname(staged)
        archive = download(entry, work)
        arrays = convert_archive(archive, model, os.path.join(work, "extracted"))
        with open(staged, "wb") as f:
            np.savez(f, **arrays)
    return arrays


def url_for(entry: registry.PretrainedConfig) -> str:
    base = os.environ.get(URL_ENV, DEFAULT_BASE_URL)
    return base.rstrip("/") + "/" + entry.archive


def download(entry: registry.PretrainedConfig, directory: str) -> str:
    """Download ``entry``'s archive into ``directory``, checking length and pinned sha256."""
    url = url_for(entry)
    target = os.path.join(directory, entry.archive)
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length")
            expected = int(length) if length else None
            progress = keras.utils.Progbar(expected, unit_name="B") if expected else None
            print(f"Downloading {url}")
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress:
                    progress.update(received)
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, short reads
        raise WeightsError(f"download of {url} failed: {error}") from error
    if expected is not None and received != expected:
        raise WeightsError(f"download of {url} truncated: {received} of {expected} bytes")
    if entry.sha256 and digest.hexdigest() != entry.sha256:
        raise WeightsError(f"sha256 of {url} is {digest.hexdigest()}, expected the pinned {entry.sha256}")
    return target


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise WeightsError(f"unsafe path in archive: {name!r}")
    if not (member.isfile() or member.isdir()):
        raise WeightsError(f"archive member {name!r} is a link or device; refusing to extract")


def extract_checkpoint(archive: str, directory: str) -> str:
    """Safely extract a slim archive; return the prefix of the one checkpoint in it."""
    if not os.path.isfile(archive):
        raise FileNotFoundError(f"archive not found: {archive}")
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            tar.extractall(directory, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise WeightsError(f"archive {os.path.basename(archive)} is corrupt or truncated: {error}") from error
    files = [m.name for m in members if m.isfile()]
    prefixes = sorted(
        {f.removesuffix(".index") for f in files if f.endswith(".ckpt.index")}
        | {f for f in files if f.endswith(".ckpt")}
    )
    if len(prefixes) != 1:
        raise WeightsError(
            f"archive {os.path.basename(archive)} should hold one checkpoint (*.ckpt or "
            f"*.ckpt.index + data), found {prefixes or files}"
        )
    return os.path.join(directory, prefixes[0])


def convert_archive(archive: str, model: str, directory: str) -> dict[str, np.ndarray]:
    """Extract and read an archive's checkpoint, checked against the family's full manifest.

    Every variable of the widest network (1001 classes, aux head) must be there with
    its shape, and nothing else, so a bad checkpoint is never cached.
    """
    prefix = extract_checkpoint(archive, directory)
    variables = checkpoint.read(prefix)
    family = checkpoint.family_of(variables)
    if family != model:
        raise checkpoint.CheckpointError(f"checkpoint holds {family}, the model is {model}")
    plain, _ = checkpoint.resolve_ema(variables, use_ema=False)  # shadows checked for orphans
    checkpoint.check_manifest(plain, registry.slim_manifest(model))
    return {name: value for name, value in variables.items() if name not in slim.IGNORED}
