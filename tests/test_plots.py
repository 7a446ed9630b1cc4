"""Plots are drawn by two processes where two CPUs are usable; what is written never depends on the helper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_tensorboard import compare_relu_sigmoid

from dl_lab.analysis import plots
from dl_lab.analysis.load import load_compare

ALL = sorted(plots.PLOT_NAMES)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from typer.testing import CliRunner

    folder = compare_relu_sigmoid(CliRunner(), tmp_path_factory.mktemp("runs"))
    return load_compare(folder).results


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_every_plot_is_written_once_and_nothing_else(results, tmp_path):
    assert [p.name for p in plots.write_plots(results, tmp_path)] == list(plots.PLOT_NAMES)
    assert written(tmp_path) == ALL  # no temporaries left by either process
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in ALL)


def test_a_helper_that_fails_has_its_share_drawn_here(results, tmp_path, monkeypatch):
    parent = os.getpid()
    drawn_here = []
    for table in (plots.PLOTS, plots.DIAGNOSTIC_PLOTS):
        for name, draw in list(table.items()):

            def only_here(results, path, draw=draw):
                if os.getpid() != parent:
                    raise RuntimeError("the helper breaks")
                drawn_here.append(path.name)
                draw(results, path)

            monkeypatch.setitem(table, name, only_here)
    plots.write_plots(results, tmp_path)
    assert written(tmp_path) == ALL
    assert sorted(drawn_here) == ALL  # the helper's share too, after it failed


def test_an_interrupt_while_drawing_stops_the_helper_and_leaves_no_temporaries(results, tmp_path, monkeypatch):
    parent = os.getpid()

    def interrupted(results, path):
        if os.getpid() == parent:
            raise KeyboardInterrupt

    monkeypatch.setitem(plots.PLOTS, "curves.png", interrupted)  # drawn here (the second longest)
    with pytest.raises(KeyboardInterrupt):
        plots.write_plots(results, tmp_path)
    assert not [name for name in written(tmp_path) if name.endswith(".tmp")]
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # the helper was reaped: no child left behind


def test_a_killed_command_takes_its_helper_and_its_lock_with_it(results, tmp_path):
    """SIGKILL while the helper draws: the folder's lock is free at once (the helper closed its copy)
    and the helper ends too (PR_SET_PDEATHSIG), instead of writing into a folder nobody holds."""
    import pickle
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from dl_lab.runs.locks import is_locked

    out, marker = tmp_path / "report", tmp_path / "helper.pid"
    out.mkdir()
    (tmp_path / "results.pickle").write_bytes(pickle.dumps(results))
    script = textwrap.dedent(f"""
        import os, pickle, time
        from pathlib import Path
        from dl_lab.analysis import plots
        from dl_lab.runs.locks import FolderLock
        results = pickle.loads(Path({str(tmp_path / "results.pickle")!r}).read_bytes())
        FolderLock(Path({str(out)!r}), "report folder").acquire()
        parent = os.getpid()
        def slow(results, path):
            if os.getpid() != parent:
                Path({str(marker)!r}).write_text(str(os.getpid()))
            time.sleep(60)
        for name in plots.PLOT_NAMES:
            (plots.PLOTS if name in plots.PLOTS else plots.DIAGNOSTIC_PLOTS)[name] = slow
        plots.write_plots(results, Path({str(out)!r}))
    """)
    command = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    helper = int(marker.read_text())
    assert is_locked(out)
    command.send_signal(signal.SIGKILL)
    command.wait()
    assert not is_locked(out)  # at once: the helper holds no copy of the lock
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(helper):
        time.sleep(0.05)
    assert not _alive(helper)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state  # a zombie has ended; only its parent's wait is missing


def test_no_process_to_spare_means_every_plot_is_drawn_here(results, tmp_path, monkeypatch):
    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(plots.os, "fork", no_fork)
    assert [p.name for p in plots.write_plots(results, tmp_path)] == list(plots.PLOT_NAMES)
    assert written(tmp_path) == ALL
