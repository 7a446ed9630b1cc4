"""Which runs can train together as one stack of models: same data and architecture. Torch-free.

Runs are stacked when everything but name, seed, the activation, init, init_gain, rbm settings and
the dropout probability agrees (the dropout layer itself must exist in all or none): one stack per
architecture. Activations apply elementwise, so models with different ones still share every matmul
of the stack. Grouped by variant, a stack holds one variant's seeds (a Ray task per variant).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dl_lab.config.schema import ExperimentConfig

# How runs are grouped into stacks: what, besides the architecture, must agree
GROUPINGS = ("architecture", "variant", "activation")
DEFAULT_GROUPING = "architecture"


def batch_key(config: ExperimentConfig, by: str = DEFAULT_GROUPING) -> str:
    """Runs with equal keys train together. by: "architecture" (runs that can share a stack), "variant"
    (also the variant: its seeds), "activation" (also the activation: how plans that did not record
    their stacks, version 1, were grouped)."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}")
    body = config.to_dict()
    body.pop("seed")
    if by != "variant":
        body.pop("name")  # a variant's label is its runs' config name
    model = body["model"]
    model["has_dropout"] = model.pop("dropout") > 0  # the layer must exist in all or none
    for key in ("init", "init_gain", "rbm", *(("activation", "leaky_relu_slope") if by != "activation" else ())):
        model.pop(key)
    return json.dumps(body, sort_keys=True)


def activation_key(config: ExperimentConfig) -> tuple[str, float | None]:
    """What makes two models' activation modules equal."""
    model = config.model
    return model.activation, model.leaky_relu_slope if model.activation == "leaky_relu" else None


def plan_batches(configs: Sequence[ExperimentConfig], min_size: int = 2, by: str = DEFAULT_GROUPING) -> list[list[int]]:
    """Indices of configs grouped by batch_key (in first-seen order); groups below min_size stay alone.
    Within a group the runs of one activation are together (activations in first-seen order), so each
    activation is one slice of the stack."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(batch_key(config, by), []).append(index)
    out: list[list[int]] = []
    for indices in groups.values():
        rank = {key: n for n, key in enumerate(dict.fromkeys(activation_key(configs[i]) for i in indices))}
        indices = sorted(indices, key=lambda i: rank[activation_key(configs[i])])
        out += [indices] if len(indices) >= min_size else [[i] for i in indices]
    return out
