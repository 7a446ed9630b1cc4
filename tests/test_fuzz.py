"""Property-based fuzzing (hypothesis): random YAML documents, raw bytes, dotted `--set` keys and plan.json
files either load or exit 2 with a message; never a traceback."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dl_lab.cli.app import app
from dl_lab.config.loader import load_config
from dl_lab.config.schema import ExperimentConfig
from dl_lab.errors import ConfigError
from dl_lab.experiments.planning import load_plan, plan_comparison
from dl_lab.runs.comparison import plan_to_json

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def field_names(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema: model, model.hidden, model.rbm.k, ..."""
    names = []
    for name, field in model.model_fields.items():
        names.append(prefix + name)
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                names += field_names(candidate, f"{prefix}{name}.")
    return names


KEYS = field_names()
PARTS = sorted({part for key in KEYS for part in key.split(".")} | {"extends"})
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["relu", "adam", "xavier_uniform", "before", "cpu", "mnist", "synthetic", "auto"]),
)
names = st.one_of(st.sampled_from(PARTS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(names, values, max_size=6)


def load_or_refuse(path: Path, overrides: list[str] = ()) -> None:
    try:
        config = load_config(str(path), overrides).config
    except ConfigError as exc:
        assert str(exc).strip(), "an empty message"
        return
    # What loads must round-trip: a run writes this and --resume reads it back.
    again = ExperimentConfig.model_validate(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config


@FUZZ
@given(document=documents)
def test_random_yaml_documents_load_or_are_refused(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.yaml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        load_or_refuse(path)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_load_or_are_refused(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.yaml"
        path.write_bytes(raw)
        load_or_refuse(path)


dotted = st.one_of(st.sampled_from(KEYS), st.lists(names, min_size=1, max_size=4).map(".".join), st.text(max_size=15))
override_values = st.one_of(
    st.text(max_size=20), values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
)


@FUZZ
@given(
    overrides=st.lists(st.tuples(dotted, override_values).map(lambda kv: f"{kv[0]}={kv[1]}"), min_size=1, max_size=3)
)
def test_random_set_overrides_load_or_are_refused(overrides):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "base.yaml"
        path.write_text("device: cpu\n")
        load_or_refuse(path, overrides)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=documents,
    overrides=st.lists(st.tuples(dotted, override_values).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=2),
)
def test_the_command_line_exits_0_or_2_never_a_traceback(document, overrides):
    from typer.testing import CliRunner

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.yaml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        args = ["config", "show", "-c", str(path)] + [arg for item in overrides for arg in ("--set", item)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code in (0, 2), result.output
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
        if result.exit_code == 2:
            assert result.stderr.startswith("error: ") and "Traceback" not in result.output


PLAN = json.loads(plan_to_json(plan_comparison(["relu", "sigmoid"], ["device=cpu"], [], 2), {}))


def mutate(plan: dict, path: list, value) -> dict:
    """``plan`` with the item at ``path`` (keys / indices, followed as far as they go) replaced by ``value``."""
    copy = json.loads(json.dumps(plan))
    node = copy
    for step in path[:-1]:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        else:
            break
    last = path[-1]
    if isinstance(node, dict):
        node[last if isinstance(last, str) else str(last)] = value
    elif isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        node[last] = value
    return copy


steps = st.one_of(
    st.sampled_from(
        [
            "seeds",
            "variants",
            "runs",
            "units",
            "engine",
            "label",
            "config",
            "folder",
            "variant",
            "seed",
            "stacked",
            "model",
            "hidden",
            "schema_version",
            "options",
        ]
    ),
    st.integers(min_value=0, max_value=4),
)


@FUZZ
@given(path=st.lists(steps, min_size=1, max_size=5), value=values)
def test_broken_plans_are_refused_never_a_traceback(path, value):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "plan.json").write_text(json.dumps(mutate(PLAN, path, value)))
        try:
            plan = load_plan(Path(folder))
        except ConfigError as exc:
            assert "plan.json" in str(exc) or "compare:" in str(exc)
            return
        assert len({run.folder for run in plan.runs}) == len(plan.runs)
        assert all("/" not in run.folder and not run.folder.startswith(".") for run in plan.runs)
