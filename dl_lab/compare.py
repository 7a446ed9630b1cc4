"""`dllab compare`: expand names and --vary grids into variants, plan their runs, and resume safely.

Seed i of every variant uses the same seed value (the first variant's seed + i), so init and data
order are shared across variants and differences are tested pairwise (see stats.py).

A comparison is identified by its plan.json: every run is (variant label, seed) with a folder name
fixed at plan time, and the units of work (stacks) are fixed too. Resume looks only at the planned
folders, keeps a completed run whose stored config means the same as the plan's (loaded through
today's schema, so a key added since, with its default, changes nothing), moves unfinished ones into
``.stale/`` and retrains whole units, so the numbers are those of an uninterrupted comparison.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dl_lab.config import MAX_NAME_LENGTH, ExperimentConfig
from dl_lab.config_loader import load_config, short
from dl_lab.errors import ConfigError
from dl_lab.locks import FolderLock
from dl_lab.scheduling import Unit, batch_key, data_key, plan_units
from dl_lab.signals import deferred
from dl_lab.store import PLAN_FILE, create_run_dir, dump_json, read_json, safe_name, set_aside, write_atomic

PLAN_VERSION = 2
DEFAULT_MAX_RUNS = 1000
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
class ComparePlan:
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    runs: tuple[PlannedRun, ...]  # seed-major: every variant for the first seed, then the next...
    units: tuple[Unit, ...]  # how the runs train (stacks), in order
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


def load_plan(folder: Path) -> ComparePlan:
    """Read and check FOLDER/plan.json; every problem is a ConfigError (exit 2) naming the file."""
    path = folder / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {folder}: not a compare folder (no {PLAN_FILE})")
    data = _upgrade(read_json(path))
    if data is None:
        raise ConfigError(f"{path}: unreadable compare plan (not JSON)")
    derive_units = isinstance(data, dict) and data.get("units") is None
    try:
        record = PlanFile.model_validate({**data, "units": ()} if derive_units else data)
        plan = _plan_from_record(record, derive_units)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: unreadable compare plan ({where}: {first['msg']}; {exc.error_count()} problem(s)); "
                          "it is written by dllab compare and should not be edited") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable compare plan ({exc}); it is written by dllab compare and "
                          "should not be edited") from None
    return plan


def _plan_from_record(record: PlanFile, derive_units: bool) -> ComparePlan:
    variants = tuple(Variant(v.label, v.config) for v in record.variants)
    if len({v.label for v in variants}) != len(variants):
        raise ValueError("a variant label appears twice")
    runs = []
    for run in record.runs:
        if not 0 <= run.variant < len(variants):
            raise ValueError(f"run {run.folder!r} names variant {run.variant}, which does not exist")
        if not FOLDER_PATTERN.match(run.folder) or ".." in run.folder:
            raise ValueError(f"run folder {short(run.folder)} is not a plain folder name")
        runs.append(_planned(variants[run.variant], run.seed, run.folder))
    if len({r.folder for r in runs}) != len(runs) or len({r.key for r in runs}) != len(runs):
        raise ValueError("two runs share a folder or a (variant, seed)")
    units = (plan_units([r.config for r in runs], record.engine) if derive_units
             else [Unit(u.runs, u.stacked) for u in record.units])
    covered = sorted(i for unit in units for i in unit.runs)
    if covered != list(range(len(runs))):
        raise ValueError("its units do not cover every run exactly once")
    for unit in units:
        configs = [runs[i].config for i in unit.runs]
        if len({batch_key(c) for c in configs}) > 1 or len({data_key(c) for c in configs}) > 1 or \
                (not unit.stacked and len(configs) > 1):
            raise ValueError(f"a unit holds runs that cannot train together ({', '.join(runs[i].folder for i in unit.runs)})")
    return ComparePlan(variants, record.seeds, tuple(runs), tuple(units), record.engine)


def _planned(variant: Variant, seed: int, folder: str) -> PlannedRun:
    """Validated again with the run's name and seed: the run's config.yaml must load back."""
    try:
        config = ExperimentConfig.model_validate({**variant.config.to_dict(), "name": variant.label, "seed": seed})
    except ValidationError as exc:
        problem = exc.errors()[0]
        key = ".".join(str(part) for part in problem["loc"])
        raise ConfigError(f"compare: variant {variant.label!r} with seed {seed}: {key}: {problem['msg']}") from None
    return PlannedRun(variant, seed, folder, config)


# ---- planning ----------------------------------------------------------------------------------

def split_values(text: str) -> list[str]:
    """'a,b,[1, 2]' -> ['a', 'b', '[1, 2]']: commas inside brackets or braces do not split."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_vary(items: Iterable[str]) -> list[tuple[str, list[str]]]:
    """--vary model.activation=sigmoid,relu -> [('model.activation', ['sigmoid', 'relu'])]; a key given
    twice is refused (its values belong in one --vary)."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        options = split_values(values) if sep else []
        if not key.strip() or not options or any(not v for v in options):
            raise ConfigError(f"--vary {short(item)}: expected KEY=V1,V2[,...], e.g. --vary model.activation=sigmoid,relu")
        earlier = next((f"{k}={','.join(v)}" for k, v in grid if k == key.strip()), None)
        if earlier is not None:
            raise ConfigError(f"--vary: the key {key.strip()} is given twice (--vary {short(earlier)} and --vary "
                              f"{short(item)}); allowed: each key once, with all its values, e.g. --vary "
                              f"{key.strip()}={','.join([*split_values(earlier.partition('=')[2]), *options])}")
        grid.append((key.strip(), options))
    return grid


def variant_label(name: str, combo: Sequence[tuple[str, str]], several_names: bool) -> str:
    """'relu', 'activation=tanh,init=normal' or 'relu:activation=tanh': also the runs' config name, so
    path separators and control characters become '_' (every written config.yaml must load back)."""
    varied = ",".join(f"{key.split('.')[-1]}={value}" for key, value in combo)
    label = name if not varied else varied if not several_names else f"{name}:{varied}"
    label = re.sub(r"[/\\\x00-\x1f\x7f]", "_", label).lstrip(".") or "variant"
    if len(label) > MAX_NAME_LENGTH:
        raise ConfigError(f"compare: the variant label {short(label)} is longer than {MAX_NAME_LENGTH} characters; "
                          "allowed: shorter --vary values or config names")
    return label


def plan_comparison(names: Sequence[str], overrides: Sequence[str], vary: Sequence[str], seeds: int,
                    cwd: Path | None = None, engine: str = "auto", max_runs: int = DEFAULT_MAX_RUNS) -> ComparePlan:
    """Resolve every variant's config now, so bad input fails before anything is written or trained."""
    if not names:
        raise ConfigError("compare: give at least one config name (e.g. dllab compare sigmoid relu)")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1 (got {seeds})")
    grid = parse_vary(vary)
    combos = list(itertools.product(*[[(key, value) for value in values] for key, values in grid])) if grid else [()]
    total = len(names) * len(combos) * seeds
    if total > max_runs:
        raise ConfigError(f"compare: {total:,} runs planned ({len(names) * len(combos):,} variant(s) x {seeds:,} seed(s)), "
                          f"more than the limit of {max_runs:,} per comparison; pass --max-runs {total} to run them "
                          "on purpose")
    variants: list[Variant] = []
    for name in names:
        for combo in combos:
            config = load_config(name, [*overrides, *(f"{k}={v}" for k, v in combo)], cwd).config
            label = variant_label(config.name, combo, len(names) > 1)
            _refuse_duplicate(variants, Variant(label, config))
            variants.append(Variant(label, config))
    first_seed = variants[0].config.seed
    seed_values = tuple(first_seed + i for i in range(seeds))
    folders = _folder_names(variants, seed_values)
    runs = tuple(_planned(v, s, folders[(v.label, s)]) for s in seed_values for v in variants)
    return ComparePlan(tuple(variants), seed_values, runs, tuple(plan_units([r.config for r in runs], engine)), engine)


def _refuse_duplicate(variants: Sequence[Variant], new: Variant) -> None:
    """Two variants with one label, or one config under two labels, would make one run answer for two."""
    for old in variants:
        if old.label == new.label:
            raise ConfigError(f"compare: variant {new.label!r} appears twice; give each config once")
        if old.config.experiment_hash() == new.config.experiment_hash():
            raise ConfigError(f"compare: variants {old.label!r} and {new.label!r} resolve to the same config (name and "
                              "seed aside), so their runs would be the same; allowed: variants that differ in some key")


def _folder_names(variants: Sequence[Variant], seeds: Sequence[int]) -> dict[tuple[str, int], str]:
    """<label>-seed<seed>, folder-safe; labels that sanitize alike get -2, -3... in plan order."""
    names: dict[tuple[str, int], str] = {}
    taken: set[str] = set()
    for seed in seeds:
        for variant in variants:
            base = safe_name(f"{variant.label}-seed{seed}")
            name, n = base, 1
            while name.lower() in taken:  # case-insensitive file systems
                n += 1
                name = f"{base}-{n}"
            taken.add(name.lower())
            names[(variant.label, seed)] = name
    return names


def changes_from(baseline: ExperimentConfig, variant: ExperimentConfig) -> str:
    """'activation=sigmoid, lr=0.01': the keys in which ``variant`` differs (name and seed ignored)."""
    base, other = _flat(baseline.to_dict()), _flat(variant.to_dict())
    changed = [key for key in other if key not in ("name", "seed") and other[key] != base.get(key)]
    return ", ".join(f"{key.split('.')[-1]}={_show(other[key])}" for key in changed) or "—"


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


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
        summary = read_json(path / "summary.json")
        if not (path.is_dir() and isinstance(summary, dict) and summary.get("status") == "completed"):
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
    there, planned = _flat(stored.to_dict()), _flat(run.config.to_dict())
    differences = [key for key in planned if there.get(key) != planned[key]]
    if not differences:
        return None
    shown = ", ".join(f"{key} {_show(there.get(key))} there, {_show(planned[key])} planned" for key in differences[:3])
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


def units_to_train(plan: ComparePlan, done: frozenset[int]) -> list[tuple[Unit, frozenset[int]]]:
    """Units with an unfinished run, each with the runs to record. A unit trains whole even when some
    of its runs are done: a stack's numbers depend on its members, so the finished ones ride along
    unrecorded and the others come out exactly as they would have."""
    return [(unit, frozenset(i for i in unit.runs if i not in done)) for unit in plan.units
            if any(i not in done for i in unit.runs)]
