"""Comparison plots as PNG files (matplotlib, headless). Inputs are the aggregated run records."""

from __future__ import annotations

import os
import signal
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from dl_lab.analysis.load import VariantResult
from dl_lab.runs.locks import drop_inherited
from dl_lab.runs.records import Histogram
from dl_lab.runs.store import atomic_path
from dl_lab.signals import HANDLED, deferred

if TYPE_CHECKING:
    from dl_lab.analysis.plot_service import PlotService


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _curve(result: VariantResult, column: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs and the mean and std of ``column`` over seeds (epochs every seed reached)."""
    epochs = min(len(run.metrics) for run in result.runs)
    means, stds = [], []
    for index in range(epochs):
        values = [run.metrics[index][column] for run in result.runs]
        means.append(statistics.fmean(values))
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return list(range(1, epochs + 1)), means, stds


def _log_if_wide(axis, values: Sequence[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 30:
        axis.set_yscale("log")


def _legend(axis) -> None:
    """A legend where something is labelled (a variant whose runs all failed draws nothing)."""
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)


def _write(plt, figure, path: Path) -> None:
    """Lay out, write the PNG atomically (a kill never leaves half a picture) and free the figure."""
    figure.tight_layout()
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(figure)


def _save(plt, figure, epoch_axes, path: Path) -> None:
    """Integer epoch ticks, grid and legend on each axis, then write the figure."""
    from matplotlib.ticker import MaxNLocator

    for axis in epoch_axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        _legend(axis)
    _write(plt, figure, path)


def plot_curves(results: Sequence[VariantResult], path: Path) -> None:
    """Test accuracy and test loss per epoch: mean line with a ±1 std band over seeds."""
    plt = pyplot()
    figure, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    losses: list[float] = []
    for result in results:
        if not result.runs:
            continue
        for axis, column in [(acc_axis, "test_acc"), (loss_axis, "test_loss")]:
            epochs, mean, std = _curve(result, column)
            (line,) = axis.plot(epochs, mean, marker="o", markersize=3, label=f"{result.label} (n={len(result.runs)})")
            axis.fill_between(
                epochs,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=line.get_color(),
                alpha=0.2,
            )
            if column == "test_loss":
                losses += mean
    acc_axis.set(title="Test accuracy (mean ± std over seeds)", xlabel="epoch", ylabel="test accuracy")
    loss_axis.set(title="Test loss (mean ± std over seeds)", xlabel="epoch", ylabel="test loss (cross-entropy)")
    _log_if_wide(loss_axis, losses)
    _save(plt, figure, [acc_axis, loss_axis], path)


def plot_train_vs_test_loss(results: Sequence[VariantResult], path: Path) -> None:
    """Training loss (dashed) against test loss (solid) per variant: the generalization gap."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    values: list[float] = []
    for result in results:
        if not result.runs:
            continue
        epochs, train, _ = _curve(result, "train_loss")
        _, test, _ = _curve(result, "test_loss")
        (line,) = axis.plot(epochs, test, marker="o", markersize=3, label=f"{result.label} test")
        axis.plot(epochs, train, linestyle="--", color=line.get_color(), label=f"{result.label} train")
        values += train + test
    axis.set(title="Train vs test loss (mean over seeds)", xlabel="epoch", ylabel="loss (cross-entropy)")
    _log_if_wide(axis, values)
    _save(plt, figure, [axis], path)


def plot_final_accuracy(results: Sequence[VariantResult], path: Path) -> None:
    """Final test accuracy of every seed (dots) and the mean (bar) per variant."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 1.3 * len(results) + 2), 4.5))
    labelled = False
    for index, result in enumerate(results):
        finals = result.finals("test_acc")
        if not finals:  # every run of the variant failed or diverged
            continue
        spread = [index + 0.08 * (k - (len(finals) - 1) / 2) for k in range(len(finals))]
        axis.scatter(spread, finals, zorder=3, label=None if labelled else "one seed")
        axis.hlines(
            statistics.fmean(finals),
            index - 0.3,
            index + 0.3,
            color="black",
            zorder=2,
            label=None if labelled else "mean",
        )
        labelled = True
    axis.set_xticks(range(len(results)), [r.label for r in results], rotation=20, ha="right")
    axis.set(title="Final test accuracy per seed", xlabel="variant", ylabel="final test accuracy")
    axis.grid(axis="y", alpha=0.3)
    _legend(axis)
    _write(plt, figure, path)


def _grid(plt, panels: int, columns: int = 3, size: tuple[float, float] = (4.2, 3.3)):
    """Panels sharing one y scale, so variants compare at a glance."""
    rows = (panels + columns - 1) // columns
    columns = min(columns, panels)
    figure, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), squeeze=False, sharey=True)
    for axis in axes.flat[panels:]:
        axis.set_visible(False)
    return figure, list(axes.flat)


def _suptitle(figure, title: str, results: Sequence[VariantResult], shown: Sequence[VariantResult]) -> None:
    """The figure's title, naming the variants left out (no finished run with diagnostics)."""
    missing = [r.label for r in results if not any(r is s for s in shown)]
    figure.suptitle(
        title + (f"\nnot shown (no finished run with diagnostics): {', '.join(missing)}" if missing else "")
    )


def plot_gradient_norms(results: Sequence[VariantResult], path: Path) -> None:
    """Per variant: the gradient norm of each Linear layer (x) after a few epochs (lines), log scale.

    A profile falling steeply towards layer 1 is the signature of vanishing gradients.
    """
    plt = pyplot()
    shown = [r for r in results if r.runs and "grad_norm_1" in r.runs[0].metrics[0]]
    figure, axes = _grid(plt, len(shown))
    for axis, result in zip(axes, shown):
        layers = sum(1 for key in result.runs[0].metrics[0] if key.startswith("grad_norm_"))
        curves = [_curve(result, f"grad_norm_{layer}")[1] for layer in range(1, layers + 1)]
        epochs = len(curves[0])
        for epoch in sorted({0, epochs // 3, 2 * epochs // 3, epochs - 1}):
            axis.plot(
                range(1, layers + 1),
                [max(curve[epoch], 1e-30) for curve in curves],
                marker="o",
                markersize=3,
                label=f"after epoch {epoch + 1}",
            )
        axis.set_yscale("log")
        axis.set(title=result.label, xlabel="Linear layer (1 = input side)", ylabel="gradient norm (probe batch)")
    _suptitle(figure, "Gradient norm per layer (mean over seeds)", results, shown)
    _save(plt, figure, axes[: len(shown)], path)


def plot_activation_histograms(results: Sequence[VariantResult], path: Path) -> None:
    """Per variant (rows) and hidden layer (columns): the distribution of activation outputs after training."""
    plt = pyplot()
    shown = [r for r in results if r.runs and _histograms(r)]
    layers = max(len(_histograms(r)) for r in shown)
    figure, axes = plt.subplots(len(shown), layers, figsize=(2.8 * layers + 1, 2.3 * len(shown) + 0.8), squeeze=False)
    for row, result in enumerate(shown):
        histograms = _histograms(result)
        for column in range(layers):
            axis = axes[row][column]
            if column >= len(histograms):
                axis.set_visible(False)
                continue
            low, high = histograms[column].edges
            counts = histograms[column].counts
            width = (high - low) / len(counts) if high > low else 1.0
            axis.bar([low + width * (i + 0.5) for i in range(len(counts))], counts, width=width)
            axis.set_title(f"{result.label}: layer {column + 1}", fontsize=8)
            axis.tick_params(labelsize=7)
            if row == len(shown) - 1:
                axis.set_xlabel("activation output", fontsize=8)
            if column == 0:
                axis.set_ylabel(f"count (seed {result.runs[0].seed})", fontsize=8)
    _suptitle(figure, "Activation outputs per hidden layer on the probe batch after training", results, shown)
    _write(plt, figure, path)


def _histograms(result: VariantResult) -> list[Histogram]:
    """The first seed's activation histograms, one per hidden layer ([] without diagnostics)."""
    diagnostics = result.runs[0].summary.diagnostics
    return diagnostics.activation_histograms if diagnostics else []


PLOTS = {
    "curves.png": plot_curves,
    "train_vs_test_loss.png": plot_train_vs_test_loss,
    "final_accuracy.png": plot_final_accuracy,
}
DIAGNOSTIC_PLOTS = {"gradient_norms.png": plot_gradient_norms, "activation_histograms.png": plot_activation_histograms}
PLOT_NAMES = (*PLOTS, *DIAGNOSTIC_PLOTS)


# Seconds to draw each plot of the 2 x 5 grid (pyplot imported; 2-core Intel Xeon, 2026-11-27): only
# their proportions matter, for splitting the plots between two processes.
COST = {
    "activation_histograms.png": 0.50,
    "curves.png": 0.30,
    "gradient_norms.png": 0.28,
    "train_vs_test_loss.png": 0.23,
    "final_accuracy.png": 0.12,
}


def split_by_cost(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Two shares of about equal drawing time: longest first, each to the share with less so far."""
    shares: tuple[list[str], list[str]] = ([], [])
    for name in sorted(names, key=lambda name: -COST[name]):
        min(shares, key=lambda share: sum(COST[n] for n in share)).append(name)
    return shares


def plot_names(results: Sequence[VariantResult]) -> list[str]:
    """The plots that apply: none without a finished run, the diagnostic ones only with diagnostics."""
    names = [*PLOTS] if any(result.runs for result in results) else []
    if any(result.runs and result.runs[0].summary.diagnostics for result in results):
        names += [*DIAGNOSTIC_PLOTS]
    return names


def write_plots(results: Sequence[VariantResult], folder: Path, service: PlotService | None = None) -> list[Path]:
    """The plots that apply, each written atomically: by ``service`` (plot_service.py, started with
    the command, matplotlib already imported) when it writes them all, else here. With two or more
    CPUs a forked process draws about half of the drawing time (split_by_cost; matplotlib is
    single-threaded: 2.3 s -> 1.3 s for the five plots on 2 cores); if it fails, its share is drawn
    here, so the files written never depend on a helper."""
    names = plot_names(results)
    if service is not None and names and service.draw(names, results, folder):
        return [folder / name for name in names]
    theirs, mine = split_by_cost(names)
    helper = _draw_in_child(theirs, results, folder) if len(names) > 1 else None
    try:
        _draw(mine if helper else [*theirs, *mine], results, folder)
    except BaseException:
        if helper:
            os.kill(helper, signal.SIGTERM)  # it stops between plots' atomic writes
        raise
    finally:
        helped = helper is not None and os.waitstatus_to_exitcode(os.waitpid(helper, 0)[1]) == 0
    if helper and not helped:
        _draw(theirs, results, folder)
    return [folder / name for name in names]


def _draw(names: Sequence[str], results: Sequence[VariantResult], folder: Path) -> None:
    for name in names:
        {**PLOTS, **DIAGNOSTIC_PLOTS}[name](results, folder / name)


def _draw_in_child(names: Sequence[str], results: Sequence[VariantResult], folder: Path) -> int | None:
    """Fork a process that draws ``names`` and exits 0 (1 on any failure or signal); its pid, or None
    where that does not pay or is not safe: one usable CPU, not Linux (the helper must end with its
    parent; macOS frameworks do not survive fork), or Ray's threads in this process."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus < 2 or not sys.platform.startswith("linux") or "ray" in sys.modules:
        return None
    parent, pid = os.getpid(), None
    try:
        # Held, not raised: fork runs Python callbacks (logging's lock) in both processes, and an
        # interrupt raised inside one would be printed and swallowed there ("Exception ignored").
        with deferred():
            pid = os.fork()
            if not pid:
                _helper(names, results, folder, parent)  # never returns
    except OSError:  # no memory or process slots for a helper: the command draws every plot itself
        return None
    except KeyboardInterrupt:  # held during the fork: the helper stops before the command does
        if pid:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        raise
    return pid


def _helper(names: Sequence[str], results: Sequence[VariantResult], folder: Path, parent: int) -> NoReturn:
    """The forked helper: draws ``names`` and exits 0 (1 on any failure or signal); no output, no
    traceback. A signal ends it through atomic_path's cleanup."""
    code = 1
    try:
        for signum in HANDLED:
            signal.signal(signum, _stop)
        drop_inherited()  # the parent's folder locks end with the parent, whatever becomes of this helper
        end_with(parent)
        _draw(names, results, folder)
        code = 0
    finally:
        os._exit(code)


def end_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent ends, even killed (Linux); a helper
    outliving its command would go on writing into a folder nobody holds."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: the helper ends when its plots are drawn
        pass
    if os.getppid() != parent:  # the parent ended before the request took effect
        raise KeyboardInterrupt


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
