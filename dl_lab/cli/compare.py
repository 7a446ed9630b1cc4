"""`dllab compare`: several variants over matched seeds, with tables, plots and statistics."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dl_lab.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    AlphaOption,
    Engine,
    ExpectOption,
    JsonOption,
    SetOption,
    WideOption,
    check_alpha,
    folder_option,
    interrupted_exit,
)
from dl_lab.cli.render import render_comparison

if TYPE_CHECKING:
    from dl_lab.analysis.plot_service import PlotService
    from dl_lab.experiments.ray_executor import RayOptions


class Executor(str, enum.Enum):
    local = "local"
    ray = "ray"


class Stacks(str, enum.Enum):  # stackable.GROUPINGS a user picks from
    architecture = "architecture"
    variant = "variant"


def ray_options_from(
    executor: Executor, address: str | None, cpus: float | None, gpus: float | None, collect: bool
) -> RayOptions | None:
    """The Ray settings, or None for a local compare; Ray options without --executor ray are refused."""
    from dl_lab.errors import ConfigError

    given = [
        name
        for name, value in (
            ("--address", address),
            ("--cpus-per-task", cpus),
            ("--gpus-per-task", gpus),
            ("--collect", collect or None),
        )
        if value is not None
    ]
    if executor is Executor.local:
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --executor ray")
        return None
    if cpus is not None and not cpus > 0:
        raise ConfigError(f"--cpus-per-task: must be > 0 (got {cpus})")
    if gpus is not None and not gpus >= 0:
        raise ConfigError(f"--gpus-per-task: must be >= 0 (got {gpus})")
    from dl_lab.experiments.ray_executor import RayOptions, import_ray

    import_ray()  # not installed: a usage error that says how to install it, before anything is written
    return RayOptions(address, 1.0 if cpus is None else cpus, 0.0 if gpus is None else gpus, collect)


def compare(
    names: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Configs to compare: configs/NAME.yaml, a preset (e.g. lab09/xavier) or a path. The first is the baseline."
        ),
    ] = None,
    seeds: Annotated[
        Optional[int], typer.Option("--seeds", help="Seeds per variant (default 3); seed i is shared by all variants.")
    ] = None,
    set_: SetOption = None,
    vary: Annotated[
        Optional[list[str]],
        typer.Option(
            "--vary", metavar="KEY=V1,V2", help="Expand into one variant per value; several --vary make a grid."
        ),
    ] = None,
    device: Annotated[
        Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N for every variant.")
    ] = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where the comparison folder is created.")] = Path(
        "runs"
    ),
    json_: JsonOption = False,
    wide: WideOption = False,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume", metavar="FOLDER", help="Finish an interrupted comparison: keep completed runs, rerun the rest."
        ),
    ] = None,
    expect: ExpectOption = None,
    alpha: AlphaOption = None,
    engine: Annotated[
        Optional[Engine],
        typer.Option(
            "--engine",
            help="auto (default): train runs that share an architecture together (stacked weights); "
            "sequential: one model at a time; batched: stack every run.",
        ),
    ] = None,
    stacks: Annotated[
        Optional[Stacks],
        typer.Option(
            "--stacks",
            help="What one stack of models holds: architecture (the default) every run of one architecture, "
            "whatever its activation or init; variant one variant's seeds (the default with --executor ray: a task "
            "per variant).",
        ),
    ] = None,
    executor: Annotated[
        Executor,
        typer.Option(
            "--executor",
            help="local (default): train here; ray: every stack (or lone run) is a task on a Ray cluster "
            "(docs/scale-out.md; needs pip install 'dl_lab[ray]').",
        ),
    ] = Executor.local,
    address: Annotated[
        Optional[str],
        typer.Option(
            "--address",
            help="With --executor ray: the cluster to join (default: $RAY_ADDRESS, else a local Ray instance).",
        ),
    ] = None,
    cpus_per_task: Annotated[
        Optional[float], typer.Option("--cpus-per-task", help="With --executor ray: CPUs each task holds (default 1).")
    ] = None,
    gpus_per_task: Annotated[
        Optional[float],
        typer.Option(
            "--gpus-per-task",
            help="With --executor ray: GPUs each task holds, fractions allowed (0.25: four stacks share a card; default 0).",
        ),
    ] = None,
    collect: Annotated[
        bool,
        typer.Option(
            "--collect",
            help="With --executor ray: workers send their run folders' files back and this machine writes them "
            "(for clusters without shared storage).",
        ),
    ] = False,
    max_runs: Annotated[
        Optional[int],
        typer.Option(
            "--max-runs",
            help="Refuse a comparison of more runs than this (default 1000), so a typo in --seeds "
            "cannot start thousands of runs.",
        ),
    ] = None,
) -> None:
    """Train several variants over matched seeds; write tables (Markdown, CSV, JSON) and plots.

    Exit codes: 0 all expectations hold, 1 an expectation fails, 2 bad input (before training) or the
    folder is in use, 3 a run failed, 130/143/129 interrupted by Ctrl-C/SIGTERM/SIGHUP (finish it with --resume).
    """
    from dl_lab.analysis.plot_service import PlotService

    # First, before torch: it imports matplotlib on the core that importing torch leaves idle.
    plot_service = PlotService.start() if executor is Executor.local else None
    try:
        _compare(
            names, seeds, set_, vary, device, runs_dir, json_, wide, resume, expect, alpha, engine, stacks,
            executor, address, cpus_per_task, gpus_per_task, collect, max_runs, plot_service,
        )  # fmt: skip
    finally:
        if plot_service is not None:
            plot_service.close()


def _compare(
    names: list[str] | None,
    seeds: int | None,
    set_: list[str] | None,
    vary: list[str] | None,
    device: str | None,
    runs_dir: Path,
    json_: bool,
    wide: bool,
    resume: Path | None,
    expect: list[str] | None,
    alpha: float | None,
    engine: Engine | None,
    stacks: Stacks | None,
    executor: Executor,
    address: str | None,
    cpus_per_task: float | None,
    gpus_per_task: float | None,
    collect: bool,
    max_runs: int | None,
    plot_service: PlotService | None,
) -> None:
    from rich.console import Console

    from dl_lab import signals
    from dl_lab.analysis.report import output_names, parse_expectation, report_compare
    from dl_lab.cli.progress import progress_for
    from dl_lab.errors import ConfigError
    from dl_lab.experiments.execute import check_units, load_data_for, run_compare
    from dl_lab.experiments.planning import (
        DEFAULT_MAX_RUNS,
        load_plan,
        plan_comparison,
        refuse_another_plan,
        units_to_train,
    )
    from dl_lab.experiments.scheduling import describe_units
    from dl_lab.runs.comparison import create_compare_dir, set_aside_unfinished, survey
    from dl_lab.runs.locks import FolderLock
    from dl_lab.runs.store import check_report_folder, check_writable_folder
    from dl_lab.signals import deferred

    runs_dir = folder_option(runs_dir)

    def from_command(engine_name: str, limit: int):  # the plan the NAMES, --set, --vary, --device, --seeds make
        overrides = [*(set_ or []), *([f"device={device}"] if device else [])]
        grouping = stacks or (Stacks.variant if executor is Executor.ray else Stacks.architecture)
        return plan_comparison(
            names or [],
            overrides,
            vary or [],
            3 if seeds is None else seeds,
            engine=engine_name,
            max_runs=limit,
            stacks=grouping.value,
        )

    with contextlib.ExitStack() as held:
        if resume is not None:
            resume = folder_option(resume)
            if not resume.is_dir():
                raise ConfigError(f"--resume {resume}: no such folder")
            if stacks is not None:
                raise ConfigError(
                    f"--stacks {stacks.value}: the stacks of a comparison are fixed when it is planned "
                    f"({resume / 'plan.json'}), so a resumed run trains as the uninterrupted one would have; "
                    "allowed: no --stacks with --resume"
                )
            held.enter_context(FolderLock(resume, "comparison"))  # one writer: a second resume exits 2
            plan = load_plan(resume)
            if engine is not None and engine.value != plan.engine:
                raise ConfigError(
                    f"--engine {engine.value}: this comparison was planned with --engine {plan.engine}, "
                    "and a resumed run must train the same way; allowed: no --engine with --resume"
                )
            if names or set_ or vary or device or seeds is not None:  # the original command, --resume appended
                limit = max(DEFAULT_MAX_RUNS, len(plan.runs)) if max_runs is None else max_runs
                refuse_another_plan(from_command(plan.engine, limit), plan, resume)
        else:
            if stacks is not None and engine is Engine.sequential:
                raise ConfigError(
                    f"--stacks {stacks.value}: --engine sequential trains every run alone, so there are no stacks "
                    "to group; allowed: --stacks with --engine auto or batched"
                )
            check_writable_folder(runs_dir, "--runs-dir")
            plan = from_command((engine or Engine.auto).value, DEFAULT_MAX_RUNS if max_runs is None else max_runs)
        expectations = [parse_expectation(text, [v.label for v in plan.variants]) for text in expect or []]
        check_alpha(alpha)
        ray_options = ray_options_from(executor, address, cpus_per_task, gpus_per_task, collect)
        # With Ray the runs train on the cluster's nodes: here the data and configs are checked on the CPU.
        data = load_data_for([run.config for run in plan.runs], os.environ, "cpu" if ray_options else None)
        check_units(plan, data, memory=ray_options is None)
        if ray_options is not None:  # nodes probed before anything is written: runs_dir or the resumed folder
            from dl_lab.experiments.ray_executor import ray_cluster

            ray = held.enter_context(ray_cluster(ray_options, os.environ, plan, resume or runs_dir))
        if resume is not None:
            found = survey(resume, plan)
            found.refuse_mismatched(resume, plan)
            check_report_folder(resume, output_names(), compare_folder=resume)
        else:
            found = None
        todo = units_to_train(plan, found.done if found else frozenset())
        engine_text = describe_units(plan.engine, [unit for unit, _ in todo])
        recorded = sum(len(record) for _, record in todo)
        riding = sum(len(unit.runs) for unit, _ in todo) - recorded
        folder, trained = resume, []
        try:  # from the moment the folder is held, an interrupt anywhere still ends in a report saying so
            if found is not None:
                set_aside_unfinished(found)
            else:
                with deferred():  # the folder, its lock and its release are known together
                    folder, lock = create_compare_dir(
                        runs_dir, plan, {"names": names, "set": set_ or [], "vary": vary or [], "device": device}
                    )
                    held.callback(lock.release)
            typer.echo(
                f"engine {engine_text}"
                + (
                    f" ({riding} finished run(s) retrained unrecorded with their stack, "
                    "so the others' numbers are exactly those of an uninterrupted comparison)"
                    if riding
                    else ""
                ),
                err=True,
            )
            if ray_options is not None:
                from dl_lab.experiments.ray_executor import run_compare_on_ray

                say = lambda line: typer.echo(line, err=True)  # noqa: E731
                trained, interrupted = run_compare_on_ray(ray, folder, plan, todo, ray_options, say)
            else:
                devices = ", ".join(sorted({str(device) for device, _ in data.values()}))
                with progress_for(Console(stderr=True), sys.stderr, devices, total_runs=recorded) as progress:
                    trained, interrupted = run_compare(folder, plan, todo, data, progress)
        except KeyboardInterrupt as exc:  # outside the training loops, which catch their own
            if folder is None:
                raise
            signals.note(exc)
            interrupted = True
        summary = report_compare(folder, expectations, alpha, interrupted, engine_text, plot_service)
        render_comparison(summary, folder, json_, trained_now=len(trained), kept=len(plan.runs) - recorded, wide=wide)
    status = summary.status
    if status == "interrupted":
        typer.echo(f"interrupted: finish with dllab compare --resume {folder}", err=True)
        raise typer.Exit(interrupted_exit())
    if status == "failed":
        failed = [f"{s.run_dir} ({s.status})" for s in trained if s.status != "completed"]
        typer.echo(f"error: {len(failed)} run(s) failed or diverged: {', '.join(failed)}", err=True)
        raise typer.Exit(EXIT_RUN_FAILED)
    raise typer.Exit(EXIT_OK if all(e.holds for e in summary.expectations) else EXIT_FAILED)
