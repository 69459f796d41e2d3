"""Pretrained weights: every ``weights=`` value, resolved once, and the slim model zoo's cache.

:func:`resolve_source` says what a ``weights=`` value (or a CLI source) is, and
checks it before any layer is built: a published tag (``"imagenet"``), a ``.keras``
or ``.weights.h5`` file, a slim checkpoint (V1 file or V2 prefix) or an official
``.tar.gz`` archive. A tag downloads its archive once, verifies it (size,
structure, a pinned sha256, and every variable of the full network against the
checkpoint's manifest), converts it to a ``.npz`` of slim-named arrays and caches
that atomically under the Keras cache directory; later runs load the cache
offline, after checking its embedded sha256. Set ``KERAS_INCEPTION_WEIGHTS_URL`` to
a mirror (``https://...``, ``file:///...`` or a folder path).

Failure behaviour, each a one-line :class:`WeightsError` and nothing cached:
downloads past ``KERAS_INCEPTION_DOWNLOAD_DEADLINE`` seconds (headers included) or slower
than ``KERAS_INCEPTION_DOWNLOAD_STALL_BYTES`` per ``KERAS_INCEPTION_DOWNLOAD_STALL_SECONDS``;
an archive whose sha256 or size differs from the one recorded at its first fetch
(unless :func:`pin` says otherwise), or whose record cannot be read; an unwritable cache
(:class:`CacheDirError`); a full disk (:class:`files.DiskFullError`, naming the space needed).
A damaged cache entry is reported in a warning, removed and fetched again.

Archives are checked while they are streamed, each member before it is written, so the
work an archive can cost is bounded by its bytes: the download, and the decompressed
stream (every header, folder, empty file and member's data counted), are each at most
``KERAS_INCEPTION_MAX_ARCHIVE_BYTES``; the members (of any kind) at most
``KERAS_INCEPTION_MAX_ARCHIVE_MEMBERS``. CPU is one pass of gzip over at most that many
decompressed bytes; disk, at most that many bytes and that many inodes, removed on refusal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import socket
import ssl
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator

import keras
import numpy as np

from keras_inception.core import atomic as files
from keras_inception.core import registry
from keras_inception.weights import checkpoint, slim

DEFAULT_BASE_URL = "https://download.tensorflow.org/models/"
URL_ENV = "KERAS_INCEPTION_WEIGHTS_URL"
# Bounds, each overridden by its environment variable. The largest slim archive is ~240 MB.
MAX_ARCHIVE_BYTES = 1 << 30  # per archive: its download, and its members declared and written
MAX_ARCHIVE_ENV = "KERAS_INCEPTION_MAX_ARCHIVE_BYTES"
MAX_MEMBERS = 1000  # per archive: members of any kind (files, folders); a slim archive holds 1 to 4
MAX_MEMBERS_ENV = "KERAS_INCEPTION_MAX_ARCHIVE_MEMBERS"
DOWNLOAD_DEADLINE = 3600.0  # seconds for a whole download
DEADLINE_ENV = "KERAS_INCEPTION_DOWNLOAD_DEADLINE"
STALL_SECONDS = 60.0  # a download receiving fewer than STALL_BYTES in this window has stalled
STALL_SECONDS_ENV = "KERAS_INCEPTION_DOWNLOAD_STALL_SECONDS"
STALL_BYTES = 64 << 10
STALL_BYTES_ENV = "KERAS_INCEPTION_DOWNLOAD_STALL_BYTES"
DIGEST_KEY = "__sha256__"  # in each cached .npz: the sha256 of its arrays
KERAS_SUFFIXES = (".weights.h5", ".keras")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
KINDS = ("pretrained", "keras", "weights_h5", "checkpoint", "archive")


class WeightsError(ValueError):
    """A download or archive that cannot be trusted; nothing was cached."""


class CacheDirError(WeightsError):
    """The weights cache cannot be written (a read-only ``KERAS_HOME``, or one under a file)."""


def _setting(name: str, default: float) -> float:
    """The positive number in environment variable ``name``, else ``default``."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0:
        raise WeightsError(f"{name}={value!r} should be a positive number")
    return number


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


def load(
    model: keras.Model, source: WeightsSource, family: str, use_ema: bool = True, truncated: bool = False
):
    """Load ``source`` into ``model`` (of ``family``); the load report, or ``None`` for Keras files.

    Moving-average shadows, where the checkpoint has them, replace the raw variables
    unless ``use_ema=False``. ``truncated``: the model stops at a ``final_endpoint``
    (slim variables of the blocks after it are skipped).
    """
    if not source.is_slim:
        model.load_weights(source.value)
        return None
    if registry.family(family).slim_scope is None:
        raise ValueError(f"{family} has no slim checkpoints; use a .weights.h5 or .keras file")
    variables, _ = read_variables(dataclasses.replace(source, family=family))
    return checkpoint.assign(model, variables, family, use_ema, truncated)


def cache_dir() -> str:
    """``$KERAS_HOME/models/keras_inception`` (``~/.keras/...`` by default)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "models", "keras_inception")


def record_path(archive: str) -> str:
    """Where the sha256 and size of ``archive`` are recorded at its first fetch.

    Beside the cache folder (``$KERAS_HOME/models/keras_inception_archives``), so that
    the folder itself holds only the converted ``.npz`` files.
    """
    return os.path.join(os.path.dirname(cache_dir()), "keras_inception_archives", f"{archive}.json")


def fetch(model: str, tag: str) -> dict[str, np.ndarray]:
    """The slim variables of a published checkpoint: from the cache, or downloaded once.

    A cache entry that fails its check is named in a warning, removed and fetched again.
    """
    entry = registry.pretrained_config(model, tag)
    directory = cache_dir()
    cached = os.path.join(directory, f"{model}_{tag}.npz")
    files.remove_stale_partials(directory)  # left by runs killed while converting
    bad = None
    if os.path.exists(cached):
        try:
            return load_cached(cached)
        except WeightsError as error:
            try:
                _writable(directory)
            except CacheDirError as unwritable:
                raise CacheDirError(f"{error}, and {unwritable}") from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(cached)
            bad = f"{error}; it was removed"
            warnings.warn(f"{bad}, downloading it again", stacklevel=2)
    _writable(directory)
    try:
        with files.atomic_path(cached) as staged:  # a later run sees the whole file or none
            work = os.path.dirname(staged)
            archive = download(entry, work)
            arrays = convert_archive(archive, model, os.path.join(work, "extracted"))
            files.ensure_space(work, sum(value.nbytes for value in arrays.values()))
            with open(staged, "wb") as f:
                np.savez(f, **arrays, **{DIGEST_KEY: np.array(_arrays_sha256(arrays))})
            _record(entry, archive)
    except WeightsError as error:
        if bad:
            raise WeightsError(f"{bad}; {error}") from error
        raise
    return arrays


def load_cached(path: str) -> dict[str, np.ndarray]:
    """The arrays of a cached ``.npz``, checked against the sha256 stored in it.

    Raises:
        WeightsError: a truncated, corrupt or altered file (named).
    """
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:  # f: closed on errors too
            arrays = {key: data[key] for key in data.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise WeightsError(f"cache entry {path} is unreadable ({type(error).__name__}: {error})") from error
    recorded = arrays.pop(DIGEST_KEY, None)
    if recorded is not None and str(recorded) != _arrays_sha256(arrays):  # older versions stored none
        raise WeightsError(f"cache entry {path} does not match its sha256 (altered on disk)")
    return arrays


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value)
    return digest.hexdigest()


def _writable(directory: str) -> None:
    """Create ``directory`` and check a file can be made in it, or raise :class:`CacheDirError`."""
    try:
        os.makedirs(directory, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=directory, prefix=f"{files.PARTIAL_PREFIX}{os.getpid()}-"))
    except OSError as error:
        home = os.environ.get("KERAS_HOME", "unset")
        raise CacheDirError(
            f"cannot write the weights cache {directory} ({error.strerror or error}); "
            f"set KERAS_HOME (now {home}) to a writable folder"
        ) from None


def url_for(entry: registry.PretrainedConfig) -> str:
    """The archive's URL under ``$KERAS_INCEPTION_WEIGHTS_URL`` (a URL or a folder path)."""
    base = os.environ.get(URL_ENV) or DEFAULT_BASE_URL
    if "://" not in base:  # a plain folder path
        return pathlib.Path(os.path.abspath(os.path.expanduser(base)), entry.archive).as_uri()
    return base.rstrip("/") + "/" + entry.archive


def _offline_advice(entry: registry.PretrainedConfig) -> str:
    return (
        f"To work without this server, set {URL_ENV} to a mirror holding {entry.archive} "
        "(http(s)://, file:// or a folder path), or pass a local .tar.gz archive or checkpoint as weights="
    )


class _TrackedHTTP(http.client.HTTPConnection):
    """An HTTP connection that adds its socket to ``self.sockets`` when it connects."""

    sockets: list

    def connect(self):
        super().connect()
        self.sockets.append(self.sock)


class _TrackingHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http(s) URLs through sockets that go into ``sockets`` (TLS ones before their handshake)."""

    def __init__(self, sockets: list):
        super().__init__()
        self.sockets = sockets

        class TrackedTLS(ssl.SSLSocket):
            def do_handshake(self, *args, **kwargs):
                sockets.append(self)
                return super().do_handshake(*args, **kwargs)

        self.tls = ssl.create_default_context()
        self.tls.set_alpn_protocols(["http/1.1"])
        self.tls.sslsocket_class = TrackedTLS

    def http_open(self, req):
        def connect(host, **kwargs):
            connection = _TrackedHTTP(host, **kwargs)
            connection.sockets = self.sockets
            return connection

        return self.do_open(connect, req)

    def https_open(self, req):
        return self.do_open(http.client.HTTPSConnection, req, context=self.tls)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[tuple[urllib.request.OpenerDirector, threading.Event]]:
    """An opener whose sockets are shut once ``seconds`` have passed, and the event then set.

    A socket timeout restarts with every byte, so only this bounds a server that trickles
    its status line or headers (urlopen returns only after the last header)."""
    sockets: list = []
    expired = threading.Event()

    def expire():
        expired.set()
        for sock in list(sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield urllib.request.build_opener(_TrackingHandler(sockets)), expired
    finally:
        timer.cancel()


def download(entry: registry.PretrainedConfig, directory: str) -> str:
    """Download ``entry``'s archive into ``directory``; return its path.

    Checked: the length announced, the size bound, the overall deadline and the
    stall rate (see the module constants), and the sha256, against :func:`pin`'s
    if any, else against the one recorded at the first fetch.
    """
    url = url_for(entry)
    target = os.path.join(directory, entry.archive)
    limit = int(_setting(MAX_ARCHIVE_ENV, MAX_ARCHIVE_BYTES))
    deadline = _setting(DEADLINE_ENV, DOWNLOAD_DEADLINE)
    window = _setting(STALL_SECONDS_ENV, STALL_SECONDS)
    min_bytes = int(_setting(STALL_BYTES_ENV, STALL_BYTES))
    digest = hashlib.sha256()
    received = 0
    expected = None

    def fail(what: str) -> WeightsError:
        return WeightsError(f"download of {url} {what}. {_offline_advice(entry)}")

    def late() -> WeightsError:
        return fail(
            f"failed: not finished after the deadline of {deadline:g} s, "
            f"{received} bytes received ({DEADLINE_ENV})"
        )

    start = time.monotonic()
    try:
        with (
            _deadline(deadline) as (opener, expired),
            opener.open(url, timeout=min(window, 60.0)) as response,
            open(target, "wb") as out,
        ):
            length = response.headers.get("Content-Length")
            expected = int(length) if length else None
            if expected is not None and expected > limit:
                raise WeightsError(
                    f"archive {url} is {expected} bytes, over the bound of {limit} ({MAX_ARCHIVE_ENV})"
                )
            if expected is not None:
                files.ensure_space(directory, expected)
            progress = keras.utils.Progbar(expected, unit_name="B") if expected else None
            print(f"Downloading {url}", file=sys.stderr)  # progress on stderr, results on stdout
            window_start, window_bytes = start, 0
            while chunk := response.read1(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if progress:
                    with contextlib.redirect_stdout(sys.stderr):
                        progress.update(received)
                now = time.monotonic()
                if received > limit:
                    raise WeightsError(f"archive {url} passed the bound of {limit} bytes ({MAX_ARCHIVE_ENV})")
                if now - start > deadline:
                    raise late()
                if now - window_start >= window:
                    if received - window_bytes < min_bytes:
                        raise fail(
                            f"stalled: {received - window_bytes} bytes in {now - window_start:.1f} s, under "
                            f"{min_bytes} bytes per {window:g} s ({STALL_BYTES_ENV}, {STALL_SECONDS_ENV})"
                        )
                    window_start, window_bytes = now, received
            if expired.is_set():  # the deadline shut the socket: what came is not the whole
                raise late()
    except files.DiskFullError:
        raise
    except TimeoutError as error:  # no byte for a whole window (or no answer)
        raise fail(f"stalled: no data for {window:g} s ({STALL_SECONDS_ENV})") from error
    except (OSError, http.client.HTTPException) as error:  # URLError, refused, short reads
        if files.is_disk_full(error):
            raise files.disk_full(target, expected) from None
        if expired.is_set():  # the deadline shut the socket
            raise late() from None
        raise fail(f"failed: {error}") from error
    if expected is not None and received != expected:
        raise fail(f"truncated: {received} of {expected} bytes")
    sha256 = digest.hexdigest()
    if entry.sha256:  # a pin overrides the record
        if sha256 != entry.sha256:
            raise WeightsError(f"sha256 of {url} is {sha256}, expected the pinned {entry.sha256}")
        return target
    recorded = _recorded(entry)
    if recorded and (recorded.get("sha256"), recorded.get("size")) != (sha256, received):
        raise WeightsError(
            f"archive {entry.archive} changed since its first fetch: now sha256 {sha256} ({received} bytes) "
            f"from {url}, recorded {recorded.get('sha256')} ({recorded.get('size')} bytes) in "
            f"{record_path(entry.archive)}; if the change is expected, delete that file or "
            f"pretrained.pin({entry.family!r}, {entry.tag!r}, {sha256!r})"
        )
    return target


def _recorded(entry: registry.PretrainedConfig) -> dict | None:
    """The record of ``entry``'s archive, ``None`` before its first fetch.

    Raises:
        WeightsError: a record that cannot be read (damaged, truncated, wrong types): the
            archive cannot be compared with it, so it is not trusted.
    """
    path = record_path(entry.archive)
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read())
        if not (isinstance(record.get("sha256"), str) and type(record.get("size")) is int):
            raise ValueError("no sha256 string and size integer")
        return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        reason = f"{type(error).__name__}: {error}".replace("\n", " ")
        raise WeightsError(
            f"the record of {entry.archive} at {path} cannot be read ({reason}), so the archive cannot be "
            f"checked against it; delete that file to record the archive afresh at the next fetch, "
            f"or pin its sha256 with keras_inception.weights.pretrained.pin("
            f"{entry.family!r}, {entry.tag!r}, SHA256)"
        ) from None


def _record(entry: registry.PretrainedConfig, archive: str) -> None:
    """Record the sha256 and size of a checked ``archive`` (once, or when a pin changed it)."""
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    record = {"archive": entry.archive, "sha256": digest.hexdigest(), "size": os.path.getsize(archive)}
    previous = None if entry.sha256 else _recorded(entry)  # a pin replaces a damaged record
    if previous and all(previous.get(key) == value for key, value in record.items()):
        return
    try:
        files.write_bytes(record_path(entry.archive), json.dumps(record, indent=1).encode())
    except OSError as error:
        warnings.warn(f"could not record the sha256 of {entry.archive}: {error}", stacklevel=3)


def _check_member(member: tarfile.TarInfo, limit: int) -> None:
    name = member.name
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise WeightsError(f"unsafe path in archive: {name!r}")
    if not (member.isfile() or member.isdir()):
        raise WeightsError(f"archive member {name!r} is a link or device; refusing to extract")
    if member.size > limit:
        raise WeightsError(
            f"archive member {name!r} declares {member.size} bytes, over the bound of {limit} "
            f"({MAX_ARCHIVE_ENV})"
        )


class _Bounded:
    """The readable stream of an archive, refused once more than ``limit`` bytes are read from it."""

    def __init__(self, stream, limit: int, name: str):
        self.stream, self.limit, self.name, self.consumed = stream, limit, name, 0

    def read(self, size: int = -1) -> bytes:
        room = self.limit + 1 - self.consumed  # one byte past the bound is enough to refuse
        chunk = self.stream.read(min(size, room) if size >= 0 else room)
        self.consumed += len(chunk)
        if self.consumed > self.limit:
            raise WeightsError(
                f"archive {self.name} holds more than {self.limit} bytes once decompressed (headers, "
                f"folders and members counted), over the bound ({MAX_ARCHIVE_ENV})"
            )
        return chunk


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, directory: str) -> None:
    """Write the file ``tar`` is at under ``directory`` (its bytes go through the stream's bound).

    Folders are made only as the parents of files: a checkpoint needs no empty folder, and an
    archive of them then costs no inode."""
    if member.isdir():
        return
    target = os.path.join(directory, member.name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    files.ensure_space(directory, member.size)
    with tar.extractfile(member) as source, open(target, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)


def _stream_members(archive: str, directory: str) -> list[str]:
    """Check and write each member of ``archive`` in turn; the files written."""
    limit = int(_setting(MAX_ARCHIVE_ENV, MAX_ARCHIVE_BYTES))
    max_members = int(_setting(MAX_MEMBERS_ENV, MAX_MEMBERS))
    name = os.path.basename(archive)
    found, declared = [], 0
    try:
        with open(archive, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = _Bounded(gzip.GzipFile(fileobj=raw) if compressed else raw, limit, name)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for count, member in enumerate(tar, 1):
                    if count > max_members:
                        raise WeightsError(
                            f"archive {name} holds more than {max_members} members (files and folders), "
                            f"over the bound ({MAX_MEMBERS_ENV})"
                        )
                    _check_member(member, limit)
                    declared += member.size if member.isfile() else 0
                    if declared > limit:
                        raise WeightsError(
                            f"archive {name} members declare {declared} bytes in all, over the bound of "
                            f"{limit} ({MAX_ARCHIVE_ENV})"
                        )
                    _extract_member(tar, member, directory)
                    if member.isfile():
                        found.append(member.name)
    except files.DiskFullError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        if files.is_disk_full(error):
            raise files.disk_full(directory) from None
        raise WeightsError(f"archive {name} is corrupt or truncated: {error}") from error
    return found


def extract_checkpoint(archive: str, directory: str) -> str:
    """Safely extract a slim archive (``.tar`` or ``.tar.gz``); return the prefix of the one
    checkpoint in it.

    Streamed: each member is checked before it is written, and the whole is bounded as the
    module docstring says. Refused: unsafe paths, links, members whose declared sizes pass
    ``KERAS_INCEPTION_MAX_ARCHIVE_BYTES`` (alone or together), more members than
    ``KERAS_INCEPTION_MAX_ARCHIVE_MEMBERS``. On a refusal what was written is removed.
    """
    if not os.path.isfile(archive):
        raise FileNotFoundError(f"archive not found: {archive}")
    existed = os.path.isdir(directory)
    before = set(os.listdir(directory)) if existed else set()
    try:
        found = _stream_members(archive, directory)
        prefixes = sorted(
            {f.removesuffix(".index") for f in found if f.endswith(".ckpt.index")}
            | {f for f in found if f.endswith(".ckpt")}
        )
        if len(prefixes) != 1:
            raise WeightsError(
                f"archive {os.path.basename(archive)} should hold one checkpoint (*.ckpt or "
                f"*.ckpt.index + data), found {prefixes or found}"
            )
    except BaseException:  # a refusal leaves nothing behind
        for entry in set(os.listdir(directory)) - before if os.path.isdir(directory) else ():
            path = os.path.join(directory, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        if not existed:
            shutil.rmtree(directory, ignore_errors=True)
        raise
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
    return {name: value for name, value in variables.items() if not slim.is_trainer_state(name)}
