"""`dllab compare`: expand names and --vary grids into variants, plan their runs, and resume safely.

Seed i of every variant uses the same seed value (the first variant's seed + i), so init and data
order are shared across variants and differences are tested pairwise (see analysis/stats.py). The
plan is recorded in the comparison folder (runs/comparison.py) before anything trains.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from dl_lab.config.diff import flat, show
from dl_lab.config.loader import load_config, short
from dl_lab.config.schema import MAX_NAME_LENGTH
from dl_lab.errors import ConfigError
from dl_lab.experiments.scheduling import data_key, plan_units
from dl_lab.runs.comparison import (
    ComparePlan,
    Unit,
    Variant,
    planned_run,
    read_plan,
    unreadable_plan,
)
from dl_lab.runs.store import PLAN_FILE, safe_name
from dl_lab.training.stackable import DEFAULT_GROUPING, batch_key

DEFAULT_MAX_RUNS = 1000


def load_plan(folder: Path) -> ComparePlan:
    """read_plan, with the units of a version-1 plan derived and every unit checked trainable as one."""
    plan = read_plan(folder)
    runs = plan.runs
    units = plan.units or tuple(plan_units([r.config for r in runs], plan.engine, "activation"))  # version 1
    for unit in units:
        configs = [runs[i].config for i in unit.runs]
        if (
            len({batch_key(c) for c in configs}) > 1
            or len({data_key(c) for c in configs}) > 1
            or (not unit.stacked and len(configs) > 1)
        ):
            raise unreadable_plan(
                folder / PLAN_FILE,
                f"a unit holds runs that cannot train together ({', '.join(runs[i].folder for i in unit.runs)})",
            )
    return ComparePlan(plan.variants, plan.seeds, runs, units, plan.engine)


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
            raise ConfigError(
                f"--vary {short(item)}: expected KEY=V1,V2[,...], e.g. --vary model.activation=sigmoid,relu"
            )
        earlier = next((f"{k}={','.join(v)}" for k, v in grid if k == key.strip()), None)
        if earlier is not None:
            raise ConfigError(
                f"--vary: the key {key.strip()} is given twice (--vary {short(earlier)} and --vary "
                f"{short(item)}); allowed: each key once, with all its values, e.g. --vary "
                f"{key.strip()}={','.join([*split_values(earlier.partition('=')[2]), *options])}"
            )
        grid.append((key.strip(), options))
    return grid


def variant_label(name: str, combo: Sequence[tuple[str, str]], several_names: bool) -> str:
    """'relu', 'activation=tanh,init=normal' or 'relu:activation=tanh': also the runs' config name, so
    path separators and control characters become '_' (every written config.yaml must load back)."""
    varied = ",".join(f"{key.split('.')[-1]}={value}" for key, value in combo)
    label = name if not varied else varied if not several_names else f"{name}:{varied}"
    label = re.sub(r"[/\\\x00-\x1f\x7f]", "_", label).lstrip(".") or "variant"
    if len(label) > MAX_NAME_LENGTH:
        raise ConfigError(
            f"compare: the variant label {short(label)} is longer than {MAX_NAME_LENGTH} characters; "
            "allowed: shorter --vary values or config names"
        )
    return label


def plan_comparison(
    names: Sequence[str],
    overrides: Sequence[str],
    vary: Sequence[str],
    seeds: int,
    cwd: Path | None = None,
    engine: str = "auto",
    max_runs: int = DEFAULT_MAX_RUNS,
    stacks: str = DEFAULT_GROUPING,
) -> ComparePlan:
    """Resolve every variant's config now, so bad input fails before anything is written or trained."""
    if not names:
        raise ConfigError("compare: give at least one config name (e.g. dllab compare sigmoid relu)")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1 (got {seeds})")
    grid = parse_vary(vary)
    combos = list(itertools.product(*[[(key, value) for value in values] for key, values in grid])) if grid else [()]
    total = len(names) * len(combos) * seeds
    if total > max_runs:
        raise ConfigError(
            f"compare: {total:,} runs planned ({len(names) * len(combos):,} variant(s) x {seeds:,} seed(s)), "
            f"more than the limit of {max_runs:,} per comparison; pass --max-runs {total} to run them "
            "on purpose"
        )
    variants: list[Variant] = []
    for name in names:
        for combo in combos:
            config = load_config(name, overrides, cwd, [f"{k}={v}" for k, v in combo]).config
            label = variant_label(config.name, combo, len(names) > 1)
            _refuse_duplicate(variants, Variant(label, config))
            variants.append(Variant(label, config))
    first_seed = variants[0].config.seed
    seed_values = tuple(first_seed + i for i in range(seeds))
    folders = _folder_names(variants, seed_values)
    runs = tuple(planned_run(v, s, folders[(v.label, s)]) for s in seed_values for v in variants)
    units = tuple(plan_units([r.config for r in runs], engine, stacks))
    return ComparePlan(tuple(variants), seed_values, runs, units, engine)


def _refuse_duplicate(variants: Sequence[Variant], new: Variant) -> None:
    """Two variants with one label, or one config under two labels, would make one run answer for two."""
    for old in variants:
        if old.label == new.label:
            raise ConfigError(f"compare: variant {new.label!r} appears twice; give each config once")
        if old.config.experiment_hash() == new.config.experiment_hash():
            raise ConfigError(
                f"compare: variants {old.label!r} and {new.label!r} resolve to the same config (name and "
                "seed aside), so their runs would be the same; allowed: variants that differ in some key"
            )


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


def units_to_train(plan: ComparePlan, done: frozenset[int]) -> list[tuple[Unit, frozenset[int]]]:
    """Units with an unfinished run, each with the runs to record. A unit trains whole even when some
    of its runs are done: a stack's numbers depend on its members, so the finished ones ride along
    unrecorded and the others come out exactly as they would have."""
    return [
        (unit, frozenset(i for i in unit.runs if i not in done))
        for unit in plan.units
        if any(i not in done for i in unit.runs)
    ]


def refuse_another_plan(given: ComparePlan, planned: ComparePlan, folder: Path) -> None:
    """`--resume FOLDER` appended to the original command: its names, --set, --vary, --device and
    --seeds must resolve to the folder's plan. The first real difference is refused (exit 2), naming
    the key and both values."""
    where = f"--resume {folder}"
    if given.seeds != planned.seeds:
        raise ConfigError(
            f"{where}: --seeds gives {_seeds(given.seeds)} here, but the comparison was planned with "
            f"{_seeds(planned.seeds)}; allowed: the original command, or --resume FOLDER alone"
        )
    labels, planned_labels = [v.label for v in given.variants], [v.label for v in planned.variants]
    if labels != planned_labels:
        raise ConfigError(
            f"{where}: the variants here are {', '.join(labels)}, but the comparison was planned with "
            f"{', '.join(planned_labels)}; allowed: the original command, or --resume FOLDER alone"
        )
    for mine, theirs in zip(given.variants, planned.variants):
        here, there = flat(mine.config.to_dict()), flat(theirs.config.to_dict())
        for key in here:
            if key not in ("name", "seed") and here[key] != there.get(key):
                raise ConfigError(
                    f"{where}: variant {mine.label}: {key} is {show(here[key])} here but "
                    f"{show(there.get(key))} in {PLAN_FILE}; allowed: the original command, or "
                    "--resume FOLDER alone"
                )


def _seeds(seeds: tuple[int, ...]) -> str:
    return f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))})"
