"""`dllab cache ls|clear`: the decoded-dataset cache ($DLLAB_CACHE_DIR), what it holds and freeing it (no torch)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from dl_lab.cli.common import EXIT_FAILED

CacheJsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def _folder() -> Path | None:
    """The cache folder these commands look at (None: the cache is off); a path that is not a folder is
    refused, naming the variable that chose it."""
    from dl_lab.components import tensor_cache
    from dl_lab.errors import ConfigError

    folder = tensor_cache.cache_dir(os.environ)
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"${tensor_cache.ENV_CACHE_DIR}: {folder} is not a folder; point it at a folder for the "
            f"decoded-dataset cache, or set it to '{tensor_cache.OFF}' to turn the cache off"
        )
    return folder


@contextlib.contextmanager
def _readable(folder: Path) -> Iterator[None]:
    """A cache folder that cannot be listed (permissions, I/O) is reported as the variable's fault: exit 2."""
    from dl_lab.components import tensor_cache
    from dl_lab.errors import ConfigError

    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"${tensor_cache.ENV_CACHE_DIR}: cannot read the cache folder {folder} ({exc.strerror or exc}); "
            f"point it at a folder you can read, or set it to '{tensor_cache.OFF}'"
        ) from None


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def _off_message() -> str:
    from dl_lab.components import tensor_cache

    return f"the dataset cache is off (${tensor_cache.ENV_CACHE_DIR}={tensor_cache.OFF})"


def cache_ls(json_: CacheJsonOption = False) -> None:
    """List the decoded-dataset cache: each file, its size, and whether it matches its source files as they are now."""
    from dl_lab.components import tensor_cache

    folder = _folder()
    files = []
    if folder is not None:
        with _readable(folder):
            files = tensor_cache.survey(folder)
    total = sum(item.bytes for item in files)
    if json_:
        document = {"folder": str(folder) if folder else None, "bytes": total, "files": [f.as_dict() for f in files]}
        typer.echo(json.dumps(document, indent=2))
        return
    if folder is None:
        typer.echo(_off_message())
        return
    for item in files:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.modified))
        typer.echo(f"{when}  {_size(item.bytes):>9}  {item.name}  {item.state}")
        for source in item.sources[:1]:
            typer.echo(f"{'':29}from {Path(source).parent}")
    count = len(files)
    typer.echo(f"{count} file{'' if count == 1 else 's'}, {_size(total)} in {folder}")


def cache_clear(
    stale: Annotated[
        bool,
        typer.Option(
            "--stale",
            help="Only what would never be served again: entries whose source files changed or are gone, "
            "damaged ones, and temporaries of writers killed over an hour ago.",
        ),
    ] = False,
    json_: CacheJsonOption = False,
) -> None:
    """Delete the decoded-dataset cache's files (the next run decodes MNIST again and rewrites it: about 0.6 s).

    Only files dl_lab wrote there go; anything else there, and the datasets in data.root, are left alone.

    Exit 1 if a file could not be removed."""
    from dl_lab.components import tensor_cache

    folder = _folder()
    done = tensor_cache.Cleared()
    if folder is not None:
        with _readable(folder):
            done = tensor_cache.clear(folder, stale_only=stale)
    if json_:
        document = {
            "folder": str(folder) if folder else None,
            "removed": [item.name for item in done.removed],
            "bytes_freed": done.bytes_freed,
            "kept": [item.name for item in done.kept],
            "failed": [{"file": item.name, "error": error} for item, error in done.failed],
        }
        typer.echo(json.dumps(document, indent=2))
    elif folder is None:
        typer.echo(_off_message())
    else:
        for item in done.removed:
            typer.echo(f"removed {item.name} ({_size(item.bytes)}, {item.state})")
        for item, error in done.failed:
            typer.echo(f"error: could not remove {folder / item.name}: {error}", err=True)
        kept = f"; kept {len(done.kept)} in use (current entries, temporaries under an hour old)" if stale else ""
        typer.echo(f"freed {_size(done.bytes_freed)} in {folder}{kept}")
    if done.failed:
        raise typer.Exit(EXIT_FAILED)
