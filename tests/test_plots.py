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
