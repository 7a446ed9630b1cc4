"""How a dllab process ends when it is told to: SIGINT, SIGTERM and SIGHUP all mean "stop and say so".

Each of them raises ``Interrupted`` (a KeyboardInterrupt) in the main thread, so every place that
already turns Ctrl-C into status ``interrupted`` handles `kill`, CI timeouts, Slurm preemption and a
closed terminal the same way. The exit code is 128 + the signal's number (130, 143, 129).

``deferred()`` marks a short critical section (writing the files that commit a result): a signal
that arrives inside it is held and raised when the section ends, so a result is never half-committed.
The handlers run in Python between bytecodes, which is why masking with pthread_sigmask is not used:
torch's worker threads would receive the signal instead.

Between bytecodes can also mean in the middle of an import (dllab imports torch, numpy, scipy and
matplotlib lazily, and `import torch` alone takes 1.3-2 s). An exception there leaves a module half
initialized in sys.modules, some imports swallow it (the signal is lost and a later import of the
same module fails), and one raised inside a Python call made by torch's C++ code aborts the process
(pybind11 terminates it with SIGABRT). So a signal that lands inside an import is held and sent again
every IMPORT_RETRY_SECONDS until the main thread is out of it (at most IMPORT_PATIENCE_SECONDS).

Between bytecodes can mean inside code whose exceptions Python cannot propagate: a weakref callback,
``__del__``, a garbage-collector callback (matplotlib frees figures through WeakKeyDictionary
callbacks). There the exception is handed to ``sys.unraisablehook`` and lost; ``install`` sets a hook
that sends the signal again instead, so it is raised in ordinary code an instant later.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


IMPORT_RETRY_SECONDS = 0.05  # how soon a signal held during an import is tried again
IMPORT_PATIENCE_SECONDS = 10.0  # an import that takes longer (a hung file system) is interrupted all the same

_state: dict[str, Any] = {
    "received": None,
    "depth": 0,
    "pending": None,
    "redelivering": False,
    "held_since": None,
    "unanswered": None,  # a signal held (import, unraisable hook) and sent again, not raised yet
}


def _handler(signum: int, frame: Any) -> None:
    _state["received"] = signum
    if _state["redelivering"]:
        _state["unanswered"] = signum
        _send_later(signum)
        return
    if _state["depth"]:
        _state["pending"] = _state["pending"] or signum
        _state["unanswered"] = None  # deferred() raises it
        return
    if _importing(frame):
        held_since = _state["held_since"] = _state["held_since"] or time.monotonic()
        if time.monotonic() - held_since < IMPORT_PATIENCE_SECONDS:
            _state["unanswered"] = signum
            _send_later(signum, IMPORT_RETRY_SECONDS)
            return
    _state["held_since"] = _state["unanswered"] = None
    raise Interrupted(signum)


def _importing(frame: Any) -> bool:
    """Whether ``frame`` or a caller of it is importing a module (importlib's machinery is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def redeliver(unraisable: Any) -> None:
    """sys.unraisablehook: a KeyboardInterrupt (a signal's Interrupted, or a forked helper's own
    interrupt) raised where it cannot propagate is sent again as its signal, silently; anything else
    goes to Python's own hook."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    _state["redelivering"] = True  # a handler running inside this hook would be lost too: it sends later
    _state["unanswered"] = getattr(unraisable.exc_value, "signum", signal.SIGINT)
    try:
        _send_later(getattr(unraisable.exc_value, "signum", signal.SIGINT))
    finally:
        _state["redelivering"] = False


def _send_later(signum: int, delay: float = 0.0) -> None:
    """Send ``signum`` to the main thread from another thread (after ``delay`` seconds), so its handler
    runs at a bytecode boundary after the current hook or handler has returned (raise_signal would run
    it at once, inside it); a real signal, so a blocking call the main thread has entered meanwhile is
    interrupted too."""
    send = getattr(signal, "pthread_kill", None)

    def later() -> None:
        time.sleep(delay)
        with contextlib.suppress(OSError):  # the main thread has ended meanwhile
            if send is None:  # Windows: no per-thread signals
                _thread.interrupt_main(signum)
            else:
                send(threading.main_thread().ident, signum)

    with contextlib.suppress(RuntimeError):  # no new threads while the interpreter shuts down
        _thread.start_new_thread(later, ())


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP to Interrupted (main thread only; a no-op elsewhere).

    A signal this process was started ignoring stays ignored, as the one who started it meant:
    `nohup dllab ...` ignores SIGHUP, and a shell ignores SIGINT for a job it put in the background."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.update(
        received=None, depth=0, pending=None, redelivering=False, held_since=None, unanswered=None
    )  # one command per install (tests run several in a process)
    sys.unraisablehook = redeliver
    for signum in HANDLED:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)


def unanswered() -> int | None:
    """A signal that was held (it landed in an import or where Python could not raise it) and is due
    again, but has not been raised yet: a process ending now still owes its exit code."""
    return _state["unanswered"]


def exit_code(default: int = signal.SIGINT) -> int:
    """128 + the number of the last termination signal received (SIGINT when none was)."""
    return 128 + int(_state["received"] or default)


def note(exc: BaseException) -> None:
    """Remember a KeyboardInterrupt that did not come through our handler (a plain Ctrl-C in tests)."""
    if _state["received"] is None:
        _state["received"] = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold termination signals until the block ends, then raise the first one that arrived."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if pending is not None and _state["depth"] == 0:
            _state["pending"] = None
            raise Interrupted(pending)
