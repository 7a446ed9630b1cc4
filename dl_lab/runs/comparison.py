"""A comparison folder on disk: its plan.json (a typed record), its planned run folders, and which of
them are done. Torch-free: `dllab report` reads comparisons through this module.

A comparison is identified by its plan.json: every run is (variant label, seed) with a folder name
fixed at plan time, and the units of work (stacks) are fixed too. Resume looks only at the planned
folders, keeps a completed run whose stored config means the same as the plan's (loaded through
today's schema, so a key added since, with its default, changes nothing), moves unfinished ones into
``.stale/`` and retrains whole units, so the numbers are those of an uninterrupted comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dl_lab.config.diff import flat, show
from dl_lab.config.loader import short
from dl_lab.config.schema import ExperimentConfig
from dl_lab.errors import ConfigError
from dl_lab.runs.locks import FolderLock
from dl_lab.runs.store import (
    PLAN_FILE,
    create_run_dir,
    dump_json,
    read_json,
    read_run_summary,
    safe_name,
    set_aside,
    write_atomic,
)
from dl_lab.signals import deferred

PLAN_VERSION = 2
FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9_=-][A-Za-z0-9_.=-]*$")


@dataclass(frozen=True)
class Variant:
    label: str
    config: ExperimentConfig  # resolved; its seed is replaced per run


@dataclass(frozen=True)
class PlannedRun:
    variant: Variant
    seed: int
    folder: str  # the run's folder inside the comparison folder, fixed at plan time
    config: ExperimentConfig  # the variant's config with this run's seed, named after the variant

    @property
    def key(self) -> tuple[str, int]:
        return self.variant.label, self.seed


@dataclass(frozen=True)
class Unit:
    """Runs (indices into the plan's run list) trained in one go: one stack, or one run alone."""

    runs: tuple[int, ...]
    stacked: bool


@dataclass(frozen=True)
class ComparePlan:
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    runs: tuple[PlannedRun, ...]  # seed-major: every variant for the first seed, then the next...
    units: tuple[Unit, ...]  # how the runs train (stacks), in order; () in a version-1 plan (see experiments.planning)
    engine: str = "auto"


# ---- plan.json ---------------------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _VariantRecord(_Record):
    label: str
    config: ExperimentConfig


class _RunRecord(_Record):
    variant: int
    seed: int
    folder: str


class _UnitRecord(_Record):
    runs: tuple[int, ...]
    stacked: bool


class PlanFile(_Record):
    """plan.json, version 2. Version 1 (no runs, no units) is upgraded on reading."""

    schema_version: Literal[2] = PLAN_VERSION
    engine: Literal["auto", "batched", "sequential"] = "auto"
    seeds: tuple[int, ...]
    variants: tuple[_VariantRecord, ...]
    runs: tuple[_RunRecord, ...]
    units: tuple[_UnitRecord, ...]
    options: dict[str, Any] = {}


def plan_to_json(plan: ComparePlan, options: Mapping[str, Any]) -> str:
    index = {variant.label: i for i, variant in enumerate(plan.variants)}
    record = PlanFile(engine=plan.engine, seeds=plan.seeds,
                      variants=tuple(_VariantRecord(label=v.label, config=v.config) for v in plan.variants),
                      runs=tuple(_RunRecord(variant=index[r.variant.label], seed=r.seed, folder=r.folder) for r in plan.runs),
                      units=tuple(_UnitRecord(runs=u.runs, stacked=u.stacked) for u in plan.units),
                      options=dict(options))
    return dump_json(record.model_dump(mode="json"))


def _upgrade(data: Any) -> Any:
    """Version 1 plans listed variants and seeds only: runs were seed-major, in folders named
    <label>-seed<seed>, trained by the default engine."""
    if not isinstance(data, dict) or "schema_version" in data:
        return data
    variants = data.get("variants") or []
    seeds = data.get("seeds") or []
    if not (isinstance(variants, list) and isinstance(seeds, list) and all(isinstance(v, dict) for v in variants)):
        return data
    runs = [{"variant": v, "seed": s, "folder": safe_name(f"{variant.get('label')}-seed{s}")}
            for s in seeds for v, variant in enumerate(variants)]
    return {**data, "schema_version": PLAN_VERSION, "engine": "auto", "runs": runs, "units": None}


def read_plan(folder: Path) -> ComparePlan:
    """Read and check FOLDER/plan.json; every problem is a ConfigError (exit 2) naming the file. A
    version-1 plan has no units (experiments.planning.load_plan derives them for training)."""
    path = folder / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {folder}: not a compare folder (no {PLAN_FILE})")
    data = _upgrade(read_json(path))
    if data is None:
        raise ConfigError(f"{path}: unreadable compare plan (not JSON)")
    derive_units = isinstance(data, dict) and data.get("units") is None
    try:
        record = PlanFile.model_validate({**data, "units": ()} if derive_units else data)
        return _plan_from_record(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise unreadable_plan(path, f"{where}: {first['msg']}; {exc.error_count()} problem(s)") from None
    except ValueError as exc:
        raise unreadable_plan(path, str(exc)) from None


def unreadable_plan(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"{path}: unreadable compare plan ({problem}); it is written by dllab compare and should not be edited")


def _plan_from_record(record: PlanFile) -> ComparePlan:
    variants = tuple(Variant(v.label, v.config) for v in record.variants)
    if len({v.label for v in variants}) != len(variants):
        raise ValueError("a variant label appears twice")
    runs = []
    for run in record.runs:
        if not 0 <= run.variant < len(variants):
            raise ValueError(f"run {run.folder!r} names variant {run.variant}, which does not exist")
        if not FOLDER_PATTERN.match(run.folder) or ".." in run.folder:
            raise ValueError(f"run folder {short(run.folder)} is not a plain folder name")
        runs.append(planned_run(variants[run.variant], run.seed, run.folder))
    if len({r.folder for r in runs}) != len(runs) or len({r.key for r in runs}) != len(runs):
        raise ValueError("two runs share a folder or a (variant, seed)")
    units = tuple(Unit(u.runs, u.stacked) for u in record.units)
    if units and sorted(i for unit in units for i in unit.runs) != list(range(len(runs))):
        raise ValueError("its units do not cover every run exactly once")
    return ComparePlan(variants, record.seeds, tuple(runs), units, record.engine)


def planned_run(variant: Variant, seed: int, folder: str) -> PlannedRun:
    """Validated again with the run's name and seed: the run's config.yaml must load back."""
    try:
        config = ExperimentConfig.model_validate({**variant.config.to_dict(), "name": variant.label, "seed": seed})
    except ValidationError as exc:
        problem = exc.errors()[0]
        key = ".".join(str(part) for part in problem["loc"])
        raise ConfigError(f"compare: variant {variant.label!r} with seed {seed}: {key}: {problem['msg']}") from None
    return PlannedRun(variant, seed, folder, config)


# ---- the folder --------------------------------------------------------------------------------

def create_compare_dir(runs_root: Path, plan: ComparePlan, options: Mapping[str, Any]) -> tuple[Path, FolderLock]:
    """runs/compare-<time>-<names>/ with plan.json (for --resume), locked by this process."""
    names = "-".join(dict.fromkeys(safe_name(v.config.name) for v in plan.variants))[:60]
    with deferred():  # the folder appears with its plan, or an interrupt waits until it has one
        folder = create_run_dir(runs_root, names, prefix="compare-")
        lock = FolderLock(folder, "comparison").acquire()
        write_atomic(folder / PLAN_FILE, plan_to_json(plan, options))
    return folder, lock


@dataclass(frozen=True)
class Survey:
    done: frozenset[int]  # indices of planned runs completed with the planned config
    unfinished: tuple[Path, ...]  # planned run folders holding anything else (to move aside)
    mismatched: dict[int, str]  # completed runs that do not match the plan, and why (never touched)

    def refuse_mismatched(self, folder: Path, plan: ComparePlan) -> None:
        if self.mismatched:
            index, problem = next(iter(self.mismatched.items()))
            more = f" (and {len(self.mismatched) - 1} more)" if len(self.mismatched) > 1 else ""
            raise ConfigError(f"{folder / plan.runs[index].folder}: {problem}{more}; the run is kept as it is: restore "
                              f"{PLAN_FILE} or the run's files, or move the folder away to retrain it")


def survey(folder: Path, plan: ComparePlan) -> Survey:
    """Look at the planned run folders only, and at nothing else in ``folder``.

    A run is done when it completed and its stored config.yaml, loaded through today's schema,
    means the same as the plan's config for it."""
    done, unfinished, mismatched = set(), [], {}
    for index, run in enumerate(plan.runs):
        path = folder / run.folder
        if not path.exists() and not path.is_symlink():
            continue
        summary = read_run_summary(path) if path.is_dir() else None
        if summary is None or summary.status != "completed":
            unfinished.append(path)
            continue
        problem = _mismatch(path, run)
        if problem:
            mismatched[index] = problem
        else:
            done.add(index)
    return Survey(frozenset(done), tuple(unfinished), mismatched)


def _mismatch(path: Path, run: PlannedRun) -> str | None:
    """Why the completed run in ``path`` is not ``run`` (None: it is)."""
    stored = _stored_config(path)
    if isinstance(stored, str):
        return f"a completed run whose config.yaml {stored}, so whether it matches {PLAN_FILE} cannot be told"
    there, planned = flat(stored.to_dict()), flat(run.config.to_dict())
    differences = [key for key in planned if there.get(key) != planned[key]]
    if not differences:
        return None
    shown = ", ".join(f"{key} {show(there.get(key))} there, {show(planned[key])} planned" for key in differences[:3])
    return f"a completed run whose config differs from {PLAN_FILE} ({shown})"


def _stored_config(run_folder: Path) -> ExperimentConfig | str:
    """The run's config.yaml through today's schema (defaults filled in), or what is wrong with it."""
    try:
        data = yaml.safe_load((run_folder / "config.yaml").read_text(encoding="utf-8"))
        return ExperimentConfig.model_validate(data)
    except OSError:
        return "is missing"
    except (ValueError, yaml.YAMLError, ValidationError):
        return "does not load with this version of dl_lab"


def set_aside_unfinished(found: Survey) -> list[Path]:
    """Move unfinished planned runs into .stale/ (kept for inspection, never deleted)."""
    with deferred():
        return [set_aside(path) for path in found.unfinished]
