"""`dllab config show`, `dllab config schema` and `dllab options`: what a config may say."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from dl_lab.cli.common import ConfigOption, SetOption


def config_show(config: ConfigOption, set_: SetOption = None) -> None:
    """Print the fully resolved config (defaults, extends and --set applied) as YAML."""
    import yaml

    from dl_lab.config.loader import load_config

    loaded = load_config(config, set_ or [])
    typer.echo(yaml.safe_dump(loaded.config.to_dict(), sort_keys=False, default_flow_style=None), nl=False)


class Record(str, enum.Enum):
    config = "config"
    run = "run"
    comparison = "comparison"


def config_schema(
    record: Annotated[
        Record,
        typer.Option(
            "--record",
            help="config: the experiment config (YAML files); run: a run folder's summary.json; "
            "comparison: a comparison's (or report's) summary.json.",
        ),
    ] = Record.config,
) -> None:
    """Print the JSON Schema of a config file (or of a run's or comparison's summary.json), generated
    from the models that validate them, for editors and other tools."""
    import json

    from dl_lab.config.schema import config_file_schema
    from dl_lab.runs.records import ComparisonSummary, RunSummary

    if record is Record.config:
        schema = config_file_schema()
    else:
        schema = (RunSummary if record is Record.run else ComparisonSummary).model_json_schema()
    typer.echo(json.dumps(schema, indent=2))


def options() -> None:
    """List the activations, initializers, optimizers and datasets a config may name, and the presets."""
    from dl_lab.config import choices
    from dl_lab.config.loader import preset_names

    for title, table in [
        ("model.activation", choices.ACTIVATIONS),
        ("model.init", choices.INITIALIZERS),
        ("optimizer.name", choices.OPTIMIZERS),
        ("data.dataset", choices.DATASETS),
    ]:
        typer.echo(f"{title}:")
        for choice in table:
            typer.echo(f"  {choice.name:<15} {choice.help}")
    typer.echo("presets (--config NAME):")
    typer.echo("  " + ", ".join(preset_names()))
