"""A plot-drawing process started with `dllab compare`, so that matplotlib is imported while the
command imports torch and trains, not after.

Importing pyplot takes 0.5-0.7 s on a 2-core CPU, and `import torch` keeps only one core busy: a
process forked at the start of the command imports matplotlib on the other, then waits. When the
report is written the command sends it the results; it draws them with ``write_plots`` (split with a
process of its own, both with pyplot loaded) and says whether every plot was written. The command
itself draws nothing meanwhile. Anything short of "all written" (the service died, was never
started, or failed a plot) and the command draws the plots itself, as without the service: the files
written never depend on it.

The service never prints, ignores Ctrl-C (the command decides what an interrupt means and still
asks for the plots of an interrupted comparison), ends on SIGTERM or SIGHUP, and ends with the
command: the kernel sends it SIGTERM when the command's process ends, even killed, and a closed job
pipe ends it too.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from dl_lab.signals import HANDLED

if TYPE_CHECKING:
    from dl_lab.analysis.load import VariantResult

DONE = b"1"
REAP_SECONDS = 2.0  # how long close() waits for a service to end before it kills it


class PlotService:
    """The command's side: ``draw`` the plots through the service, ``close`` it when done."""

    def __init__(self, pid: int, jobs: int, replies: int) -> None:
        self.pid, self.jobs, self.replies = pid, jobs, replies

    @classmethod
    def start(cls) -> PlotService | None:
        """Fork the service, or None where that does not pay or is not safe: one usable CPU, not Linux
        (it must end with the command; macOS frameworks do not survive fork), or Ray's threads in this
        process."""
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if cpus < 2 or not sys.platform.startswith("linux") or "ray" in sys.modules:
            return None
        jobs_read, jobs_write = os.pipe()
        replies_read, replies_write = os.pipe()
        parent = os.getpid()
        # Signals wait until each process has its own handlers: one caught in the child in between
        # would run the command's handler there, and the child would go on as the command.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
        except OSError:  # no memory or process slots: the command draws its plots itself
            pid = -1
        if not pid:
            os.close(jobs_write)
            os.close(replies_read)
            _serve(jobs_read, replies_write, parent, blocked)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(jobs_read)
        os.close(replies_write)
        if pid < 0:
            os.close(jobs_write)
            os.close(replies_read)
            return None
        return cls(pid, jobs_write, replies_read)

    def draw(self, names: Sequence[str], results: Sequence[VariantResult], folder: Path) -> bool:
        """Have the service write ``names`` into ``folder``; True when it wrote every one of them. An
        interrupt while it draws stops it (between its plots' atomic writes) and is raised here."""
        if self.jobs < 0:  # used already
            return False
        try:
            with os.fdopen(self.jobs, "wb") as pipe:
                self.jobs = -1
                pickle.dump((list(names), list(results), folder), pipe)
            reply = os.read(self.replies, 1)
        except (OSError, pickle.PicklingError):  # the service is gone: the command draws
            self.close()
            return False
        except BaseException:
            self.close()
            raise
        self._reap()  # it ends once it has replied
        return reply == DONE

    def close(self) -> None:
        """End the service, drawing or idle, and reap it. Closing the job pipe ends an idle service
        (it reads the end of its input); SIGTERM one that draws; SIGKILL one still there after
        ``REAP_SECONDS``, so the command never waits on it."""
        for end in (self.jobs, self.replies):
            if end >= 0:
                with contextlib.suppress(OSError):
                    os.close(end)
        self.jobs = self.replies = -1
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGTERM)
            self._reap(REAP_SECONDS)

    def _reap(self, seconds: float | None = None) -> None:
        """Wait for the service to end; after ``seconds`` (None: no limit), kill it first."""
        with contextlib.suppress(ChildProcessError):
            if seconds is not None:
                deadline = time.monotonic() + seconds
                while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        os.kill(self.pid, signal.SIGKILL)
                        break
                    time.sleep(0.005)
                else:
                    self.pid = 0  # reaped
                    return
            os.waitpid(self.pid, 0)
        self.pid = 0


def _serve(jobs: int, replies: int, parent: int, blocked: set[signal.Signals]) -> NoReturn:
    """The service: import pyplot, wait for one job, draw it, reply; exit 0 (1 on any failure)."""
    code = 1
    try:
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_IGN if signum == signal.SIGINT else _stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        from dl_lab.analysis import plots

        plots.end_with(parent)
        plots.pyplot()
        with os.fdopen(jobs, "rb") as pipe:
            try:
                job = pickle.load(pipe)
            except EOFError:  # the command ended without plots to draw
                job = None
        if job is not None:
            names, results, folder = job
            written = plots.write_plots(results, folder)
            os.write(replies, DONE if [path.name for path in written] == names else b"0")
        code = 0
    finally:
        os._exit(code)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
