"""The plot service `dllab compare` starts (analysis/plot_service.py): it draws what write_plots
draws, and whatever becomes of it, the plots are written and no process is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import child_env, eventually
from test_plots import ALL, _alive, compare_folder, results, written  # noqa: F401 (fixtures)

from dl_lab.analysis import plot_service, plots
from dl_lab.analysis.plot_service import PlotService

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the service is Linux only")


@pytest.fixture
def service(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # an earlier test's Ray would keep it from starting
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the service starts only where two CPUs are usable")
    started = PlotService.start()
    assert started is not None
    yield started
    started.close()


def gone(pid: int) -> bool:
    """Ended and reaped: no process, not even a zombie, has this pid among our children."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_service_writes_exactly_the_plots_write_plots_writes(results, service, tmp_path):  # noqa: F811
    pid = service.pid
    assert service.draw(plots.plot_names(results), results, tmp_path)
    assert written(tmp_path) == ALL
    assert gone(pid) and service.pid == 0
    here = tmp_path / "here"
    here.mkdir()
    plots.write_plots(results, here)
    for name in ALL:  # matplotlib's PNGs carry no timestamp: the same pictures are the same bytes
        assert (tmp_path / name).read_bytes() == (here / name).read_bytes(), name


def test_write_plots_goes_through_the_service_and_draws_nothing_itself(results, service, tmp_path, monkeypatch):  # noqa: F811
    parent = os.getpid()
    drawn_here = []
    for table in (plots.PLOTS, plots.DIAGNOSTIC_PLOTS):
        for name, draw in list(table.items()):

            def watched(results, path, draw=draw):
                if os.getpid() == parent:
                    drawn_here.append(path.name)
                draw(results, path)

            monkeypatch.setitem(table, name, watched)
    assert [p.name for p in plots.write_plots(results, tmp_path, service)] == list(plots.PLOT_NAMES)
    assert written(tmp_path) == ALL and drawn_here == []


def test_a_dead_service_means_the_command_draws_every_plot(results, service, tmp_path):  # noqa: F811
    os.kill(service.pid, signal.SIGKILL)
    assert [p.name for p in plots.write_plots(results, tmp_path, service)] == list(plots.PLOT_NAMES)
    assert written(tmp_path) == ALL
    assert service.pid == 0


def test_a_plot_the_service_fails_is_drawn_by_the_command(results, tmp_path, monkeypatch):  # noqa: F811
    parent = os.getpid()
    draw = plots.PLOTS["curves.png"]

    def broken_there(results, path):
        if os.getpid() != parent:
            raise RuntimeError("the service breaks")
        draw(results, path)

    monkeypatch.setitem(plots.PLOTS, "curves.png", broken_there)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    started = PlotService.start()  # after the patch: the service inherits it
    assert started is not None
    try:
        assert [p.name for p in plots.write_plots(results, tmp_path, started)] == list(plots.PLOT_NAMES)
    finally:
        started.close()
    assert written(tmp_path) == ALL


def test_ctrl_c_is_the_commands_to_handle_and_the_service_waits_on(results, service, tmp_path):  # noqa: F811
    os.kill(service.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the whole process group
    time.sleep(0.5)
    assert _alive(service.pid)
    assert service.draw(plots.plot_names(results), results, tmp_path)
    assert written(tmp_path) == ALL


def test_closing_an_idle_service_ends_it_at_once(service):
    pid, start = service.pid, time.monotonic()
    service.close()
    assert gone(pid) and time.monotonic() - start < 5
    service.close()  # twice is harmless


def test_a_service_that_will_not_end_is_killed_and_reaped_by_close(monkeypatch):
    """Whatever keeps a service from ending (here: SIGTERM ignored, its pipe never read), close() must
    return: the command's exit never waits on it."""
    monkeypatch.setattr(plot_service, "REAP_SECONDS", 0.3)
    jobs_read, jobs_write = os.pipe()
    replies_read, replies_write = os.pipe()
    pid = os.fork()
    if not pid:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    os.close(jobs_read)
    os.close(replies_write)
    stuck, start = PlotService(pid, jobs_write, replies_read), time.monotonic()
    stuck.close()
    assert gone(pid) and 0.3 <= time.monotonic() - start < 5
    assert stuck.pid == 0 and stuck.jobs == stuck.replies == -1


def test_an_interrupt_while_the_service_draws_stops_it_without_temporaries(results, service, tmp_path, monkeypatch):  # noqa: F811
    pid = service.pid

    def interrupted(fd, size):
        time.sleep(0.3)  # the service is drawing by now
        raise KeyboardInterrupt

    monkeypatch.setattr(plot_service.os, "read", interrupted)
    with pytest.raises(KeyboardInterrupt):
        service.draw(plots.plot_names(results), results, tmp_path)
    assert gone(pid)
    # its own helper ends with it (SIGTERM from the kernel), between atomic writes
    assert eventually(lambda: not [name for name in written(tmp_path) if name.endswith(".tmp")])


def test_a_killed_command_takes_its_service_with_it(tmp_path):
    marker = tmp_path / "service.pid"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from dl_lab.analysis.plot_service import PlotService
        service = PlotService.start()
        Path({str(marker)!r}).write_text(str(service.pid))
        time.sleep(60)
    """)
    command = subprocess.Popen([sys.executable, "-c", script], env=child_env())
    assert eventually(marker.exists, 60)
    pid = int(marker.read_text())
    assert _alive(pid)
    command.send_signal(signal.SIGKILL)
    command.wait()
    assert eventually(lambda: not _alive(pid))
