"""The slim model zoo: a published tag's archive downloaded once, verified and cached.

A tag (``weights="imagenet"``) downloads its archive once, verifies it (size, a pinned
sha256 or the one recorded at its first fetch, structure, and every variable of the full
network against the checkpoint's manifest), converts it to a ``.npz`` of slim-named arrays
and caches that atomically under the Keras cache directory; later runs load the cache
offline, after checking its embedded sha256. Set ``KERAS_INCEPTION_WEIGHTS_URL`` to a
mirror (``https://...``, ``file:///...`` or a folder path).

Failure behaviour, each a one-line :class:`WeightsError` and nothing cached:
downloads past ``KERAS_INCEPTION_DOWNLOAD_DEADLINE`` seconds (headers included) or slower
than ``KERAS_INCEPTION_DOWNLOAD_STALL_BYTES`` per ``KERAS_INCEPTION_DOWNLOAD_STALL_SECONDS``,
or larger than ``KERAS_INCEPTION_MAX_ARCHIVE_BYTES``; an archive whose sha256 or size differs
from the one recorded at its first fetch (unless :func:`pin` says otherwise), or whose record
cannot be read; an unsafe archive (:mod:`keras_inception.weights.archive`); an unwritable
cache (:class:`CacheDirError`); a full disk (:class:`files.DiskFullError`, naming the space
needed). A damaged cache entry is reported in a warning, removed and fetched again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import pathlib
import socket
import ssl
import sys
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
from keras_inception.weights import archive as archives
from keras_inception.weights import checkpoint, slim
from keras_inception.weights.archive import MAX_ARCHIVE_ENV, WeightsError, setting

DEFAULT_BASE_URL = "https://download.tensorflow.org/models/"
URL_ENV = "KERAS_INCEPTION_WEIGHTS_URL"
# Bounds, each overridden by its environment variable.
DOWNLOAD_DEADLINE = 3600.0  # seconds for a whole download
DEADLINE_ENV = "KERAS_INCEPTION_DOWNLOAD_DEADLINE"
STALL_SECONDS = 60.0  # a download receiving fewer than STALL_BYTES in this window has stalled
STALL_SECONDS_ENV = "KERAS_INCEPTION_DOWNLOAD_STALL_SECONDS"
STALL_BYTES = 64 << 10
STALL_BYTES_ENV = "KERAS_INCEPTION_DOWNLOAD_STALL_BYTES"
DIGEST_KEY = "__sha256__"  # in each cached .npz: the sha256 of its arrays


class CacheDirError(WeightsError):
    """The weights cache cannot be written (a read-only ``KERAS_HOME``, or one under a file)."""


def pin(family: str, tag: str, sha256: str) -> None:
    """Require the archive of ``weights=tag`` for ``family`` to have this sha256."""
    entry = registry.pretrained_config(family, tag)
    registry.PRETRAINED[(family, tag)] = dataclasses.replace(entry, sha256=sha256.lower())


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
    limit = int(setting(MAX_ARCHIVE_ENV, archives.MAX_ARCHIVE_BYTES))  # one bound: the archive module's
    deadline = setting(DEADLINE_ENV, DOWNLOAD_DEADLINE)
    window = setting(STALL_SECONDS_ENV, STALL_SECONDS)
    min_bytes = int(setting(STALL_BYTES_ENV, STALL_BYTES))
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
            f"or pin its sha256 with keras_inception.pretrained.pin({entry.family!r}, {entry.tag!r}, SHA256)"
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


def convert_archive(archive: str, model: str, directory: str) -> dict[str, np.ndarray]:
    """Extract and read an archive's checkpoint, checked against the family's full manifest.

    Every variable of the widest network (1001 classes, aux head) must be there with
    its shape, and nothing else, so a bad checkpoint is never cached.
    """
    prefix = archives.extract_checkpoint(archive, directory)
    variables = checkpoint.read(prefix)
    checkpoint.check_family(variables, model)
    checkpoint.check_manifest(variables, registry.slim_manifest(model))
    return {name: value for name, value in variables.items() if not slim.is_trainer_state(name)}
