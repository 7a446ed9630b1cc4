"""Hostile input, replayed as a user would type it: every case exits 2 with one 'error:' message naming the
file or option and the key, no traceback, and nothing written where runs go."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FAST, child_env, sets

from dl_lab.cli.app import app
from dl_lab.config.loader import load_config
from dl_lab.errors import ConfigError
from dl_lab.experiments.planning import plan_comparison

SYNTH = sets("device=cpu", "data.dataset=synthetic", "data.train_subset=500", "train.epochs=1", "model.hidden=[16]")


def refused(result, words: str, runs: Path | None = None) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.output
    if runs is not None:
        assert not runs.exists() or not any(runs.iterdir()), sorted(runs.iterdir())


def chain(tmp_path: Path, depth: int) -> Path:
    """a0.yaml extends a1.yaml extends ... a<depth>.yaml."""
    for i in range(depth):
        (tmp_path / f"a{i}.yaml").write_text(f"extends: a{i + 1}.yaml\n")
    (tmp_path / f"a{depth}.yaml").write_text(yaml.safe_dump(FAST))
    return tmp_path / "a0.yaml"


def cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(FAST))
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "huge.yaml").write_text("# padding\n" * 200_000 + "seed: 1\n")  # 2 MB
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "rbm_keys.yaml").write_text(yaml.safe_dump({**FAST, "model": {"hidden": [8], "rbm": {"epochs": 3}}}))
    c = ["-c", str(fast)]
    return {
        "non-UTF-8 config": (["-c", str(tmp_path / "latin1.yaml")], "not UTF-8 text (byte 0xe9 at offset 9)"),
        "runs-dir is a file": ([*c, "--runs-dir", str(tmp_path / "a_file")], "--runs-dir"),
        "runs-dir under a file": ([*c, "--runs-dir", str(tmp_path / "a_file" / "runs")], "is a file, so no folder"),
        "5000-character name": ([*c, "--set", "name=" + "n" * 5000], "name: String should have at most 200 characters"),
        "name with a newline": ([*c, "--set", 'name="a\\nb"'], "control characters"),
        "model too large": ([*c, "--set", "model.hidden=[100000000, 100000000]"], "model.hidden: training needs about"),
        "batch larger than the data": (
            [*c, *sets("data.train_subset=50", "data.batch_size=100")],
            "data.batch_size: an epoch would have no training step",
        ),
        "inf learning rate": ([*c, "--set", "optimizer.lr=.inf"], "optimizer.lr: Input should be a finite number"),
        "inf weight decay": (
            [*c, "--set", "optimizer.weight_decay=.inf"],
            "optimizer.weight_decay: Input should be a finite",
        ),
        "inf leaky slope": (
            [*c, *sets("model.activation=leaky_relu", "model.leaky_relu_slope=.inf")],
            "model.leaky_relu_slope",
        ),
        "nan gain": (
            [*c, *sets("model.init=xavier_uniform", "model.init_gain=.nan")],
            "--set: model.init_gain:",
        ),
        "empty key part": (
            [*c, "--set", "model..hidden=1"],
            "--set 'model..hidden=1': the key 'model..hidden' has an empty part",
        ),
        "leading dot": ([*c, "--set", ".model=1"], "--set '.model=1': the key '.model' has an empty part"),
        # the key's source is the --set that made it, not the file that set its section (relu.yaml sets model)
        "rbm key from --set": (["-c", "relu", "--set", "model.rbm.epochs=3"], "--set: model.rbm: init normal does not"),
        "batch norm on batches of one": (
            ["-c", "lab09/batchnorm", "--set", "data.batch_size=1"],
            "data.batch_size: 1 with model.batchnorm: batch norm normalizes each feature over the batch",
        ),
        "rbm key from a file": (
            ["-c", str(tmp_path / "rbm_keys.yaml")],
            "rbm_keys.yaml: model.rbm: init normal does not",
        ),
        "extends 40 deep": (["-c", str(chain(tmp_path, 40))], "extends: a chain of more than 32 files"),
        "config of 2 MB": (["-c", str(tmp_path / "huge.yaml")], "larger than 1,048,576 bytes"),
    }


CASES = [
    "non-UTF-8 config",
    "runs-dir is a file",
    "runs-dir under a file",
    "5000-character name",
    "name with a newline",
    "model too large",
    "batch larger than the data",
    "inf learning rate",
    "inf weight decay",
    "inf leaky slope",
    "nan gain",
    "empty key part",
    "leading dot",
    "rbm key from --set",
    "rbm key from a file",
    "batch norm on batches of one",
    "extends 40 deep",
    "config of 2 MB",
]


@pytest.mark.parametrize("case", CASES)
def test_train_refuses_bad_input_cleanly(runner, tmp_path, case):
    table = cases(tmp_path)
    assert sorted(table) == sorted(CASES)
    args, words = table[case]
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", *(args if "--runs-dir" in args else [*args, "--runs-dir", str(runs)])])
    refused(result, words, runs)
    assert "\n" not in result.stderr.strip() or case == "model too large"  # one message (lines only per problem)


def test_caps_can_be_raised_on_purpose(tmp_path, monkeypatch):
    (tmp_path / "huge.yaml").write_text("# padding\n" * 200_000 + "seed: 1\n")
    monkeypatch.setenv("DLLAB_MAX_CONFIG_BYTES", str(4 << 20))
    assert load_config(str(tmp_path / "huge.yaml")).config.seed == 1
    monkeypatch.setenv("DLLAB_MAX_EXTENDS", "50")
    assert load_config(str(chain(tmp_path, 40))).config.train.epochs == 2
    plan = plan_comparison(["relu"], SYNTH[1::2], [], seeds=1500, max_runs=1500)
    assert len(plan.runs) == 1500


@pytest.mark.parametrize(
    "args, words",
    [
        (["relu", "lab09/nn_normal", "--seeds", "2"], "variants 'relu' and 'nn_normal' resolve to the same config"),
        (
            ["relu", "--vary", "model.activation=sigmoid", "--vary", "model.activation=relu"],
            "the key model.activation is given twice",
        ),
        (["relu", "--vary", "model.activation=relu,relu"], "variant 'activation=relu' appears twice"),
        (["relu", "--vary", "model.dropout=0,0.0"], "resolve to the same config"),
        (["relu", "--seeds", "100000"], "more than the limit of 1,000 per comparison; pass --max-runs 100000"),
        (["relu", "--vary", "model.activation=relu,tanh", "--seeds", "600"], "1,200 runs planned"),
        (
            ["relu", "--set", "model.hidden=[100000000]", "--seeds", "2"],
            "variant relu: model.hidden: training needs about",
        ),
        (["relu", "--seeds", "300", "--set", "model.hidden=[30000,30000]"], "for a stack of 300 models"),
        (
            ["relu", "--seeds", "300", "--set", "model.hidden=[30000,30000]"],
            "(--stacks variant, or --engine sequential)",
        ),
        (["relu", "--set", "seed=9223372036854775807", "--seeds", "2"], "seed"),
        (["relu", "--set", "model..hidden=1"], "the key 'model..hidden' has an empty part"),
        (["relu", "--vary", "model.hidden=[1],[" + "1," * 120 + "1]"], "longer than 200"),
        # a bad value is blamed on the option that gave it
        (["relu", "--vary", "model.dropout=0.2,7"], "--vary: model.dropout: Input should be less than 1 (got 7)"),
        (["relu", "--set", "model.dropout=3", "--vary", "model.init=normal,he_normal"], "--set: model.dropout"),
        (["relu", "--vary", "model..x=1,2"], "--vary 'model..x=1': the key 'model..x' has an empty part"),
    ],
)
def test_compare_refuses_bad_plans_before_writing(runner, tmp_path, args, words):
    runs = tmp_path / "runs"
    refused(runner.invoke(app, ["compare", *SYNTH, *args, "--runs-dir", str(runs)]), words, runs)


def test_report_alpha_is_checked_like_compare(runner, tmp_path):
    refused(runner.invoke(app, ["report", str(tmp_path), "--alpha", "5"]), "--alpha: must be between 0 and 1")
    refused(
        runner.invoke(app, ["compare", "relu", *SYNTH, "--alpha", "2", "--runs-dir", str(tmp_path / "r")]), "--alpha"
    )


def test_vary_labels_become_names_that_load_back(runner, tmp_path):
    result = runner.invoke(
        app,
        [
            "compare",
            "relu",
            "--seeds",
            "1",
            *SYNTH,
            "--runs-dir",
            str(tmp_path / "runs"),
            "--vary",
            "data.root=/a,/b",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    labels = [v["label"] for v in json.loads(result.stdout)["variants"]]
    assert labels == ["root=_a", "root=_b"]
    for config in sorted(tmp_path.glob("runs/compare-*/*/config.yaml")):
        assert load_config(str(config)).config.name in labels  # loads back: no '/' in the name


def test_tilde_means_home(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(FAST))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "-c", str(fast), "--runs-dir", "~/my-runs"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "my-runs").iterdir())) == 1 and not (tmp_path / "~").exists()


def test_a_read_only_runs_dir_is_refused(tmp_path):
    """A real read-only file system (tmpfs in a private mount namespace): root cannot write there either."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a read-only tmpfs")
    mount = tmp_path / "ro"
    mount.mkdir()
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(FAST))
    script = (
        f"mount -t tmpfs -o ro,size=1m tmpfs {mount} || exit 77; "
        f"exec {sys.executable} -m dl_lab train -c {fast} --runs-dir {mount}/runs"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120, env=child_env()
    )
    if result.returncode == 77 or "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
    assert result.returncode == 2, result.stderr
    assert "error: --runs-dir" in result.stderr and "Traceback" not in result.stderr


def test_the_plan_names_the_real_key_and_refuses_nothing_good():
    with pytest.raises(ConfigError, match="--seeds: must be >= 1"):
        plan_comparison(["relu"], [], [], 0)
    plan = plan_comparison(["relu", "sigmoid"], SYNTH[1::2], [], 2)
    assert [r.folder for r in plan.runs] == ["relu-seed777", "sigmoid-seed777", "relu-seed778", "sigmoid-seed778"]


def test_executor_ray_without_ray_installed_is_a_usage_error_that_says_how_to_install_it(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError, as where it is not installed
    result = runner.invoke(app, ["compare", "relu", *SYNTH, "--runs-dir", str(tmp_path), "--executor", "ray"])
    assert result.exit_code == 2, result.output
    assert "Ray is not installed" in result.stderr and "pip install" in result.stderr and "[ray]" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["DLLAB_FLUSH_DENORMALS", "DLLAB_ONEDNN_STACKS", "DLLAB_KEEP_FREED_MEMORY"])
@pytest.mark.parametrize("command", [["train", "--config"], ["compare"]])
def test_a_bad_process_setting_is_refused_before_anything_is_written(
    runner, tmp_path, fast_config, monkeypatch, command, name
):
    monkeypatch.setenv(name, "sometimes")
    runs = tmp_path / "runs"
    args = [*command, str(fast_config)] if command[0] == "train" else [*command, "relu", *SYNTH]
    refused(
        runner.invoke(app, [*args, "--runs-dir", str(runs)]),
        f"${name}='sometimes' is not a setting; allowed: auto (default), on, off",
        runs,
    )
