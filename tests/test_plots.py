"""Plots are drawn by two processes where two CPUs are usable; what is written never depends on the helper."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import eventually
from test_tensorboard import compare_relu_sigmoid

from dl_lab.analysis import plots
from dl_lab.analysis.load import load_compare

ALL = sorted(plots.PLOT_NAMES)


@pytest.fixture(scope="module")
def compare_folder(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    return compare_relu_sigmoid(CliRunner(), tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def results(compare_folder):
    return load_compare(compare_folder).results


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


def test_a_signal_during_the_forks_own_callbacks_is_held_and_raised_after_it(compare_folder, tmp_path):
    """fork runs Python callbacks (logging registers one); a signal handled inside one used to be
    printed as "Exception ignored" with a traceback, and lost: the plots went on as if none had come."""
    import subprocess
    import sys

    from conftest import child_env

    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from dl_lab import signals\n"
        "from dl_lab.analysis import plots\n"
        "from dl_lab.analysis.load import load_compare\n"
        "signals.install()\n"
        "results = load_compare(Path(sys.argv[1])).results\n"
        "fired = []\n"
        "def after():\n"
        "    if not fired:\n"
        "        fired.append(1)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        sum(range(1000))  # a few bytecodes: Python runs the handler here, inside the callback\n"
        "os.register_at_fork(after_in_parent=after)\n"
        "try:\n"
        "    plots.write_plots(results, Path(sys.argv[2]))\n"
        "except KeyboardInterrupt as stop:\n"
        "    print('interrupted', stop.signum)\n"
        "else:\n"
        "    print('not interrupted')\n"
    )
    out = tmp_path / "plots"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", code, str(compare_folder), str(out)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["interrupted", str(int(signal.SIGTERM))], done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert not [name for name in written(out) if name.endswith(".tmp")]


def test_a_killed_command_takes_its_helper_and_its_lock_with_it(results, tmp_path):
    """SIGKILL while the helper draws: the folder's lock is free at once (the helper closed its copy)
    and the helper ends too (PR_SET_PDEATHSIG), instead of writing into a folder nobody holds."""
    import pickle
    import signal
    import subprocess
    import sys
    import textwrap

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
    assert eventually(marker.exists, 60)
    helper = int(marker.read_text())
    assert is_locked(out)
    command.send_signal(signal.SIGKILL)
    command.wait()
    assert not is_locked(out)  # at once: the helper holds no copy of the lock
    assert eventually(lambda: not _alive(helper))


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


@pytest.mark.parametrize("names", [plots.PLOT_NAMES, tuple(plots.PLOTS), ("curves.png", "final_accuracy.png")])
def test_the_two_shares_hold_every_plot_once_and_about_equal_drawing_time(names):
    theirs, mine = plots.split_by_cost(names)
    assert sorted(theirs + mine) == sorted(names) and theirs and mine
    cost = [sum(plots.COST[name] for name in share) for share in (theirs, mine)]
    assert abs(cost[0] - cost[1]) <= max(plots.COST[name] for name in names)
    if len(names) == 5:  # the 2 x 5 grid's plots: the longest share is within 5% of half the work
        assert max(cost) <= 1.05 * sum(cost) / 2
