"""The architecture holds: no import cycles, every config choice has a builder, read-only commands
never load torch, the typed records describe the files written, the version lives in one place.

The layer rules themselves are import-linter contracts (pyproject.toml), run by .ci/run.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, child_env

import dl_lab
from dl_lab.cli.app import app

PACKAGE = Path(dl_lab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """dl_lab modules imported when ``path`` is imported: module-level statements only (not inside
    functions, not under `if TYPE_CHECKING:`)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for statement in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(statement, ast.Import):
                found |= {alias.name for alias in statement.names if alias.name.startswith("dl_lab")}
            elif isinstance(statement, ast.ImportFrom) and statement.module and statement.module.startswith("dl_lab"):
                found.add(statement.module)
                found |= {f"{statement.module}.{alias.name}" for alias in statement.names}
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle a depth-first walk of ``graph`` (module -> modules it imports) meets."""
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in trail:
                cycles.append(trail[trail.index(target) :] + [target])
            elif target not in done:
                visit(target, trail + [target])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    return cycles


def test_no_module_imports_another_that_imports_it_back():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}
    assert len(graph) > 40 and graph["dl_lab.cli.app"]  # every module was found, with its imports
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_and_reads_only_module_level_imports(tmp_path):
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    (tmp_path / "a.py").write_text(
        "from dl_lab.b import x\n\nif TYPE_CHECKING:\n    from dl_lab.c import y\n\ndef f():\n    import dl_lab.d\n"
    )
    assert top_level_imports(tmp_path / "a.py") == {"dl_lab.b", "dl_lab.b.x"}


def test_every_config_choice_has_a_builder_and_no_builder_lacks_a_choice():
    from dl_lab.components.activations import ACTIVATIONS
    from dl_lab.components.datasets import DATASETS
    from dl_lab.components.initializers import INITIALIZERS
    from dl_lab.components.optimizers import OPTIMIZERS

    for registry in (ACTIVATIONS, INITIALIZERS, OPTIMIZERS, DATASETS):
        assert registry.missing() == [], registry.choices.kind
        assert registry.names() == registry.choices.names()
        with pytest.raises(KeyError, match="unknown"):
            registry.register("no-such-name")(lambda: None)


def imported_modules(args: list[str], cwd: Path) -> set[str]:
    """The modules ``python -X importtime -m dl_lab ARGS`` imports (its stderr lists every one)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dl_lab", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_commands_that_only_read_files_never_import_torch(runner, tmp_path, write_config):
    config = write_config({**FAST, "data": {"dataset": "synthetic", "train_subset": 300}, "train": {"epochs": 1}})
    result = runner.invoke(app, ["compare", str(config), "--seeds", "2", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    [folder] = (tmp_path / "runs").glob("compare-*")
    for args in (
        ["--help"],
        ["compare", "--help"],
        ["report", "--help"],
        ["config", "show", "-c", str(config)],
        ["report", str(folder)],
        ["options"],
        ["config", "schema", "--record", "comparison"],
        ["runs", "ls", str(tmp_path / "runs")],
        ["runs", "show", str(folder)],
    ):
        modules = imported_modules(args, tmp_path)
        assert "dl_lab.cli.app" in modules  # the listing is real
        assert not {m for m in modules if m == "torch" or m.startswith(("torch.", "torchvision"))}, args
        assert not {m for m in modules if m == "ray" or m.startswith("ray.")}, args
    assert "torch" in imported_modules(["compare", "--resume", str(folder)], tmp_path)  # training does load it


def test_the_records_describe_the_files_every_writer_writes(runner, tmp_path, write_config):
    from dl_lab.runs.records import ComparisonSummary, RunSummary

    config = write_config({**FAST, "data": {"dataset": "synthetic", "train_subset": 300}, "train": {"epochs": 1}})
    result = runner.invoke(app, ["compare", str(config), "--seeds", "2", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [folder] = tmp_path.glob("compare-*")
    comparison = json.loads((folder / "summary.json").read_text())
    assert ComparisonSummary.model_validate(comparison).to_json_dict() == comparison  # the record round-trips the file
    assert comparison["schema_version"] == 1 and comparison["kind"] == "comparison"
    for run in folder.glob("*-seed*/summary.json"):
        data = json.loads(run.read_text())
        assert RunSummary.model_validate(data).to_json_dict() == data
        assert data["schema_version"] == 1 and "diagnostics" in data and "pretraining" not in data

    for record, title in (("config", "dl_lab config file"), ("run", "RunSummary"), ("comparison", "ComparisonSummary")):
        result = runner.invoke(app, ["config", "schema", "--record", record])
        assert result.exit_code == 0
        schema = json.loads(result.stdout)
        assert schema["title"] == title and schema["type"] == "object"
    assert (
        "schema_version" in json.loads(runner.invoke(app, ["config", "schema", "--record", "run"]).stdout)["properties"]
    )
    bad = runner.invoke(app, ["config", "schema", "--record", "nope"])
    assert bad.exit_code == 2


def test_the_version_is_written_once():
    assert importlib.metadata.version("dl_lab") == dl_lab.__version__
    assert "version =" not in (PACKAGE.parent / "pyproject.toml").read_text().split("[project]")[1].split("[")[0]
