"""Writing files so that an interrupted run never leaves something a later run trusts.

Everything the package writes (converted models, exports, the weights cache) is
staged in a ``.partial-<pid>-*`` folder beside its destination and moved into place
in one ``os.replace``. A run killed halfway leaves only that folder, which
:func:`remove_stale_partials` deletes once its process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

PARTIAL_PREFIX = ".partial-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a staging path for ``path`` (a file or a folder); publish it on success.

    On an exception nothing appears at ``path`` and the staging area is removed.
    What is written gets the user's umask, as any other file would.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_partials(parent)
    staging = tempfile.mkdtemp(dir=parent, prefix=f"{PARTIAL_PREFIX}{os.getpid()}-")
    try:
        staged = os.path.join(staging, os.path.basename(path))
        yield staged
        if not os.path.exists(staged):
            raise FileNotFoundError(f"nothing was written for {path}")
        os.replace(staged, path)
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
