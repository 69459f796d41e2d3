"""Safe extraction of a slim archive (``.tar`` or ``.tar.gz``): the one checkpoint in it.

Archives are checked while they are streamed, each member before it is written, so the
work an archive can cost is bounded by its bytes: the decompressed stream (every header,
folder, empty file and member's data counted) is at most ``KERAS_INCEPTION_MAX_ARCHIVE_BYTES``
(the download, too: :mod:`keras_inception.weights.zoo`); the members (of any kind) at most
``KERAS_INCEPTION_MAX_ARCHIVE_MEMBERS``. CPU is one pass of gzip over at most that many
decompressed bytes; disk, at most that many bytes and that many inodes, removed on refusal.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib

from keras_inception.core import atomic as files

# Bounds, each overridden by its environment variable. The largest slim archive is ~240 MB.
MAX_ARCHIVE_BYTES = 1 << 30  # per archive: its download, and its members declared and written
MAX_ARCHIVE_ENV = "KERAS_INCEPTION_MAX_ARCHIVE_BYTES"
MAX_MEMBERS = 1000  # per archive: members of any kind (files, folders); a slim archive holds 1 to 4
MAX_MEMBERS_ENV = "KERAS_INCEPTION_MAX_ARCHIVE_MEMBERS"


class WeightsError(ValueError):
    """A download or archive that cannot be trusted; nothing was cached."""


def setting(name: str, default: float) -> float:
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
    limit = int(setting(MAX_ARCHIVE_ENV, MAX_ARCHIVE_BYTES))
    max_members = int(setting(MAX_MEMBERS_ENV, MAX_MEMBERS))
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
