"""
Seeded collection of episodes into an episode store, in one process or several.

Every random choice of episode ``i`` (the environment's reset seed, the burn-in length, the policy's random
actions) comes from ``numpy.random.SeedSequence(seed, spawn_key=(i, attempt))``, so a collection is a pure
function of its settings: the same seed gives byte-identical arrays, whatever the number of processes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from structrl.data.episode_store import (
    ACTIONS,
    FRAMES,
    OBSERVATIONS,
    REWARDS,
    STATE_IDS,
    AttrValue,
    Episode,
    EpisodeReader,
    EpisodeWriter,
)
from structrl.data.policies import ActionPolicy, ModelPolicy, RandomPolicy

#: Per-episode array of the unrecorded steps taken before recording (only in collections with a burn-in).
BURN_IN_STEPS = "burn_in_steps"
# Episodes handed to a worker process at a time.
_WORKER_BLOCK = 32


class CollectionError(ValueError):
    """Collection settings that cannot work, such as an unknown environment or an impossible burn-in."""


@dataclass(frozen=True)
class CollectionConfig:
    """
    What to collect.

    :param env_id: Gymnasium id of an environment with a ``Box`` observation and a ``Discrete`` action space.
    :param num_episodes: Episodes to record.
    :param seed: Seed of the whole collection.
    :param save_state_ids: Also store ``info["state_id"]`` of every observation (``observations/state_ids``).
    :param policy_path: A trained Stable-Baselines3 model (``.zip``) acting instead of the random policy.
    :param epsilon: Probability that the model's action is replaced by a random one.
    :param deterministic: Take the model's most probable action instead of sampling it.
    :param burn_in: ``(min, max)``: before recording, each episode takes a number of unrecorded steps drawn
        uniformly from ``min .. max`` (inclusive) with the policy, as C-SWM's A3C collector does; the store
        then has the per-episode array ``episodes/burn_in_steps``.
    :param steps_per_episode: Transitions recorded per episode; episodes that end earlier (or during the
        burn-in) are discarded and drawn again. ``None``: without burn-in, record until the environment ends
        the episode (its time limit), keeping shorter episodes; with a burn-in, record as many steps as the
        environment's time limit.
    :param random_after_burn_in: Record uniformly random actions after a burn-in driven by the model (the
        A3C collector's data); by default the model acts throughout.
    :param exclude: Episode stores with state ids: episodes whose first recorded state id appears as the
        first state id of an episode there are drawn again (C-SWM's ``--check-dup-paths``).
    :param max_attempts: Draws of one episode before giving up with a :class:`CollectionError`.
    """

    env_id: str
    num_episodes: int
    seed: int
    save_state_ids: bool = False
    policy_path: str | None = None
    epsilon: float = 0.0
    deterministic: bool = False
    burn_in: tuple[int, int] = (0, 0)
    steps_per_episode: int | None = None
    random_after_burn_in: bool = False
    exclude: tuple[str, ...] = ()
    max_attempts: int = 1000

    def check(self) -> None:
        """
        :raises CollectionError: naming the first invalid setting
        """
        low, high = self.burn_in
        problems = (
            (self.num_episodes < 1, f"the number of episodes must be positive, got {self.num_episodes}"),
            (not 0.0 <= self.epsilon <= 1.0, f"epsilon must be in [0, 1], got {self.epsilon}"),
            (not 0 <= low <= high, f"the burn-in range must satisfy 0 <= MIN <= MAX, got {low}:{high}"),
            (
                self.steps_per_episode is not None and self.steps_per_episode < 1,
                f"the steps per episode must be positive, got {self.steps_per_episode}",
            ),
            (self.max_attempts < 1, f"max_attempts must be positive, got {self.max_attempts}"),
            (
                self.policy_path is None
                and (self.epsilon > 0 or self.deterministic or self.random_after_burn_in),
                "epsilon, deterministic and random_after_burn_in need a policy model",
            ),
        )
        for failed, message in problems:
            if failed:
                raise CollectionError(message)

    @property
    def collector(self) -> str:
        """The ``collector`` attribute of the store: ``"random"`` or ``"sb3-policy"``."""
        return "random" if self.policy_path is None else "sb3-policy"

    def store_attrs(self) -> dict[str, AttrValue]:
        """
        :return: the settings recorded as attributes of the episode store (besides env id, seed, collector)
        """
        attrs: dict[str, AttrValue] = {"burn_in_min": self.burn_in[0], "burn_in_max": self.burn_in[1]}
        if self.steps_per_episode is not None:
            attrs["steps_per_episode"] = self.steps_per_episode
        if self.policy_path is not None:
            attrs.update(
                policy=str(self.policy_path),
                epsilon=self.epsilon,
                deterministic=self.deterministic,
                random_after_burn_in=self.random_after_burn_in,
            )
        if self.exclude:
            attrs["exclude"] = "\n".join(str(path) for path in self.exclude)
        return attrs


@dataclass(frozen=True)
class CollectionSummary:
    """
    What a collection wrote.

    :param path: The episode store.
    :param episodes: Episodes written.
    :param transitions: Transitions written.
    :param duplicate_starts: Episodes drawn again because their start state was excluded.
    :param short_episodes: Episodes drawn again because they ended too early.
    :param seconds: Wall time, including writing.
    """

    path: Path
    episodes: int
    transitions: int
    duplicate_starts: int
    short_episodes: int
    seconds: float


def start_state_key(state_id: np.ndarray) -> bytes:
    """
    :param state_id: a state id (any integer dtype)
    :return: the key comparing state ids by value
    """
    return np.asarray(state_id, dtype=np.int64).tobytes()


def excluded_start_states(paths: Sequence[str | Path]) -> frozenset[bytes]:
    """
    The start states of the episodes of some episode stores.

    :param paths: episode stores with ``state_ids``
    :return: their first state ids, as :func:`start_state_key` keys
    :raises CollectionError: if a store has no state ids
    """
    keys: set[bytes] = set()
    for path in paths:
        with EpisodeReader(path) as reader:
            if STATE_IDS not in reader.keys(OBSERVATIONS):
                raise CollectionError(
                    f"{path} has no state ids, so its start states cannot be excluded: collect it with "
                    "--save-state-ids"
                )
            keys.update(start_state_key(row) for row in reader.first_observations(STATE_IDS))
    return frozenset(keys)


class EpisodeGenerator:
    """
    Records episode ``i`` of a collection, the same in any process.

    :param config: The collection settings.
    :param excluded: Start-state keys (:func:`start_state_key`) that recorded episodes must not start from.
    """

    def __init__(self, config: CollectionConfig, excluded: frozenset[bytes] = frozenset()) -> None:
        self.config = config
        self.excluded = excluded
        self.env, self.steps_per_episode = _make_env(config)
        action_space = self.env.action_space
        assert isinstance(action_space, spaces.Discrete)  # checked by _make_env
        num_actions = int(action_space.n)
        self.policy: ActionPolicy = RandomPolicy(num_actions)
        self.burn_in_policy: ActionPolicy = self.policy
        if config.policy_path is not None:
            model_policy = ModelPolicy(
                _load_model(config, self.env), num_actions, config.epsilon, config.deterministic
            )
            self.burn_in_policy = model_policy
            if not config.random_after_burn_in:
                self.policy = model_policy
        self._needs_state_ids = config.save_state_ids or bool(excluded)
        self._excluded_key_size = len(next(iter(excluded))) if excluded else 0

    def close(self) -> None:
        """Close the environment."""
        self.env.close()

    def episode(self, index: int) -> tuple[Episode, int, int]:
        """
        Record episode ``index``, drawing it again while it starts from an excluded state or ends too early.

        :param index: the episode's index in the collection
        :return: the episode, the number of draws rejected as duplicates and as too short
        """
        duplicates = short = 0
        for attempt in range(self.config.max_attempts):
            sequence = np.random.SeedSequence(self.config.seed, spawn_key=(index, attempt))
            reset_seed, length_seed, burn_in_seed, record_seed = (
                int(value) for value in sequence.generate_state(4)
            )
            result = self._record(reset_seed, length_seed, burn_in_seed, record_seed)
            if isinstance(result, Episode):
                return result, duplicates, short
            if result == "duplicate":
                duplicates += 1
            else:
                short += 1
        raise CollectionError(
            f"episode {index}: no acceptable draw in {self.config.max_attempts} attempts "
            f"({duplicates} started from an excluded state, {short} ended before "
            f"{self.steps_per_episode} steps)"
        )

    def _record(
        self, reset_seed: int, length_seed: int, burn_in_seed: int, record_seed: int
    ) -> Episode | str:
        """One draw of an episode: the episode, or ``"duplicate"`` or ``"short"`` when it is rejected."""
        env, config = self.env, self.config
        observation, info = env.reset(seed=reset_seed)
        low, high = config.burn_in
        burn_in_steps = int(np.random.default_rng(length_seed).integers(low, high + 1)) if high > 0 else 0
        if burn_in_steps:
            self.burn_in_policy.reset(burn_in_seed)
            for _ in range(burn_in_steps):
                observation, _, terminated, truncated, info = env.step(self.burn_in_policy.act(observation))
                if terminated or truncated:
                    return "short"
        if self.policy is not self.burn_in_policy or not burn_in_steps:
            self.policy.reset(record_seed)
        state_ids = [self._state_id(info)] if self._needs_state_ids else []
        if self.excluded and start_state_key(state_ids[0]) in self.excluded:
            return "duplicate"
        max_steps = self.steps_per_episode or sys.maxsize
        frames, actions, rewards = [observation], list[int](), list[SupportsFloat]()
        act, step, save_state_ids = self.policy.act, env.step, config.save_state_ids
        while len(actions) < max_steps:
            action = act(observation)
            observation, reward, terminated, truncated, info = step(action)
            frames.append(observation)
            actions.append(action)
            rewards.append(reward)
            if save_state_ids:
                state_ids.append(info["state_id"])
            if terminated or truncated:
                break
        if self.steps_per_episode is not None and len(actions) < self.steps_per_episode:
            return "short"
        observations = {FRAMES: np.stack(frames)}
        if config.save_state_ids:
            observations[STATE_IDS] = np.stack(state_ids)
        transitions: dict[str, np.ndarray] = {
            ACTIONS: np.asarray(actions, dtype=np.int64),
            REWARDS: np.asarray(rewards, dtype=np.float32),
        }
        episode_info = {BURN_IN_STEPS: np.asarray(burn_in_steps, dtype=np.int64)} if high > 0 else {}
        return Episode(observations, transitions, episode_info)

    def _state_id(self, info: dict[str, Any]) -> np.ndarray:
        if "state_id" not in info:
            raise CollectionError(
                f"{self.config.env_id} reports no info['state_id'], needed to save state ids and to exclude "
                "start states"
            )
        state_id = np.asarray(info["state_id"])
        if self._excluded_key_size and len(start_state_key(state_id)) != self._excluded_key_size:
            raise CollectionError(
                f"the state ids of {self.config.env_id} (shape {state_id.shape}) do not match those of the "
                "excluded files: they come from another environment"
            )
        return state_id


def _make_env(config: CollectionConfig) -> tuple[gym.Env, int | None]:
    """The environment, with a time limit long enough for the burn-in, and the steps to record per episode."""
    if config.env_id.startswith("ALE/"):
        import ale_py  # Gymnasium >= 1.0 no longer loads the ALE ids by itself

        gym.register_envs(ale_py)
    try:
        spec = gym.spec(config.env_id)
    except gym.error.Error as error:
        raise CollectionError(f"unknown environment {config.env_id!r}: {error}") from error
    limit, steps = spec.max_episode_steps, config.steps_per_episode
    if steps is None and limit is None:
        raise CollectionError(f"{config.env_id} has no time limit: give the number of steps per episode")
    make_kwargs: dict[str, Any] = {}
    if config.burn_in[1] > 0:
        # The time limit counts the burn-in steps too: extend it so that only the recorded part is limited.
        steps = steps if steps is not None else limit
        assert steps is not None
        make_kwargs["max_episode_steps"] = config.burn_in[1] + steps
    elif steps is not None and limit is not None and steps > limit:
        raise CollectionError(
            f"{config.env_id} ends episodes after {limit} steps, fewer than the {steps} asked"
        )
    env = gym.make(config.env_id, **make_kwargs)
    if not isinstance(env.action_space, spaces.Discrete) or not isinstance(env.observation_space, spaces.Box):
        env.close()
        raise CollectionError(
            f"collection needs a Box observation and a Discrete action space; {config.env_id} has "
            f"{env.observation_space} and {env.action_space}"
        )
    return env, config.steps_per_episode if config.burn_in[1] == 0 else steps


def _load_model(config: CollectionConfig, env: gym.Env) -> Any:
    """Load the policy model and check that it fits the environment."""
    from structrl.agents.evaluation import load_model  # imported here: random collection needs no torch

    assert config.policy_path is not None
    model = load_model(config.policy_path, device="cpu")
    observation_shape = env.observation_space.shape
    assert observation_shape is not None
    model_shape = model.observation_space.shape
    # SB3 transposes channel-last images for its CNNs; either layout of the same image fits.
    fits = model_shape in (observation_shape, observation_shape[-1:] + observation_shape[:-1])
    if not fits or model.action_space != env.action_space:
        raise CollectionError(
            f"the model {config.policy_path} takes {model.observation_space} and acts in "
            f"{model.action_space}, but {config.env_id} has {env.observation_space} and {env.action_space}"
        )
    return model


def _episodes(
    config: CollectionConfig, excluded: frozenset[bytes], procs: int
) -> Iterator[tuple[Episode, int, int]]:
    """Episodes 0 .. N-1 in order, recorded here or by ``procs`` worker processes."""
    if procs == 1:
        generator = EpisodeGenerator(config, excluded)
        try:
            for index in range(config.num_episodes):
                yield generator.episode(index)
        finally:
            generator.close()
        return
    blocks = [
        range(start, min(start + _WORKER_BLOCK, config.num_episodes))
        for start in range(0, config.num_episodes, _WORKER_BLOCK)
    ]
    with multiprocessing.get_context().Pool(
        procs, initializer=_start_worker, initargs=(config, excluded)
    ) as pool:
        for results in pool.imap(_worker_episodes, blocks):
            yield from results


_worker_generator: EpisodeGenerator | None = None


def _start_worker(config: CollectionConfig, excluded: frozenset[bytes]) -> None:
    """Create the episode generator of a worker process (one torch thread: the workers share the cores)."""
    global _worker_generator
    if config.policy_path is not None:
        import torch as th

        th.set_num_threads(1)
    _worker_generator = EpisodeGenerator(config, excluded)


def _worker_episodes(indices: range) -> list[tuple[Episode, int, int]]:
    assert _worker_generator is not None
    return [_worker_generator.episode(index) for index in indices]


def collect(
    config: CollectionConfig,
    path: str | Path,
    *,
    procs: int = 1,
    overwrite: bool = False,
    compression: str = "gzip",
    progress: Callable[[int], object] | None = None,
) -> CollectionSummary:
    """
    Record the episodes of ``config`` into an episode store, atomically (an error or an interruption leaves
    no file at ``path``).

    :param config: What to collect.
    :param path: The episode store to write.
    :param procs: Worker processes recording episodes (1: record in this process). The result does not
        depend on it.
    :param overwrite: Replace an existing file at ``path``.
    :param compression: ``"gzip"`` or ``"lzf"``.
    :param progress: Called with the number of episodes written, after each episode.
    :return: what was written
    """
    config.check()
    if procs < 1:
        raise CollectionError(f"the number of processes must be positive, got {procs}")
    excluded = excluded_start_states(config.exclude)
    start = time.perf_counter()
    duplicates = short = 0
    with EpisodeWriter(
        path,
        env_id=config.env_id,
        seed=config.seed,
        collector=config.collector,
        attrs=config.store_attrs(),
        compression=compression,
        overwrite=overwrite,
    ) as writer:
        for episode, episode_duplicates, episode_short in _episodes(config, excluded, procs):
            writer.append(episode)
            duplicates += episode_duplicates
            short += episode_short
            if progress is not None:
                progress(1)
    return CollectionSummary(
        path=Path(path),
        episodes=writer.num_episodes,
        transitions=writer.num_transitions,
        duplicate_starts=duplicates,
        short_episodes=short,
        seconds=time.perf_counter() - start,
    )


def collect_if_missing(config: CollectionConfig, path: str | os.PathLike[str], procs: int = 1) -> Path:
    """
    Collect ``config`` into ``path`` unless a file is already there (e.g. a benchmark's cached dataset).

    :param config: the collection that makes the file
    :param path: where the store is (or is to be) kept
    :param procs: worker processes when collecting
    :return: the path
    """
    path = Path(path)
    if not path.exists():
        collect(config, path, procs=procs)
    return path
