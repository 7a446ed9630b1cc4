"""Aggregate finished runs into comparison tables, expectation checks and summary.json.

Works from files only (run folders), so `dllab report` can rebuild everything without training.
"""

from __future__ import annotations

import math
import operator
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dl_lab.analysis.load import Loaded, RunRecord, VariantResult, load_compare
from dl_lab.analysis.plots import PLOT_NAMES, write_plots
from dl_lab.analysis.stats import paired_test, summarize, verdict
from dl_lab.config.diff import changes_from
from dl_lab.errors import ConfigError
from dl_lab.runs.records import (
    ComparisonSummary,
    ExpectationCheck,
    VariantAggregates,
    VariantSummary,
    VersusBaseline,
)
from dl_lab.runs.store import (
    REPORT_FILES,
    check_report_folder,
    csv_text,
    dump_json,
    make_folder,
    report_outputs,
    write_atomic,
)
from dl_lab.signals import deferred

if TYPE_CHECKING:
    from dl_lab.analysis.plot_service import PlotService

METRICS = ("test_acc", "test_loss", "train_acc", "train_loss")
OPERATORS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}


# ---- table -------------------------------------------------------------------------------------


def table_rows(results: Sequence[VariantResult], alpha: float = 0.05) -> list[dict[str, Any]]:
    """One row per variant; the first variant is the baseline for differences and tests."""
    baseline = results[0]
    rows = []
    for result in results:
        acc = summarize(result.finals("test_acc")) if result.runs else None
        loss = summarize(result.finals("test_loss")) if result.runs else None
        shared = [s for s in result.seeds if s in baseline.seeds]
        test = paired_test(result.finals("test_acc", shared), baseline.finals("test_acc", shared)) if shared else None
        gaps = [_train_acc(r) - r.final.test_acc for r in result.runs]
        ratios = [
            r.summary.diagnostics.gradient_ratio_first_last
            for r in result.runs
            if r.summary.diagnostics and r.summary.diagnostics.gradient_ratio_first_last
        ]
        rows.append(
            {
                "variant": result.label,
                "changes": "baseline" if result is baseline else changes_from(baseline.config, result.config),
                "seeds": len(result.runs),
                "test_acc_mean": acc.mean if acc else None,
                "test_acc_std": acc.std if acc else None,
                "test_acc_ci95_low": acc.ci95[0] if acc and acc.ci95 else None,
                "test_acc_ci95_high": acc.ci95[1] if acc and acc.ci95 else None,
                "test_loss_mean": loss.mean if loss else None,
                "test_loss_std": loss.std if loss else None,
                "train_test_gap": sum(gaps) / len(gaps) if gaps else None,
                "seconds_per_run": sum(r.summary.seconds or 0.0 for r in result.runs) / len(result.runs)
                if result.runs
                else None,
                # geometric mean: the ratios span orders of magnitude
                "grad_ratio_first_last": math.exp(statistics.fmean(math.log(r) for r in ratios)) if ratios else None,
                "diff_vs_baseline": None if result is baseline or test is None else test.mean_difference,
                "p_value": None if result is baseline or test is None else test.p_value,
                "verdict": "baseline" if result is baseline else (verdict(test, alpha) if test else "no matched seeds"),
                "best": False,
            }
        )
    scored = [row for row in rows if row["test_acc_mean"] is not None]
    if scored:
        max(scored, key=lambda row: row["test_acc_mean"])["best"] = True
    return rows


def _train_acc(record: RunRecord) -> float:
    """Eval-mode train accuracy when the run measured it (train.eval_train), else the training-pass one."""
    last = record.metrics[-1] if record.metrics else {}
    return last.get("train_eval_acc", record.final.train_acc)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


TABLE_HEADER = [
    "variant",
    "changes",
    "seeds",
    "test_acc (mean ± std)",
    "95% CI",
    "test_loss",
    "train−test gap",
    "grad L1/Llast",
    "s/run",
    "Δ test_acc vs baseline",
    "p (paired t)",
    "verdict",
]


def display_cells(row: dict[str, Any]) -> list[str]:
    acc = (
        f"{_fmt(row['test_acc_mean'])} ± {_fmt(row['test_acc_std'])}"
        if row["test_acc_std"] is not None
        else _fmt(row["test_acc_mean"])
    )
    ci = (
        f"[{_fmt(row['test_acc_ci95_low'])}, {_fmt(row['test_acc_ci95_high'])}]"
        if row["test_acc_ci95_low"] is not None
        else "—"
    )
    diff = "—" if row["diff_vs_baseline"] is None else f"{100 * row['diff_vs_baseline']:+.2f} pts"
    p = "—" if row["p_value"] is None else f"{row['p_value']:.3g}"
    ratio = "—" if row.get("grad_ratio_first_last") is None else f"{row['grad_ratio_first_last']:.2g}"
    return [
        row["variant"] + (" ★" if row["best"] else ""),
        row["changes"],
        str(row["seeds"]),
        acc,
        ci,
        _fmt(row["test_loss_mean"]),
        _fmt(row["train_test_gap"]),
        ratio,
        _fmt(row["seconds_per_run"], 1),
        diff,
        p,
        row["verdict"],
    ]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + " --- |" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in display_cells(row)) + " |" for row in rows]
    return (
        "\n".join(lines)
        + "\n\n★ best mean test accuracy. Differences and paired t-tests are against the first variant "
        "(the baseline) over matched seeds. grad L1/Llast: first over last Linear layer's gradient "
        "norm on the probe batch after the last epoch (geometric mean over seeds); far below 1 "
        "means vanishing gradients.\n"
    )


# ---- expectations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    text: str
    left: str
    op: str
    right: str
    metric: str


EXPECT_PATTERN = re.compile(r"^\s*(?P<left>.+?)\s*(?P<op>>=|<=|>|<)\s*(?P<right>.+?)\s*$")


def parse_expectation(text: str, labels: Sequence[str]) -> Expectation:
    """'relu > sigmoid' (test_acc) or 'relu.test_loss < sigmoid.test_loss'."""
    match = EXPECT_PATTERN.match(text)
    if not match:
        raise ConfigError(
            f"--expect {text!r}: expected 'A > B' or 'A.metric < B.metric' with variants {', '.join(labels)}"
        )
    sides = []
    for side in (match["left"], match["right"]):
        name, _, metric = side.rpartition(".")
        if side in labels:
            sides.append((side, None))
        elif name in labels and metric in METRICS:
            sides.append((name, metric))
        else:
            raise ConfigError(
                f"--expect {text!r}: unknown variant or metric {side!r}; variants: {', '.join(labels)}; "
                f"metrics: {', '.join(METRICS)} (default test_acc)"
            )
    metrics = {m for _, m in sides if m}
    if len(metrics) > 1:
        raise ConfigError(f"--expect {text!r}: both sides must compare the same metric")
    return Expectation(text.strip(), sides[0][0], match["op"], sides[1][0], metrics.pop() if metrics else "test_acc")


def check_expectation(
    expectation: Expectation, results: Sequence[VariantResult], alpha: float | None
) -> ExpectationCheck:
    by_label = {r.label: r for r in results}
    left, right = by_label[expectation.left], by_label[expectation.right]
    if not left.runs or not right.runs:
        return ExpectationCheck(expectation=expectation.text, holds=False, detail="no completed runs to compare")
    left_mean = sum(left.finals(expectation.metric)) / len(left.runs)
    right_mean = sum(right.finals(expectation.metric)) / len(right.runs)
    holds = OPERATORS[expectation.op](left_mean, right_mean)
    shared = [s for s in left.seeds if s in right.seeds]
    test = paired_test(left.finals(expectation.metric, shared), right.finals(expectation.metric, shared))
    detail = f"{expectation.metric}: {left_mean:.4f} {expectation.op} {right_mean:.4f}"
    if alpha is not None:
        significant = test.p_value is not None and test.p_value < alpha
        detail += f", p={'n/a' if test.p_value is None else f'{test.p_value:.3g}'} (alpha {alpha})"
        holds = holds and significant
    return ExpectationCheck(
        expectation=expectation.text,
        metric=expectation.metric,
        holds=holds,
        left=left_mean,
        right=right_mean,
        p_value=test.p_value,
        detail=detail,
    )


# ---- summary -----------------------------------------------------------------------------------

AGGREGATES = tuple(VariantAggregates.model_fields)  # table columns kept per variant in summary.json


def build_summary(
    results: Sequence[VariantResult],
    rows: Sequence[dict[str, Any]],
    seeds: Sequence[int],
    expectations: Sequence[ExpectationCheck],
    status: str,
    folder: Path,
    unfinished: Sequence[str],
    engine: str | None,
    plots: Sequence[str],
    outputs: Sequence[str],
) -> ComparisonSummary:
    fields: dict[str, Any] = dict(  # noqa: C408 (keyword form reads like the file)
        kind="comparison",
        folder=str(folder),
        status=status,
        seeds=list(seeds),
        best=next((row["variant"] for row in rows if row["best"]), None),
        variants=[
            VariantSummary(
                label=result.label,
                changes=row["changes"],
                config=result.config.to_dict(),
                finals={str(run.seed): run.final for run in result.runs},
                aggregates=VariantAggregates(**{k: row[k] for k in AGGREGATES}),
                vs_baseline=VersusBaseline(
                    mean_difference=row["diff_vs_baseline"], p_value=row["p_value"], verdict=row["verdict"]
                ),
            )
            for result, row in zip(results, rows)
        ],
        expectations=list(expectations),
        unfinished=list(unfinished),
    )
    if engine:
        fields["engine"] = engine  # how the runs trained in this invocation were trained
    return ComparisonSummary(**fields, plots=list(plots), outputs=list(outputs))


def output_names() -> list[str]:
    """Every file a report may write."""
    return [*REPORT_FILES, *PLOT_NAMES]


@dataclass
class ClaimedReport:
    """A report whose summary.json is written (claiming its files); complete_report writes the rest."""

    folder: Path
    loaded: Loaded
    rows: list[dict[str, Any]]
    earlier: set[str]
    summary: Callable[[Sequence[str], Sequence[str]], ComparisonSummary]


def claim_report(
    folder: Path,
    loaded: Loaded,
    expectations: Sequence[Expectation],
    alpha: float | None,
    status: str,
    engine: str | None = None,
    compare_folder: Path | None = None,
) -> ClaimedReport:
    """Check ``folder`` (store.check_report_folder says where a report may go), compute the tables and
    write summary.json first, claiming every file this report may write, so a report killed half-way
    leaves files a later report recognises as its own and a status that is already true."""
    check_report_folder(folder, output_names(), compare_folder)
    earlier = report_outputs(folder) if folder.is_dir() else set()
    rows = table_rows(loaded.results, alpha if alpha is not None else 0.05)
    checks = [check_expectation(e, loaded.results, alpha) for e in expectations]

    def summary(plots: Sequence[str], outputs: Sequence[str]) -> ComparisonSummary:
        return build_summary(
            loaded.results, rows, loaded.seeds, checks, status, folder, loaded.unfinished, engine, plots, outputs
        )

    make_folder(folder, "--out")
    write_atomic(folder / "summary.json", dump_json(summary([], output_names()).to_json_dict()))
    return ClaimedReport(folder, loaded, rows, earlier, summary)


def complete_report(claimed: ClaimedReport, plot_service: PlotService | None = None) -> ComparisonSummary:
    """table.md, table.csv and the PNG plots (through ``plot_service`` where the command started one),
    each written atomically, then summary.json again with what was written; returns the summary."""
    folder, rows = claimed.folder, claimed.rows
    write_atomic(folder / "table.md", markdown_table(rows))
    write_atomic(folder / "table.csv", csv_text(list(rows[0]), rows, digits=None))  # full precision: p-values
    plots = [p.name for p in write_plots(claimed.loaded.results, folder, plot_service)]
    # Files written by this report or an earlier one: a later report may overwrite exactly these.
    kept = (n for n in claimed.earlier if (folder / n).exists())
    final = claimed.summary(plots, sorted({*REPORT_FILES, *plots, *kept}))
    write_atomic(folder / "summary.json", dump_json(final.to_json_dict()))
    return final


def table_rows_from_summary(summary: ComparisonSummary) -> list[dict[str, Any]]:
    """Rebuild the table rows that build_summary stored (for rendering without recomputing)."""
    return [
        {
            "variant": v.label,
            "changes": v.changes,
            **v.aggregates.model_dump(),
            "diff_vs_baseline": v.vs_baseline.mean_difference,
            "p_value": v.vs_baseline.p_value,
            "verdict": v.vs_baseline.verdict,
            "best": v.label == summary.best,
        }
        for v in summary.variants
    ]


def report_compare(
    folder: Path,
    expectations: Sequence[Expectation],
    alpha: float | None,
    interrupted: bool = False,
    engine: str | None = None,
    plot_service: PlotService | None = None,
) -> ComparisonSummary:
    """Rebuild a compare folder's outputs from its runs; status says whether every planned run completed.

    A signal waits until summary.json holds that status: an interrupted report still leaves a true one."""
    with deferred():
        loaded = load_compare(folder)
        status = "completed" if not loaded.unfinished else "interrupted" if interrupted else "failed"
        claimed = claim_report(folder, loaded, expectations, alpha, status, engine, compare_folder=folder)
    return complete_report(claimed, plot_service)
