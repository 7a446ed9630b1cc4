"""`dllab compare --executor ray`: the comparison's units of work (a stack, or a lone run) as Ray tasks.

dllab plans, resumes and aggregates; Ray only runs the units. Each task loads its data on its node,
trains its unit through the same code as a local compare (execute.train_unit_into) and writes its
runs' folders: straight into the comparison folder (shared storage: every node must see it, which a
probe task per node checks before anything trains), or with ``collect`` into a temporary folder whose
files it returns for the driver to write. A task whose worker or node is lost is retried by Ray; the
retry first moves the lost attempt's unfinished run folders aside (never a completed run). Ray is
imported only here, only when asked for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dl_lab.components import tensor_cache
from dl_lab.components.datasets import DATASETS, ENV_DATA_DIR, resolve_data_root
from dl_lab.errors import ConfigError
from dl_lab.experiments.scheduling import data_key
from dl_lab.runs.comparison import ComparePlan, Unit
from dl_lab.runs.records import RunSummary
from dl_lab.runs.store import dump_json, read_run_summary, set_aside, write_atomic, write_in_place

INSTALL_HINT = "pip install 'dl_lab[ray]' (in a checkout: pip install -e \".[ray]\")"
MAX_RETRIES = 3  # attempts after a worker or node is lost (Ray's max_retries)
PROBE_SECONDS = 120
WAIT_SECONDS = 0.5
_LOADED: dict[str, tuple[Any, Any]] = {}  # in a worker process: data_key -> (device, dataset)


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance started for this command
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    collect: bool = False  # workers return their files; the driver writes them (no shared storage needed)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray: Ray is not installed; {INSTALL_HINT}") from None
    return ray


def connect(options: RayOptions, environ: Mapping[str, str]) -> Any:
    """Join the cluster at --address or $RAY_ADDRESS, else start a local Ray instance; workers get
    $DLLAB_DATA_DIR, $DLLAB_CACHE_DIR and the process settings (device.PROCESS_SWITCHES: $DLLAB_FLUSH_DENORMALS,
    $DLLAB_ONEDNN_STACKS, $DLLAB_KEEP_FREED_MEMORY) through Ray's runtime env."""
    ray = import_ray()
    env_vars = {
        name: str(Path(environ[name]).expanduser().resolve())
        for name in (ENV_DATA_DIR, tensor_cache.ENV_CACHE_DIR)
        if environ.get(name)
    }
    if tensor_cache.cache_dir(environ) is None:
        env_vars[tensor_cache.ENV_CACHE_DIR] = tensor_cache.OFF
    from dl_lab.training.device import PROCESS_SWITCHES  # torch: imported only where Ray is

    env_vars.update({name: environ[name] for name in PROCESS_SWITCHES if environ.get(name)})
    address = options.address or environ.get("RAY_ADDRESS") or "local"  # local: a new instance, never a stale one
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": env_vars},
            log_to_driver=False,
            include_dashboard=False,
            ignore_reinit_error=True,
            logging_level="ERROR",
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--address {address}: cannot connect to a Ray cluster there ({exc})") from None
    return ray


def probe_nodes(ray: Any, plan: ComparePlan, folder: Path | None) -> None:
    """One task per live node: can it see ``folder`` (shared storage) and the data each config reads?
    Refuses (exit 2) naming every node that cannot, before anything trains."""
    token = uuid.uuid4().hex
    if folder is not None:  # a runs folder not created yet: its nearest existing parent stands in for it
        folder = next(path for path in (folder, *folder.resolve().parents) if path.is_dir())
    marker = folder / f".dllab-probe-{token}" if folder is not None else None
    if marker is not None:
        write_atomic(marker, token)
    try:
        data = {(run.config.data.dataset, run.config.data.root, run.config.data.download) for run in plan.runs}
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [node for node in ray.nodes() if node.get("Alive")]
        task = ray.remote(num_cpus=0)(_probe)
        refs = [
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                str(marker) if marker else None, token, sorted(data, key=str)
            )
            for node in nodes
        ]
        answers = ray.get(refs, timeout=PROBE_SECONDS)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)  # the probe's own file
    problems = [
        f"node {node.get('NodeManagerAddress', '?')}: {answer}" for node, answer in zip(nodes, answers) if answer
    ]
    if problems:
        hint = (
            ""
            if folder is None
            else "; put the runs folder on storage every node mounts at the same path, or pass --collect"
        )
        raise ConfigError(f"--executor ray: {'; '.join(problems)}{hint}")


def _probe(marker: str | None, token: str, data: Sequence[tuple[str, str | None, bool]]) -> str:
    """On one node: '' when all is well, else what it cannot see."""
    missing = []
    if marker is not None:
        try:
            seen = Path(marker).read_text(encoding="utf-8") == token
        except OSError:
            seen = False
        if not seen:
            missing.append(f"cannot see the folder {Path(marker).parent}")
    for dataset, root, download in data:
        folder = DATASETS[dataset].meta.get("folder")
        if folder is None or download:
            continue  # in-process data, or a download is allowed there
        where = resolve_data_root(root, os.environ)
        if not (where.path / folder / "raw").is_dir():
            missing.append(f"no {folder}/raw under {where.path} ({where.origin}; set {ENV_DATA_DIR} on the driver)")
    return ", ".join(missing)


def train_unit_task(
    folder: str,
    configs: list[Any],
    stacked: bool,
    record: list[tuple[str, int]],
    folders: dict[tuple[str, int], str],
    collect: bool,
) -> tuple[list[RunSummary], dict[str, str]]:
    """A Ray task: train one unit into its run folders; returns the recorded runs' summaries and, with
    ``collect``, their files (path inside the comparison folder -> text)."""
    import ray
    import torch

    from dl_lab.experiments.execute import CompareRecorder, device_and_data, train_unit_into
    from dl_lab.training.environment import environment
    from dl_lab.training.events import Observer

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))  # as many threads as the CPUs the task holds
    target = Path(tempfile.mkdtemp(prefix="dllab-ray-")) if collect else Path(folder)
    try:
        keep = set(record)
        for key in list(keep):  # a retry after a lost worker: its unfinished folders go aside, finished runs stay
            path = target / folders[key]
            summary = read_run_summary(path) if path.is_dir() else None
            if summary is not None and summary.status == "completed":
                keep.discard(key)
            elif path.exists():
                set_aside(path)
        key = data_key(configs[0])
        if key not in _LOADED:  # a worker process runs many tasks: it loads each dataset once
            _LOADED.clear()  # (one at a time, so a worker holds at most one dataset)
            _LOADED[key] = device_and_data(configs[0], os.environ)
        device, dataset = _LOADED[key]
        env = {**environment(device, dataset.root), "ray_node_id": ray.get_runtime_context().get_node_id()}
        recorder = CompareRecorder(target, env, folders)
        summaries, _ = train_unit_into(recorder, configs, stacked, keep, dataset, device, Observer())
        files: dict[str, str] = {}
        if collect:
            for key in keep:
                run = target / folders[key]
                for path in sorted(run.iterdir()) if run.is_dir() else []:
                    if path.is_file() and not path.name.startswith("."):
                        files[f"{folders[key]}/{path.name}"] = path.read_text(encoding="utf-8")
        return summaries, files
    finally:
        if collect:
            shutil.rmtree(target, ignore_errors=True)  # the task's own temporary folder


@contextlib.contextmanager
def ray_cluster(options: RayOptions, environ: Mapping[str, str], plan: ComparePlan, folder: Path) -> Iterator[Any]:
    """Connected to the cluster, with every node probed (it sees ``folder`` unless ``options.collect``,
    and the data), before the caller writes anything; disconnects at the end, which stops a local
    instance this command started and leaves a cluster running."""
    ray = connect(options, environ)
    try:
        probe_nodes(ray, plan, None if options.collect else folder)
        yield ray
    finally:
        ray.shutdown()


def run_compare_on_ray(
    ray: Any,
    folder: Path,
    plan: ComparePlan,
    todo: Sequence[tuple[Unit, frozenset[int]]],
    options: RayOptions,
    say: Any,
) -> tuple[list[RunSummary], bool]:
    """Like execute.run_compare, with every unit a Ray task (``ray``: connected by ray_cluster).
    Returns the summaries of the runs recorded now and whether the comparison was interrupted
    (Ctrl-C: outstanding tasks are cancelled)."""
    folders = {run.key: run.folder for run in plan.runs}
    task = ray.remote(train_unit_task).options(
        num_cpus=options.cpus_per_task, num_gpus=options.gpus_per_task, max_retries=MAX_RETRIES
    )
    pending: dict[Any, tuple[Unit, frozenset[int]]] = {}
    for unit, record in todo:
        configs = [plan.runs[i].config for i in unit.runs]
        keys = [plan.runs[i].key for i in record]
        ref = task.remote(str(folder.resolve()), configs, unit.stacked, keys, folders, options.collect)
        pending[ref] = (unit, record)
    summaries: list[RunSummary] = []
    done = 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
            if not ready:
                continue  # back in Python now and then, so Ctrl-C and SIGTERM are seen promptly
            unit, record = pending.pop(ready[0])
            done += 1
            try:
                recorded, files = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:  # the task itself raised (outside training: setting up)
                recorded = _mark_lost(folder, plan, record, f"the Ray task failed: {_last_line(exc)}")
                files = {}
            except ray.exceptions.RayError as exc:  # retries exhausted: the worker or node was lost for good
                recorded = _mark_lost(folder, plan, record, f"lost on the Ray cluster ({type(exc).__name__})")
                files = {}
            summaries += _write_collected(folder, files, recorded) if options.collect else recorded
            say(f"{_describe(plan, unit, len(todo), done)}{_statuses(recorded)}")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        time.sleep(0.5)  # let cancelled workers stop before their folders are marked
        for _unit, record in pending.values():
            summaries += _mark_lost(folder, plan, record, None)
        return summaries, True
    return summaries, False


def _describe(plan: ComparePlan, unit: Unit, total: int, done: int) -> str:
    """'stack 3/8 done: relu seeds 777–781' or 'run 2/8 done: relu seed 777'."""
    runs = [plan.runs[i] for i in unit.runs]
    labels = ", ".join(dict.fromkeys(run.variant.label for run in runs))
    seeds = sorted({run.seed for run in runs})
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}–{seeds[-1]}"
    return f"{'stack' if unit.stacked else 'run'} {done}/{total} done: {labels} {which}"


def _statuses(summaries: Sequence[RunSummary]) -> str:
    bad = [
        f"{summary.name} seed {summary.seed} {summary.status}" for summary in summaries if summary.status != "completed"
    ]
    return f" ({', '.join(bad)})" if bad else ""


def _write_collected(folder: Path, files: Mapping[str, str], summaries: Sequence[RunSummary]) -> list[RunSummary]:
    """Write a collected unit's run folders; summary.json last (the commit point), with run_dir here."""
    written = []
    for summary in summaries:
        run_folder = folder / Path(summary.run_dir).name
        run_folder.mkdir(exist_ok=True)
        here = summary.model_copy(update={"run_dir": str(run_folder)})
        for name, text in files.items():
            if name.startswith(f"{run_folder.name}/") and not name.endswith("/summary.json"):
                write_atomic(folder / name, text)
        write_atomic(run_folder / "summary.json", dump_json(here.to_json_dict()))
        written.append(here)
    return written


def _mark_lost(folder: Path, plan: ComparePlan, record: frozenset[int], why: str | None) -> list[RunSummary]:
    """Runs of a unit that will not finish (cancelled, or lost after every retry): a run folder that
    still says running is marked interrupted (why None) or failed (why given); others are left as they are."""
    marked = []
    for index in record:
        path = folder / plan.runs[index].folder
        summary = read_run_summary(path) if path.is_dir() else None
        if summary is None:
            config = plan.runs[index].config
            summary = RunSummary(
                name=config.name,
                seed=config.seed,
                status="interrupted" if why is None else "failed",
                run_dir=str(path),
                error=why,
            )
        elif summary.status == "running":
            summary = summary.model_copy(update={"status": "interrupted" if why is None else "failed", "error": why})
            try:
                write_atomic(path / "summary.json", _json(summary))
            except OSError:
                write_in_place(path / "summary.json", _json(summary))
        marked.append(summary)
    return marked


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _json(summary: RunSummary) -> str:
    return dump_json(summary.to_json_dict())
