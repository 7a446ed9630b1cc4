"""Turn config files, `extends` chains and `--set` overrides into one validated ExperimentConfig.

Every user mistake becomes a ConfigError naming the file (or --set, or --vary), the key and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dl_lab.config.choices import did_you_mean
from dl_lab.config.schema import ExperimentConfig
from dl_lab.errors import ConfigError

SET_ORIGIN = "--set"
VARY_ORIGIN = "--vary"  # a comparison's varied keys, applied after its --set
# Caps on input that could otherwise be unbounded; an environment variable raises each on purpose.
MAX_CONFIG_BYTES = ("DLLAB_MAX_CONFIG_BYTES", 1 << 20)
MAX_EXTENDS_DEPTH = ("DLLAB_MAX_EXTENDS", 32)
KEY_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def limit(cap: tuple[str, int]) -> int:
    """A cap's value: its environment variable when set to a positive integer, else the default."""
    variable, default = cap
    text = os.environ.get(variable, "")
    return int(text) if text.isdigit() and int(text) > 0 else default


def short(value: Any, width: int = 80) -> str:
    """repr() cut to ``width`` characters: messages stay one readable line whatever the input."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 5]}…{text[-4:]}"


@dataclass(frozen=True)
class LoadedConfig:
    """The validated config plus where each key came from, for messages raised after validation."""

    config: ExperimentConfig
    path: Path
    origins: dict[str, str]  # dotted key -> file path or "--set"

    def where(self, key: str) -> str:
        """'configs/x.yaml: device' — the source that set ``key`` (or the top file for defaults)."""
        return f"{_origin_of(key.split('.'), self.origins, self.path)}: {key}"


def preset_root() -> Path:
    """Presets shipped with the package (the repository's configs/ folder)."""
    return Path(str(resources.files("dl_lab.presets")))


def preset_names() -> list[str]:
    root = preset_root()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_config_path(source: str, cwd: Path | None = None) -> Path:
    """A path, else configs/NAME.yaml under the current folder, else a preset shipped with dl_lab."""
    cwd = cwd or Path.cwd()
    name = source[:-5] if source.endswith(".yaml") else source
    candidates = [cwd / source, cwd / "configs" / f"{name}.yaml", preset_root() / f"{name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    presets = preset_names()
    raise ConfigError(
        f"{source}: no such config file{did_you_mean(name, presets)}. Looked for "
        f"{', '.join(_display(c) for c in candidates[:2])} and a preset named {name!r}; "
        f"presets: {', '.join(presets)}"
    )


def load_config(
    source: str, overrides: Iterable[str] = (), cwd: Path | None = None, varied: Iterable[str] = ()
) -> LoadedConfig:
    """``source`` with its parents, then ``overrides`` (--set KEY=VALUE), then ``varied`` (one value of
    each --vary key, KEY=VALUE), validated; errors name the source of the offending key."""
    path = resolve_config_path(source, cwd)
    merged, origins = _read_with_parents(path, chain=())
    merged.setdefault("name", path.stem)  # names are not inherited from parents (see below)
    for item in overrides:
        _apply_override(merged, origins, item)
    for item in varied:
        _apply_override(merged, origins, item, VARY_ORIGIN)
    try:
        config = ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins, path)) from None
    return LoadedConfig(config, path, origins)


def _display(path: Path) -> str:
    """Paths relative to the current folder when possible: shorter messages."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    shown = _display(path)
    cap = limit(MAX_CONFIG_BYTES)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(cap + 1)
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read config file ({exc.strerror or exc})") from None
    if len(raw) > cap:
        raise ConfigError(
            f"{shown}: larger than {cap:,} bytes, far beyond any config; allowed: a small YAML file "
            f"(set {MAX_CONFIG_BYTES[0]}=<bytes> to read a bigger one on purpose)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{shown}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
            "allowed: a YAML file saved as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{shown}: {where}malformed YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(
            f"{shown}: nested too deeply to be a config; allowed: sections such as 'model: {{...}}'"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: expected a mapping of keys (e.g. 'seed: 1'), got {type(data).__name__}")
    return data


def _read_with_parents(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge the `extends` chain, parent first; returns (merged dict, dotted key -> origin)."""
    resolved = path.resolve()
    if len(chain) >= limit(MAX_EXTENDS_DEPTH):
        raise ConfigError(
            f"{_display(path)}: extends: a chain of more than {limit(MAX_EXTENDS_DEPTH)} files; allowed: a "
            f"shorter chain (set {MAX_EXTENDS_DEPTH[0]}=<files> to allow a longer one on purpose)"
        )
    if resolved in chain:
        cycle = " -> ".join(_display(p) for p in (*chain, resolved))
        raise ConfigError(f"{_display(path)}: extends: cycle {cycle}; a config may not extend itself")
    data = _read_yaml(path)
    parent_ref = data.pop("extends", None)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if parent_ref is not None:
        if not isinstance(parent_ref, str):
            raise ConfigError(
                f"{_display(path)}: extends: expected a file path relative to this file, got {parent_ref!r}"
            )
        parent = path.parent / parent_ref
        if not parent.is_file():
            raise ConfigError(
                f"{_display(path)}: extends: no such file {_display(parent)} (paths are relative to the extending file)"
            )
        merged, origins = _read_with_parents(parent, (*chain, resolved))
        merged.pop("name", None)  # a parent's name would mislabel the child's runs
        origins.pop("name", None)
    _merge(merged, data, origins, _display(path), prefix="")
    return merged, origins


def _merge(base: dict[str, Any], update: dict[str, Any], origins: dict[str, str], origin: str, prefix: str) -> None:
    """Deep-merge ``update`` into ``base`` key by key (mappings merge, everything else replaces)."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origins, origin, f"{dotted}.")
        else:
            base[key] = value
            for existing in [k for k in origins if k.startswith(f"{dotted}.")]:
                del origins[existing]
            origins[dotted] = origin  # nested keys inherit it (see _origin_of)


def _apply_override(merged: dict[str, Any], origins: dict[str, str], item: str, origin: str = SET_ORIGIN) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{origin} {short(item)}: expected KEY=VALUE, e.g. {origin} model.activation=sigmoid")
    parts = key.split(".")
    bad = next((part for part in parts if not KEY_PART.match(part)), None)
    if bad is not None:
        what = "an empty part" if not bad else f"the part {short(bad)}"
        raise ConfigError(
            f"{origin} {short(item)}: the key {short(key)} has {what}; allowed: dotted names such as "
            "model.hidden or optimizer.lr"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} {short(item)}: value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise ConfigError(f"{origin} {short(item)}: value nested too deeply") from None
    node = merged
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin} {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    update = {parts[-1]: value}
    _merge(node, update, origins, origin, prefix=".".join(parts[:-1]) + "." if len(parts) > 1 else "")


def _describe(exc: ValidationError, origins: dict[str, str], path: Path) -> str:
    """One line per problem: '<file>: <key>: <problem> (got <value>); allowed: <description>'."""
    lines = []
    for error in exc.errors():
        loc = _field_path(error["loc"], error["type"] == "extra_forbidden")
        key = _dotted(loc)
        source = _origin_of(loc, origins, path)
        if not key:  # a check across sections: its message names the keys
            lines.append(("", f"{source}: {error['msg'].removeprefix('Value error, ')}"))
            continue
        if error["type"] == "extra_forbidden":
            fields = _fields_at(loc[:-1])
            hint = did_you_mean(loc[-1], fields)
            lines.append((key, f"{source}: {key}: unknown key{hint}; allowed here: {', '.join(fields)}"))
            continue
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if "allowed" not in message:  # registry and cross-key checks already say what is allowed
            got = error.get("input")
            allowed = _description_at(loc)
            message += f" (got {short(got)})" if not isinstance(got, (dict, list)) else ""
            message += f"; allowed: {allowed}" if allowed else ""
        lines.append((key, f"{source}: {key}: {message}"))
    # Unions (batchnorm: false | {position}) report once per member: keep the most specific line
    # for each key and drop a key's line when one of its sub-keys has one.
    keys = [key for key, _ in lines]
    kept, seen = [], set()
    for key, line in lines:
        if key in seen or any(other.startswith(f"{key}.") for other in keys):
            continue
        seen.add(key)
        kept.append(line)
    return "\n".join(kept)


def _field_path(loc: tuple[Any, ...], unknown_last: bool) -> list[str]:
    """The config keys in a pydantic error location, without union-member tags ('BatchNormConfig',
    'literal[False]', 'constrained-float'): each part is kept only if it names a field (or an index)
    where it stands; an unknown key is kept when the error is about that key."""
    path: list[str] = []
    model: type[BaseModel] | None = ExperimentConfig
    for position, part in enumerate(loc):
        if isinstance(part, int):
            path.append(str(part))
        elif model is not None and part in model.model_fields:
            path.append(part)
            model = _model_at(path)
        elif unknown_last and position == len(loc) - 1:
            path.append(str(part))
    return path


def _dotted(loc: list[str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _origin_of(loc: list[str], origins: dict[str, str], path: Path) -> str:
    """Where ``loc`` was set: the key itself; else the last source that set a key below it (--set
    model.rbm.lr=1 made model.rbm, and --set is applied after the files); else its nearest section."""
    names = [p for p in loc if not p.isdigit()]
    key = ".".join(names)
    nested = [o for k, o in origins.items() if k.startswith(key + ".")]  # e.g. --set seed.x=1
    if key not in origins and nested:
        return nested[-1]
    for end in range(len(names), 0, -1):
        origin = origins.get(".".join(names[:end]))
        if origin:
            return origin
    return _display(path)


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _fields_at(loc: list[str]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _description_at(loc: list[str]) -> str | None:
    names = [p for p in loc if not p.isdigit()]
    model = _model_at(names[:-1]) if names else None
    field = model.model_fields.get(names[-1]) if model else None
    return field.description if field else None
