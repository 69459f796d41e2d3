"""Writing files so that an interrupted run never leaves something a later run trusts.

Everything the package writes (converted models, exports, the weights cache) is
staged in a ``.partial-<pid>-*`` folder beside its destination and moved into place
in one ``os.replace``. A run killed halfway leaves only that folder, which
:func:`remove_stale_partials` deletes once its process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator

PARTIAL_PREFIX = ".partial-"
SPACE_MARGIN = 4 << 20  # bytes asked beyond what a write is known to need (headers, metadata)
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError, ValueError):
    """Not enough space (or quota) to write a file; the message names the path and the space needed."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _existing_folder(path: str | os.PathLike) -> str:
    """``path`` itself if it is a folder, else its nearest existing parent."""
    folder = os.path.abspath(os.fspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def ensure_space(path: str | os.PathLike, needed: int) -> None:
    """Raise :class:`DiskFullError` unless the filesystem of ``path`` (a folder, or where it
    will be created) has ``needed`` bytes free, plus :data:`SPACE_MARGIN`."""
    folder = _existing_folder(path)
    free = shutil.disk_usage(folder).free
    if needed + SPACE_MARGIN > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough space to write {os.fspath(path)}: it needs {_mib(needed + SPACE_MARGIN)}, "
            f"{_mib(free)} free in {folder}; free some space or write elsewhere",
        )


def is_disk_full(error: BaseException) -> bool:
    """An ``OSError`` saying the disk (or quota) is full; h5py's say so only in their text."""
    return isinstance(error, OSError) and (
        error.errno in FULL_ERRNOS or "No space left on device" in str(error) or "errno = 28" in str(error)
    )


def disk_full(path: str | os.PathLike, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write to ``path`` that ran out of space."""
    folder = _existing_folder(os.path.dirname(os.path.abspath(os.fspath(path))))
    try:
        free = f", {_mib(shutil.disk_usage(folder).free)} free in {folder}"
    except OSError:
        free = ""
    size = f"it needs {_mib(needed)}" if needed else "no space left"
    return DiskFullError(
        errno.ENOSPC,
        f"disk full while writing {os.fspath(path)} ({size}{free}); free some space or write elsewhere",
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[str]:
    """Yield a staging path for ``path`` (a file or a folder); publish it on success.

    On an exception nothing appears at ``path`` and the staging area is removed.
    ``size``: the bytes about to be written, checked free first. A full disk, then or
    while writing, is a :class:`DiskFullError`. What is written gets the user's umask,
    as any other file would.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_partials(parent)
        if size is not None:
            ensure_space(parent, size)
        staging = tempfile.mkdtemp(dir=parent, prefix=f"{PARTIAL_PREFIX}{os.getpid()}-")
    except OSError as error:
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise disk_full(path, size) from None
        raise
    try:
        staged = os.path.join(staging, os.path.basename(path))
        yield staged
        if not os.path.exists(staged):
            raise FileNotFoundError(f"nothing was written for {path}")
        os.replace(staged, path)
    except OSError as error:
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise disk_full(path, size) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(paths: list[str | os.PathLike]) -> Iterator[list[str]]:
    """:func:`atomic_path` for files that belong together (one folder): staged side by side,
    published in the order given, so the last (the one readers open) comes last."""
    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    parent = os.path.dirname(paths[-1])
    if any(os.path.dirname(p) != parent for p in paths):
        raise ValueError(f"files published together must share a folder: {paths}")
    with atomic_path(paths[-1]) as last:
        staged = [os.path.join(os.path.dirname(last), os.path.basename(p)) for p in paths]
        yield staged
        for path, stage in zip(paths[:-1], staged[:-1], strict=True):
            if not os.path.exists(stage):
                raise FileNotFoundError(f"nothing was written for {path}")
            os.replace(stage, path)


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as staged, open(staged, "wb") as f:
        f.write(data)
    return os.fspath(path)


def remove_stale_partials(directory: str | os.PathLike) -> list[str]:
    """Delete ``.partial-<pid>-*`` entries in ``directory`` whose process has ended."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            if not entry.startswith(PARTIAL_PREFIX):
                continue
            pid = entry[len(PARTIAL_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            target = os.path.join(directory, entry)
            shutil.rmtree(target, ignore_errors=True) if os.path.isdir(target) else os.remove(target)
            removed.append(target)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
