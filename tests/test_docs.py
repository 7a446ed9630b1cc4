"""The README and docs/config.md say what the code does: every key's default, every metrics.csv column."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import yaml
from conftest import FAST

from dl_lab.cli.app import app
from dl_lab.config.schema import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONFIG_DOC = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")


def defaults() -> dict:
    return ExperimentConfig(name="relu").to_dict()


def test_the_readme_config_block_lists_every_key_with_its_default():
    block = README.split("```yaml\nname: relu")[1].split("```")[0]
    stated = yaml.safe_load("name: relu" + block)
    stated.pop("extends")
    assert stated == defaults()


def documented_defaults(section: str) -> dict[str, object]:
    """The `| \\`key\\` | default | ...` rows of one '## `section`' table of docs/config.md."""
    body = CONFIG_DOC.split(f"## `{section}`")[1].split("\n## ")[0].split("\n### ")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", body, flags=re.M)
    return {key: yaml.safe_load(cell.strip().strip("`")) for key, cell in rows}


def test_docs_config_gives_every_key_and_its_default():
    config = defaults()
    for section in ("data", "model", "optimizer", "train"):
        assert documented_defaults(section) == config[section], section
    rbm = CONFIG_DOC.split("| `model.rbm` key |")[1].split("\n\n")[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", rbm, flags=re.M))
    assert {key: yaml.safe_load(value) for key, value in rows.items()} == config["model"]["rbm"]


def test_the_readme_names_every_metrics_csv_column(runner, write_config, tmp_path):
    config = write_config(
        {
            **FAST,
            "data": {"dataset": "synthetic", "train_subset": 300},
            "model": {"hidden": [16, 8]},
            "train": {"epochs": 1, "eval_train": True, "step_grad_norms": True},
        }
    )
    result = runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [metrics] = tmp_path.glob("*/metrics.csv")
    columns = next(csv.reader(metrics.open()))
    assert len(columns) == 8 + 3 * 3 + 5 * 2  # scalars, per Linear layer (3 of them), per hidden layer (2)
    listed = README.split("- `metrics.csv`")[1].split("\n- ")[0]
    for column in columns:
        pattern = re.sub(r"\d+$", "K", column)  # grad_norm_2 -> grad_norm_K, dead_h1 -> dead_hK
        assert f"`{pattern}`" in listed or column in listed, column
