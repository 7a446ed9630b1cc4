"""Which runs share a loaded dataset and which train together as one stack of models. Torch-free.

A comparison's units of work are fixed when it is planned and recorded in plan.json, so a resumed
comparison trains every unfinished run exactly as the uninterrupted one would have (the same stack,
the same models in it, the same order): its numbers are bit-identical on CPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dl_lab.config.schema import ExperimentConfig
from dl_lab.runs.comparison import Unit
from dl_lab.training.stackable import DEFAULT_GROUPING, plan_batches

ENGINES = ("auto", "batched", "sequential")


def data_key(config: ExperimentConfig) -> str:
    """Runs with equal keys share one loaded dataset."""
    return json.dumps([config.device, config.data.model_dump(mode="json")], sort_keys=True)


def plan_units(configs: Sequence[ExperimentConfig], engine: str, stacks: str = DEFAULT_GROUPING) -> list[Unit]:
    """The units of work, in training order: per dataset (first seen first), the engine's groups.

    auto: runs grouped by ``stacks`` (stackable.GROUPINGS: every run of an architecture, or one
    variant's) form a stack, lone runs train alone; batched: every group is a stack, even of one;
    sequential: every run alone."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}")
    units: list[Unit] = []
    for key in dict.fromkeys(data_key(config) for config in configs):
        indices = [i for i, config in enumerate(configs) if data_key(config) == key]
        if engine == "sequential":
            units += [Unit((i,), False) for i in indices]
            continue
        for group in plan_batches([configs[i] for i in indices], 2 if engine == "auto" else 1, stacks):
            units.append(Unit(tuple(indices[g] for g in group), engine == "batched" or len(group) > 1))
    return units


def describe_units(engine: str, units: Sequence[Unit]) -> str:
    """'batched: 2 stacked group(s) (5 + 5 runs)' — said in compare's output and recorded in summary.json."""
    runs = sum(len(unit.runs) for unit in units)
    if not units:
        return "nothing to train"
    if engine == "sequential":
        return f"sequential: {runs} runs one by one"
    sizes = sorted((len(unit.runs) for unit in units if unit.stacked), reverse=True)
    if not sizes:
        return f"sequential: {runs} runs share no architecture to batch"
    alone = sum(1 for unit in units if not unit.stacked)
    text = f"batched: {len(sizes)} stacked group(s) ({' + '.join(map(str, sizes))} runs)"
    return text + (f", {alone} run(s) one by one" if alone else "")
