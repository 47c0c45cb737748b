"""Evaluation of trained agents: episode statistics, generalisation to other environments, GIF recordings.

MiniGrid pays a reward only when the agent reaches its goal (``1 - 0.9 * steps / max_steps``), so an
episode is a success when its return is positive. The 7x7 egocentric view keeps the observation shape the
same on every grid size, so a model trained on ``MiniGrid-Empty-5x5-v0`` runs unchanged on the 16x16 grid.
Models of the fully observed BabyAI GoToLocal task (``structrl/GoToLocal*``) see the whole grid; those with a
language-conditioned extractor (factored attention, FiLM, Transformer) read any grid size, so they are
evaluated on the larger rooms (``structrl/GoToLocal-S12-v0``, ...) as they are. :func:`evaluate_seeds` plays
one episode per given reset seed (the fixed ID and OOD validation episodes of a demonstration store).

Every function takes the ``env_kwargs`` of ``gymnasium.make``: evaluate a model under the environment settings
it was trained with (:func:`saved_env_kwargs` reads them from its run directory), for example
``{"stock_success": True}`` for a GoToLocal model trained under minigrid's own success rule.
"""

from __future__ import annotations

import base64
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import yaml
from gymnasium import spaces
from PIL import Image
from rl_zoo3.utils import get_wrapper_class
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import VecTransposeImage

from structrl.agents.config import ConfigError, TrainConfig
from structrl.agents.recurrent_a2c import RecurrentA2C
from structrl.agents.recurrent_ppo import RecurrentPPO
from structrl.data.atomic_files import atomic_open
from structrl.envs import make_minigrid_env
from structrl.envs.babyai import REGISTERED_ROOM_SIZES
from structrl.policies.factored_attention import GridLanguageSpace

#: The algorithm classes :func:`load_model` recognises, by name.
ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {
    cls.__name__: cls for cls in (RecurrentPPO, RecurrentA2C, PPO, A2C)
}


class ModelLoadError(ValueError):
    """A model file that is missing or is not a Stable-Baselines3 / structrl model."""


def _run_config(model_path: str | Path) -> dict[str, Any] | None:
    """The content of the ``config.yml`` of a model's run directory (its folder, or its parent)."""
    folder = Path(model_path).resolve().parent
    for candidate in (folder / "config.yml", folder.parent / "config.yml"):
        if not candidate.is_file():
            continue
        try:
            data = yaml.safe_load(candidate.read_text())
        except yaml.YAMLError:
            return None
        return data if isinstance(data, dict) else None
    return None


def saved_config(model_path: str | Path) -> TrainConfig | None:
    """
    The structrl configuration of a model: the ``config.yml`` of its run directory, which is the model's
    folder, or its parent for a checkpoint.

    :param model_path: path of a ``.zip`` model
    :return: the configuration, or ``None`` if there is no ``config.yml`` of ``structrl train``
    """
    data = _run_config(model_path)
    if data is None:
        return None
    try:
        return TrainConfig.from_dict(data)
    except (ConfigError, TypeError):
        return None


def saved_env_id(model_path: str | Path) -> str | None:
    """
    The environment a model was trained on, as recorded in the ``config.yml`` of its run directory (by
    ``structrl train`` or ``structrl bc``).

    :param model_path: path of a ``.zip`` model
    :return: the environment id, or ``None`` if no ``config.yml`` records one
    """
    data = _run_config(model_path)
    env_id = None if data is None else data.get("env_id")
    return env_id if isinstance(env_id, str) else None


def saved_env_kwargs(model_path: str | Path) -> dict[str, Any]:
    """
    The environment keyword arguments a model was trained with, as recorded in the ``config.yml`` of its
    run directory (``env_kwargs`` of ``structrl train`` and ``structrl bc``, e.g. ``{"stock_success": True}``
    for a GoToLocal model cloned from demonstrations recorded under minigrid's success rule).

    :param model_path: path of a ``.zip`` model
    :return: the keyword arguments of ``gymnasium.make`` (empty without a ``config.yml`` or without any)
    :raises ConfigError: if the ``config.yml`` holds ``env_kwargs`` that are not a mapping
    """
    data = _run_config(model_path)
    env_kwargs = None if data is None else data.get("env_kwargs")
    if env_kwargs is None:
        return {}
    if not isinstance(env_kwargs, dict):
        raise ConfigError(
            f"the config.yml beside {model_path} has env_kwargs {env_kwargs!r}, not a mapping: fix or remove "
            "that entry"
        )
    return dict(env_kwargs)


def balanced_seeds(seeds: Sequence[int] | np.ndarray, n_goals: int, count: int | None) -> np.ndarray:
    """
    The first ``count`` validation seeds taken goal by goal, so any prefix covers the goals evenly.

    :param seeds: validation seeds grouped by goal, the same number per goal (as
        :meth:`structrl.data.splits.DemoSplit.validation_seeds` and
        :func:`structrl.data.splits.find_goal_seeds` give them)
    :param n_goals: number of goals
    :param count: seeds to keep (``None``: all; more than there are: all)
    :return: the selected seeds
    :raises ValueError: if the seeds cannot be grouped into ``n_goals`` equal groups
    """
    seeds = np.asarray(seeds)
    if n_goals < 1 or len(seeds) % n_goals:
        raise ValueError(f"{len(seeds)} seeds do not make {n_goals} groups of the same size, one per goal")
    interleaved = seeds.reshape(n_goals, -1).T.reshape(-1)
    return interleaved if count is None else interleaved[:count]


def _detect_algorithm(path: Path) -> type[BaseAlgorithm]:
    """Find the algorithm class of an SB3 zip from its saved data (without loading the parameters)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "data" not in names or "policy.pth" not in names:
                raise ModelLoadError(f"{path} is a zip file but not a Stable-Baselines3/structrl model")
            data = json.loads(archive.read("data"))
    except zipfile.BadZipFile as error:
        raise ModelLoadError(f"{path} is not a Stable-Baselines3/structrl model (not a zip file)") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} is not a Stable-Baselines3/structrl model (unreadable data)") from error
    try:
        policy_class = cloudpickle.loads(base64.b64decode(data["policy_class"][":serialized:"]))
    except Exception as error:
        raise ModelLoadError(f"cannot read the policy class of {path}: {error}") from error
    if not isinstance(policy_class, type):
        raise ModelLoadError(f"{path} does not name a policy class")
    if issubclass(policy_class, RecurrentActorCriticPolicy):
        optimizer = str(data.get("policy_kwargs", {}).get("optimizer_class", ""))
        a2c_like = data.get("n_epochs") == 1 and "RMSprop" in optimizer
        return RecurrentA2C if a2c_like else RecurrentPPO
    return PPO if "n_epochs" in data else A2C


def load_model(path: str | Path, device: str = "auto") -> BaseAlgorithm:
    """
    Load a model saved by ``structrl train``, rl_zoo3 or any SB3 ``save``, detecting its algorithm class
    (RecurrentPPO, RecurrentA2C, PPO or A2C) from the ``config.yml`` of its run directory or, failing that,
    from the policy class and settings stored in the zip: a recurrent policy trained with one epoch and
    RMSprop is taken for RecurrentA2C, other recurrent ones for RecurrentPPO (both classes predict alike).

    :param path: the ``.zip`` file
    :param device: torch device
    :return: the model
    :raises ModelLoadError: if the file is missing or is not a Stable-Baselines3/structrl model
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} not found")
    config = saved_config(path)
    algorithm = _detect_algorithm(path) if config is None else config.algorithm_class()
    try:
        return algorithm.load(path, device=device)
    except Exception as error:
        raise ModelLoadError(f"cannot load {path} as a {algorithm.__name__} model: {error}") from error


def env_factory(model: BaseAlgorithm, env_wrapper: Any = None) -> Callable[..., gym.Env]:
    """
    A function that makes an environment observed the way ``model`` was trained.

    :param model: the model
    :param env_wrapper: the training run's ``env_wrapper`` specification (rl_zoo3 format); ``None`` uses
        :func:`structrl.envs.make_minigrid_env`, with the tokenised mission if the model observes a ``Dict``,
        and the ``structrl/GoToLocal*`` ids as registered (they make their own observations)
    :return: a function ``(env_id, **make_kwargs) -> env``
    """
    if env_wrapper is None:
        mission = isinstance(model.observation_space, spaces.Dict)

        def make_default(env_id: str, **make_kwargs: Any) -> gym.Env:
            if env_id in REGISTERED_ROOM_SIZES:
                return gym.make(env_id, **make_kwargs)
            return make_minigrid_env(env_id, mission=mission, **make_kwargs)

        return make_default
    wrapper = get_wrapper_class({"env_wrapper": env_wrapper})

    def make_wrapped(env_id: str, **make_kwargs: Any) -> gym.Env:
        env = gym.make(env_id, **make_kwargs)
        return env if wrapper is None else wrapper(env)

    return make_wrapped


def _make_env(make_env: Callable[..., gym.Env], env_id: str, **make_kwargs: Any) -> gym.Env:
    """``make_env(env_id, **make_kwargs)``; an env rejecting a keyword argument raises a ConfigError."""
    try:
        return make_env(env_id, **make_kwargs)
    except TypeError as error:
        raise ConfigError(
            f"cannot make {env_id} with the keyword arguments {make_kwargs} ({error}): check the env_kwargs "
            "(the run's config.yml, or those given for the evaluation)"
        ) from error


def _same_observations(env_space: spaces.Space, model_space: spaces.Space) -> bool:
    """Whether an env's observations fit a model (whose image spaces SB3 may have made channels-first)."""
    if isinstance(env_space, spaces.Dict) and isinstance(model_space, spaces.Dict):
        return env_space.keys() == model_space.keys() and all(
            _same_observations(env_space[key], model_space[key]) for key in env_space
        )
    if type(env_space) is not type(model_space):
        return False
    if env_space.shape == model_space.shape:
        return True
    if not (isinstance(env_space, spaces.Box) and is_image_space(env_space)):
        return False
    return VecTransposeImage.transpose_space(env_space).shape == model_space.shape


def _grid_resizable(model: BaseAlgorithm, observation_space: spaces.Space) -> bool:
    """
    Whether the env's observations differ from the model's only in the size of the ``image`` grid, and every
    features extractor of the model reads the grid through :class:`GridLanguageSpace` (any grid size).
    """
    model_space = model.observation_space
    if not (isinstance(observation_space, spaces.Dict) and isinstance(model_space, spaces.Dict)):
        return False
    if observation_space.keys() != model_space.keys() or "image" not in model_space.spaces:
        return False
    image, model_image = observation_space["image"], model_space["image"]
    if not (isinstance(image, spaces.Box) and isinstance(model_image, spaces.Box)):
        return False
    shapes = image.shape, model_image.shape
    if any(len(shape) != 3 or shape[-1] != 3 for shape in shapes) or image.dtype != model_image.dtype:
        return False
    if any(observation_space[key] != model_space[key] for key in model_space if key != "image"):
        return False
    extractors = [module for module in model.policy.modules() if isinstance(module, BaseFeaturesExtractor)]
    return bool(extractors) and all(
        isinstance(getattr(extractor, "inputs", None), GridLanguageSpace) for extractor in extractors
    )


def _check_spaces(model: BaseAlgorithm, env_id: str, observation_space: spaces.Space) -> None:
    """
    Check that an env's observations fit the model; a model whose extractors read any grid size is switched
    to the env's grid size (its observation space is replaced, its parameters are unchanged).
    """
    if _same_observations(observation_space, model.observation_space):
        return
    if _grid_resizable(model, observation_space):
        model.observation_space = observation_space
        model.policy.observation_space = observation_space
        return
    raise ConfigError(
        f"{env_id} observations {observation_space} do not match the model's {model.observation_space}"
    )


def episode_statistics(returns: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    """
    Summary of finished episodes; success is a return above 0 (MiniGrid and BabyAI reward only success).

    :param returns: the episode returns
    :param lengths: the episode lengths
    :return: success rate, mean and std of return and length, and the per-episode values
    """
    return {
        "success_rate": float(np.mean(returns > 0)),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "std_length": float(np.std(lengths)),
        "episode_returns": returns.tolist(),
        "episode_lengths": lengths.tolist(),
    }


def evaluate(
    model: BaseAlgorithm,
    env_id: str,
    episodes: int = 100,
    deterministic: bool = False,
    seed: int = 0,
    n_envs: int = 8,
    env_wrapper: Any = None,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Run exactly ``episodes`` episodes and summarise them.

    Episodes are split evenly over ``n_envs`` seeded environments before the run (SB3's
    ``evaluate_policy``), so short episodes are not over-represented; recurrent state is reset at each
    episode start.

    :param model: the agent
    :param env_id: Gymnasium environment id
    :param episodes: number of episodes
    :param deterministic: take the most probable action instead of sampling
    :param seed: environment ``i`` is seeded with ``seed + i``
    :param n_envs: parallel environments
    :param env_wrapper: the training run's ``env_wrapper`` specification (see :func:`env_factory`)
    :param env_kwargs: keyword arguments of the environment (``gymnasium.make``), e.g. the training run's
        (:func:`saved_env_kwargs`)
    :return: ``env_id``, ``env_kwargs``, ``episodes``, ``deterministic``, ``seed``, ``success_rate``,
        ``mean_return``, ``std_return``, ``mean_length``, ``std_length``, ``episode_returns`` and
        ``episode_lengths``
    :raises ConfigError: if the env rejects ``env_kwargs`` or its observations do not fit the model
    """
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    env_kwargs = dict(env_kwargs or {})
    make_env = env_factory(model, env_wrapper)
    probe = _make_env(make_env, env_id, **env_kwargs)
    probe.close()
    _check_spaces(model, env_id, probe.observation_space)
    env = make_vec_env(
        make_env, n_envs=min(n_envs, episodes), seed=seed, env_kwargs={"env_id": env_id, **env_kwargs}
    )
    try:
        returns, lengths = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
        )
    finally:
        env.close()
    episode_returns = np.asarray(returns, dtype=float)
    episode_lengths = np.asarray(lengths, dtype=int)
    assert len(episode_returns) == episodes, f"expected {episodes} episodes, got {len(episode_returns)}"
    return {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "episodes": episodes,
        "deterministic": deterministic,
        "seed": seed,
        **episode_statistics(episode_returns, episode_lengths),
    }


def _stack(observations: Sequence[Any]) -> Any:
    """The observations of several envs as one batch (a dict of arrays for Dict observations)."""
    if isinstance(observations[0], dict):
        return {key: np.stack([observation[key] for observation in observations]) for key in observations[0]}
    return np.stack(observations)


def _model_envs(
    model: BaseAlgorithm, env_id: str, count: int, env_wrapper: Any, env_kwargs: dict[str, Any]
) -> list[gym.Env]:
    """
    ``count`` environments observed the way ``model`` was trained, checked against its observation space
    (see :func:`_check_spaces`); if making or checking them fails, those already made are closed.
    """
    make_env = env_factory(model, env_wrapper)
    envs = [_make_env(make_env, env_id, **env_kwargs)]
    try:
        envs += [make_env(env_id, **env_kwargs) for _ in range(1, count)]
        _check_spaces(model, env_id, envs[0].observation_space)
    except BaseException:
        for env in envs:
            env.close()
        raise
    return envs


def evaluate_seeds(
    model: BaseAlgorithm,
    env_id: str,
    seeds: Sequence[int] | np.ndarray,
    deterministic: bool = True,
    n_envs: int = 8,
    env_wrapper: Any = None,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Play one episode from each reset seed (for example the ID or OOD validation seeds of a demonstration
    store, :meth:`structrl.data.splits.DemoSplit.validation_seeds`) and summarise them.

    ``n_envs`` environments step together, each taking the next seed when its episode ends; recurrent state
    is reset at each episode start. An episode is a success when its return is positive.

    :param model: the agent
    :param env_id: Gymnasium environment id (a larger ``structrl/GoToLocal-S*`` room works for models whose
        extractors read any grid size)
    :param seeds: the reset seeds, one episode each
    :param deterministic: take the most probable action (the default: greedy evaluation) instead of sampling
    :param n_envs: environments stepped together
    :param env_wrapper: the training run's ``env_wrapper`` specification (see :func:`env_factory`)
    :param env_kwargs: keyword arguments of the environment (``gymnasium.make``), e.g. the training run's
        (:func:`saved_env_kwargs`)
    :return: ``env_id``, ``env_kwargs``, ``episodes``, ``deterministic``, ``seeds``, ``success_rate``,
        ``mean_return``, ``std_return``, ``mean_length``, ``std_length``, ``episode_returns`` and
        ``episode_lengths`` (in seed order)
    :raises ConfigError: if the env rejects ``env_kwargs`` or its observations do not fit the model
    """
    seeds = [int(seed) for seed in seeds]
    if not seeds or n_envs < 1:
        raise ValueError(f"need at least one seed and one env, got {len(seeds)} seeds and {n_envs} envs")
    env_kwargs = dict(env_kwargs or {})
    envs = _model_envs(model, env_id, min(n_envs, len(seeds)), env_wrapper, env_kwargs)
    returns = np.zeros(len(seeds))
    lengths = np.zeros(len(seeds), dtype=int)
    try:
        episode_of_env: list[int | None] = list(range(len(envs)))
        observations = [env.reset(seed=seeds[index])[0] for index, env in enumerate(envs)]
        next_episode = len(envs)
        state = None
        episode_start = np.ones(len(envs), dtype=bool)
        while any(episode is not None for episode in episode_of_env):
            actions, state = model.predict(
                _stack(observations), state=state, episode_start=episode_start, deterministic=deterministic
            )
            episode_start[:] = False
            for index, env in enumerate(envs):
                episode = episode_of_env[index]
                if episode is None:
                    continue
                observations[index], reward, terminated, truncated, _ = env.step(actions[index])
                returns[episode] += float(reward)
                lengths[episode] += 1
                if terminated or truncated:
                    if next_episode < len(seeds):
                        observations[index] = env.reset(seed=seeds[next_episode])[0]
                        episode_of_env[index] = next_episode
                        episode_start[index] = True
                        next_episode += 1
                    else:
                        episode_of_env[index] = None
    finally:
        for env in envs:
            env.close()
    return {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "episodes": len(seeds),
        "deterministic": deterministic,
        "seeds": seeds,
        **episode_statistics(returns, lengths),
    }


def evaluate_first_finished(
    model: BaseAlgorithm,
    env_id: str,
    episodes: int = 100,
    deterministic: bool = False,
    seed: int = 0,
    n_envs: int = 16,
    seed_stride: int = 10000,
    env_wrapper: Any = None,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Evaluate under the protocol of the ``evaluate.py`` of rl-starter-files, which the RIM paper's MiniGrid
    code (and many MiniGrid papers) used: ``n_envs`` environments step together with automatic resets, and
    the run stops as soon as at least ``episodes`` episodes have finished, all those that finished on the
    last step included.

    The episodes still running when it stops are never counted, so the protocol is **biased towards short
    episodes**: on MiniGrid, failures run to the time limit and are left out first. Use it only to compare
    with numbers measured that way; :func:`evaluate` gives the unbiased estimate.

    :param model: the agent
    :param env_id: Gymnasium environment id
    :param episodes: the number of finished episodes that stops the run (more may be counted)
    :param deterministic: take the most probable action instead of sampling (rl-starter-files samples)
    :param seed: environment ``i`` is reset with ``seed + seed_stride * i`` once, then continues its own
        random stream
    :param n_envs: environments stepped together (rl-starter-files' ``--procs``, 16)
    :param seed_stride: seed spacing between environments (rl-starter-files: 10000)
    :param env_wrapper: the training run's ``env_wrapper`` specification (see :func:`env_factory`)
    :param env_kwargs: keyword arguments of the environment (``gymnasium.make``)
    :return: ``env_id``, ``env_kwargs``, ``episodes`` (the number counted), ``requested_episodes``,
        ``deterministic``, ``seed``, ``n_envs`` and the statistics of :func:`episode_statistics`, episodes in
        the order they finished
    :raises ConfigError: if the env rejects ``env_kwargs`` or its observations do not fit the model
    """
    if episodes < 1 or n_envs < 1:
        raise ValueError(f"episodes and n_envs must be positive, got {episodes} and {n_envs}")
    env_kwargs = dict(env_kwargs or {})
    envs = _model_envs(model, env_id, n_envs, env_wrapper, env_kwargs)
    returns: list[float] = []
    lengths: list[int] = []
    try:
        observations = [env.reset(seed=seed + seed_stride * index)[0] for index, env in enumerate(envs)]
        running_return = np.zeros(n_envs)
        running_length = np.zeros(n_envs, dtype=int)
        state = None
        episode_start = np.ones(n_envs, dtype=bool)
        while len(returns) < episodes:
            actions, state = model.predict(
                _stack(observations), state=state, episode_start=episode_start, deterministic=deterministic
            )
            for index, env in enumerate(envs):
                observations[index], reward, terminated, truncated, _ = env.step(actions[index])
                running_return[index] += float(reward)
                running_length[index] += 1
                episode_start[index] = terminated or truncated
                if episode_start[index]:
                    returns.append(float(running_return[index]))
                    lengths.append(int(running_length[index]))
                    running_return[index], running_length[index] = 0.0, 0
                    observations[index] = env.reset()[0]
    finally:
        for env in envs:
            env.close()
    return {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "episodes": len(returns),
        "requested_episodes": episodes,
        "deterministic": deterministic,
        "seed": seed,
        "n_envs": n_envs,
        **episode_statistics(np.asarray(returns), np.asarray(lengths, dtype=int)),
    }


def generalize(
    model: BaseAlgorithm,
    env_ids: Sequence[str],
    episodes: int = 100,
    deterministic: bool = False,
    seed: int = 0,
    n_envs: int = 8,
    env_wrapper: Any = None,
    env_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """
    Evaluate one model on several environments (for example larger grids than the training one).

    :param model: the agent
    :param env_ids: the environment ids, in table order
    :param episodes: episodes per environment
    :param deterministic: take the most probable action instead of sampling
    :param seed: seed of the evaluation environments
    :param n_envs: parallel environments
    :param env_wrapper: the training run's ``env_wrapper`` specification (see :func:`env_factory`)
    :param env_kwargs: keyword arguments of every environment (``gymnasium.make``)
    :return: one :func:`evaluate` result per environment
    """
    return [
        evaluate(model, env_id, episodes, deterministic, seed, n_envs, env_wrapper, env_kwargs)
        for env_id in env_ids
    ]


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """
    Render evaluation results as a Markdown table, one row per environment.

    :param results: :func:`evaluate` results
    :return: the table (no trailing newline)
    """
    lines = [
        "| environment | episodes | success rate | mean return | mean length |",
        "|---|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result['env_id']} | {result['episodes']} | {result['success_rate']:.2f} "
            f"| {result['mean_return']:.3f} ± {result['std_return']:.3f} "
            f"| {result['mean_length']:.1f} ± {result['std_length']:.1f} |"
        )
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> None:
    """
    Write JSON atomically (temporary file in the same directory, then ``os.replace``).

    :param path: destination
    :param data: JSON-serialisable data
    """
    text = json.dumps(data, indent=2) + "\n"
    with atomic_open(path) as file:
        file.write(text)


def _frame(env: gym.Env) -> Image.Image:
    frame = env.render()
    assert isinstance(frame, np.ndarray), f"render() returned {type(frame).__name__}, not an RGB array"
    return Image.fromarray(frame)


def record(
    model: BaseAlgorithm,
    env_id: str,
    out_gif: str | Path,
    episodes: int = 3,
    deterministic: bool = False,
    seed: int = 0,
    fps: int = 8,
    env_wrapper: Any = None,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Record episodes of the agent to an animated GIF (frames rendered with ``render_mode="rgb_array"``).

    :param model: the agent
    :param env_id: Gymnasium environment id
    :param out_gif: the GIF file to write (atomically)
    :param episodes: number of episodes
    :param deterministic: take the most probable action instead of sampling
    :param seed: seed of the environment (reset once with it)
    :param fps: frames per second of the animation
    :param env_wrapper: the training run's ``env_wrapper`` specification (see :func:`env_factory`)
    :param env_kwargs: keyword arguments of the environment (``gymnasium.make``; ``render_mode`` is set)
    :return: ``frames`` (the number written) and ``episode_returns``
    """
    if episodes < 1:
        raise ValueError(f"episodes must be positive, got {episodes}")
    make_kwargs = {**(env_kwargs or {}), "render_mode": "rgb_array"}
    env = _make_env(env_factory(model, env_wrapper), env_id, **make_kwargs)
    frames: list[Image.Image] = []
    episode_returns: list[float] = []
    try:
        _check_spaces(model, env_id, env.observation_space)
        observation, _ = env.reset(seed=seed)
        for _ in range(episodes):
            state = None
            episode_start = np.ones((1,), dtype=bool)
            total, done = 0.0, False
            frames.append(_frame(env))
            while not done:
                action, state = model.predict(
                    observation, state=state, episode_start=episode_start, deterministic=deterministic
                )
                observation, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
                episode_start[:] = False
                frames.append(_frame(env))
            episode_returns.append(total)
            observation, _ = env.reset()
    finally:
        env.close()
    with atomic_open(out_gif, "wb") as file:
        frames[0].save(
            file, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0
        )
    return {"frames": len(frames), "episode_returns": episode_returns}
