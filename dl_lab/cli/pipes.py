"""Standard streams that survive their reader going away. Torch-free: installed before any command runs."""

from __future__ import annotations

import errno
import io
import os
from typing import IO, Any

GONE = (errno.EPIPE, errno.EIO)  # the reader closed the pipe; the terminal went away


class PipeSafe(io.TextIOBase):
    """stdout or stderr that never raises because its reader has gone (`dllab train … | head -1`, a
    closed terminal): output is dropped from then on and the run carries on to a true status. The
    descriptor is pointed at /dev/null so that Python's own flush at exit does not fail either."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            self._guard(self.stream.write, text)
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            self._guard(self.stream.flush)

    def _guard(self, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except OSError as exc:
            if exc.errno not in GONE:
                raise
            self.gone = True
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self.stream.fileno())
                os.close(null)
            except (OSError, ValueError, io.UnsupportedOperation):
                pass

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)
