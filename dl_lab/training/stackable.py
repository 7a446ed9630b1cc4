"""Which runs can train together as one stack of models: same data and architecture. Torch-free.

Runs are stacked when everything but name, seed, init, init_gain, rbm settings and the dropout
probability agrees (the dropout layer itself must exist in all or none).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dl_lab.config.schema import ExperimentConfig


def batch_key(config: ExperimentConfig) -> str:
    """Runs with equal keys can train together."""
    body = config.to_dict()
    for key in ("name", "seed"):
        body.pop(key)
    model = body["model"]
    model["has_dropout"] = model.pop("dropout") > 0  # the layer must exist in all or none
    for key in ("init", "init_gain", "rbm"):
        model.pop(key)
    return json.dumps(body, sort_keys=True)


def plan_batches(configs: Sequence[ExperimentConfig], min_size: int = 2) -> list[list[int]]:
    """Indices of configs grouped by batch_key (in first-seen order); groups below min_size stay alone."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(batch_key(config), []).append(index)
    out: list[list[int]] = []
    for indices in groups.values():
        out += [indices] if len(indices) >= min_size else [[i] for i in indices]
    return out
