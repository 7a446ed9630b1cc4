"""The command line as users and scripts drive it: exit codes, files, stdout/stderr, no tracebacks."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST

from dl_lab.cli.app import app
from dl_lab.config.loader import load_config
from dl_lab.training.device import bf16_operands, bf16_products, cpu_flags, cpu_vendor, keeps_freed_memory


def run_dirs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.exists() else []


def test_train_writes_the_four_files_and_prints_a_result(runner, fast_config, tmp_path):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--config", str(fast_config), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    [folder] = run_dirs(runs)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "env.json", "metrics.csv", "summary.json"]
    summary = json.loads((folder / "summary.json").read_text())
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert summary["status"] == "completed" and summary["epochs"] == 2 and len(rows) == 2
    assert summary["final"]["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]))
    assert summary["final"]["test_acc"] > 0.5
    assert {"name", "seed", "device", "seconds"} <= set(summary) and summary["device"] == "cpu"
    env = json.loads((folder / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["python"] and "git" in env
    assert env["cpu_flags"] == cpu_flags()  # a CPU run names what its CPU does
    assert env["bf16_products"] is bf16_products()  # and what train.bf16_matmul does on it
    assert env["bf16_operands"] is bf16_operands()
    assert env["onednn_stacks"] is (cpu_vendor() == "AuthenticAMD" and not bf16_products())  # auto
    can_flush = torch.set_flush_denormal(False)  # whether this CPU can (the run is over: resetting is harmless)
    assert env["flush_denormals"] is (cpu_vendor() == "GenuineIntel" and can_flush)
    assert env["keep_freed_memory"] is keeps_freed_memory()  # (it lasts the process: an earlier test may set it)
    assert env["keep_freed_memory"] or cpu_vendor() != "AuthenticAMD"  # auto: on where measured
    assert load_config(str(folder / "config.yaml")).config == load_config(str(fast_config)).config.model_copy(
        update={"name": "fast"}
    )
    assert "completed: fast" in result.stdout and str(folder) in result.stdout
    assert "epoch 2/2" in result.stderr  # progress goes to stderr, as plain lines off a terminal
    assert "\x1b[" not in result.stdout + result.stderr


def test_json_prints_exactly_summary_json(runner, fast_config, tmp_path):
    result = runner.invoke(
        app, ["train", "-c", str(fast_config), "--runs-dir", str(tmp_path), "--json", "--set", "train.epochs=1"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    [folder] = run_dirs(tmp_path)
    assert printed == json.loads((folder / "summary.json").read_text())
    assert printed["epochs"] == 1


def test_config_show_prints_the_resolved_config(runner, fast_config):
    result = runner.invoke(app, ["config", "show", "-c", str(fast_config), "--set", "model.activation=tanh"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["model"]["activation"] == "tanh" and shown["train"]["epochs"] == 2
    assert shown["optimizer"] == {
        "name": "adam",
        "lr": 0.001,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "nesterov": False,
        "betas": [0.9, 0.999],
        "eps": None,
        "alpha": 0.99,
        "centered": False,
        "lr_decay": 0.0,
    }


def test_options_lists_every_registry(runner):
    result = runner.invoke(app, ["options"])
    assert result.exit_code == 0
    for word in ["leaky_relu", "he_normal", "xavier_uniform", "sgd", "synthetic", "relu, sigmoid"]:
        assert word in result.stdout


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra CLI args, words the message must contain)."""

    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    fast = yaml.safe_dump(FAST)
    write("a.yaml", "extends: b.yaml\n")
    write("b.yaml", "extends: a.yaml\n")
    cases = {
        "unknown key": (["-c", write("k.yaml", fast + "modle: {}\n")], "did you mean 'model'"),
        "wrong type": (["-c", write("t.yaml", fast), "--set", "data.batch_size=big"], "data.batch_size"),
        "dropout out of range": (["-c", write("d.yaml", fast), "--set", "model.dropout=1"], "[0, 1)"),
        "lr not positive": (["-c", write("l.yaml", fast), "--set", "optimizer.lr=0"], "optimizer.lr"),
        "zero epochs": (["-c", write("e.yaml", fast), "--set", "train.epochs=0"], "train.epochs"),
        "zero batch": (["-c", write("b0.yaml", fast), "--set", "data.batch_size=0"], "data.batch_size"),
        "zero-width layer": (["-c", write("h.yaml", fast), "--set", "model.hidden=[8, 0]"], "model.hidden[1]"),
        "malformed yaml": (["-c", write("m.yaml", "model: [1,\n")], "malformed YAML"),
        "missing file": (["-c", str(tmp_path / "nope.yaml")], "no such config file"),
        "extends cycle": (["-c", str(tmp_path / "a.yaml")], "cycle"),
        "unknown device": (["-c", write("u.yaml", fast), "--set", "device=quantum"], "cuda:N"),
        "mnist missing": (
            [
                "-c",
                write("n.yaml", "device: cpu\ndata: {download: false}\n"),
                "--set",
                f"data.root={tmp_path / 'empty'}",
            ],
            "MNIST not found",
        ),
        "bad --set": (["-c", write("s.yaml", fast), "--set", "train.epochs"], "KEY=VALUE"),
        "unknown option value": (["-c", write("o.yaml", fast), "--set", "optimizer.name=adamax"], "adam, adamw"),
    }
    if not torch.cuda.is_available():
        cases["cuda where there is none"] = (["-c", write("c.yaml", fast), "--set", "device=cuda"], "no usable CUDA")
    return cases


CASE_NAMES = [
    "unknown key",
    "wrong type",
    "dropout out of range",
    "lr not positive",
    "zero epochs",
    "zero batch",
    "zero-width layer",
    "malformed yaml",
    "missing file",
    "extends cycle",
    "unknown device",
    "mnist missing",
    "bad --set",
    "unknown option value",
    "cuda where there is none",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_every_bad_input_exits_2_with_a_message_and_writes_nothing(runner, tmp_path, case):
    cases = bad_inputs(tmp_path)
    assert set(cases) <= set(CASE_NAMES)
    if case not in cases:
        pytest.skip("this machine has CUDA, so asking for it is not an error")
    args, words = cases[case]
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", *args, "--runs-dir", str(runs)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and words in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert not runs.exists()


def test_a_failing_run_is_marked_failed_and_exits_1(runner, fast_config, tmp_path, monkeypatch):
    import dl_lab.training.engine

    def explode(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(dl_lab.training.engine, "evaluate", explode)
    result = runner.invoke(app, ["train", "-c", str(fast_config), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "simulated failure" in result.stderr and "Traceback" not in result.output
    [folder] = run_dirs(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["final"] is None
    assert "RuntimeError: simulated failure" in (folder / "error.txt").read_text()


def dllab(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dl_lab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_ctrl_c_leaves_the_run_marked_interrupted_with_its_finished_epochs(fast_config, tmp_path):
    runs = tmp_path / "runs"
    process = dllab("train", "-c", str(fast_config), "--set", "train.epochs=100000", "--runs-dir", str(runs))
    deadline = time.monotonic() + 60
    metrics = None
    while time.monotonic() < deadline:
        folders = run_dirs(runs)
        metrics = folders[0] / "metrics.csv" if folders else None
        if metrics and metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    summary = json.loads((metrics.parent / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] >= 2
    assert len(list(csv.DictReader(metrics.open()))) == summary["epochs"]
    assert "Traceback" not in err


def test_help_does_not_import_torch():
    code = (
        "import atexit, sys\nfrom dl_lab.cli.app import app, main\n"
        "for cmd in (['train', '--help'], ['config', 'show', '--help'], ['compare', '--help'], ['report', '--help']):\n"
        "    try:\n        app(cmd)\n    except SystemExit:\n        pass\n"
        "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'))\n"
        "sys.argv = ['dllab', '--help']\nmain()\n"  # the console script's own path, streams, exit and all
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    assert "--config" in out and "--set" in out


def test_the_process_exits_with_the_commands_code_after_flushing_and_atexit():
    """main() skips the interpreter's teardown (os._exit) but not what a normal exit guarantees."""
    code = (
        "import atexit, sys\nfrom dl_lab.cli.app import main\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "print('buffered', end='')\n"  # still in the buffer when main exits
        "sys.argv = ['dllab', 'train', '--config', 'no-such-config']\nmain()\n"
        "print('never')"
    )
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ)
    assert done.returncode == 2 and "no such config file" in done.stderr
    assert done.stdout == "bufferedatexit ran\n"


def test_a_signal_while_exiting_or_starting_ends_quietly():
    """At exit the work is written: a signal ends the exit at once, with no traceback from an atexit
    handler it interrupted. While starting, before any command handles it, Ctrl-C exits 130 quietly."""
    exiting = (
        "import atexit, os, signal, sys\nfrom dl_lab.cli.app import main\n"
        "atexit.register(lambda: print('second handler ran'))\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), print('after the signal')))\n"
        "sys.argv = ['dllab', 'config', 'show', '-c', 'relu']\nmain()\n"
    )
    done = subprocess.run([sys.executable, "-c", exiting], capture_output=True, text=True)
    assert done.returncode == 143 and "model:" in done.stdout, done.stderr
    assert "after the signal" not in done.stdout and "Traceback" not in done.stderr
    starting = (
        "import os, signal, sys\nimport dl_lab.cli.pipes as pipes\n"
        "pipes.PipeSafe = lambda stream: os.kill(os.getpid(), signal.SIGINT)\n"
        "from dl_lab.cli.app import main\nsys.argv = ['dllab', 'config', 'show', '-c', 'relu']\nmain()\n"
    )
    done = subprocess.run([sys.executable, "-c", starting], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "interrupted\n")
    between = (  # the signal lands as the command has ended, before exit_now has taken the signals over
        "import os, signal, sys\nimport dl_lab.cli.app as cli\nexit_now = cli.exit_now\n"
        "def late(code):\n    cli.exit_now = exit_now\n    os.kill(os.getpid(), signal.SIGTERM)\n    exit_now(code)\n"
        "cli.exit_now = late\nsys.argv = ['dllab', 'config', 'show', '-c', 'relu']\ncli.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", between], capture_output=True, text=True)
    assert done.returncode == 143 and "model:" in done.stdout and "Traceback" not in done.stderr, done.stderr


def test_python_dash_m_runs_the_app():
    result = subprocess.run([sys.executable, "-m", "dl_lab", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout and "compare" in result.stdout


def test_runs_ls_show_and_diff_describe_past_work(runner, write_config, tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        config = write_config({**FAST, "seed": seed, "data": {"dataset": "synthetic", "train_subset": 300}}, f"r{seed}")
        assert runner.invoke(app, ["train", "-c", str(config), "--runs-dir", str(runs)]).exit_code == 0
    compared = runner.invoke(app, ["compare", str(config), "--seeds", "2", "--runs-dir", str(runs)])
    assert compared.exit_code == 0, compared.output
    listed = json.loads(runner.invoke(app, ["runs", "ls", str(runs), "--json"]).stdout)
    assert [(e["kind"], e["name"], e["status"], e["seed"]) for e in listed] == [
        ("comparison", "r2", "completed", None),
        ("run", "r2", "completed", 2),
        ("run", "r1", "completed", 1),
    ]
    assert all(0 < e["test_acc"] <= 1 and e["seconds"] > 0 for e in listed)  # newest first, with numbers
    run_2 = Path(listed[1]["folder"])
    assert json.loads((run_2 / "summary.json").read_text())["final"]["test_acc"] == listed[1]["test_acc"]
    only = json.loads(runner.invoke(app, ["runs", "ls", str(runs), "--json", "--name", "r1"]).stdout)
    assert [e["name"] for e in only] == ["r1"]
    assert json.loads(runner.invoke(app, ["runs", "ls", str(runs), "--json", "--status", "failed"]).stdout) == []
    text = runner.invoke(app, ["runs", "ls", str(runs)]).stdout
    assert "3 entries in" in text and "comparison" in text
    shown = runner.invoke(app, ["runs", "show", str(run_2)])
    assert json.loads(shown.stdout) == json.loads((run_2 / "summary.json").read_text())
    diff = runner.invoke(app, ["runs", "diff", listed[2]["folder"], str(run_2)])
    assert diff.exit_code == 0, diff.output
    lines = {line.split()[0]: line.split()[1:] for line in diff.stdout.splitlines()[1:]}
    assert lines["seed"] == ["1", "|", "2"] and lines["name"] == ['"r1"', "|", '"r2"'] and "final.test_acc" in lines
    assert "model.hidden" not in lines  # only what differs
    missing = runner.invoke(app, ["runs", "diff", str(runs), str(run_2)])
    assert missing.exit_code == 2 and "not a run folder" in missing.stderr


def complete(runner, words: str) -> list[str]:
    """What bash completion offers for the last word of ``words`` (Typer's completion machinery)."""
    env = {"_DLLAB_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    result = runner.invoke(app, [], env=env, prog_name="dllab")
    assert result.exit_code == 0, result.output
    return result.stdout.split()


def test_shell_completion_offers_presets_and_config_keys(runner):
    assert complete(runner, "dllab train --config lab09/x") == ["lab09/xavier"]
    assert set(complete(runner, "dllab train --config lab09/")) >= {"lab09/nn_normal", "lab09/rbm", "lab09/zeros"}
    assert complete(runner, "dllab compare relu --set model.act") == ["model.activation="]
    assert complete(runner, "dllab train -c relu --set model.activation=si") == ["model.activation=sigmoid"]
    assert "optimizer.lr=" in complete(runner, "dllab train -c relu --set optimizer.")
    from typer._completion_shared import get_completion_script  # what --install-completion writes for each shell

    for shell, marker in (
        ("bash", "complete -o default -F _dllab_completion dllab"),
        ("zsh", "compdef _dllab_completion dllab"),
    ):
        script = get_completion_script(prog_name="dllab", complete_var="_DLLAB_COMPLETE", shell=shell)
        assert marker in script and "_DLLAB_COMPLETE=complete_" in script
    help_text = runner.invoke(app, ["--help"]).stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
