"""The run store's primitives: atomic files with the user's umask, folder names, writable-folder checks,
moving aside, locks (live, released, left by a killed process), true statuses, report folders, signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dl_lab import signals
from dl_lab.errors import ConfigError
from dl_lab.runs.locks import FolderInUse, FolderLock, holder, is_locked
from dl_lab.runs.store import (
    MAX_FOLDER_NAME,
    atomic_path,
    check_report_folder,
    check_writable_folder,
    run_status,
    safe_name,
    set_aside,
    temporary_beside,
    write_atomic,
)

RUN_SUMMARY = {"name": "r", "status": "running", "seed": 1, "run_dir": "x"}


def test_atomic_files_get_the_users_umask_not_0600(tmp_path):
    """mkstemp creates 0600 files; every file dl_lab writes must have the mode open() would give it."""
    script = textwrap.dedent(f"""
        import os
        os.umask(0o027)
        from pathlib import Path
        from dl_lab.runs.store import atomic_path, write_atomic
        write_atomic(Path({str(tmp_path)!r}) / "a.json", "{{}}")
        with atomic_path(Path({str(tmp_path)!r}) / "b.png") as tmp:
            tmp.write_bytes(b"png")
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    for name in ("a.json", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"good picture")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a pic")
            raise RuntimeError("killed while drawing")
    assert target.read_bytes() == b"good picture"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    write_atomic(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_folder_names_are_safe_short_and_distinct():
    assert safe_name("root=/a") == "root=_a" and safe_name("..") == "run" and safe_name(".hidden") == "hidden"
    long_a, long_b = "a" * 300 + "x", "a" * 300 + "y"
    assert len(safe_name(long_a)) == MAX_FOLDER_NAME and safe_name(long_a) != safe_name(long_b)


def test_writable_folder_checks_name_the_problem(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_writable_folder(tmp_path / "file", "--runs-dir")
    with pytest.raises(ConfigError, match="is a file, so no folder can be created under it"):
        check_writable_folder(tmp_path / "file" / "deeper" / "runs", "--runs-dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="broken link"):
        check_writable_folder(tmp_path / "dangling" / "runs", "--out")
    check_writable_folder(tmp_path / "new" / "runs", "--runs-dir")  # missing folders are fine: they are created


def test_set_aside_moves_without_deleting_and_never_collides(tmp_path):
    for attempt in range(3):
        run = tmp_path / "relu-seed1"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"attempt": attempt}))
        moved = set_aside(run)
        assert not run.exists() and json.loads((moved / "summary.json").read_text()) == {"attempt": attempt}
    assert sorted(p.name for p in (tmp_path / ".stale").iterdir()) == ["relu-seed1", "relu-seed1-2", "relu-seed1-3"]


def test_a_lock_names_its_holder_and_is_released(tmp_path):
    with FolderLock(tmp_path, "comparison"):
        assert is_locked(tmp_path) and holder(tmp_path) == os.getpid()
        with pytest.raises(FolderInUse, match=f"in use by process {os.getpid()}") as refused:
            FolderLock(tmp_path, "comparison").acquire()
        assert refused.value.exit_code == 2
    assert not is_locked(tmp_path)
    FolderLock(tmp_path).acquire().release(remove=True)
    assert not (tmp_path / ".lock").exists()


@contextlib.contextmanager
def locked_by_another_process(folder: Path):
    """A child process that takes ``folder``'s lock and holds it until killed; yields the process."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from pathlib import Path
        from dl_lab.runs.locks import FolderLock
        FolderLock(Path({str(folder)!r})).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.kill()  # SIGKILL: nothing runs in the child, the kernel drops its lock
        child.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    with locked_by_another_process(tmp_path) as child:
        assert is_locked(tmp_path) and holder(tmp_path) == child.pid
        with pytest.raises(FolderInUse, match=str(child.pid)):
            FolderLock(tmp_path).acquire()
    assert (tmp_path / ".lock").exists() and not is_locked(tmp_path)
    with FolderLock(tmp_path):
        assert holder(tmp_path) == os.getpid()


def test_a_running_run_without_a_live_writer_reads_interrupted(tmp_path):
    run = tmp_path / "20260101-000000-r"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(RUN_SUMMARY))
    assert run_status(run) == "interrupted"  # its writer was killed: no one holds the lock
    with locked_by_another_process(run):
        assert run_status(run) == "running"
    compare = tmp_path / "compare"
    (compare / "relu-seed1").mkdir(parents=True)
    (compare / "plan.json").write_text("{}")
    (compare / "relu-seed1" / "summary.json").write_text(json.dumps(RUN_SUMMARY))
    assert run_status(compare / "relu-seed1") == "interrupted"
    with locked_by_another_process(compare):  # a comparison's runs live under the comparison's lock
        assert run_status(compare / "relu-seed1") == "running"
    with FolderLock(compare):  # held by this process: a report reading the folder, which trains nothing
        assert run_status(compare / "relu-seed1") == "interrupted"
    (run / "summary.json").write_text(json.dumps({**RUN_SUMMARY, "status": "completed"}))
    assert run_status(run) == "completed"
    assert run_status(tmp_path / "nothing") is None


def test_report_folders_refuse_runs_and_files_the_tool_did_not_write(tmp_path):
    names = ["table.md", "table.csv", "summary.json", "curves.png"]
    check_report_folder(tmp_path / "new", names)  # a new folder
    empty = tmp_path / "empty"
    empty.mkdir()
    check_report_folder(empty, names)
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({**RUN_SUMMARY, "status": "completed"}))
    with pytest.raises(ConfigError, match="holds a run"):
        check_report_folder(run, names)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my own notes")
    with pytest.raises(ConfigError, match="did not write"):
        check_report_folder(mine, names)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "summary.json").write_text(json.dumps({"kind": "comparison", "outputs": ["summary.json", "table.md"]}))
    (earlier / "table.md").write_text("| old |")
    (earlier / "notes.txt").write_text("the user's, left alone")
    check_report_folder(earlier, names)  # over its own files only
    (earlier / "curves.png").write_bytes(b"the user's picture")
    with pytest.raises(ConfigError, match="curves.png would be overwritten"):
        check_report_folder(earlier, names)
    with pytest.raises(ConfigError, match="is a file"):
        check_report_folder(mine / "table.md", names)


@pytest.fixture
def installed_signals():
    """dllab's signal handlers for the test, the defaults again after it."""
    hook = sys.unraisablehook
    signals.install()
    yield
    for signum in signals.HANDLED:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    sys.unraisablehook = hook


@pytest.mark.parametrize("where", ["__del__", "weakref callback"])
def test_a_signal_raised_where_python_cannot_propagate_it_is_delivered_again_not_lost(where):
    """A signal landing in a finalizer or weakref callback (matplotlib frees figures through
    WeakKeyDictionary callbacks; found by a random SIGTERM point in CI) must still end the command."""
    code = textwrap.dedent(
        f"""
        import signal, time, weakref
        from dl_lab import signals

        signals.install()

        class Thing:
            def __del__(self):
                if {where == "__del__"!r}:
                    raise signals.Interrupted(signal.SIGTERM)

        def callback(ref):
            if {where == "weakref callback"!r}:  # one raise per case: two would be two signals
                raise signals.Interrupted(signal.SIGTERM)

        thing = Thing()
        ref = weakref.ref(thing, callback)
        start = time.monotonic()
        try:
            del thing  # the exception is raised where nothing can catch it
            while time.monotonic() - start < 5:
                time.sleep(0.001)  # ordinary code: where the signal must arrive again
            print("lost")
        except signals.Interrupted as caught:
            print("raised", caught.signum == signal.SIGTERM, signals.exit_code(), time.monotonic() - start < 0.5)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["raised", "True", "143", "True"], done.stdout + done.stderr
    assert done.stderr == ""  # no "Exception ignored ... Traceback"


SLOW_MODULE = """
import time

start = time.monotonic()
try:
    while time.monotonic() - start < {seconds}:
        time.sleep(0.001)
except {swallowed}:  # some modules swallow everything while they import
    pass
finished = True
"""


@pytest.mark.parametrize("patience", [None, 0.5], ids=["held until the import ends", "an import past patience"])
def test_a_signal_that_lands_inside_an_import_is_raised_after_it(tmp_path, patience):
    """`import torch` takes 1.3-2 s, and a signal raised inside it was lost to a swallowing import, left
    numpy half-imported (the report then failed with a RecursionError) or, inside torch's C++ calling
    Python, aborted the process (found by random SIGTERM points in CI). It must wait for the import to
    end, then end the command; an import that outlasts IMPORT_PATIENCE_SECONDS is interrupted anyway."""
    held = patience is None
    module = SLOW_MODULE.format(seconds=1.0 if held else 30.0, swallowed="BaseException" if held else "ImportError")
    (tmp_path / "slow_module.py").write_text(module)
    code = textwrap.dedent(
        f"""
        import os, signal, sys, threading, time
        from dl_lab import signals

        sys.path.insert(0, {str(tmp_path)!r})
        signals.install()
        patience = {patience!r}
        if patience is not None:
            signals.IMPORT_PATIENCE_SECONDS = patience
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        start = time.monotonic()
        try:
            import slow_module
            while time.monotonic() - start < 5:
                time.sleep(0.001)
            print("lost")
        except signals.Interrupted as caught:
            whole = getattr(sys.modules.get("slow_module"), "finished", False)
            print("raised", caught.signum == signal.SIGTERM, signals.exit_code(), whole, round(time.monotonic() - start, 1))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    words = done.stdout.split()
    assert words[:4] == ["raised", "True", "143", str(held)], done.stdout + done.stderr
    if held:
        assert 1.0 <= float(words[4]) < 1.5  # at the import's end, not before, and promptly
    else:
        assert float(words[4]) < 2.0  # not the import's 30 s
    assert done.stderr == ""


def test_other_exceptions_where_python_cannot_propagate_them_are_still_reported():
    code = textwrap.dedent(
        """
        from dl_lab import signals

        signals.install()

        class Thing:
            def __del__(self):
                raise ValueError("boom")

        Thing()
        print("went on")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "went on\n"
    assert "Exception ignored" in done.stderr and "ValueError: boom" in done.stderr


def test_a_signal_in_a_deferred_section_waits_for_its_end(installed_signals):
    with pytest.raises(signals.Interrupted) as caught:
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            committed = True  # reached: the signal waited
    assert committed and caught.value.signum == signal.SIGTERM
    assert signals.exit_code() == 143
    with pytest.raises(signals.Interrupted):
        os.kill(os.getpid(), signal.SIGHUP)
    assert signals.exit_code() == 129


@pytest.mark.parametrize("folder", [False, True])
def test_an_interrupt_as_a_temporary_is_created_never_leaves_it_behind(
    tmp_path, monkeypatch, folder, installed_signals
):
    """The signal lands just after mkstemp/mkdtemp made the file, before its name reaches the caller."""
    import tempfile

    made = []
    for name in ("mkstemp", "mkdtemp"):
        real = getattr(tempfile, name)

        def creating_then_interrupted(*args, real=real, **kwargs):
            made.append(real(*args, **kwargs))
            os.kill(os.getpid(), signal.SIGINT)
            return made[-1]

        monkeypatch.setattr(tempfile, name, creating_then_interrupted)
    with pytest.raises(signals.Interrupted):
        with temporary_beside(tmp_path / "table.md", folder=folder):
            pytest.fail("the block must not run: the interrupt came first")
    assert made and list(tmp_path.iterdir()) == []


def test_a_signal_held_in_the_last_import_still_sets_the_exit_code(tmp_path):
    """A signal that lands in an import is sent again IMPORT_RETRY_SECONDS later; a command that ends
    before then must not exit 0 as if it had never been told to stop (it used to)."""
    (tmp_path / "quick_module.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    code = textwrap.dedent(
        f"""
        import sys
        from dl_lab import signals
        from dl_lab.cli.app import exit_now

        sys.path.insert(0, {str(tmp_path)!r})
        signals.install()
        signals.IMPORT_RETRY_SECONDS = 30.0  # the retry would come long after the exit
        import quick_module  # the command's last import, then its work is done
        print("done", signals.unanswered())
        exit_now(0)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["done", str(int(signal.SIGTERM))] and done.stderr == ""
    assert done.returncode == 143
