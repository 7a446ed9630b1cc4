"""How a dllab process ends when it is told to: SIGINT, SIGTERM and SIGHUP all mean "stop and say so".

Each of them raises ``Interrupted`` (a KeyboardInterrupt) in the main thread, so every place that
already turns Ctrl-C into status ``interrupted`` handles `kill`, CI timeouts, Slurm preemption and a
closed terminal the same way. The exit code is 128 + the signal's number (130, 143, 129).

``deferred()`` marks a short critical section (writing the files that commit a result): a signal
that arrives inside it is held and raised when the section ends, so a result is never half-committed.
The handlers run in Python between bytecodes, which is why masking with pthread_sigmask is not used:
torch's worker threads would receive the signal instead.

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
from collections.abc import Iterator
from typing import Any

HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_state = {"received": None, "depth": 0, "pending": None, "redelivering": False}


def _handler(signum: int, frame: object) -> None:
    _state["received"] = signum
    if _state["redelivering"]:
        _send_later(signum)
        return
    if _state["depth"]:
        _state["pending"] = _state["pending"] or signum
        return
    raise Interrupted(signum)


def redeliver(unraisable: Any) -> None:
    """sys.unraisablehook: a KeyboardInterrupt (a signal's Interrupted, or a forked helper's own
    interrupt) raised where it cannot propagate is sent again as its signal, silently; anything else
    goes to Python's own hook."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    _state["redelivering"] = True  # a handler running inside this hook would be lost too: it sends later
    try:
        _send_later(getattr(unraisable.exc_value, "signum", signal.SIGINT))
    finally:
        _state["redelivering"] = False


def _send_later(signum: int) -> None:
    """Send ``signum`` to the main thread from another thread, so its handler runs at a bytecode
    boundary after the current hook has returned (raise_signal would run it at once, in the hook); a
    real signal, so a blocking call the main thread has entered meanwhile is interrupted too."""
    send = getattr(signal, "pthread_kill", None)
    with contextlib.suppress(RuntimeError):  # no new threads while the interpreter shuts down
        if send is None:  # Windows: no per-thread signals
            _thread.start_new_thread(_thread.interrupt_main, (signum,))
        else:
            _thread.start_new_thread(send, (threading.main_thread().ident, signum))


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP to Interrupted (main thread only; a no-op elsewhere).

    A signal this process was started ignoring stays ignored, as the one who started it meant:
    `nohup dllab ...` ignores SIGHUP, and a shell ignores SIGINT for a job it put in the background."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.update(
        received=None, depth=0, pending=None, redelivering=False
    )  # one command per install (tests run several in a process)
    sys.unraisablehook = redeliver
    for signum in HANDLED:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)


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
