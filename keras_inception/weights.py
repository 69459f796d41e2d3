"""Weights: the published slim checkpoints (declared as data) and every ``weights=`` value.

``weights="imagenet"`` downloads the official archive once, verifies it (size,
structure, and a sha256 when one is pinned), extracts it safely, converts the
checkpoint to a ``.npz`` of slim-named arrays and caches that atomically under the
Keras cache directory; later runs load the cache offline. Set
``KERAS_INCEPTION_WEIGHTS_URL`` to a mirror (``https://...`` or ``file:///...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request

import keras
import numpy as np

DEFAULT_BASE_URL = "http://download.tensorflow.org/models/"
URL_ENV = "KERAS_INCEPTION_WEIGHTS_URL"
KERAS_SUFFIXES = (".weights.h5", ".keras")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One published checkpoint: where it is and what it scores (slim's model zoo)."""

    model: str
    tag: str
    archive: str
    top1: float | None = None  # ILSVRC-2012 validation, single crop, %
    top5: float | None = None
    sha256: str | None = None  # none are published; pin your own with pin()


PRETRAINED: dict[tuple[str, str], Pretrained] = {
    (p.model, p.tag): p
    for p in [
        Pretrained("inception_v3", "imagenet", "inception_v3_2016_08_28.tar.gz", 78.0, 93.9),
        Pretrained("inception_v4", "imagenet", "inception_v4_2016_09_09.tar.gz", 80.2, 95.2),
        Pretrained("inception_resnet_v2", "imagenet", "inception_resnet_v2_2016_08_30.tar.gz", 80.4, 95.3),
        Pretrained("inception_v3", "adv_imagenet", "adv_inception_v3_2017_08_18.tar.gz"),
        Pretrained("inception_v3", "ens3_adv_imagenet", "ens3_adv_inception_v3_2017_08_18.tar.gz"),
        Pretrained("inception_v3", "ens4_adv_imagenet", "ens4_adv_inception_v3_2017_08_18.tar.gz"),
        Pretrained("inception_resnet_v2", "adv_imagenet", "adv_inception_resnet_v2_2017_12_18.tar.gz"),
        Pretrained(
            "inception_resnet_v2", "ens_adv_imagenet", "ens_adv_inception_resnet_v2_2017_08_18.tar.gz"
        ),
    ]
}


class WeightsError(ValueError):
    """A download or archive that cannot be trusted; nothing was cached."""


def pin(model: str, tag: str, sha256: str) -> None:
    """Require the archive of ``weights=tag`` for ``model`` to have this sha256."""
    entry = PRETRAINED[(model, tag)]
    PRETRAINED[(model, tag)] = dataclasses.replace(entry, sha256=sha256.lower())


def pretrained_names(model_name: str) -> list[str]:
    """The ``weights=`` tags published for ``model_name`` (``"imagenet"``, ...)."""
    return [tag for (name, tag) in PRETRAINED if name == model_name]


def is_pretrained_name(weights) -> bool:
    return isinstance(weights, str) and any(tag == weights for (_, tag) in PRETRAINED)


def looks_like_path(weights) -> bool:
    """A value meant as a file: an existing path, or one with a weights suffix or separator."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.path.exists(weights)
        or weights.endswith((*KERAS_SUFFIXES, *ARCHIVE_SUFFIXES, ".ckpt"))
        or os.sep in weights
    )


def cache_dir() -> str:
    """``$KERAS_HOME/models/keras_inception`` (``~/.keras/...`` by default)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models", "keras_inception")


def load(model: keras.Model, weights, spec, use_ema: bool = True):
    """Load any accepted ``weights=`` value into ``model``; returns the load report or None.

    ``weights`` is a pretrained tag, a ``.weights.h5`` / ``.keras`` file, a slim
    checkpoint (V1 file or V2 prefix) or an official ``.tar.gz`` archive.
    """
    from keras_inception import checkpoint

    if is_pretrained_name(weights):
        arrays = fetch(spec.name, weights, use_ema)
        return checkpoint.assign(model, arrays, spec.name, use_ema=False)  # resolved when cached
    path = os.fspath(weights)
    if path.endswith(KERAS_SUFFIXES):
        if not os.path.exists(path):
            raise FileNotFoundError(f"weights file not found: {path}")
        model.load_weights(path)
        return None
    if spec.slim_scope is None:
        raise ValueError(f"{spec.name} has no slim checkpoints; use a .weights.h5 or .keras file")
    if path.endswith(ARCHIVE_SUFFIXES):
        if not os.path.exists(path):
            raise FileNotFoundError(f"archive not found: {path}")
        with tempfile.TemporaryDirectory() as tmp:
            prefix = extract_checkpoint(path, tmp)
            return checkpoint.load(model, prefix, spec.name, use_ema)
    return checkpoint.load(model, path, spec.name, use_ema)


def fetch(model: str, tag: str, use_ema: bool = True) -> dict[str, np.ndarray]:
    """The slim variables of a published checkpoint: from the cache, or downloaded once.

    Moving-average shadows, when the checkpoint has them, replace the raw variables
    unless ``use_ema=False``.
    """
    entry = PRETRAINED.get((model, tag))
    if entry is None:
        raise ValueError(f"{model} has no {tag!r} weights; available: {pretrained_names(model)}")
    cached = os.path.join(cache_dir(), f"{model}_{tag}{'' if use_ema else '_raw'}.npz")
    if os.path.exists(cached):
        with np.load(cached) as data:
            return {key: data[key] for key in data.files}
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".partial-") as tmp:
        archive = download(entry, tmp)
        arrays = convert_archive(archive, model, os.path.join(tmp, "extracted"), use_ema)
        staged = os.path.join(tmp, "weights.npz")
        np.savez(staged, **arrays)
        os.replace(staged, cached)  # atomic: a later run sees the whole file or none
    return arrays


def url_for(entry: Pretrained) -> str:
    base = os.environ.get(URL_ENV, DEFAULT_BASE_URL)
    return base.rstrip("/") + "/" + entry.archive


def download(entry: Pretrained, directory: str) -> str:
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


def convert_archive(archive: str, model: str, directory: str, use_ema: bool = True) -> dict[str, np.ndarray]:
    """Extract and read an archive's checkpoint, checked against the full ``model``."""
    from keras_inception import checkpoint
    from keras_inception.models import get

    prefix = extract_checkpoint(archive, directory)
    arrays, _ = checkpoint.resolve_ema(checkpoint.read(prefix), use_ema)
    builder, _ = get(model)
    # Verify now, so a bad checkpoint is never cached: every variable of the widest
    # model (1001 classes, aux head) must be there with its shape, and nothing else.
    with contextlib.redirect_stdout(None):
        full = builder(weights=None, classes=1001, aux_logits=True)
    checkpoint.assign(full, arrays, model, use_ema=False)
    del full
    shutil.rmtree(directory, ignore_errors=True)
    return arrays
