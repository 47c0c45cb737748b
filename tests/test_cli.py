"""The ``structrl`` command line, end to end in subprocesses, and its error handling."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from structrl.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
ENV = "MiniGrid-Empty-5x5-v0"
TINY = ["--n-envs", "2", "--params", "n_steps=16", "batch_size=32", "--no-progress", "--checkpoint-freq", "0"]


def structrl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the command line in a subprocess."""
    command = [sys.executable, "-m", "structrl.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


def structrl_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command line in this process (faster, for the many error cases)."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    result = structrl(
        "train",
        "--algo",
        "ppo",
        "--policy",
        "rim",
        "--env",
        ENV,
        "--timesteps",
        "64",
        "--out",
        str(run),
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    assert f"model saved to {run / 'model.zip'}" in result.stdout
    return run


def test_train_writes_the_run_directory(run_dir: Path) -> None:
    assert (run_dir / "model.zip").is_file()
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert (config["algo"], config["policy"], config["env_id"], config["n_timesteps"]) == (
        "ppo",
        "rim",
        ENV,
        64,
    )
    assert config["hyperparams"]["n_steps"] == 16 and config["hyperparams"]["learning_rate"] == 1e-4
    monitor = (run_dir / "monitor" / "0.monitor.csv").read_text().splitlines()
    assert monitor[0].startswith("#{") and monitor[1] == "r,l,t"
    assert list((run_dir / "tensorboard").glob("RecurrentPPO_1/events.out.tfevents.*"))


def test_train_resume_continues(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    result = structrl("train", "--resume", str(run), "--timesteps", "128", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("trained 128 timesteps")
    assert yaml.safe_load((run / "progress.yml").read_text())["timesteps_done"] == 128


def test_evaluate_json(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = structrl(
        "evaluate", str(run_dir / "model.zip"), "--episodes", "6", "--n-envs", "4", "--json", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{ENV}: 6 episodes, success rate")
    data = json.loads(out.read_text())
    assert {
        "model", "env_id", "episodes", "deterministic", "seed", "success_rate", "mean_return", "std_return",
        "mean_length", "std_length", "episode_returns", "episode_lengths",
    } <= set(data)  # fmt: skip
    assert data["env_id"] == ENV and data["episodes"] == 6 and data["deterministic"] is False
    assert len(data["episode_returns"]) == len(data["episode_lengths"]) == 6


def test_evaluate_uses_the_env_kwargs_of_the_run(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    """A run trained with ``env_kwargs`` (a short time limit) is evaluated with them, unless overridden."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "model.zip", run / "model.zip")
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert config["env_kwargs"] == {}
    (run / "config.yml").write_text(yaml.safe_dump({**config, "env_kwargs": {"max_steps": 3}}))
    out = tmp_path / "eval.json"
    args = ["evaluate", str(run / "model.zip"), "--episodes", "6", "--n-envs", "2", "--json", str(out)]
    code, stdout, err = structrl_in_process(capsys, *args)
    assert code == 0, err
    assert stdout.startswith(f"{ENV} (max_steps=3): 6 episodes")
    data = json.loads(out.read_text())
    assert data["env_kwargs"] == {"max_steps": 3} and max(data["episode_lengths"]) <= 3
    code, stdout, err = structrl_in_process(capsys, *args, "--env-kwargs", "max_steps=40")
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["env_kwargs"] == {"max_steps": 40} and max(data["episode_lengths"]) > 3
    code, _, err = structrl_in_process(capsys, *args, "--env-kwargs", "no_such_setting=1")
    assert code == 2 and "cannot make MiniGrid-Empty-5x5-v0 with the keyword arguments" in err


def test_generalize_table_and_json(run_dir: Path, tmp_path: Path) -> None:
    env_ids = [ENV, "MiniGrid-Empty-6x6-v0", "MiniGrid-Empty-8x8-v0"]
    out = tmp_path / "results" / "generalization.json"
    result = structrl(
        "generalize", str(run_dir / "model.zip"), "--envs", ",".join(env_ids), "--episodes", "2",
        "--deterministic", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| MiniGrid")]
    assert [row.split("|")[1].strip() for row in rows] == env_ids
    data = json.loads(out.read_text())
    assert data["deterministic"] is True and [entry["env_id"] for entry in data["results"]] == env_ids
    assert all(len(entry["episode_returns"]) == 2 for entry in data["results"])


def test_record_gif(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "agent.gif"
    result = structrl(
        "record",
        str(run_dir / "model.zip"),
        "--env",
        "MiniGrid-Empty-6x6-v0",
        "--out",
        str(out),
        "--episodes",
        "2",
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "GIF" and image.n_frames > 1


def test_ctrl_c_saves_and_exits_130(tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "structrl.cli.main", "train", "--algo", "a2c", "--policy", "lstm", "--env", ENV,
        "--timesteps", "10000000", "--out", str(run), "--no-progress", "--n-envs", "2",
    ]  # fmt: skip
    # faulthandler: if the run does not stop, SIGABRT makes it print every thread's stack for the report
    environment = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    # a shell that runs the suite as a background job starts it with SIGINT ignored, and Python keeps it so:
    # give the run the default disposition, so Python installs its KeyboardInterrupt handler
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environment,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (run / "progress.yml").is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        _, stderr = process.communicate(timeout=60)
        pytest.fail(f"the run did not stop within 120 s of SIGINT; its stacks:\n{stderr[-6000:]}")
    assert process.returncode == 130, stderr
    progress = yaml.safe_load((run / "progress.yml").read_text())
    assert progress["status"] == "interrupted" and progress["timesteps_done"] > 0
    assert f"model saved to {run / 'model.zip'}" in stderr and f"--resume {run}" in stderr
    assert (run / "model.zip").is_file()


def test_bad_input_is_one_line_and_exit_code_2() -> None:
    result = structrl("evaluate", "model.zip", "--env", "MiniGrid-Empty-5x5")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        "structrl: error: unknown environment id 'MiniGrid-Empty-5x5'; did you mean "
    )
    assert "MiniGrid-Empty-5x5-v0" in result.stderr


def write_bytes_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--algo", "ppo", "--env", "MiniGrid-DorKey-5x5-v0"],
            "did you mean MiniGrid-DoorKey-5x5-v0",
        ),
        (
            ["train", "--algo", "ppo", "--policy", "gru", "--env", ENV],
            "argument --policy: invalid choice: 'gru'",
        ),
        (["train", "--algo", "sac", "--env", ENV], "argument --algo: invalid choice: 'sac'"),
        (["train", "--env", ENV], "train needs --algo and --env"),
        (
            ["train", "--algo", "ppo", "--env", ENV, "--hyperparams", "zoo/ppo_lstm.yml", "--policy", "mlp"],
            "disagrees",
        ),
        (
            ["train", "--algo", "ppo", "--env", "MiniGrid-Empty-8x8-v0", "--hyperparams", "zoo/ppo_lstm.yml"],
            "is not in",
        ),
        (
            ["train", "--algo", "ppo", "--env", ENV, "--hyperparams", "zoo/ppo_lstm.yml", "--variant", "gru"],
            "variant",
        ),
        (["train", "--algo", "ppo", "--env", ENV, "--params", "n_steps"], "KEY=VALUE"),
        (["train", "--resume", "RUN", "--algo", "ppo"], "drop --algo"),
        (["train", "--resume", "RUN"], "not a structrl run directory"),
        (["evaluate", "MISSING", "--env", ENV], "model file .* not found"),
        (["evaluate", "MISSING"], "model file .* not found"),
        (["evaluate", "NOTMODEL", "--env", ENV], "not a Stable-Baselines3/structrl model"),
        (
            ["generalize", "MISSING", "--envs", f"{ENV},MiniGrid-Empty-16x16"],
            "did you mean MiniGrid-Empty-16x16-v0",
        ),
        (["record", "MISSING", "--env", ENV, "--out", "x.gif"], "not found"),
        (
            ["evaluate", "MISSING", "--env", ENV, "--env-kwargs", "max_steps"],
            "--env-kwargs expects KEY=VALUE",
        ),
        (["bc", "--model", "film"], "bc needs --dataset and --model \\(or --resume DIR\\)"),
        (["bc", "--resume", "RUN"], "is not a behaviour-cloning run directory \\(no config.yml\\)"),
        (["bc", "--resume", "RUN", "--model", "film", "--epochs", "3"], "drop --model$"),
    ],
)
def test_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str) -> None:
    paths = {"RUN": str(tmp_path), "MISSING": str(tmp_path / "missing.zip")}
    paths["NOTMODEL"] = str(write_bytes_zip(tmp_path / "notes.zip"))
    args = [paths.get(arg, arg) for arg in args]
    code, out, err = structrl_in_process(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("structrl")
    assert re.search(message, err), err


def test_malformed_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(f"{ENV}:\n  n_envs: 2\n  n_steps: [16\n  batch_size: 32\n")
    code, _, err = structrl_in_process(
        capsys, "train", "--algo", "ppo", "--env", ENV, "--hyperparams", str(path)
    )
    assert code == 2
    assert err.startswith(f"structrl: error: malformed YAML in {path}:4")
