"""The decoded-dataset cache: served only for the exact source files it was decoded from, and only
when every checksum holds; anything else is decoded again and the cache file replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import child_env, small_mnist, write_idx

from dl_lab.components import datasets, tensor_cache
from dl_lab.components.datasets import DataRoot, load_dataset
from dl_lab.config.schema import DataConfig

CPU = torch.device("cpu")
CONFIG = DataConfig(dataset="mnist", download=False)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("DLLAB_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """The idx files read from their source, in order (a cache hit reads none)."""
    read: list[Path] = []
    original = datasets.read_idx

    def counting(path: Path, ndim: int) -> torch.Tensor:
        read.append(path)
        return original(path, ndim)

    monkeypatch.setattr(datasets, "read_idx", counting)
    return read


def load(root: Path) -> datasets.Dataset:
    return load_dataset(CONFIG, DataRoot(root, "test"), CPU)


def cache_file(cache: Path) -> Path:
    (only,) = cache.iterdir()
    return only


def fresh(root: Path, monkeypatch) -> datasets.Dataset:
    """The same dataset decoded with the cache switched off: what every load must equal."""
    with monkeypatch.context() as patch:
        patch.setenv("DLLAB_CACHE_DIR", "off")
        return load(root)


def assert_same(a: datasets.Dataset, b: datasets.Dataset) -> None:
    for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(split_a.x, split_b.x) and split_a.x.dtype == torch.float32
        assert torch.equal(split_a.y, split_b.y) and split_a.y.dtype == torch.int64


def test_the_second_load_maps_the_cache_and_reads_no_source_file(tmp_path, cache, decodes, monkeypatch):
    small_mnist(tmp_path)
    first = load(tmp_path)
    assert len(decodes) == 4 and cache_file(cache).name.startswith("MNIST-")
    second = load(tmp_path)
    assert len(decodes) == 4  # nothing parsed again
    assert_same(first, second)
    assert_same(second, fresh(tmp_path, monkeypatch))
    assert second.train.y.tolist() == [i % 10 for i in range(50)]


def test_writing_to_a_mapped_tensor_never_reaches_the_cache_file(tmp_path, cache, decodes, monkeypatch):
    small_mnist(tmp_path)
    load(tmp_path)
    mapped = load(tmp_path)
    mapped.train.x.add_(1.0)  # copy-on-write: this process's pages only
    mapped.train.y.zero_()
    assert len(decodes) == 4
    again = load(tmp_path)
    assert len(decodes) == 4, "the cache file changed, so its checksums failed"
    assert_same(again, fresh(tmp_path, monkeypatch))


def _same_size_and_mtime(path: Path, change) -> None:
    """Rewrite ``path`` in place with ``change(bytes)``, keeping its size and setting its mtime back."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def _replace_by_copy(path: Path, change) -> None:
    """A new file (new inode) renamed over ``path``, with the old mtime (as ``cp -p`` + ``mv`` would)."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    change(data)
    new = path.with_name(path.name + ".new")
    new.write_bytes(bytes(data))
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(new, path)


@pytest.mark.parametrize("modify", [_same_size_and_mtime, _replace_by_copy], ids=["in place, mtime reset", "replaced"])
def test_a_modified_source_file_is_detected_and_re_read(tmp_path, cache, decodes, modify, monkeypatch):
    raw = small_mnist(tmp_path)
    load(tmp_path)
    load(tmp_path)
    assert len(decodes) == 4

    def relabel(data: bytearray) -> None:
        data[8 + 3] = 7  # the 4th training label: 3 -> 7

    modify(raw / "train-labels-idx1-ubyte", relabel)
    changed = load(tmp_path)
    assert len(decodes) == 8, "the changed source was not re-read"
    assert changed.train.y[:5].tolist() == [0, 1, 2, 7, 4]
    assert_same(changed, fresh(tmp_path, monkeypatch))
    assert len(list(cache.iterdir())) == 1, "the cache file is replaced, not joined by a second"
    assert_same(load(tmp_path), changed) and len(decodes) == 8  # and the new decoding is cached


def _flip(offset_from_end: int):
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) - offset_from_end] ^= 0x01  # one bit
        path.write_bytes(bytes(data))

    return damage


def _header_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[tensor_cache.PREFIX.size + 5] ^= 0x01  # inside the JSON header
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


DAMAGES = {
    "one bit of the test labels": _flip(1),
    "one bit of the first training image": None,  # filled in below: needs the file's layout
    "one bit of the header": _header_byte,
    "truncated": _truncate,
    "empty": lambda path: path.write_bytes(b""),
    "not a cache file": lambda path: path.write_bytes(b"PK\x03\x04" + bytes(5000)),
    "a dtype no cache holds": None,  # filled in below
}


def _first_image_bit(path: Path) -> None:
    mapped = path.read_bytes()
    _, length, _ = tensor_cache.PREFIX.unpack_from(mapped, 0)
    data = bytearray(mapped)
    data[tensor_cache.data_start(length) + 400] ^= 0x40  # a low mantissa bit of pixel 100: a value off by a few ulps
    path.write_bytes(bytes(data))


DAMAGES["one bit of the first training image"] = _first_image_bit


def _foreign_dtype(path: Path) -> None:
    """A well-formed header (valid CRC) naming a dtype no cache holds: refused, not looked up on torch."""
    data = path.read_bytes()
    _, length, _ = tensor_cache.PREFIX.unpack_from(data, 0)
    header = data[tensor_cache.PREFIX.size : tensor_cache.PREFIX.size + length].replace(b'"float32"', b'"nn"', 1)
    prefix = tensor_cache.PREFIX.pack(tensor_cache.MAGIC, len(header), zlib.crc32(header))
    path.write_bytes(prefix + header + data[tensor_cache.PREFIX.size + length :])


DAMAGES["a dtype no cache holds"] = _foreign_dtype


@pytest.mark.parametrize("damage", list(DAMAGES.values()), ids=list(DAMAGES))
def test_a_corrupted_cache_file_is_rebuilt_never_trusted(tmp_path, cache, decodes, damage, monkeypatch):
    small_mnist(tmp_path)
    load(tmp_path)
    damage(cache_file(cache))
    rebuilt = load(tmp_path)
    assert len(decodes) == 8, "the damaged cache was served"
    assert_same(rebuilt, fresh(tmp_path, monkeypatch))
    assert_same(load(tmp_path), rebuilt) and len(decodes) == 8  # the cache file was rewritten whole


def test_a_header_length_beyond_any_header_is_damage_not_a_read_of_the_whole_file():
    """A length field past MAX_HEADER_BYTES is refused before its bytes are sliced or read, even where
    they hold a valid JSON object with the right CRC; one at the limit is read."""
    import json
    import zlib

    def file_with(length: int) -> bytes:
        raw = json.dumps({"decoding": tensor_cache.DECODING}).encode().ljust(length)
        return tensor_cache.PREFIX.pack(tensor_cache.MAGIC, length, zlib.crc32(raw)) + raw

    limit = tensor_cache.MAX_HEADER_BYTES
    assert tensor_cache.parse_header(file_with(limit)) == (limit, {"decoding": tensor_cache.DECODING})
    assert tensor_cache.parse_header(file_with(limit + 1)) is None


def test_a_cache_from_another_decoding_is_not_served(tmp_path, cache, decodes, monkeypatch):
    small_mnist(tmp_path)
    load(tmp_path)
    monkeypatch.setattr(tensor_cache, "DECODING", tensor_cache.DECODING + " (changed)")
    load(tmp_path)
    assert len(decodes) == 8


def test_off_writes_nothing_and_an_unwritable_cache_costs_only_the_speed_up(tmp_path, monkeypatch, decodes):
    small_mnist(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # where the cache would go if off were ignored
    expected = fresh(tmp_path, monkeypatch)
    assert not (tmp_path / "xdg").exists() and len(decodes) == 4
    assert_same(fresh(tmp_path, monkeypatch), expected)  # decoded again: nothing was cached
    assert not (tmp_path / "xdg").exists() and len(decodes) == 8
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DLLAB_CACHE_DIR", str(blocker / "cache"))  # mkdir fails: NotADirectoryError
    assert_same(load(tmp_path), expected)
    assert_same(load(tmp_path), expected)
    assert len(decodes) == 16 and blocker.read_text() == "not a folder"


def test_a_full_disk_while_writing_leaves_no_partial_cache_file(tmp_path, cache):
    """RLIMIT_FSIZE makes a write fail with EFBIG part way, as a full disk fails with ENOSPC."""
    small_mnist(tmp_path)
    code = (
        "import resource, signal, torch\n"
        "from pathlib import Path\n"
        "from dl_lab.components.datasets import DataRoot, load_dataset\n"
        "from dl_lab.config.schema import DataConfig\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))\n"
        f"data = load_dataset(DataConfig(download=False), DataRoot(Path({str(tmp_path)!r}), 't'), torch.device('cpu'))\n"
        "print(data.train.y[:12].tolist(), len(data.test))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("]")[0] == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1" and done.stdout.split()[-1] == "20"
    assert not list(cache.iterdir()), "a partial cache file or temporary was left"


def test_each_source_folder_has_its_own_cache_file(tmp_path, cache, decodes):
    small_mnist(tmp_path / "a")
    raw_b = small_mnist(tmp_path / "b")
    write_idx(raw_b / "t10k-labels-idx1-ubyte", torch.full((20,), 9))
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    assert len(list(cache.iterdir())) == 2
    assert a.test.y.tolist() != b.test.y.tolist() and b.test.y.tolist() == [9] * 20
    assert load(tmp_path / "a").test.y.tolist() == a.test.y.tolist() and len(decodes) == 8


def test_the_cache_folder_defaults_to_the_user_cache_and_off_disables_it(tmp_path):
    assert tensor_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "dl_lab" / "decoded"
    assert tensor_cache.cache_dir({"DLLAB_CACHE_DIR": "~/c"}) == Path.home() / "c"
    assert tensor_cache.cache_dir({"DLLAB_CACHE_DIR": "OFF"}) is None


def test_a_killed_writers_temporary_is_removed_by_the_next_writer_once_an_hour_old(tmp_path, cache):
    raw = small_mnist(tmp_path)
    load(tmp_path)
    entry = cache_file(cache)
    old, young = cache / f".{entry.name}.killed.tmp", cache / f".{entry.name}.writing.tmp"
    other = cache / ".someone-else.tmp"
    for path in (old, young, other):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * tensor_cache.ABANDONED_AFTER
    os.utime(old, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    write_idx(raw / "t10k-labels-idx1-ubyte", torch.full((20,), 3))  # a changed source: the entry is rewritten
    assert load(tmp_path).test.y.tolist() == [3] * 20
    assert not old.exists() and young.exists() and other.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, young.name, other.name])


# `dllab cache ls|clear`


def cache_cli(runner, *args: str) -> tuple[int, str, str]:
    from dl_lab.cli.app import app

    result = runner.invoke(app, ["cache", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cache_ls_and_clear_see_and_remove_only_dl_labs_own_files(tmp_path, cache, runner, monkeypatch):
    small_mnist(tmp_path / "a")
    raw_b = small_mnist(tmp_path / "b")
    kept_data = load(tmp_path / "a")
    entry_a = cache_file(cache)
    load(tmp_path / "b")
    (entry_b,) = set(cache.iterdir()) - {entry_a}
    write_idx(raw_b / "t10k-labels-idx1-ubyte", torch.full((20,), 3))  # b's entry is stale now
    old, young = cache / f".{entry_a.name}.killed.tmp", cache / f".{entry_a.name}.writing.tmp"
    old.write_bytes(tensor_cache.MAGIC + b"partial")
    young.write_bytes(b"")  # just created by mkstemp, nothing written yet
    hours_ago = time.time() - 2 * tensor_cache.ABANDONED_AFTER
    os.utime(old, (hours_ago, hours_ago))
    outside = tmp_path / "elsewhere.tensors"
    outside.write_bytes(entry_a.read_bytes()[:4096])
    not_ours = {
        "notes.txt": b"mine",
        "mine-0123456789abcdef.tensors": b"a user's file that happens to have such a name",
        f".{entry_a.name}.someone.tmp": b"not begun by a cache writer",
    }
    for name, content in not_ours.items():
        (cache / name).write_bytes(content)
    (cache / "linked-0123456789abcdef.tensors").symlink_to(outside)
    (cache / "folder-0123456789abcdef.tensors").mkdir()
    left_alone = set(not_ours) | {"linked-0123456789abcdef.tensors", "folder-0123456789abcdef.tensors"}

    code, out, _ = cache_cli(runner, "ls", "--json")
    assert code == 0
    listed = json.loads(out)
    states = {item["file"]: item["state"] for item in listed["files"]}
    assert states == {
        entry_a.name: "current",
        entry_b.name: "stale: a source file changed since",
        old.name: "unfinished",
        young.name: "unfinished",
    }
    assert listed["folder"] == str(cache) and listed["bytes"] == sum((cache / name).stat().st_size for name in states)
    [listed_a] = [item for item in listed["files"] if item["file"] == entry_a.name]
    assert listed_a["dataset"] == "MNIST" and listed_a["kind"] == "entry"
    assert listed_a["sources"][0] == str((tmp_path / "a" / "MNIST" / "raw" / "train-images-idx3-ubyte").resolve())
    code, out, _ = cache_cli(runner, "ls")
    assert code == 0 and f"{entry_b.name}  stale: a source file changed since" in out
    assert out.strip().endswith(f"4 files, {listed['bytes'] / 1e6:.1f} MB in {cache}")

    code, out, _ = cache_cli(runner, "clear", "--stale", "--json")
    cleared = json.loads(out)
    assert code == 0 and sorted(cleared["removed"]) == sorted([entry_b.name, old.name])
    assert sorted(cleared["kept"]) == sorted([entry_a.name, young.name]) and cleared["failed"] == []
    assert {p.name for p in cache.iterdir()} == left_alone | {entry_a.name, young.name}

    code, out, _ = cache_cli(runner, "clear")
    assert code == 0 and f"removed {entry_a.name}" in out and "freed" in out
    assert {p.name for p in cache.iterdir()} == left_alone and outside.stat().st_size == 4096
    assert_same(kept_data, fresh(tmp_path / "a", monkeypatch))  # a mapped entry outlives its file
    load(tmp_path / "a")
    assert entry_a.exists(), "the next load writes the cache again"


def test_cache_commands_with_the_cache_off_missing_or_not_a_folder(tmp_path, runner, monkeypatch):
    monkeypatch.setenv("DLLAB_CACHE_DIR", "off")
    for args in (["ls"], ["clear"]):
        code, out, _ = cache_cli(runner, *args)
        assert code == 0 and out.strip() == "the dataset cache is off ($DLLAB_CACHE_DIR=off)"
    assert json.loads(cache_cli(runner, "ls", "--json")[1]) == {"folder": None, "bytes": 0, "files": []}
    missing = tmp_path / "never-made"
    monkeypatch.setenv("DLLAB_CACHE_DIR", str(missing))
    assert cache_cli(runner, "ls")[:2] == (0, f"0 files, 0.0 MB in {missing}\n")
    assert cache_cli(runner, "clear")[:2] == (0, f"freed 0.0 MB in {missing}\n")
    assert not missing.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    monkeypatch.setenv("DLLAB_CACHE_DIR", str(a_file))
    code, out, err = cache_cli(runner, "clear")
    assert code == 2 and out == "" and a_file.read_text() == "x"
    assert err.startswith(f"error: $DLLAB_CACHE_DIR: {a_file} is not a folder;") and "Traceback" not in err


def test_cache_clear_reports_a_file_it_could_not_remove_and_exits_1(tmp_path, cache, runner, monkeypatch):
    small_mnist(tmp_path)
    load(tmp_path)
    entry = cache_file(cache)
    refused = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name == entry.name:
            raise PermissionError(13, "Permission denied", str(path))
        refused(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    code, out, err = cache_cli(runner, "clear")
    assert code == 1 and entry.exists()
    assert f"error: could not remove {entry}: Permission denied" in err and "freed 0.0 MB" in out


def test_cache_commands_do_not_import_torch(tmp_path):
    code = (
        "import sys\nfrom dl_lab.cli.app import app\n"
        "for args in (['cache', 'ls'], ['cache', 'clear', '--stale']):\n"
        "    try:\n        app(args)\n    except SystemExit as done:\n        assert done.code in (0, None), done.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    environ = {**child_env(), "DLLAB_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"0 files, 0.0 MB in {tmp_path}",
        f"freed 0.0 MB in {tmp_path}; kept 0 in use (current entries, temporaries under an hour old)",
        "NO-TORCH",
    ]


def test_a_cache_folder_that_cannot_be_read_is_reported_not_a_traceback(tmp_path, cache, runner, monkeypatch):
    cache.mkdir()

    def refuse(self: Path):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    for args in (["ls"], ["clear"]):
        code, out, err = cache_cli(runner, *args)
        assert code == 2 and out == "", args
        assert err.startswith(f"error: $DLLAB_CACHE_DIR: cannot read the cache folder {cache} (Permission denied);")
