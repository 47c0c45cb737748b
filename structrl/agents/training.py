"""Training runs: build the environments and the algorithm of a :class:`TrainConfig`, learn, save and resume.

A run directory holds:

* ``model.zip``: the trained model (also written when training is interrupted with Ctrl-C);
* ``config.yml``: the resolved configuration, the effective algorithm settings and the library versions;
* ``progress.yml``: ``status`` (``running``, ``interrupted`` or ``finished``) and ``timesteps_done``;
* ``checkpoints/model_<N>_steps.zip``: periodic checkpoints;
* ``monitor/<i>.monitor.csv``: SB3 Monitor logs of each training environment;
* ``tensorboard/<Algorithm>_1/``: tensorboard event files.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import minigrid
import sb3_contrib
import stable_baselines3
import torch as th
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import structrl
from structrl.agents.config import ConfigError, TrainConfig
from structrl.data.atomic_files import atomic_open

MODEL_FILE = "model.zip"
CONFIG_FILE = "config.yml"
PROGRESS_FILE = "progress.yml"
CHECKPOINT_DIR = "checkpoints"
MONITOR_DIR = "monitor"
TENSORBOARD_DIR = "tensorboard"
#: Environment steps between two checkpoints, by default.
DEFAULT_CHECKPOINT_FREQ = 50_000

_CHECKPOINT_PATTERN = re.compile(r"model_(\d+)_steps\.zip")


def write_yaml(path: str | Path, data: dict[str, Any]) -> None:
    """
    Write a YAML file atomically (temporary file in the same directory, then ``os.replace``).

    :param path: destination
    :param data: YAML-serialisable data
    """
    text = yaml.safe_dump(data, sort_keys=False)
    with atomic_open(path) as file:
        file.write(text)


def read_progress(run_dir: str | Path) -> dict[str, Any]:
    """
    Progress of a run directory.

    :param run_dir: the run directory
    :return: ``{"status": ..., "timesteps_done": ..., "n_timesteps": ...}``, empty if there is no record
    """
    path = Path(run_dir) / PROGRESS_FILE
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def library_versions() -> dict[str, str]:
    """
    :return: versions of structrl and of the libraries a model depends on
    """
    return {
        "structrl": structrl.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "torch": str(th.__version__),
        "gymnasium": gym.__version__,
        "minigrid": minigrid.__version__,
        "python": platform.python_version(),
    }


def make_train_env(
    config: TrainConfig, run_dir: str | Path, seed: int, append_monitor: bool = False
) -> VecEnv:
    """
    The training environments: a seeded ``DummyVecEnv`` of ``config.n_envs`` monitored environments.

    :param config: the run configuration
    :param run_dir: the run directory; Monitor CSV files go to its ``monitor`` folder
    :param seed: environment ``i`` is seeded with ``seed + i``
    :param append_monitor: append to existing Monitor files (when resuming) instead of replacing them
    :return: the vectorised environment
    """
    return make_vec_env(
        config.env_id,
        n_envs=config.n_envs,
        seed=seed,
        monitor_dir=str(Path(run_dir) / MONITOR_DIR),
        wrapper_class=config.wrapper(),
        env_kwargs=config.env_kwargs,
        vec_env_cls=DummyVecEnv,
        monitor_kwargs={"override_existing": not append_monitor},
    )


def _effective_hyperparams(model: BaseAlgorithm, config: TrainConfig) -> dict[str, Any]:
    """The algorithm settings the model really uses: the configured ones and the class defaults."""
    names = (
        "learning_rate",
        "n_steps",
        "batch_size",
        "n_epochs",
        "gamma",
        "gae_lambda",
        "clip_range",
        "clip_range_vf",
        "normalize_advantage",
        "ent_coef",
        "vf_coef",
        "max_grad_norm",
        "target_kl",
        "use_sde",
    )
    effective: dict[str, Any] = {}
    for name in names:
        if name in config.hyperparams:
            effective[name] = config.hyperparams[name]
        elif isinstance(getattr(model, name, ()), bool | int | float | str | type(None)):
            effective[name] = getattr(model, name)
    policy = model.policy
    effective["policy_class"] = _plain(type(policy))
    effective["optimizer"] = _plain(type(policy.optimizer))
    constructor = policy._get_constructor_parameters()
    for name in ("observation_space", "action_space", "lr_schedule"):
        constructor.pop(name, None)
    effective["policy_kwargs"] = _plain(constructor)
    return effective


def _plain(value: Any) -> Any:
    """A YAML-friendly rendering of a setting: scalars and containers as they are, classes by dotted path."""
    if isinstance(value, bool | int | float | str | type(None)):
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _write_config(run_dir: Path, config: TrainConfig, model: BaseAlgorithm, threads: int) -> None:
    data = config.to_dict()
    data["algorithm"] = type(model).__name__
    data["effective_hyperparams"] = _effective_hyperparams(model, config)
    data["threads"] = threads
    data["versions"] = library_versions()
    write_yaml(run_dir / CONFIG_FILE, data)


def _write_progress(run_dir: Path, status: str, timesteps_done: int, n_timesteps: int) -> None:
    write_yaml(
        run_dir / PROGRESS_FILE,
        {"status": status, "timesteps_done": int(timesteps_done), "n_timesteps": int(n_timesteps)},
    )


def _learn(
    model: BaseAlgorithm,
    config: TrainConfig,
    run_dir: Path,
    checkpoint_freq: int,
    callbacks: Sequence[BaseCallback],
    progress_bar: bool,
    reset_num_timesteps: bool,
) -> BaseAlgorithm:
    """Train up to ``config.n_timesteps``; save the model (also on Ctrl-C, then re-raise) and the progress."""
    # The zoo entry's callbacks run after the ones given in code (such as the CLI's generalisation
    # evaluation), so that one which restores state after evaluations (TrainModeRolloutsCallback) comes last.
    all_callbacks = [*callbacks, *config.callbacks()]
    if checkpoint_freq > 0:
        all_callbacks.append(
            CheckpointCallback(
                save_freq=max(checkpoint_freq // config.n_envs, 1),
                save_path=str(run_dir / CHECKPOINT_DIR),
                name_prefix="model",
            )
        )
    remaining = config.n_timesteps - model.num_timesteps
    _write_progress(run_dir, "running", model.num_timesteps, config.n_timesteps)
    try:
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=CallbackList(all_callbacks),
                progress_bar=progress_bar,
                reset_num_timesteps=reset_num_timesteps,
                tb_log_name=type(model).__name__,
            )
    except KeyboardInterrupt:
        model.save(run_dir / MODEL_FILE)
        _write_progress(run_dir, "interrupted", model.num_timesteps, config.n_timesteps)
        raise
    finally:
        if model.env is not None:
            model.env.close()
    model.save(run_dir / MODEL_FILE)
    _write_progress(run_dir, "finished", model.num_timesteps, config.n_timesteps)
    return model


def _clear_previous_run(run_dir: Path) -> None:
    """Remove the files of an earlier run that a new run would not overwrite itself."""
    for pattern in (f"{MONITOR_DIR}/*.monitor.csv", f"{CHECKPOINT_DIR}/model_*_steps.zip"):
        for path in run_dir.glob(pattern):
            path.unlink()
    for name in (MODEL_FILE, PROGRESS_FILE):
        (run_dir / name).unlink(missing_ok=True)


def train(
    config: TrainConfig,
    run_dir: str | Path,
    threads: int = 1,
    progress_bar: bool = False,
    checkpoint_freq: int = DEFAULT_CHECKPOINT_FREQ,
    callbacks: Sequence[BaseCallback] = (),
    verbose: int = 0,
) -> BaseAlgorithm:
    """
    Train an agent and write its run directory (see the module docstring). A directory that already holds
    a run is reused: the new run replaces its model, progress, Monitor files and checkpoints.

    On ``KeyboardInterrupt`` the model is saved to ``run_dir/model.zip`` and ``progress.yml`` records the
    timesteps done (status ``interrupted``) before the exception propagates; :func:`resume` continues.

    :param config: the run configuration (see :func:`structrl.agents.config.build_config`)
    :param run_dir: the run directory (created if needed)
    :param threads: torch intra-op threads; 1 is much faster for the small recurrent ops on shared CPUs
    :param progress_bar: show SB3's progress bar
    :param checkpoint_freq: environment steps between checkpoints (0 disables them)
    :param callbacks: extra SB3 callbacks (for example :class:`structrl.callbacks.GeneralizationCallback`)
    :param verbose: verbosity of the SB3 algorithm (its own console logging)
    :return: the trained model
    :raises ConfigError: if the algorithm rejects the configuration
    """
    th.set_num_threads(threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(run_dir)
    algorithm = config.algorithm_class()
    kwargs = config.algorithm_kwargs()
    env = make_train_env(config, run_dir, seed=config.seed)
    try:
        model = algorithm(env=env, tensorboard_log=str(run_dir / TENSORBOARD_DIR), verbose=verbose, **kwargs)
    except (ValueError, TypeError, AssertionError) as error:
        env.close()
        raise ConfigError(f"{algorithm.__name__} rejected the configuration: {error}") from error
    _write_config(run_dir, config, model, threads)
    return _learn(model, config, run_dir, checkpoint_freq, callbacks, progress_bar, reset_num_timesteps=True)


def load_config(run_dir: str | Path) -> TrainConfig:
    """
    The configuration of a run directory.

    :param run_dir: the run directory
    :return: the configuration read from its ``config.yml``
    :raises ConfigError: if the file is missing or invalid
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a structrl run directory (no {CONFIG_FILE})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"malformed YAML in {path}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a structrl run configuration")
    return TrainConfig.from_dict(data)


def latest_model_file(run_dir: str | Path) -> tuple[Path, int]:
    """
    The most advanced saved model of a run: ``model.zip`` or the latest checkpoint.

    :param run_dir: the run directory
    :return: the path and its timesteps (for ``model.zip``, as recorded in ``progress.yml``)
    :raises ConfigError: if the directory holds no model
    """
    run_dir = Path(run_dir)
    candidates: list[tuple[int, Path]] = []
    progress = read_progress(run_dir)
    if (run_dir / MODEL_FILE).is_file() and progress.get("status") in ("interrupted", "finished"):
        candidates.append((int(progress.get("timesteps_done", 0)), run_dir / MODEL_FILE))
    for path in (run_dir / CHECKPOINT_DIR).glob("model_*_steps.zip"):
        match = _CHECKPOINT_PATTERN.fullmatch(path.name)
        if match:
            candidates.append((int(match.group(1)), path))
    if not candidates:
        raise ConfigError(f"{run_dir} holds no {MODEL_FILE} or checkpoint to resume from")
    timesteps, path = max(candidates)
    return path, timesteps


def resume(
    run_dir: str | Path,
    n_timesteps: int | None = None,
    threads: int = 1,
    progress_bar: bool = False,
    checkpoint_freq: int = DEFAULT_CHECKPOINT_FREQ,
    callbacks: Sequence[BaseCallback] = (),
    verbose: int = 0,
) -> BaseAlgorithm:
    """
    Continue a run from its ``model.zip`` (or latest checkpoint) and ``config.yml`` for the remaining
    timesteps, keeping the timestep count, the tensorboard run and the Monitor files. The environments are
    re-seeded with ``seed + timesteps done``, so that the episodes do not repeat those already seen.

    :param run_dir: the run directory
    :param n_timesteps: a new total budget (default: the configured one)
    :param threads: torch intra-op threads
    :param progress_bar: show SB3's progress bar
    :param checkpoint_freq: environment steps between checkpoints (0 disables them)
    :param callbacks: extra SB3 callbacks
    :param verbose: verbosity of the SB3 algorithm
    :return: the trained model
    :raises ConfigError: if the directory is not a run directory or holds no model
    """
    th.set_num_threads(threads)
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if n_timesteps is not None:
        config.n_timesteps = n_timesteps
    path, timesteps_done = latest_model_file(run_dir)
    seed = config.seed + timesteps_done
    env = make_train_env(config, run_dir, seed=seed, append_monitor=True)
    model = config.algorithm_class().load(
        path, env=env, tensorboard_log=str(run_dir / TENSORBOARD_DIR), verbose=verbose
    )
    model.set_random_seed(seed)
    if n_timesteps is not None:
        _write_config(run_dir, config, model, threads)
    return _learn(model, config, run_dir, checkpoint_freq, callbacks, progress_bar, reset_num_timesteps=False)
