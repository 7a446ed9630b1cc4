"""A memory-mapped cache of decoded datasets, checked against its source files and its own checksums.

Decoding MNIST (parse the idx files, convert 47 M pixels to float32) is done once; later processes
map the float tensors straight from the cache file (``MAP_PRIVATE``: pages come from the OS page
cache, shared between processes such as Ray workers, and a write to a tensor never reaches the file).

A cache file is served only when
- its header says it was decoded from the same source files: same resolved path, size, mtime, ctime,
  inode and device (any write to a file changes its ctime, which no user command can set back), by
  the same decoding (``DECODING``); and
- every array's CRC-32s (one per 16 MiB) match, and the header's own CRC-32 matches (a damaged or truncated file is
  rebuilt, never trusted).

Otherwise the data is decoded from the sources and the cache file is replaced atomically. The cache
is an optimisation only: a cache folder that cannot be written, or a full disk, costs the speed-up
and nothing else. A writer killed mid-write leaves its temporary behind; the next writer of that
entry removes it once it is an hour old.

Layout: ``DLLABTC1`` | header length (u32 LE) | header CRC-32 (u32 LE) | header JSON | arrays, each at
an offset aligned to 4096 bytes.

``survey`` and ``clear`` (``dllab cache ls|clear``) look only at what this module writes: files named
``<dataset>-<16 hex>.tensors`` that begin with ``DLLABTC1``, and their temporaries; anything else in
the folder is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import re
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dl_lab.atomic import atomic_path

if TYPE_CHECKING:
    import torch

ENV_CACHE_DIR = "DLLAB_CACHE_DIR"
OFF = "off"
MAGIC = b"DLLABTC1"
PREFIX = struct.Struct("<8sII")  # magic, header length, header CRC-32
MAX_HEADER_BYTES = 1 << 20  # MNIST's header is 1.5 KB: a longer length field is damage, not a header to read
ALIGN = 4096
ABANDONED_AFTER = 3600.0  # seconds: a temporary this old belongs to a writer that was killed
CRC_CHUNK = 1 << 24  # checksummed in 16 MiB pieces, in parallel
# Bump when what is cached changes (dtype, scaling, shape), so older cache files are not served.
DECODING = "idx uint8 images -> float32 /255, (N, H*W); labels int64; v1"
ENTRY_NAME = re.compile(r"(?P<dataset>.+)-[0-9a-f]{16}\.tensors")  # entry_path's names
TEMPORARY_NAME = re.compile(r"\.(?P<entry>.+-[0-9a-f]{16}\.tensors)\.[^./]+\.tmp")  # atomic_path's, beside them


def cache_dir(environ: Mapping[str, str]) -> Path | None:
    """$DLLAB_CACHE_DIR, ``off`` to disable, else ``$XDG_CACHE_HOME/dl_lab/decoded`` (~/.cache)."""
    chosen = environ.get(ENV_CACHE_DIR)
    if chosen is not None and chosen.strip().lower() == OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dl_lab" / "decoded"


def source_identity(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """What a cache entry was decoded from: enough to notice any change to any source file."""
    identity = []
    for path in paths:
        stat = path.stat()
        identity.append(
            {
                "path": str(path.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "ctime_ns": stat.st_ctime_ns,
                "inode": stat.st_ino,
                "device": stat.st_dev,
            }
        )
    return identity


def entry_path(folder: Path, name: str, sources: Sequence[Path]) -> Path:
    """One cache file per dataset and source folder: a changed source replaces it, never adds one."""
    where = hashlib.sha1("\n".join(str(p.resolve().parent) for p in sources).encode()).hexdigest()[:16]
    return folder / f"{name}-{where}.tensors"


def _chunk_crcs(views: Sequence[memoryview]) -> list[list[int]]:
    """CRC-32 of every CRC_CHUNK bytes of each view, computed on all cores (zlib releases the GIL)."""
    chunks = [
        (i, view[start : start + CRC_CHUNK]) for i, view in enumerate(views) for start in range(0, len(view), CRC_CHUNK)
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        crcs = list(pool.map(zlib.crc32, (chunk for _, chunk in chunks)))
    per_view: list[list[int]] = [[] for _ in views]
    for (i, _), crc in zip(chunks, crcs):
        per_view[i].append(crc)
    return per_view


def data_start(header_length: int) -> int:
    """Where the arrays begin: after the prefix and header, at the next ALIGN boundary."""
    return -(-(PREFIX.size + header_length) // ALIGN) * ALIGN


def _bytes_of(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.contiguous().numpy()).cast("B")


def write_entry(path: Path, arrays: Mapping[str, torch.Tensor], sources: list[dict[str, Any]]) -> None:
    """Write ``arrays`` and the sources' identity to ``path`` (atomically: readers see all or nothing)."""
    views = {name: _bytes_of(tensor) for name, tensor in arrays.items()}
    crcs = dict(zip(views, _chunk_crcs(list(views.values()))))
    entries, offset = [], 0
    for name, tensor in arrays.items():
        entries.append(
            {
                "name": name,
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "shape": list(tensor.shape),
                "offset": offset,  # from the start of the data section
                "nbytes": len(views[name]),
                "crc32": crcs[name],  # one per CRC_CHUNK bytes
            }
        )
        offset += len(views[name])
        offset += -offset % ALIGN
    header = json.dumps({"decoding": DECODING, "sources": sources, "arrays": entries}).encode()
    start = data_start(len(header))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(PREFIX.pack(MAGIC, len(header), zlib.crc32(header)) + header)
        for entry in entries:
            handle.seek(start + entry["offset"])
            handle.write(views[entry["name"]])
        handle.truncate(start + entries[-1]["offset"] + entries[-1]["nbytes"] if entries else start)


def parse_header(data: Any) -> tuple[int, dict[str, Any]] | None:
    """(header length, header) of a cache file whose first bytes are ``data`` (bytes or an mmap), or
    None unless the magic, the length and the header's CRC-32 hold and the header is a JSON object."""
    try:
        magic, length, crc = PREFIX.unpack_from(data, 0)
        if length > MAX_HEADER_BYTES:
            return None
        raw = data[PREFIX.size : PREFIX.size + length]
        if magic != MAGIC or len(raw) != length or zlib.crc32(raw) != crc:
            return None
        header = json.loads(raw)
    except (struct.error, ValueError):
        return None
    return (length, header) if isinstance(header, dict) else None


def read_entry(path: Path, sources: list[dict[str, Any]]) -> dict[str, torch.Tensor] | None:
    """The arrays of a cache file, memory-mapped; None unless it is whole, unchanged and decoded from
    exactly ``sources`` by today's ``DECODING``."""
    import torch

    dtypes = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8}  # what caches hold
    try:
        with open(path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)  # MAP_PRIVATE
    except (OSError, ValueError):  # missing, unreadable, empty
        return None
    try:
        parsed = parse_header(mapped)
        if parsed is None:
            return None
        length, header = parsed
        if header.get("decoding") != DECODING or header.get("sources") != sources:
            return None
        first = data_start(length)
        view, arrays, places = memoryview(mapped), {}, []
        for entry in header["arrays"]:
            start, dtype, count = first + entry["offset"], dtypes[entry["dtype"]], math.prod(entry["shape"])
            if count * dtype.itemsize != entry["nbytes"] or start + entry["nbytes"] > len(mapped):
                return None
            places.append(view[start : start + entry["nbytes"]])
            arrays[entry["name"]] = (
                torch.frombuffer(mapped, dtype=dtype, count=count, offset=start).view(entry["shape"])
                if count
                else torch.empty(entry["shape"], dtype=dtype)  # frombuffer refuses zero elements
            )
        end = max((first + entry["offset"] + entry["nbytes"] for entry in header["arrays"]), default=first)
        if len(mapped) != end or _chunk_crcs(places) != [entry["crc32"] for entry in header["arrays"]]:
            return None
        return arrays
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, RuntimeError):  # damaged header
        return None


def cached(
    name: str, sources: Sequence[Path], decode: Callable[[], dict[str, torch.Tensor]], environ: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """``decode()``'s arrays, from the cache when it holds them for these exact ``sources``; decoded
    and written to the cache otherwise (a cache that cannot be written is skipped)."""
    folder = cache_dir(environ)
    if folder is None:
        return decode()
    identity = source_identity(sources)
    path = entry_path(folder, name, sources)
    arrays = read_entry(path, identity)
    if arrays is not None:
        return arrays
    arrays = decode()
    with contextlib.suppress(OSError):  # read-only or full disk: decoding again next time is the only cost
        remove_abandoned_temporaries(path)
        write_entry(path, arrays, identity)
    return arrays


def remove_abandoned_temporaries(path: Path) -> None:
    """Delete this entry's temporaries (``.<name>.<random>.tmp``, 220 MB for MNIST) left by a writer
    that was killed (SIGKILL, power cut) more than ABANDONED_AFTER seconds ago; a younger one may
    belong to a writer still at work."""
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if abandoned(temporary.stat().st_mtime):
                temporary.unlink()


def abandoned(modified: float) -> bool:
    """Whether a temporary last written at ``modified`` (seconds since the epoch) belongs to a writer
    that was killed: ABANDONED_AFTER seconds without a write."""
    return time.time() - modified > ABANDONED_AFTER


@dataclass(frozen=True)
class CacheFile:
    """One file of the cache folder as ``dllab cache ls`` shows it."""

    name: str
    bytes: int
    modified: float  # seconds since the epoch
    kind: str  # "entry" or "temporary" (a writer's, unfinished)
    state: str  # entry: "current", "stale: ..." (never served again), "damaged"; temporary: "unfinished"
    dataset: str | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def current(self) -> bool:
        return self.state == "current"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "kind": self.kind,
            "dataset": self.dataset,
            "bytes": self.bytes,
            "modified": self.modified,
            "state": self.state,
            "sources": self.sources,
        }


def _ours(path: Path) -> os.stat_result | None:
    """The stat of ``path`` if it is a regular file this module wrote (its name, and its magic or, for a
    temporary created a moment ago, nothing yet), else None: never a link, a folder or a user's file."""
    entry, temporary = ENTRY_NAME.fullmatch(path.name), TEMPORARY_NAME.fullmatch(path.name)
    if not (entry or (temporary and ENTRY_NAME.fullmatch(temporary["entry"]))):
        return None
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return None
        with open(path, "rb") as handle:
            start = handle.read(len(MAGIC))
    except OSError:
        return None
    return info if start == MAGIC or (temporary and not start) else None


def _header(path: Path) -> dict[str, Any] | None:
    """The header of a cache file, if it is whole (parse_header); the arrays are not read."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(PREFIX.size)
            length = PREFIX.unpack(prefix)[1] if len(prefix) == PREFIX.size else 0
            parsed = parse_header(prefix + handle.read(min(length, MAX_HEADER_BYTES)))
    except OSError:
        return None
    return parsed[1] if parsed else None


def _entry_state(header: dict[str, Any] | None) -> str:
    """Whether the next load of this entry's dataset would serve it (its arrays' checksums aside)."""
    if header is None or not isinstance(header.get("sources"), list):
        return "damaged"
    if header.get("decoding") != DECODING:
        return "stale: decoded by another version of dl_lab"
    try:
        paths = [Path(source["path"]) for source in header["sources"]]
    except (TypeError, KeyError):
        return "damaged"
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        return f"stale: source file gone ({missing[0]})"
    try:
        same = source_identity(paths) == header["sources"]
    except OSError as exc:
        return f"stale: source file unreadable ({exc.strerror})"
    return "current" if same else "stale: a source file changed since"


def _files(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """The files of ``folder`` that this module wrote, by name."""
    try:
        children = sorted(folder.iterdir())
    except FileNotFoundError:
        return
    for path in children:
        info = _ours(path)
        if info is not None:
            yield path, info


def survey(folder: Path) -> list[CacheFile]:
    """Every entry and temporary in the cache ``folder``, with its size and whether it is current."""
    found = []
    for path, info in _files(folder):
        entry = ENTRY_NAME.fullmatch(path.name)
        if entry is None:
            found.append(CacheFile(path.name, info.st_size, info.st_mtime, "temporary", "unfinished"))
            continue
        header = _header(path)
        sources = header.get("sources") if header else None
        shown = [str(s.get("path")) for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []
        found.append(
            CacheFile(path.name, info.st_size, info.st_mtime, "entry", _entry_state(header), entry["dataset"], shown)
        )
    return found


@dataclass
class Cleared:
    """What ``clear`` did: files removed (with their sizes), kept, and those it could not remove."""

    removed: list[CacheFile] = field(default_factory=list)
    kept: list[CacheFile] = field(default_factory=list)
    failed: list[tuple[CacheFile, str]] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes for item in self.removed)


def clear(folder: Path, stale_only: bool = False) -> Cleared:
    """Remove this module's files from ``folder``: every entry and temporary, or with ``stale_only``
    the entries that would not be served again (stale, damaged) and temporaries abandoned
    ABANDONED_AFTER seconds ago. A process that has an entry mapped keeps reading it (the OS keeps
    its pages until it lets go); one writing a removed temporary just does not leave a cache entry."""
    done = Cleared()
    for item in survey(folder):
        if stale_only and (item.current or (item.kind == "temporary" and not abandoned(item.modified))):
            done.kept.append(item)
            continue
        try:
            (folder / item.name).unlink()
        except FileNotFoundError:  # another process removed or replaced it first
            continue
        except OSError as exc:
            done.failed.append((item, exc.strerror or str(exc)))
            continue
        done.removed.append(item)
    return done
