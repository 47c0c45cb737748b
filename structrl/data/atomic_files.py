"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """
    Open a temporary file beside ``path`` for writing; on success it is flushed to disk and renamed over
    ``path`` with the usual permissions (0o666 less the umask), on an exception it is deleted.

    :param path: the destination file (its folder is created if missing)
    :param mode: ``"w"`` for text, ``"wb"`` for bytes
    :return: a context manager yielding the open temporary file
    """
    assert mode in ("w", "wb"), f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
