"""Failure behaviour of the weights cache, downloads, archives and checkpoints.

Every case runs on a tiny checkpoint (the family's manifest is cut down to two
variables) served from 127.0.0.1 or a local folder, so each takes seconds.
"""

import hashlib
import io
import json
import os
import pathlib
import socket
import tarfile

import numpy as np
import pytest
from slim_kit import pack, serve, write_checkpoint

from keras_inception import checkpoint, pretrained, registry

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
        pretrained.URL_ENV,
        pretrained.MAX_ARCHIVE_ENV,
        pretrained.DEADLINE_ENV,
        pretrained.STALL_SECONDS_ENV,
        pretrained.STALL_BYTES_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    return pretrained.cache_dir()


def read_record() -> dict:
    return json.loads(pathlib.Path(pretrained.record_path(V3_ARCHIVE)).read_text())


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
    monkeypatch.setenv(pretrained.MAX_ARCHIVE_ENV, str(1 << 20))
    archive = zeros_archive(tmp_path / "bomb.tar.gz", sizes)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(pretrained.WeightsError, match=message) as error:
        pretrained.extract_checkpoint(archive, str(out))
    assert "KERAS_INCEPTION_MAX_ARCHIVE_BYTES" in str(error.value)
    assert "corrupt" not in str(error.value)
    assert listing(out) == []


def test_archive_bomb_stops_writing_at_the_bound(tmp_path):
    archive = zeros_archive(tmp_path / "bomb.tar.gz", {"inception_v3.ckpt": 3 << 20})
    with tarfile.open(archive) as tar, pytest.raises(pretrained.WeightsError, match="passed the bound"):
        pretrained._extract(tar, tar.getmembers(), str(tmp_path), limit=1 << 20)
    assert os.path.getsize(tmp_path / "inception_v3.ckpt") <= 1 << 20


def test_archive_bomb_from_a_mirror_caches_nothing(tmp_path, env, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    zeros_archive(mirror / V3_ARCHIVE, {"inception_v3.ckpt": 4 << 20})
    monkeypatch.setattr(pretrained, "MAX_ARCHIVE_BYTES", 1 << 20)  # the constant, without the variable
    with serve(str(mirror)) as url:
        monkeypatch.setenv(pretrained.URL_ENV, url)
        bound = "declares 4194304 bytes, over the bound of 1048576 "
        with pytest.raises(pretrained.WeightsError, match=bound):
            pretrained.fetch("inception_v3", "imagenet")
        monkeypatch.setenv(pretrained.MAX_ARCHIVE_ENV, "1000")  # the download itself is bounded too
        with pytest.raises(pretrained.WeightsError, match=r"bytes, over the bound of 1000"):
            pretrained.fetch("inception_v3", "imagenet")
    assert listing(env) == []
    assert not os.path.exists(pretrained.record_path(V3_ARCHIVE))


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
        monkeypatch.setenv(getattr(pretrained, name), value)
    with serve(str(mirror), trickle=trickle) as url:
        monkeypatch.setenv(pretrained.URL_ENV, url)
        with pytest.raises(pretrained.WeightsError, match=message) as error:
            pretrained.fetch("inception_v3", "imagenet")
    assert str(error.value).startswith(f"download of {url}{V3_ARCHIVE} ")
    assert listing(env) == []


# 3. https by default; the archive's digest recorded at its first fetch


def test_default_mirror_is_https(env):
    entry = registry.pretrained_config("inception_v3", "imagenet")
    assert pretrained.url_for(entry) == f"https://download.tensorflow.org/models/{V3_ARCHIVE}"


def test_changed_archive_is_refused_unless_pinned(tiny_mirror, tmp_path, env, monkeypatch):
    mirror, variables = tiny_mirror
    original = (mirror / V3_ARCHIVE).read_bytes()
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / V3_ARCHIVE).write_bytes(original + bytes(16))  # gzip padding: still a valid archive
    with serve(str(mirror)) as url:
        monkeypatch.setenv(pretrained.URL_ENV, url)
        pretrained.fetch("inception_v3", "imagenet")
    record = read_record()
    old_sha = hashlib.sha256(original).hexdigest()
    assert record == {"archive": V3_ARCHIVE, "sha256": old_sha, "size": len(original)}
    assert listing(env) == ["inception_v3_imagenet.npz"]

    os.remove(os.path.join(env, "inception_v3_imagenet.npz"))
    new_sha = hashlib.sha256((changed / V3_ARCHIVE).read_bytes()).hexdigest()
    monkeypatch.setenv(pretrained.URL_ENV, str(changed))
    with pytest.raises(pretrained.WeightsError, match=f"archive {V3_ARCHIVE} changed") as error:
        pretrained.fetch("inception_v3", "imagenet")
    assert old_sha in str(error.value) and new_sha in str(error.value)
    assert listing(env) == []

    pretrained.pin("inception_v3", "imagenet", new_sha)  # a pin overrides the record
    arrays = pretrained.fetch("inception_v3", "imagenet")
    np.testing.assert_array_equal(arrays[next(iter(TINY))], variables[next(iter(TINY))])
    assert read_record()["sha256"] == new_sha


# 4. Offline


def test_offline_error_says_what_to_do(env, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv(pretrained.URL_ENV, url)
    with pytest.raises(pretrained.WeightsError) as error:
        pretrained.fetch("inception_v3", "imagenet")
    message = str(error.value)
    assert message.startswith(f"download of {url}{V3_ARCHIVE} failed: <urlopen error")
    assert f"set {pretrained.URL_ENV} to a mirror holding {V3_ARCHIVE}" in message
    assert "or pass a local .tar.gz archive or checkpoint as weights=" in message
    assert listing(env) == []


def test_plain_folder_mirror(tiny_mirror, env, monkeypatch):
    mirror, variables = tiny_mirror
    monkeypatch.setenv(pretrained.URL_ENV, str(mirror))
    arrays = pretrained.fetch("inception_v3", "imagenet")
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
    monkeypatch.setenv(pretrained.URL_ENV, str(mirror))
    pretrained.fetch("inception_v3", "imagenet")
    cached = os.path.join(env, "inception_v3_imagenet.npz")
    _damage(cached, kind)
    with pytest.warns(UserWarning, match=f"cache entry {cached} .*; it was removed, downloading it again"):
        arrays = pretrained.fetch("inception_v3", "imagenet")
    for name, value in variables.items():
        np.testing.assert_array_equal(arrays[name], value)
    assert pretrained.load_cached(cached).keys() == variables.keys()


def test_damaged_cache_entry_offline(tiny_mirror, env, monkeypatch):
    mirror, _ = tiny_mirror
    monkeypatch.setenv(pretrained.URL_ENV, str(mirror))
    pretrained.fetch("inception_v3", "imagenet")
    cached = os.path.join(env, "inception_v3_imagenet.npz")
    _damage(cached, "truncated")
    monkeypatch.setenv(pretrained.URL_ENV, closed_port_url())
    with pytest.warns(UserWarning), pytest.raises(pretrained.WeightsError) as error:
        pretrained.fetch("inception_v3", "imagenet")
    message = str(error.value)
    assert message.startswith(f"cache entry {cached} is unreadable")
    assert "; it was removed; download of http://127.0.0.1:" in message
    assert pretrained.URL_ENV in message
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
    monkeypatch.setenv(pretrained.URL_ENV, closed_port_url())  # the cache is checked before downloading
    with pytest.raises(pretrained.CacheDirError, match="Not a directory") as error:
        pretrained.fetch("inception_v3", "imagenet")
    _assert_cache_dir_error(error, home)


def test_read_only_keras_home(tmp_path, env, monkeypatch):
    home = tmp_path / "read_only"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv(pretrained.URL_ENV, closed_port_url())

    def denied(*args, **kwargs):  # what a read-only folder answers (root ignores chmod, so simulate it)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pretrained.tempfile, "mkdtemp", denied)
    with pytest.raises(pretrained.CacheDirError, match="Permission denied") as error:
        pretrained.fetch("inception_v3", "imagenet")
    _assert_cache_dir_error(error, str(home))


# 7. Staging folders of killed runs


def test_stale_partials_removed_live_ones_kept(tiny_mirror, env, monkeypatch):
    dead = 999999
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    mirror, _ = tiny_mirror
    monkeypatch.setenv(pretrained.URL_ENV, str(mirror))
    os.makedirs(os.path.join(env, f".partial-{dead}-x"))
    os.makedirs(os.path.join(env, f".partial-{os.getpid()}-live"))
    pretrained.fetch("inception_v3", "imagenet")  # a download
    assert listing(env) == [f".partial-{os.getpid()}-live", "inception_v3_imagenet.npz"]
    os.makedirs(os.path.join(env, f".partial-{dead}-y"))
    pretrained.fetch("inception_v3", "imagenet")  # a cache hit
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
