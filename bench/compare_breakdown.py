"""Where the time of one `dllab compare relu sigmoid --seeds 5 --set train.epochs=1 --set device=cpu`
goes, phase by phase, in one fresh process that takes the command's steps in its order:
interpreter and imports, planning and folder, data loading, training (with evaluation and
diagnostics, as the runs' own `seconds`), run-folder writes, tables and statistics, plots.

Usage: DLLAB_DATA_DIR=../shared/data python bench/compare_breakdown.py [--engine batched|sequential] [--epochs 1]
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import dl_lab.cli.app  # noqa: E402, F401

CLI_READY = time.perf_counter()

import torch  # noqa: E402

TORCH = time.perf_counter()


from dl_lab.analysis import plots, report  # noqa: E402
from dl_lab.experiments.execute import load_data_for, run_compare  # noqa: E402
from dl_lab.experiments.planning import plan_comparison, units_to_train  # noqa: E402
from dl_lab.runs.comparison import create_compare_dir  # noqa: E402
from dl_lab.training.device import cpu_kind  # noqa: E402
from dl_lab.training.events import Observer  # noqa: E402

IMPORTED = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="batched")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    phases: dict[str, float] = {
        "interpreter, typer, dl_lab CLI": CLI_READY - START,
        "import torch": TORCH - CLI_READY,
        "import the rest of dl_lab": IMPORTED - TORCH,
    }
    with tempfile.TemporaryDirectory() as root:
        lap = time.perf_counter()
        plan = plan_comparison(["relu", "sigmoid"], [f"train.epochs={args.epochs}", "device=cpu"], [], args.seeds,
                               engine=args.engine)  # fmt: skip
        folder, lock = create_compare_dir(Path(root), plan, {})
        phases["plan, compare folder"] = time.perf_counter() - lap
        lap = time.perf_counter()
        data = load_data_for([run.config for run in plan.runs], os.environ)
        phases["data loading (MNIST onto the device)"] = time.perf_counter() - lap
        lap = time.perf_counter()
        summaries, _ = run_compare(folder, plan, units_to_train(plan, frozenset()), data, Observer())
        total = time.perf_counter() - lap
        trained = sum(s.seconds or 0.0 for s in summaries)
        phases["training, evaluation, diagnostics (runs' seconds)"] = trained
        phases["around training: models, run files, events"] = total - trained
        drawn = []
        original = plots.write_plots

        def timed_plots(*a, **k):
            start = time.perf_counter()
            out = original(*a, **k)
            drawn.append(time.perf_counter() - start)
            return out

        report.write_plots = timed_plots
        lap = time.perf_counter()
        report.report_compare(folder, [], None)
        reported = time.perf_counter() - lap
        phases["tables, statistics, summary.json"] = reported - drawn[0]
        phases["plots (5 PNG, matplotlib)"] = drawn[0]
        lock.release()
    whole = time.perf_counter() - START
    print(f"machine: {cpu_kind()}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"engine {args.engine}, {args.seeds} seeds x 2 variants, {args.epochs} epoch(s)")  # fmt: skip
    for name, seconds in phases.items():
        print(f"{name:<58} {seconds:6.2f} s  {100 * seconds / whole:5.1f}%")
    print(f"{'whole process (to here)':<58} {whole:6.2f} s; not training: {whole - trained:.2f} s")
    print(f"torch._dynamo loaded: {'torch._dynamo' in sys.modules}")


if __name__ == "__main__":
    main()
