"""The run store on disk: atomic files, folder names, where dl_lab may write, and the true status of a run.

Rules kept here (docs/reliability.md):
- every file is written to a temporary name and renamed into place, with the user's umask;
- a folder is created only for a run or report, with a name no other process can take;
- nothing the tool did not create for that purpose is deleted or overwritten: a report writes only
  into a new or empty folder or over its own earlier outputs, and an unfinished run is moved aside
  into ``.stale/``, never removed;
- a run whose summary says ``running`` but whose writer is gone (SIGKILL, power cut) reads as
  ``interrupted``.

Torch-free: `dllab report` reads the store without loading torch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from dl_lab.atomic import FILE_MODE, FOLDER_MODE, atomic_path, temporary_beside
from dl_lab.errors import ConfigError
from dl_lab.runs.locks import holder, is_locked
from dl_lab.runs.records import RunSummary, parse_report_files, parse_run_summary
from dl_lab.signals import deferred

STALE_FOLDER = ".stale"
PLAN_FILE = "plan.json"
MAX_FOLDER_NAME = 100  # characters of a run or variant name kept in a folder name
REPORT_FILES = ("table.md", "table.csv", "summary.json")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)


def write_in_place(path: Path, text: str) -> None:
    """Last resort when the disk is full: truncate ``path`` and write ``text`` into the space it freed
    (``text`` must be no longer than what the file held for this to be sure to fit)."""
    with open(path, "r+" if path.exists() else "w", encoding="utf-8", newline="") as handle:
        handle.truncate(0)
        handle.write(text)


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]], digits: int | None = 6) -> str:
    """CSV with a header; keys outside ``columns`` are left out, floats rounded to ``digits`` (None: kept)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, digits) if isinstance(v, float) and digits is not None else v) for k, v in row.items()})
    return out.getvalue()


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not JSON (half-written files never exist, but
    users and other tools can leave anything)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- folders -----------------------------------------------------------------------------------

def safe_name(name: str) -> str:
    """A folder-name-safe form of a run or variant name: no separators, not hidden, at most
    MAX_FOLDER_NAME characters (a long name keeps a hash of the rest, so names stay distinct)."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_").lstrip(".") or "run"
    if len(safe) > MAX_FOLDER_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_FOLDER_NAME - 9]}-{digest}"
    return safe


def create_run_dir(runs_root: Path, name: str, timestamp: bool = True, prefix: str = "") -> Path:
    """runs/<prefix><UTC timestamp>-<name>[-N] (no name: runs/<prefix><UTC timestamp>[-N]); mkdir is
    atomic, so two runs never share a folder."""
    make_folder(runs_root, "--runs-dir")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") if timestamp else ""
    base = prefix + "-".join(part for part in (stamp, safe_name(name) if name else "") if part)
    for attempt in range(1, 10_000):
        candidate = runs_root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir(mode=0o777)
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {runs_root}")


def check_writable_folder(path: Path, option: str) -> None:
    """Refuse (ConfigError, exit 2) a folder that is a file, lies under a file or cannot be written."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder; allowed: a folder (created if missing)")
    existing = path
    while not existing.is_dir():
        if existing.exists() or existing.is_symlink():
            kind = "a broken link" if existing.is_symlink() and not existing.exists() else "a file"
            raise ConfigError(f"{option} {path}: {existing} is {kind}, so no folder can be created under it; "
                              "allowed: a folder path")
        if existing.parent == existing:
            break
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: {existing} is not writable by this user; allowed: a folder you can write to")


def make_folder(path: Path, option: str) -> None:
    """mkdir -p, with every way it can fail (a file in the way, permissions, read-only disk) as ConfigError."""
    check_writable_folder(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create the folder ({exc.strerror or exc})") from None


def set_aside(run_folder: Path) -> Path:
    """Move an unfinished run out of the way, into <parent>/.stale/<name>[-N]; nothing is deleted."""
    stale = run_folder.parent / STALE_FOLDER
    stale.mkdir(exist_ok=True)
    for attempt in range(1, 10_000):
        target = stale / (run_folder.name if attempt == 1 else f"{run_folder.name}-{attempt}")
        if target.exists():
            continue
        os.rename(run_folder, target)
        return target
    raise RuntimeError(f"could not move {run_folder} aside")


# ---- run status --------------------------------------------------------------------------------

def read_run_summary(folder: Path) -> RunSummary | None:
    """The run folder's summary.json as a record (None: no readable run summary there)."""
    return parse_run_summary(read_json(folder / "summary.json"))


def run_status(folder: Path, summary: RunSummary | None = None) -> str | None:
    """The true status of the run in ``folder`` (None: no run there). A ``running`` run whose writer
    no longer holds the lock (its own, or its comparison's) was killed: it reads ``interrupted``.
    ``summary``: the folder's summary when the caller has already read it."""
    summary = summary or read_run_summary(folder)
    if summary is None:
        return None
    status = summary.status
    writers = [folder, folder.parent] if (folder.parent / PLAN_FILE).is_file() else [folder]
    if status == "running" and not any(is_locked(f) and holder(f) != os.getpid() for f in writers):
        return "interrupted"  # (a lock this process holds is a report's: it writes no run)
    return status


# ---- report folders ----------------------------------------------------------------------------

def report_outputs(folder: Path) -> set[str]:
    """Files an earlier report wrote into ``folder`` (as its summary.json lists them)."""
    summary = parse_report_files(read_json(folder / "summary.json"))
    if summary is None:
        return set()
    return set(summary.outputs or [*REPORT_FILES, *summary.plots])


def check_report_folder(target: Path, names: Iterable[str], compare_folder: Path | None = None) -> None:
    """May a report write ``names`` into ``target``? Yes into a new or empty folder, into the
    comparison's own folder (where those names are reserved for it), or over an earlier report's own
    files; never over a run or over files dl_lab did not write (ConfigError, exit 2)."""
    if not target.exists():
        check_writable_folder(target, "--out")
        return
    if not target.is_dir():
        raise ConfigError(f"--out {target}: is a file, not a folder; allowed: a new or empty folder")
    own = compare_folder is not None and target.resolve() == compare_folder.resolve()
    if read_run_summary(target) is not None or (not own and any((target / n).exists() for n in ("metrics.csv", "config.yaml", PLAN_FILE))):
        raise ConfigError(f"--out {target}: holds a run or a comparison, which a report must not overwrite; "
                          f"allowed: a new or empty folder (e.g. --out {target}/report)")
    ours = report_outputs(target)
    entries = [p.name for p in target.iterdir()
               if p.name not in (".lock", STALE_FOLDER) and not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if not own and not ours and entries:
        raise ConfigError(f"--out {target}: holds files dl_lab did not write ({', '.join(sorted(entries)[:3])}"
                          f"{', …' if len(entries) > 3 else ''}); allowed: a new or empty folder, or an earlier report's")
    # In a comparison's own folder the report's file names are reserved for it (docs/compare.md).
    foreign = [] if own else [name for name in names if (target / name).exists() and name not in ours]
    if foreign:
        raise ConfigError(f"{target}: {', '.join(foreign)} would be overwritten but was not written by a dl_lab report; "
                          "move it away or write the report elsewhere with --out")
