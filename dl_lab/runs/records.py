"""The typed records of the run store: a run's summary.json and a comparison's (or report's) summary.json.

Every writer builds one of these models and every reader parses into one, so the files' keys live in
one place; `dllab config schema --record run|comparison` prints their JSON Schema. Writers set each
field they mean to write and dump with ``exclude_unset``: optional sections (a run's diagnostics, its
pre-training) appear only when they apply, and the short summary written on a full disk holds only
what it sets. Readers ignore keys they do not know, so an older dl_lab can still read a newer file's
common part. Files written before schema_version existed read as version 1. Torch-free.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from dl_lab.config.schema import ExperimentConfig

RUN_SCHEMA_VERSION = 1
COMPARISON_SCHEMA_VERSION = 1
RunStatusName = Literal["running", "completed", "failed", "interrupted", "diverged"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_json_dict(self) -> dict[str, Any]:
        """The fields that were set (and the schema version), JSON-ready: what is written to disk."""
        data = self.model_dump(mode="json", exclude_unset=True)
        if "schema_version" in type(self).model_fields:
            data = {"schema_version": self.schema_version, **data}  # type: ignore[attr-defined]
        return data


class FinalMetrics(Record):
    """The last finished epoch's numbers (rounded to 6 digits)."""

    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float


class Histogram(Record):
    edges: list[float]  # [low, high]
    counts: list[int]


class DiagnosticsSummary(Record):
    """The last epoch's probe-batch diagnostics (docs/diagnostics.md); per Linear or per hidden layer."""

    grad_norm: list[float]
    gradient_ratio_first_last: Optional[float]
    train_grad_norm: list[float] = []
    weight_norm: list[float]
    activation_mean: list[float]
    activation_std: list[float]
    saturated_fraction: list[float]
    dead_fraction: list[float]
    symmetric_fraction: list[float]
    activation_histograms: list[Histogram]


class PretrainingSummary(Record):
    method: Literal["rbm"] = "rbm"
    reconstruction_error: list[list[float]]  # [i][j]: hidden layer i+1 after pre-training epoch j+1
    seconds: float


class RunSummary(Record):
    """A run folder's summary.json: says ``running`` from the start and is rewritten once when the run ends."""

    schema_version: int = RUN_SCHEMA_VERSION
    name: str
    status: RunStatusName
    seed: int
    config_hash: Optional[str] = None
    device: Optional[str] = None
    device_name: Optional[str] = None
    dataset: Optional[str] = None
    epochs: int = 0  # epochs finished (rows of metrics.csv)
    epochs_planned: Optional[int] = None  # None only in the short summary written on a full disk
    seconds: Optional[float] = None
    final: Optional[FinalMetrics] = None
    best_test_acc: Optional[float] = None
    steps_per_epoch: Optional[int] = None
    samples_per_epoch: Optional[int] = None
    dropped_per_epoch: Optional[int] = None
    parameters: Optional[int] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    run_dir: str
    error: Optional[str] = None  # the last line of the traceback, or the reason a run diverged
    diverged_at: Optional[dict[str, int]] = None  # {"epoch": e, "step": s}, or {"pretraining_layer", "pretraining_epoch"}
    warnings: list[str] = []
    diagnostics: Optional[DiagnosticsSummary] = None
    pretraining: Optional[PretrainingSummary] = None

    @property
    def is_short(self) -> bool:
        """The last-resort summary written on a full disk (name, status, epochs, run folder, error)."""
        return self.epochs_planned is None


class VariantAggregates(Record):
    """A variant's row of the comparison table (table.csv has the same numbers)."""

    seeds: int
    test_acc_mean: Optional[float] = None
    test_acc_std: Optional[float] = None
    test_acc_ci95_low: Optional[float] = None
    test_acc_ci95_high: Optional[float] = None
    test_loss_mean: Optional[float] = None
    test_loss_std: Optional[float] = None
    train_test_gap: Optional[float] = None
    seconds_per_run: Optional[float] = None
    grad_ratio_first_last: Optional[float] = None


class VersusBaseline(Record):
    mean_difference: Optional[float] = None  # test_acc, variant minus baseline, over matched seeds
    p_value: Optional[float] = None  # paired t-test
    verdict: str


class VariantSummary(Record):
    label: str
    changes: str  # the keys in which it differs from the baseline ('baseline' for the first)
    config: ExperimentConfig
    finals: dict[str, FinalMetrics]  # seed -> final metrics of its completed run
    aggregates: VariantAggregates
    vs_baseline: VersusBaseline


class ExpectationCheck(Record):
    expectation: str
    metric: Optional[str] = None
    holds: bool
    left: Optional[float] = None
    right: Optional[float] = None
    p_value: Optional[float] = None
    detail: str


class ComparisonSummary(Record):
    """A comparison's (or a report's) summary.json."""

    schema_version: int = COMPARISON_SCHEMA_VERSION
    kind: Literal["comparison"] = "comparison"
    folder: str
    status: str  # completed; interrupted or failed (compare), incomplete (report)
    seeds: list[int]
    best: Optional[str] = None  # the label of the variant with the best mean test accuracy
    variants: list[VariantSummary]
    expectations: list[ExpectationCheck] = []
    unfinished: list[str] = []  # 'folder: why', one per planned or found run that did not complete
    engine: Optional[str] = None  # how the runs trained in this invocation were trained
    plots: list[str] = []
    outputs: list[str] = []  # every file this report (or an earlier one in the folder) wrote there


def parse_run_summary(data: Any) -> RunSummary | None:
    """``data`` (a parsed summary.json) as a RunSummary, or None when it is not one."""
    try:
        return RunSummary.model_validate(data)
    except ValidationError:
        return None


class ReportFiles(Record):
    """The part of a comparison's summary.json that says which files its report wrote: enough to tell
    a report's own files from anyone else's, even in a summary this version cannot read whole."""

    kind: Optional[Literal["comparison"]] = None  # absent in summaries written before it existed
    plots: list[str] = []
    outputs: list[str] = []


def is_comparison_summary(data: Any) -> bool:
    """Today's have kind 'comparison'; older ones are recognised by their keys."""
    return isinstance(data, dict) and (data.get("kind") == "comparison" or {"variants", "seeds", "expectations"} <= set(data))


def parse_comparison_summary(data: Any) -> ComparisonSummary | None:
    """``data`` as a ComparisonSummary, or None when it is not one."""
    if not is_comparison_summary(data):
        return None
    try:
        return ComparisonSummary.model_validate(data)
    except ValidationError:
        return None


def parse_report_files(data: Any) -> ReportFiles | None:
    """The files a comparison's summary.json claims, or None when ``data`` is not such a summary."""
    if not is_comparison_summary(data):
        return None
    try:
        return ReportFiles.model_validate(data)
    except ValidationError:
        return None
