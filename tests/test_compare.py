"""`dllab compare` and `dllab report`: variants, matched seeds, files, expectations, exit codes, resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import needs_mnist, sets

from dl_lab.cli.app import app
from dl_lab.config.diff import changes_from
from dl_lab.config.loader import load_config
from dl_lab.errors import ConfigError
from dl_lab.experiments.planning import parse_vary, plan_comparison, split_values

SYNTH = sets("device=cpu", "data.dataset=synthetic", "data.train_subset=1000", "train.epochs=1")


def compare(runner, tmp_path, *args):
    result = runner.invoke(app, ["compare", *args, "--runs-dir", str(tmp_path / "runs")])
    folders = sorted((tmp_path / "runs").glob("compare-*")) if (tmp_path / "runs").exists() else []
    return result, folders


def test_vary_values_split_on_top_level_commas_only():
    assert split_values("sigmoid, relu") == ["sigmoid", "relu"]
    assert split_values("[256, 256],[64]") == ["[256, 256]", "[64]"]
    assert parse_vary(["model.init=normal,xavier_uniform"]) == [("model.init", ["normal", "xavier_uniform"])]
    for bad in ["model.init", "model.init=", "=a,b", "model.init=a,,b"]:
        with pytest.raises(ConfigError, match="--vary"):
            parse_vary([bad])


def test_a_vary_grid_expands_into_labelled_variants_with_matched_seeds():
    plan = plan_comparison(
        ["relu"], ["seed=5"], ["model.activation=sigmoid,tanh,relu", "model.init=normal,xavier_uniform"], seeds=3
    )
    assert [v.label for v in plan.variants] == [
        "activation=sigmoid,init=normal",
        "activation=sigmoid,init=xavier_uniform",
        "activation=tanh,init=normal",
        "activation=tanh,init=xavier_uniform",
        "activation=relu,init=normal",
        "activation=relu,init=xavier_uniform",
    ]
    assert plan.seeds == (5, 6, 7)
    runs = plan.runs
    assert len(runs) == 18 and [r.seed for r in runs[:6]] == [5] * 6  # seed-major, every variant per seed
    assert runs[1].config.model.init == "xavier_uniform" and runs[1].config.seed == 5


def test_plan_refuses_duplicates_and_bad_seed_counts():
    with pytest.raises(ConfigError, match="appears twice"):
        plan_comparison(["relu", "relu"], [], [], 2)
    with pytest.raises(ConfigError, match="--seeds"):
        plan_comparison(["relu"], [], [], 0)
    with pytest.raises(ConfigError, match="at least one config"):
        plan_comparison([], [], [], 2)


def test_changes_name_only_the_keys_that_differ():
    base = load_config("relu").config
    other = load_config("relu", ["model.activation=sigmoid", "optimizer.lr=0.01", "seed=3"]).config
    assert changes_from(base, other) == "activation=sigmoid, lr=0.01"
    assert changes_from(base, base) == "—"


def test_compare_writes_tables_plots_and_a_summary_and_checks_expectations(runner, tmp_path):
    result, [folder] = compare(
        runner,
        tmp_path,
        "relu",
        "sigmoid",
        "--seeds",
        "2",
        *SYNTH,
        "--set",
        "data.train_subset=6000",
        "--set",
        "train.epochs=2",
        "--expect",
        "relu > sigmoid",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((folder / "summary.json").read_text())
    assert {"table.md", "table.csv", "summary.json", "plan.json"} <= {p.name for p in folder.iterdir()}
    assert {
        "curves.png",
        "train_vs_test_loss.png",
        "final_accuracy.png",
        "gradient_norms.png",
        "activation_histograms.png",
    } <= {p.name for p in folder.glob("*.png")}
    relu, sigmoid = summary["variants"]
    assert (relu["label"], sigmoid["label"]) == ("relu", "sigmoid")
    assert list(relu["finals"]) == list(sigmoid["finals"]) == ["777", "778"]  # matched seeds
    assert sigmoid["changes"] == "activation=sigmoid"
    assert relu["aggregates"]["test_acc_mean"] > sigmoid["aggregates"]["test_acc_mean"]
    assert relu["aggregates"]["grad_ratio_first_last"] > 0
    assert summary["best"] == "relu"
    assert summary["expectations"][0]["holds"] is True
    table = (folder / "table.md").read_text()
    assert "relu ★" in table and "activation=sigmoid" in table and "p (paired t)" in table and "grad L1/Llast" in table
    rows = list(csv.DictReader((folder / "table.csv").open()))
    assert [row["variant"] for row in rows] == ["relu", "sigmoid"]
    assert float(rows[1]["p_value"]) == sigmoid["vs_baseline"]["p_value"]  # full precision, not rounded
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "relu-seed777",
        "relu-seed778",
        "sigmoid-seed777",
        "sigmoid-seed778",
    ]

    # A failing expectation exits 1, also on --resume of the finished folder, which trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/summary.json")}
    resumed = runner.invoke(app, ["compare", "--resume", str(folder), "--expect", "sigmoid > relu"])
    assert resumed.exit_code == 1, resumed.output
    assert "FAILS" in resumed.stdout and "0 run(s) trained, 4 kept" in resumed.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in folder.glob("*/summary.json")}
    # A named metric: with N(0, 1) init ReLU's test loss is far above sigmoid's, so this one fails too.
    losses = {v["label"]: v["aggregates"]["test_loss_mean"] for v in summary["variants"]}
    assert losses["relu"] > losses["sigmoid"]
    by_loss = runner.invoke(
        app,
        [
            "compare",
            "--resume",
            str(folder),
            "--json",
            "--expect",
            "relu.test_loss < sigmoid.test_loss",
            "--expect",
            "relu > sigmoid",
        ],
    )
    assert by_loss.exit_code == 1
    checks = json.loads(by_loss.stdout)["expectations"]
    assert [(c["metric"], c["holds"]) for c in checks] == [("test_loss", False), ("test_acc", True)]
    assert checks[0]["left"] == pytest.approx(losses["relu"]) and checks[0]["right"] == pytest.approx(losses["sigmoid"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["relu", "sigmoid", "--expect", "relu > tanh"], "unknown variant or metric 'tanh'"),
        (["relu", "sigmoid", "--expect", "relu >> sigmoid"], "unknown variant"),
        (["relu", "sigmoid", "--expect", "relu.test_acc > sigmoid.test_loss"], "same metric"),
        (["relu", "sigmoid", "--alpha", "2"], "--alpha"),
        (["relu", "--vary", "model.activation"], "--vary"),
        (["relu", "--set", "model.dropout=2"], "model.dropout"),
        (["nosuchconfig"], "no such config file"),
    ],
)
def test_bad_compare_input_exits_2_before_training(runner, tmp_path, args, words):
    result, folders = compare(runner, tmp_path, *args, *SYNTH)
    assert result.exit_code == 2, result.output
    assert words in result.stderr and "Traceback" not in result.output
    assert folders == []


def test_a_3x2_grid_runs_six_variants(runner, tmp_path):
    result, [folder] = compare(
        runner,
        tmp_path,
        "relu",
        "--seeds",
        "1",
        *SYNTH,
        "--set",
        "model.hidden=[32]",
        "--vary",
        "model.activation=sigmoid,tanh,relu",
        "--vary",
        "model.init=normal,xavier_uniform",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert len(summary["variants"]) == 6 and len([p for p in folder.iterdir() if p.is_dir()]) == 6
    assert all(v["vs_baseline"]["verdict"] in ("baseline", "too few seeds to tell") for v in summary["variants"])


def test_the_terminal_table_shows_long_grid_labels_whole(runner, tmp_path):
    result, _ = compare(
        runner,
        tmp_path,
        "relu",
        "--seeds",
        "1",
        *SYNTH,
        "--set",
        "model.hidden=[16]",
        "--vary",
        "model.activation=sigmoid,tanh",
        "--vary",
        "model.init=xavier_uniform,he_normal",
        "--vary",
        "optimizer.lr=0.001,0.002",
    )
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for part in ("activation=sigmoid,", "activation=tanh,", "init=xavier_uniform,", "lr=0.002"):
        assert part in result.stdout


def test_a_failed_run_exits_3(runner, tmp_path, monkeypatch):
    import dl_lab.training.engine

    monkeypatch.setattr(dl_lab.training.engine, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    result, [folder] = compare(runner, tmp_path, "relu", "sigmoid", "--seeds", "1", *SYNTH)
    assert result.exit_code == 3, result.output
    assert "run(s) failed or diverged" in result.stderr
    assert json.loads((folder / "summary.json").read_text())["status"] == "failed"


def test_an_interrupt_while_a_run_folder_is_created_marks_that_run_interrupted(runner, tmp_path, monkeypatch):
    """The signal waits out the folder's creation (a deferred section), then lands before the engine
    counts the run as started: the comparison must still close the run it created."""
    import os

    from dl_lab.runs.recorder import RunRecorder

    created, start = [], RunRecorder.__post_init__

    def post_init(self):
        created.append(self.folder.name)
        if len(created) == 3:  # the first run of the second stack
            os.kill(os.getpid(), signal.SIGINT)
        start(self)

    monkeypatch.setattr(RunRecorder, "__post_init__", post_init)
    result, [folder] = compare(runner, tmp_path, "relu", "sigmoid", "--seeds", "2", "--stacks", "variant", *SYNTH)
    assert result.exit_code == 130, result.output
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in folder.glob("*/summary.json")}
    assert statuses == {"relu-seed777": "completed", "relu-seed778": "completed", "sigmoid-seed777": "interrupted"}
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize(
    "module, name, status",
    [
        ("dl_lab.runs.comparison", "create_run_dir", "interrupted"),  # inside the folder's deferred creation
        ("dl_lab.cli.progress", "progress_for", "interrupted"),  # the folder is held, nothing trains yet
        ("dl_lab.experiments.execute", "environment", "interrupted"),  # before the first unit
        ("dl_lab.analysis.report", "load_compare", "completed"),  # every run done: the report is what is cut
    ],
)
def test_an_interrupt_outside_training_still_leaves_the_comparison_a_true_summary(
    runner, tmp_path, monkeypatch, module, name, status
):
    import importlib
    import os

    target = importlib.import_module(module)
    original = getattr(target, name)

    def interrupted_here(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupted_here)
    result, [folder] = compare(runner, tmp_path, "relu", "sigmoid", "--seeds", "1", *SYNTH)
    assert result.exit_code == 130, result.output
    assert json.loads((folder / "summary.json").read_text())["status"] == status
    runs = [json.loads(p.read_text())["status"] for p in folder.glob("*/summary.json")]
    assert runs == ([] if status == "interrupted" else ["completed", "completed"])


@pytest.mark.filterwarnings("error")  # plots of a variant without a finished run must not warn
def test_a_variant_whose_runs_all_diverged_still_gets_tables_and_plots(runner, tmp_path):
    result, [folder] = compare(
        runner,
        tmp_path,
        "relu",
        "sigmoid",
        "--seeds",
        "1",
        *SYNTH,
        "--set",
        "optimizer.name=sgd",
        "--set",
        "optimizer.lr=50",
    )
    assert result.exit_code == 3, result.output
    assert "1 run(s) failed or diverged" in result.stderr and "relu-seed777 (diverged)" in result.stderr
    assert json.loads((folder / "relu-seed777" / "summary.json").read_text())["status"] == "diverged"
    assert {"curves.png", "final_accuracy.png", "train_vs_test_loss.png", "table.md"} <= {
        p.name for p in folder.iterdir()
    }
    assert "| relu | baseline | 0 |" in (folder / "table.md").read_text()


def test_diagnostic_plots_name_the_variants_they_leave_out():
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from dl_lab.analysis.plots import _suptitle

    figure, (a, b) = Figure(), [SimpleNamespace(label="relu"), SimpleNamespace(label="sigmoid")]
    _suptitle(figure, "Gradient norm per layer", [a, b], [b])
    assert figure.get_suptitle() == "Gradient norm per layer\nnot shown (no finished run with diagnostics): relu"
    _suptitle(figure, "Gradient norm per layer", [a, b], [a, b])
    assert figure.get_suptitle() == "Gradient norm per layer"


def test_killing_a_compare_and_resuming_it_does_not_retrain_completed_runs(tmp_path):
    runs = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "dl_lab",
        "compare",
        "relu",
        "sigmoid",
        "--seeds",
        "3",
        "--stacks",
        "variant",  # two stacks: the first completes while the second trains
        *SYNTH,
        "--set",
        "train.epochs=40",
        "--runs-dir",
        str(runs),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [p for p in runs.glob("compare-*/*/summary.json") if json.loads(p.read_text())["status"] == "completed"]
        if done:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    [folder] = runs.glob("compare-*")
    kept = {
        p.parent.name: p.stat().st_mtime_ns
        for p in folder.glob("*/summary.json")
        if json.loads(p.read_text())["status"] == "completed"
    }
    assert 1 <= len(kept) < 6
    assert json.loads((folder / "summary.json").read_text())["status"] == "interrupted"

    resumed = subprocess.run(
        [sys.executable, "-m", "dl_lab", "compare", "--resume", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{6 - len(kept)} run(s) trained, {len(kept)} kept" in resumed.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("*/summary.json")}
    assert len(after) == 6 and all(after[name] == stamp for name, stamp in kept.items())
    assert json.loads((folder / "summary.json").read_text())["status"] == "completed"


def test_report_rebuilds_a_compare_folder_and_groups_loose_train_runs(runner, tmp_path, write_config, monkeypatch):
    _, [folder] = compare(runner, tmp_path, "relu", "sigmoid", "--seeds", "2", *SYNTH)
    before = json.loads((folder / "summary.json").read_text())
    for name in ["table.md", "table.csv", "summary.json", "curves.png"]:
        (folder / name).unlink()
    rebuilt = runner.invoke(app, ["report", str(folder), "--json"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.stdout)["variants"] == before["variants"]
    assert (folder / "table.md").is_file() and (folder / "curves.png").is_file()

    loose = tmp_path / "loose"
    config = write_config(
        {"device": "cpu", "data": {"dataset": "synthetic", "train_subset": 1000}, "train": {"epochs": 1}}, "mlp"
    )
    for seed in (1, 2):
        for activation in ("relu", "tanh"):
            args = [
                "train",
                "-c",
                str(config),
                *sets(f"seed={seed}", f"model.activation={activation}", f"name={activation}"),
                "--runs-dir",
                str(loose),
            ]
            assert runner.invoke(app, args).exit_code == 0
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(loose), "--out", str(out), "--json", "--expect", "relu > tanh"])
    summary = json.loads(result.stdout)
    means = {v["label"]: v["aggregates"]["test_acc_mean"] for v in summary["variants"]}
    holds = means["relu"] > means["tanh"]
    assert summary["expectations"][0]["holds"] is holds and result.exit_code == (0 if holds else 1)
    assert sorted(means) == ["relu", "tanh"]
    assert all(len(v["finals"]) == 2 for v in summary["variants"])
    assert (out / "table.md").is_file()
    assert runner.invoke(app, ["report", str(tmp_path / "nothing")]).exit_code == 2
    # Without --out: a new runs/report-<time> folder each time (create_run_dir: unique even within a second).
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert runner.invoke(app, ["report", str(loose)]).exit_code == 0
    reports = sorted((tmp_path / "runs").glob("report-*"))
    assert len(reports) == 2 and all((folder / "summary.json").is_file() for folder in reports)


@needs_mnist
def test_acceptance_relu_beats_sigmoid_on_a_deep_sgd_stack(runner, tmp_path):
    deep = [
        "--seeds",
        "2",
        *sets(
            "train.epochs=1",
            "model.hidden=[256,256,256,256,256,256]",
            "optimizer.name=sgd",
            "optimizer.lr=0.01",
            "model.init=xavier_uniform",
            "device=cpu",
            "data.download=false",
        ),
    ]
    result, [folder] = compare(runner, tmp_path, "sigmoid", "relu", *deep, "--json", "--expect", "relu > sigmoid")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    sigmoid, relu = summary["variants"]
    assert relu["aggregates"]["test_acc_mean"] > sigmoid["aggregates"]["test_acc_mean"] + 0.3
    assert summary["best"] == "relu" and len(list(folder.glob("*.png"))) >= 2
    wrong = runner.invoke(app, ["compare", "--resume", str(folder), "--expect", "sigmoid > relu"])
    assert wrong.exit_code == 1 and "0 run(s) trained" in wrong.stdout


def table_lines(output: str) -> list[str]:
    """The rows of the terminal table: the lines between its header rule and the blank line after."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"}) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("columns", [80, 120])
def test_the_terminal_table_fits_the_terminal_without_wrapping_a_cell(runner, tmp_path, columns):
    result, [folder] = compare(runner, tmp_path, "relu", "sigmoid", "--seeds", "2", *SYNTH)
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["report", str(folder)], env={"COLUMNS": str(columns)})
    assert shown.exit_code == 0, shown.output
    header = next(line for line in shown.stdout.splitlines() if "variant" in line)
    assert header.split() == ["variant", "test_acc", "Δ", "test_acc", "p", "verdict"]
    rows = [line.strip() for line in table_lines(shown.stdout) if line.strip()]
    assert [row.split()[0] for row in rows] == ["relu", "sigmoid"]  # one line per variant: nothing wrapped
    assert all(len(line) <= columns for line in shown.stdout.splitlines())
    assert "0.0" in rows[1] and "pts" in rows[1]  # accuracy, its difference from the baseline and the p-value
    wide = runner.invoke(app, ["report", str(folder), "--wide"], env={"COLUMNS": str(columns)})
    assert wide.exit_code == 0, wide.output
    for header in ("changes", "95% CI", "train−test gap", "grad L1/Llast", "s/run", "p (paired t)"):
        assert header in wide.stdout  # every column, as in table.md
