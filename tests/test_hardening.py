"""Failure behaviour of the weights cache, downloads, archives and checkpoints.

Every case runs on a tiny checkpoint (the family's manifest is cut down to two
variables) served from 127.0.0.1 or a local folder, so each takes seconds.
"""

import contextlib
import errno
import hashlib
import io
import itertools
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time

import keras
import numpy as np
import pytest
from slim_kit import pack, serve, write_checkpoint

from keras_inception.core import atomic as files
from keras_inception.core import registry
from keras_inception.train import runs
from keras_inception.weights import archive as archives
from keras_inception.weights import checkpoint, zoo

V3_ARCHIVE = registry.pretrained_config("inception_v3", "imagenet").archive
TINY = {
    "InceptionV3/Conv2d_1a_3x3/weights": (3, 3, 3, 8),
    "InceptionV3/Logits/Conv2d_1c_1x1/biases": (1001,),
}


@pytest.fixture(scope="module")
def tiny_mirror(tmp_path_factory):
    """A folder holding ``V3_ARCHIVE`` with a two-variable V1 checkpoint, and its variables."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    variables = {name: rng.normal(size=shape).astype(np.float32) for name, shape in TINY.items()}
    prefix = write_checkpoint(variables, str(root / "ckpt" / "inception_v3.ckpt"), "V1")
    mirror = root / "mirror"
    mirror.mkdir()
    pack(prefix, str(mirror / V3_ARCHIVE))
    return mirror, variables


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh KERAS_HOME, the tiny manifest, no pin, and unset bounds; yields the cache folder."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(registry, "slim_manifest", lambda family: TINY)
    monkeypatch.setattr(registry, "PRETRAINED", dict(registry.PRETRAINED))
    for name in (
        zoo.URL_ENV,
        archives.MAX_ARCHIVE_ENV,
        zoo.DEADLINE_ENV,
        zoo.STALL_SECONDS_ENV,
        zoo.STALL_BYTES_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    return zoo.cache_dir()


def read_record() -> dict:
    return json.loads(pathlib.Path(zoo.record_path(V3_ARCHIVE)).read_text())


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def zeros_archive(path, sizes: dict[str, int]) -> str:
    """A .tar.gz of members full of zeros (a few MB compress to a few KB)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, size in sizes.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return str(path)


# 1. Archive bombs


@pytest.mark.parametrize(
    "sizes, message",
    [
        ({"inception_v3.ckpt": 4 << 20}, r"member 'inception_v3.ckpt' declares 4194304 bytes, over the"),
        ({"a.ckpt": 600 << 10, "b": 600 << 10}, r"members declare 1228800 bytes in all, over the bound"),
    ],
    ids=["one-member", "sum"],
)
def test_archive_bomb_refused_before_writing(tmp_path, monkeypatch, sizes, message):
    monkeypatch.setenv(archives.MAX_ARCHIVE_ENV, str(1 << 20))
    archive = zeros_archive(tmp_path / "bomb.tar.gz", sizes)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(zoo.WeightsError, match=message) as error:
        archives.extract_checkpoint(archive, str(out))
    assert "KERAS_INCEPTION_MAX_ARCHIVE_BYTES" in str(error.value)
    assert "corrupt" not in str(error.value)
    assert listing(out) == []


def test_gzip_bomb_is_refused_while_streamed(tmp_path, monkeypatch):
    """64 MiB of zeros in 64 members (about 64 KB compressed) under a 4 MiB bound: refused once the
    bytes decompressed (headers included) pass it, not after decompressing every member first."""
    monkeypatch.setenv(archives.MAX_ARCHIVE_ENV, str(4 << 20))
    archive = zeros_archive(tmp_path / "bomb.tar.gz", {f"m{i:02d}": 1 << 20 for i in range(64)})
    assert os.path.getsize(archive) < 200_000
    decompressed = []
    read = archives.gzip.GzipFile.read

    def counted(self, *args):
        chunk = read(self, *args)
        decompressed.append(len(chunk))
        return chunk

    monkeypatch.setattr(archives.gzip.GzipFile, "read", counted)
    out = tmp_path / "out"
    bound = r"bomb.tar.gz holds more than 4194304 bytes once decompressed"
    with pytest.raises(zoo.WeightsError, match=bound):
        archives.extract_checkpoint(archive, str(out))
    assert sum(decompressed) <= (4 << 20) + (64 << 10)
    assert not out.exists()


def test_stream_bound_counts_headers_and_stops_reading(tmp_path, monkeypatch):
    """A member declaring 16 GiB is refused at its header; a stream of headers alone passes the bound."""
    monkeypatch.setenv(archives.MAX_ARCHIVE_ENV, str(1 << 20))
    huge = tmp_path / "huge.tar"
    info = tarfile.TarInfo("inception_v3.ckpt")
    info.size = 16 << 30
    huge.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1 << 20))  # data never reached
    declared = r"declares 17179869184 bytes, over the bound of 1048576"
    with pytest.raises(zoo.WeightsError, match=declared):
        archives.extract_checkpoint(str(huge), str(tmp_path / "out"))
    stream = archives._Bounded(io.BytesIO(bytes(3 << 20)), 1 << 20, "x.tar")
    bound = r"x.tar holds more than 1048576 bytes once decompressed"
    with pytest.raises(zoo.WeightsError, match=bound):
        while stream.read(10240):
            pass
    assert stream.consumed <= (1 << 20) + 1


def directory_bomb(path, count: int) -> str:
    """A .tar.gz of ``count`` empty folders (512-byte headers, no data) and a checkpoint-like file."""
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"d/{i}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        info = tarfile.TarInfo("inception_v3.ckpt")
        tar.addfile(info, io.BytesIO(b""))
    return str(path)


def test_directory_bomb_from_a_mirror_caches_nothing(tmp_path, env, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    directory_bomb(mirror / V3_ARCHIVE, 20_000)
    assert os.path.getsize(mirror / V3_ARCHIVE) < 200_000
    with serve(str(mirror)) as url:
        monkeypatch.setenv(zoo.URL_ENV, url)
        with pytest.raises(zoo.WeightsError) as error:
            zoo.fetch("inception_v3", "imagenet")
        assert str(error.value) == (
            f"archive {V3_ARCHIVE} holds more than 1000 members (files and folders), over the bound "
            "(KERAS_INCEPTION_MAX_ARCHIVE_MEMBERS)"
        )
        assert listing(env) == []
        monkeypatch.setenv(archives.MAX_MEMBERS_ENV, "100000")  # the headers count toward the bytes too
        monkeypatch.setenv(archives.MAX_ARCHIVE_ENV, str(1 << 20))
        bound = r"more than 1048576 bytes once decompressed \(headers"
        with pytest.raises(zoo.WeightsError, match=bound):
            zoo.fetch("inception_v3", "imagenet")
    assert listing(env) == []
    assert not os.path.exists(zoo.record_path(V3_ARCHIVE))


def test_archive_bomb_from_a_mirror_caches_nothing(tmp_path, env, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    zeros_archive(mirror / V3_ARCHIVE, {"inception_v3.ckpt": 4 << 20})
    monkeypatch.setattr(archives, "MAX_ARCHIVE_BYTES", 1 << 20)  # the constant, without the variable
    with serve(str(mirror)) as url:
        monkeypatch.setenv(zoo.URL_ENV, url)
        bound = "declares 4194304 bytes, over the bound of 1048576 "
        with pytest.raises(zoo.WeightsError, match=bound):
            zoo.fetch("inception_v3", "imagenet")
        monkeypatch.setenv(archives.MAX_ARCHIVE_ENV, "1000")  # the download itself is bounded too
        with pytest.raises(zoo.WeightsError, match=r"bytes, over the bound of 1000"):
            zoo.fetch("inception_v3", "imagenet")
    assert listing(env) == []
    assert not os.path.exists(zoo.record_path(V3_ARCHIVE))


# 2. Slow and stalled mirrors


@pytest.mark.parametrize(
    "trickle, settings, message",
    [
        (0.5, {"STALL_SECONDS_ENV": "1"}, r"stalled: [0-9] bytes in 1\.\d s, under 65536 bytes per 1 s"),
        (0.5, {"DEADLINE_ENV": "1.5", "STALL_BYTES_ENV": "1"}, "not finished after the deadline of 1.5 s"),
        (5.0, {"STALL_SECONDS_ENV": "1"}, "stalled: no data for 1 s"),
    ],
    ids=["slow", "deadline", "silent"],
)
def test_slow_mirror_stops_with_the_url(tiny_mirror, env, monkeypatch, trickle, settings, message):
    mirror, _ = tiny_mirror
    for name, value in settings.items():
        monkeypatch.setenv(getattr(zoo, name), value)
    with serve(str(mirror), trickle=trickle) as url:
        monkeypatch.setenv(zoo.URL_ENV, url)
        with pytest.raises(zoo.WeightsError, match=message) as error:
            zoo.fetch("inception_v3", "imagenet")
    assert str(error.value).startswith(f"download of {url}{V3_ARCHIVE} ")
    assert listing(env) == []


# 3. https by default; the archive's digest recorded at its first fetch


def test_default_mirror_is_https(env):
    entry = registry.pretrained_config("inception_v3", "imagenet")
    assert zoo.url_for(entry) == f"https://download.tensorflow.org/models/{V3_ARCHIVE}"


def test_changed_archive_is_refused_unless_pinned(tiny_mirror, tmp_path, env, monkeypatch):
    mirror, variables = tiny_mirror
    original = (mirror / V3_ARCHIVE).read_bytes()
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / V3_ARCHIVE).write_bytes(original + bytes(16))  # gzip padding: still a valid archive
    with serve(str(mirror)) as url:
        monkeypatch.setenv(zoo.URL_ENV, url)
        zoo.fetch("inception_v3", "imagenet")
    record = read_record()
    old_sha = hashlib.sha256(original).hexdigest()
    assert record == {"archive": V3_ARCHIVE, "sha256": old_sha, "size": len(original)}
    assert listing(env) == ["inception_v3_imagenet.npz"]

    os.remove(os.path.join(env, "inception_v3_imagenet.npz"))
    new_sha = hashlib.sha256((changed / V3_ARCHIVE).read_bytes()).hexdigest()
    monkeypatch.setenv(zoo.URL_ENV, str(changed))
    with pytest.raises(zoo.WeightsError, match=f"archive {V3_ARCHIVE} changed") as error:
        zoo.fetch("inception_v3", "imagenet")
    assert old_sha in str(error.value) and new_sha in str(error.value)
    assert listing(env) == []

    zoo.pin("inception_v3", "imagenet", new_sha)  # a pin overrides the record
    arrays = zoo.fetch("inception_v3", "imagenet")
    np.testing.assert_array_equal(arrays[next(iter(TINY))], variables[next(iter(TINY))])
    assert read_record()["sha256"] == new_sha


# 4. Offline


def test_offline_error_says_what_to_do(env, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv(zoo.URL_ENV, url)
    with pytest.raises(zoo.WeightsError) as error:
        zoo.fetch("inception_v3", "imagenet")
    message = str(error.value)
    assert message.startswith(f"download of {url}{V3_ARCHIVE} failed: <urlopen error")
    assert f"set {zoo.URL_ENV} to a mirror holding {V3_ARCHIVE}" in message
    assert "or pass a local .tar.gz archive or checkpoint as weights=" in message
    assert listing(env) == []


def test_plain_folder_mirror(tiny_mirror, env, monkeypatch):
    mirror, variables = tiny_mirror
    monkeypatch.setenv(zoo.URL_ENV, str(mirror))
    arrays = zoo.fetch("inception_v3", "imagenet")
    assert sorted(arrays) == sorted(variables)
    assert listing(env) == ["inception_v3_imagenet.npz"]


# 5. Damaged cache entries


def _damage(path: str, kind: str) -> None:
    data = bytearray(pathlib.Path(path).read_bytes())
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "bit-flip":
        data[len(data) // 2] ^= 0x01
    else:  # rewritten with other values: every zip checksum valid, only the sha256 differs
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
        name = next(iter(TINY))
        arrays[name] = arrays[name] + 1.0
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("kind", ["truncated", "bit-flip", "altered"])
def test_damaged_cache_entry_is_fetched_again(tiny_mirror, env, monkeypatch, kind):
    mirror, variables = tiny_mirror
    monkeypatch.setenv(zoo.URL_ENV, str(mirror))
    zoo.fetch("inception_v3", "imagenet")
    cached = os.path.join(env, "inception_v3_imagenet.npz")
    _damage(cached, kind)
    with pytest.warns(UserWarning, match=f"cache entry {cached} .*; it was removed, downloading it again"):
        arrays = zoo.fetch("inception_v3", "imagenet")
    for name, value in variables.items():
        np.testing.assert_array_equal(arrays[name], value)
    assert zoo.load_cached(cached).keys() == variables.keys()


def test_damaged_cache_entry_offline(tiny_mirror, env, monkeypatch):
    mirror, _ = tiny_mirror
    monkeypatch.setenv(zoo.URL_ENV, str(mirror))
    zoo.fetch("inception_v3", "imagenet")
    cached = os.path.join(env, "inception_v3_imagenet.npz")
    _damage(cached, "truncated")
    monkeypatch.setenv(zoo.URL_ENV, closed_port_url())
    with pytest.warns(UserWarning), pytest.raises(zoo.WeightsError) as error:
        zoo.fetch("inception_v3", "imagenet")
    message = str(error.value)
    assert message.startswith(f"cache entry {cached} is unreadable")
    assert "; it was removed; download of http://127.0.0.1:" in message
    assert zoo.URL_ENV in message
    assert listing(env) == []


# 6. Unwritable KERAS_HOME


def _assert_cache_dir_error(error, home):
    message = str(error.value)
    assert "\n" not in message
    assert f"cannot write the weights cache {os.path.join(home, 'models', 'keras_inception')}" in message
    assert f"set KERAS_HOME (now {home}) to a writable folder" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_keras_home_under_a_file(tmp_path, env, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    home = str(tmp_path / "a_file" / "keras")
    monkeypatch.setenv("KERAS_HOME", home)
    monkeypatch.setenv(zoo.URL_ENV, closed_port_url())  # the cache is checked before downloading
    with pytest.raises(zoo.CacheDirError, match="Not a directory") as error:
        zoo.fetch("inception_v3", "imagenet")
    _assert_cache_dir_error(error, home)


def test_read_only_keras_home(tmp_path, env, monkeypatch):
    home = tmp_path / "read_only"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv(zoo.URL_ENV, closed_port_url())

    def denied(*args, **kwargs):  # what a read-only folder answers (root ignores chmod, so simulate it)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zoo.tempfile, "mkdtemp", denied)
    with pytest.raises(zoo.CacheDirError, match="Permission denied") as error:
        zoo.fetch("inception_v3", "imagenet")
    _assert_cache_dir_error(error, str(home))


# 7. Staging folders of killed runs


def test_stale_partials_removed_live_ones_kept(tiny_mirror, env, monkeypatch):
    dead = 999999
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    mirror, _ = tiny_mirror
    monkeypatch.setenv(zoo.URL_ENV, str(mirror))
    os.makedirs(os.path.join(env, f".partial-{dead}-x"))
    os.makedirs(os.path.join(env, f".partial-{os.getpid()}-live"))
    zoo.fetch("inception_v3", "imagenet")  # a download
    assert listing(env) == [f".partial-{os.getpid()}-live", "inception_v3_imagenet.npz"]
    os.makedirs(os.path.join(env, f".partial-{dead}-y"))
    zoo.fetch("inception_v3", "imagenet")  # a cache hit
    assert listing(env) == [f".partial-{os.getpid()}-live", "inception_v3_imagenet.npz"]


# 8. V2 checkpoints with a missing or short data file


@pytest.mark.parametrize("kind", ["missing", "truncated"])
def test_v2_data_file_missing_or_truncated(tmp_path, kind):
    variables = {name: np.ones(shape, np.float32) for name, shape in TINY.items()}
    prefix = write_checkpoint(variables, str(tmp_path / "v2" / "model.ckpt"), "V2")
    data = f"{prefix}.data-00000-of-00001"
    if kind == "missing":
        os.remove(data)
        message = f"checkpoint data file {data} is missing"
    else:
        size = os.path.getsize(data)
        with open(data, "r+b") as f:
            f.truncate(size // 2)
        message = f"cannot read checkpoint data file {data} (truncated or corrupt?)"
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.read(prefix)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


# 9. A server that trickles its headers


@contextlib.contextmanager
def header_trickle(interval: float, start: bytes = b"HTTP/1.1 200 OK\r\n"):
    """A 127.0.0.1 server that sends ``start`` (the status line), then one header byte every
    ``interval`` s."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def answer():
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(start)
            for byte in itertools.cycle(b"X-Slow: trickle"):
                if done.wait(interval):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:  # the client hung up
                    return

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        done.set()
        server.close()
        thread.join(5)


@pytest.mark.parametrize(
    "scheme, start",
    [("http", b"HTTP/1.1 200 OK\r\n"), ("https", b"\x16\x03\x03\x40\x00")],  # TLS: a 16 KB record's header
    ids=["headers", "tls-handshake"],
)
def test_header_trickle_is_cut_at_the_deadline(env, monkeypatch, scheme, start):
    """http: the status line, then a header byte every 0.5 s; https: the server's hello trickled
    the same way, so the handshake waits (socket timeouts restart with every byte)."""
    monkeypatch.setenv(zoo.DEADLINE_ENV, "1.5")
    with header_trickle(0.5, start) as url:
        url = url.replace("http:", f"{scheme}:")
        monkeypatch.setenv(zoo.URL_ENV, url)
        start = time.monotonic()
        with pytest.raises(zoo.WeightsError) as error:
            zoo.fetch("inception_v3", "imagenet")
        elapsed = time.monotonic() - start
    assert str(error.value).startswith(
        f"download of {url}{V3_ARCHIVE} failed: not finished after the deadline of 1.5 s, 0 bytes received "
        f"({zoo.DEADLINE_ENV}). To work without this server, set {zoo.URL_ENV}"
    )
    assert elapsed < 1.5 + 5  # a hang guard (the header trickle never ends), not a speed test
    assert listing(env) == []


# 10. A pin record that cannot be read


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda text: text[: len(text) // 2], "JSONDecodeError: "),
        (lambda text: '{"sha256": 5, "size": "12"}', "ValueError: no sha256 string and size integer"),
        (lambda text: "[]", "AttributeError: "),
    ],
    ids=["truncated", "wrong-types", "not-an-object"],
)
def test_unreadable_record_refuses_the_archive(tiny_mirror, tmp_path, env, monkeypatch, damage, reason):
    mirror, _ = tiny_mirror
    monkeypatch.setenv(zoo.URL_ENV, str(mirror))
    zoo.fetch("inception_v3", "imagenet")
    record = pathlib.Path(zoo.record_path(V3_ARCHIVE))
    record.write_text(damage(record.read_text()))
    os.remove(os.path.join(env, "inception_v3_imagenet.npz"))
    with pytest.raises(zoo.WeightsError) as error:
        zoo.fetch("inception_v3", "imagenet")
    message = str(error.value)
    assert message.startswith(f"the record of {V3_ARCHIVE} at {record} cannot be read ({reason}")
    assert message.endswith(
        "so the archive cannot be checked against it; delete that file to record the archive afresh at "
        "the next fetch, or pin its sha256 with "
        "keras_inception.pretrained.pin('inception_v3', 'imagenet', SHA256)"
    )
    assert "\n" not in message
    assert listing(env) == []
    sha = hashlib.sha256((mirror / V3_ARCHIVE).read_bytes()).hexdigest()
    zoo.pin("inception_v3", "imagenet", sha)  # what the message says works, and mends the record
    zoo.fetch("inception_v3", "imagenet")
    assert read_record()["sha256"] == sha


# 11. A full disk


def test_download_checks_the_space_it_needs(tiny_mirror, env, monkeypatch):
    mirror, _ = tiny_mirror
    size = os.path.getsize(mirror / V3_ARCHIVE)
    full = shutil.disk_usage("/")._replace(free=size // 2)  # a disk with half the archive free
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: full)
    with serve(str(mirror)) as url:
        monkeypatch.setenv(zoo.URL_ENV, url)
        with pytest.raises(files.DiskFullError) as error:
            zoo.fetch("inception_v3", "imagenet")
    message = str(error.value)
    assert re.fullmatch(
        rf"not enough space to write {re.escape(env)}/\.partial-\d+-\w+: it needs 4\.0 MiB, 0\.0 MiB free in "
        rf"{re.escape(env)}/\.partial-\d+-\w+; free some space or write elsewhere",
        message,
    ), message
    assert listing(env) == []


def _h5py_full(*args, **kwargs):
    raise OSError(  # what h5py raises: errno only in the text
        "Can't synchronously write data (file write failed: time = Fri Dec  4 18:00:00 2026, filename = "
        "'x', file descriptor = 7, errno = 28, error message = 'No space left on device', buf = 0x1, "
        "total write size = 4096, bytes this sub-write = 4096, bytes actually written = "
        "18446744073709551615, offset = 0)"
    )


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("raiser", [_enospc, _h5py_full], ids=["ENOSPC", "h5py"])
def test_full_disk_while_saving_a_model_is_one_line(tmp_path, monkeypatch, raiser):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    monkeypatch.setattr(keras.Model, "save", raiser)
    path = str(tmp_path / "run" / "best.keras")
    with pytest.raises(files.DiskFullError) as error:
        runs.save_model(model, path)
    assert re.fullmatch(
        rf"disk full while writing {re.escape(path)} \(it needs 0\.0 MiB, [\d.]+ MiB free in "
        rf"{re.escape(os.path.dirname(path))}\); free some space or write elsewhere",
        str(error.value),
    ), str(error.value)
    assert error.value.errno == errno.ENOSPC and isinstance(error.value, ValueError)  # the CLI's one line
    assert listing(tmp_path / "run") == []


def test_full_disk_while_extracting_is_not_called_corrupt(tiny_mirror, tmp_path, monkeypatch):
    mirror, _ = tiny_mirror
    monkeypatch.setattr(archives, "open", _open_full_for_writing, raising=False)
    out = tmp_path / "out"
    with pytest.raises(files.DiskFullError, match=rf"^disk full while writing {re.escape(str(out))} \("):
        archives.extract_checkpoint(str(mirror / V3_ARCHIVE), str(out))
    assert not out.exists()


def _open_full_for_writing(path, mode="r", *args, **kwargs):
    if "w" in mode:
        _enospc()
    return open(path, mode, *args, **kwargs)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 1 MiB filesystem (tmpfs; needs root), unmounted afterwards."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]
    if subprocess.run(command, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_real_full_disk_is_one_line(tiny_tmpfs):
    target = tiny_tmpfs / "data.bin"
    with pytest.raises(files.DiskFullError, match=rf"^disk full while writing {re.escape(str(target))} "):
        files.write_bytes(target, bytes(2 << 20))  # size unknown beforehand: ENOSPC caught
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024)])  # 4 MiB of weights
    path = tiny_tmpfs / "best.keras"
    refused = rf"^not enough space to write {re.escape(str(tiny_tmpfs))}"
    with pytest.raises(files.DiskFullError, match=refused):
        runs.save_model(model, str(path))
    assert listing(tiny_tmpfs) == []
