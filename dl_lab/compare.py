"""`dllab compare`: expand names and --vary grids into variants, train each over matched seeds, resume.

Seed i of every variant uses the same seed value (the first variant's seed + i), so init and data
order are shared across variants and differences are tested pairwise (see stats.py).
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from dl_lab.config import ExperimentConfig
from dl_lab.config_loader import load_config
from dl_lab.errors import ConfigError
from dl_lab.runs import create_run_dir, dump_json, safe_name, write_atomic

PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Variant:
    label: str
    config: ExperimentConfig  # resolved; its seed is replaced per run


@dataclass(frozen=True)
class PlannedRun:
    variant: Variant
    seed: int

    @property
    def config(self) -> ExperimentConfig:
        return self.variant.config.model_copy(update={"seed": self.seed, "name": self.variant.label})

    @property
    def folder_name(self) -> str:
        return f"{safe_name(self.variant.label)}-seed{self.seed}"


@dataclass(frozen=True)
class ComparePlan:
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]

    def runs(self) -> list[PlannedRun]:
        """Seed-major order: an interrupted comparison has every variant for its first seeds."""
        return [PlannedRun(v, s) for s in self.seeds for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": list(self.seeds),
                "variants": [{"label": v.label, "config": v.config.to_dict()} for v in self.variants]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ComparePlan":
        variants = tuple(Variant(v["label"], ExperimentConfig.model_validate(v["config"])) for v in data["variants"])
        return cls(variants, tuple(data["seeds"]))


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
    """--vary model.activation=sigmoid,relu -> [('model.activation', ['sigmoid', 'relu'])]."""
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        options = split_values(values) if sep else []
        if not key.strip() or not options or any(not v for v in options):
            raise ConfigError(f"--vary {item!r}: expected KEY=V1,V2[,...], e.g. --vary model.activation=sigmoid,relu")
        grid.append((key.strip(), options))
    return grid


def plan_comparison(names: Sequence[str], overrides: Sequence[str], vary: Sequence[str], seeds: int,
                    cwd: Path | None = None) -> ComparePlan:
    """Resolve every variant's config now, so bad input fails before anything trains."""
    if not names:
        raise ConfigError("compare: give at least one config name (e.g. dllab compare sigmoid relu)")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1 (got {seeds})")
    grid = parse_vary(vary)
    combos = list(itertools.product(*[[(key, value) for value in values] for key, values in grid]))
    variants = []
    for name in names:
        for combo in combos:
            config = load_config(name, [*overrides, *(f"{k}={v}" for k, v in combo)], cwd).config
            varied = ",".join(f"{key.split('.')[-1]}={value}" for key, value in combo)
            if not varied:
                label = config.name
            elif len(names) == 1:
                label = varied
            else:
                label = f"{config.name}:{varied}"
            variants.append(Variant(label, config))
    labels = [v.label for v in variants]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"compare: variant {duplicates[0]!r} appears twice; give each config once")
    first_seed = variants[0].config.seed
    return ComparePlan(tuple(variants), tuple(first_seed + i for i in range(seeds)))


def changes_from(baseline: ExperimentConfig, variant: ExperimentConfig) -> str:
    """'activation=sigmoid, lr=0.01': the keys in which ``variant`` differs (name and seed ignored)."""
    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for key, value in data.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: data}

    def show(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    base, other = flat(baseline.to_dict()), flat(variant.to_dict())
    changed = [key for key in other if key not in ("name", "seed") and other[key] != base.get(key)]
    return ", ".join(f"{key.split('.')[-1]}={show(other[key])}" for key in changed) or "—"


def create_compare_dir(runs_root: Path, plan: ComparePlan, options: Mapping[str, Any]) -> Path:
    """runs/compare-<time>-<names>/ with plan.json describing what to train (for --resume)."""
    names = "-".join(dict.fromkeys(safe_name(v.config.name) for v in plan.variants))[:60]
    folder = create_run_dir(runs_root, names, prefix="compare-")
    write_atomic(folder / PLAN_FILE, dump_json({**plan.to_dict(), "options": dict(options)}))
    return folder


def load_plan(folder: Path) -> ComparePlan:
    path = folder / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {folder}: not a compare folder (no {PLAN_FILE})")
    try:
        return ComparePlan.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: unreadable compare plan ({exc})") from None


def finished_runs(folder: Path, plan: ComparePlan) -> tuple[dict[tuple[str, int], Path], list[Path]]:
    """Completed runs matching the plan by config hash and seed, and leftover folders to redo."""
    wanted = {(run.config.experiment_hash(), run.seed) for run in plan.runs()}
    done: dict[tuple[str, int], Path] = {}
    stale: list[Path] = []
    for summary_path in sorted(folder.glob("*/summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            stale.append(summary_path.parent)
            continue
        key = (summary.get("config_hash"), summary.get("seed"))
        if summary.get("status") == "completed" and key in wanted and key not in done:
            done[key] = summary_path.parent
        else:
            stale.append(summary_path.parent)
    return done, stale


def runs_to_train(folder: Path, plan: ComparePlan) -> list[ExperimentConfig]:
    """The planned runs not completed in ``folder`` (all of them in a new one). Folders that failed or
    interrupted runs left are removed: those runs are redone from scratch, and old files would only confuse."""
    done, stale = finished_runs(folder, plan)
    for leftover in stale:
        shutil.rmtree(leftover, ignore_errors=True)
    return [run.config for run in plan.runs() if (run.config.experiment_hash(), run.seed) not in done]

