"""How two configs differ, key by key: the 'changes' column of a comparison and resume's mismatch messages."""

from __future__ import annotations

import json
from typing import Any

from dl_lab.config.schema import ExperimentConfig


def changes_from(baseline: ExperimentConfig, variant: ExperimentConfig) -> str:
    """'activation=sigmoid, lr=0.01': the keys in which ``variant`` differs (name and seed ignored)."""
    base, other = flat(baseline.to_dict()), flat(variant.to_dict())
    changed = [key for key in other if key not in ("name", "seed") and other[key] != base.get(key)]
    return ", ".join(f"{key.split('.')[-1]}={show(other[key])}" for key in changed) or "—"


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
