"""Files that appear whole or not at all: temporaries beside their target, renamed into place.

Shared by every layer that writes (the run store, plots, exports, the dataset cache); it imports
only ``dl_lab.signals``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dl_lab.signals import deferred

__all__ = ["FILE_MODE", "FOLDER_MODE", "atomic_path", "temporary_beside"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file: the user's umask applies
FOLDER_MODE = 0o777 & ~_umask()  # what mkdir gives a new folder


@contextlib.contextmanager
def temporary_beside(path: Path, folder: bool = False) -> Iterator[Path]:
    """A new, private temporary file (or folder) beside ``path``, named ``.<name>.<random>.tmp``, and
    removed if the block fails. It is created in a deferred section, so an interrupt can never land
    between its creation and the moment its name is known (which would leave it behind)."""
    made: Path | None = None
    try:
        with deferred():
            if folder:
                made = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
            else:
                fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                made = Path(name)
                os.close(fd)
        yield made
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True) if folder else made.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block succeeds,
    removed when it fails. Readers see the old file or the new one, never half of one."""
    with temporary_beside(path) as tmp:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600 files
        os.replace(tmp, path)
