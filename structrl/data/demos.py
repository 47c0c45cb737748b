"""
Demonstrations of BabyAI GoToLocal by minigrid's bot, with a quota of episodes per goal, in parallel and
resumable.

**Which episodes.** Candidate ``i`` (0, 1, 2, ...) of a collection resets the environment with the seed
``SeedSequence(seed, spawn_key=(i,))`` and lets :class:`~structrl.envs.babyai.FullyObservedBot` solve it.
Going through the candidates in order, an episode is kept when the bot succeeds in at least ``min_length``
actions (the final ``done`` included) and its goal (one of the 36 missions) still lacks episodes. So each
goal gets the first ``per_goal`` such candidates, as in the paper (which walked the seeds 1, 2, 3, ...), and
the collection is a pure function of its settings: any number of worker processes, and any interruption
followed by a resume, give byte-identical arrays. Workers skip the candidates whose goal was already full
when the candidate was handed out (they would be rejected anyway), which saves the bot's work on the
common goals while the rare ones ("go to a yellow ball": about 0.2% of the seeds once the length filter is
applied) fill up.

**The store** is an :mod:`episode store <structrl.data.episode_store>` (collector ``"babyai-bot"``) with,
per episode of ``T`` actions:

=============================== ====================== ===============================================
array                           shape, dtype           content
=============================== ====================== ===============================================
``observations/image``          (T+1, H, W, 3) uint8   north-up grid with the agent (``full_grid``)
``observations/direction``      (T+1,) int64           0 east, 1 south, 2 west, 3 north
``observations/agent_pos``      (T+1, 2) int64         agent's (row = y, column = x)
``observations/target_mask``    (T+1, H, W) bool       cells holding an object matching the mission
``transitions/actions``         (T,) int64             bot actions; the last is ``done`` (6)
``transitions/rewards``         (T,) float32           env rewards; only the last is > 0
``episodes/mission``            (5,) int64             word ids of the mission
``episodes/goal``               () int64               goal id (index in ``GOALS``)
``episodes/seed``               () int64               reset seed (replaying the actions reproduces it)
``episodes/candidate``          () int64               candidate index in the collection
=============================== ====================== ===============================================

Unlike the paper's pickles, the observation after the final ``done`` is kept (the store holds ``T + 1``
observations); the frame facing the goal is ``image[T - 1]``. Episodes are in candidate order, so each goal's
episodes are in seed-draw order. The root attributes hold the settings, the 36 missions (``goals``, one per
line) and the vocabulary (``vocabulary``, words by id).

**Resuming.** While it runs, a collection writes its finished episodes into numbered shards in
``FILE.h5.parts/`` (each written atomically, every ``checkpoint_every`` kept episodes or
``checkpoint_seconds`` seconds), recording the range of candidates each covers. Running it again with the
same settings after an interruption reads the shards, restores the per-goal counts and continues after the
last finished candidate; at the end the shards are merged into ``FILE.h5`` (atomically) and deleted.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from structrl.data.episode_store import (
    ACTIONS,
    EPISODES,
    OBSERVATIONS,
    REWARDS,
    TRANSITIONS,
    AttrValue,
    Episode,
    EpisodeReader,
    EpisodeStoreError,
    EpisodeWriter,
)
from structrl.envs.babyai import (
    GOALS,
    GOTO_LOCAL_ID,
    GOTO_LOCAL_VOCABULARY,
    FullyObservedBot,
    goal_id,
    make_goto_local_env,
    target_mask,
)

#: The ``collector`` attribute of demonstration stores.
COLLECTOR = "babyai-bot"
#: Array names of a demonstration store.
IMAGE = "image"
DIRECTION = "direction"
AGENT_POS = "agent_pos"
TARGET_MASK = "target_mask"
MISSION = "mission"
GOAL = "goal"
SEED = "seed"
CANDIDATE = "candidate"
#: Root attributes that must match for a collection to be resumed.
SETTINGS = ("env_id", "seed", "per_goal", "min_length", "room_size", "stock_success")
# Candidates handed to a worker process at a time, and blocks in flight per worker.
_WORKER_BLOCK = 32
_BLOCKS_PER_WORKER = 2
_SHARD_PATTERN = "part-*.h5"
_KINDS = (OBSERVATIONS, TRANSITIONS, EPISODES)


class DemoError(ValueError):
    """Demonstration settings that cannot work, or an interrupted collection that cannot be resumed."""


@dataclass(frozen=True)
class DemoConfig:
    """
    What to collect.

    :param per_goal: Episodes to keep for each of the 36 goals.
    :param min_length: Fewest actions of a kept episode (the final ``done`` counts); the paper used 7.
    :param seed: Seed of the collection (of every candidate's reset seed).
    :param env_id: A BabyAI GoTo level or a ``structrl/GoToLocal*`` id.
    :param room_size: Side of the room (default: the id's).
    :param stock_success: Solve with minigrid's success rule (facing a match) instead of the paper's
        (``done`` facing a match); the bot then never needs ``done``.
    :param max_candidates: Give up with a :class:`DemoError` after this many candidates (default: never).
    """

    per_goal: int
    min_length: int = 7
    seed: int = 0
    env_id: str = GOTO_LOCAL_ID
    room_size: int | None = None
    stock_success: bool = False
    max_candidates: int | None = None

    def check(self) -> None:
        """
        :raises DemoError: naming the first invalid setting
        """
        problems = (
            (self.per_goal < 1, f"the episodes per goal must be positive, got {self.per_goal}"),
            (self.min_length < 1, f"the minimum length must be positive, got {self.min_length}"),
            (
                self.max_candidates is not None and self.max_candidates < 1,
                f"the maximum number of candidates must be positive, got {self.max_candidates}",
            ),
        )
        for failed, message in problems:
            if failed:
                raise DemoError(message)

    def store_attrs(self, room_size: int) -> dict[str, AttrValue]:
        """
        :param room_size: the room size of the environment
        :return: the root attributes of the store (besides ``env_id``, ``seed`` and ``collector``)
        """
        return {
            "per_goal": self.per_goal,
            "min_length": self.min_length,
            "room_size": room_size,
            "stock_success": self.stock_success,
            "goals": "\n".join(goal.mission for goal in GOALS),
            "vocabulary": " ".join(GOTO_LOCAL_VOCABULARY),
        }


@dataclass(frozen=True)
class CandidateResult:
    """
    What became of one candidate in a worker.

    :param index: The candidate's index.
    :param goal: Its goal id.
    :param outcome: ``"kept"`` (an episode long enough), ``"full"`` (goal already full, not solved),
        ``"short"`` or ``"failed"`` (the bot did not succeed).
    :param episode: The recorded episode when kept.
    """

    index: int
    goal: int
    outcome: str
    episode: Episode | None = None


@dataclass
class DemoProgress:
    """
    The state of a collection, given to the progress callback after each processed block of candidates.

    :param counts: Episodes kept per goal, (36,).
    :param per_goal: The quota of each goal.
    :param candidates: Candidates processed (kept or not).
    :param resumed: Episodes read back from the shards of an interrupted run.
    """

    counts: np.ndarray
    per_goal: int
    candidates: int
    resumed: int = 0

    @property
    def kept(self) -> int:
        """Episodes kept so far."""
        return int(self.counts.sum())

    @property
    def total(self) -> int:
        """Episodes to keep in all."""
        return self.per_goal * len(self.counts)

    @property
    def full_goals(self) -> frozenset[int]:
        """Goals that have their quota."""
        return frozenset(np.flatnonzero(self.counts >= self.per_goal).tolist())


@dataclass(frozen=True)
class DemoSummary:
    """
    What a collection wrote.

    :param path: The demonstration store.
    :param episodes: Episodes written.
    :param transitions: Transitions written.
    :param candidates: Candidates processed, in this run and the interrupted ones it resumed.
    :param resumed: Episodes taken over from an interrupted run.
    :param short: Candidates of this run solved in fewer than ``min_length`` actions.
    :param failed: Candidates of this run the bot did not solve. These two counts depend on the number of
        processes, because a candidate whose goal is full when it is handed out is skipped unsolved.
    :param seconds: Wall time of this run, including writing and merging.
    """

    path: Path
    episodes: int
    transitions: int
    candidates: int
    resumed: int
    short: int
    failed: int
    seconds: float


def candidate_seed(seed: int, index: int) -> int:
    """
    :param seed: seed of the collection
    :param index: candidate index
    :return: the reset seed of the candidate
    """
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0])


class DemoSolver:
    """
    Solves and records candidates with the bot, the same in any process.

    :param config: The collection settings.
    """

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.env = make_goto_local_env(
            config.env_id, room_size=config.room_size, stock_success=config.stock_success
        )
        #: The minigrid level under the wrappers.
        self.level: Any = self.env.unwrapped

    @property
    def room_size(self) -> int:
        """Side of the room."""
        return int(self.level.room_size)

    def close(self) -> None:
        """Close the environment."""
        self.env.close()

    def solve(self, index: int, full_goals: frozenset[int] = frozenset()) -> CandidateResult:
        """
        Reset the environment with the candidate's seed and, unless its goal is full, record the bot.

        :param index: the candidate's index
        :param full_goals: goals that need no more episodes
        :return: what became of the candidate
        """
        seed = candidate_seed(self.config.seed, index)
        env, level = self.env, self.level
        observation, _ = env.reset(seed=seed)
        goal = goal_id(level.mission)
        if goal in full_goals:
            return CandidateResult(index, goal, "full")
        bot = FullyObservedBot(env)
        images, directions = [observation[IMAGE]], [observation[DIRECTION]]
        positions = [tuple(level.agent_pos)]
        actions: list[int] = []
        rewards: list[float] = []
        terminated = truncated = False
        while not (terminated or truncated):
            action = int(bot.replan())
            observation, reward, terminated, truncated, _ = env.step(action)
            images.append(observation[IMAGE])
            directions.append(observation[DIRECTION])
            positions.append(tuple(level.agent_pos))
            actions.append(action)
            rewards.append(float(reward))
        if not terminated or rewards[-1] <= 0:
            return CandidateResult(index, goal, "failed")
        if len(actions) < self.config.min_length:
            return CandidateResult(index, goal, "short")
        grids = np.stack(images)
        episode = Episode(
            observations={
                IMAGE: grids,
                DIRECTION: np.asarray(directions, dtype=np.int64),
                AGENT_POS: np.asarray(positions, dtype=np.int64)[:, ::-1].copy(),
                TARGET_MASK: target_mask(level, grids),
            },
            transitions={
                ACTIONS: np.asarray(actions, dtype=np.int64),
                REWARDS: np.asarray(rewards, dtype=np.float32),
            },
            info={
                MISSION: np.asarray(observation[MISSION], dtype=np.int64),
                GOAL: np.asarray(goal, dtype=np.int64),
                SEED: np.asarray(seed, dtype=np.int64),
                CANDIDATE: np.asarray(index, dtype=np.int64),
            },
        )
        return CandidateResult(index, goal, "kept", episode)

    def solve_block(self, indices: range, full_goals: frozenset[int]) -> list[CandidateResult]:
        """
        :param indices: candidate indices
        :param full_goals: goals that need no more episodes
        :return: what became of each candidate
        """
        return [self.solve(index, full_goals) for index in indices]


_worker_solver: DemoSolver | None = None


def _start_worker(config: DemoConfig) -> None:
    """Create the solver of a worker process; Ctrl-C is left to the main process, which stops the pool."""
    global _worker_solver
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_solver = DemoSolver(config)


def _worker_block(indices: range, full_goals: frozenset[int]) -> list[CandidateResult]:
    assert _worker_solver is not None
    return _worker_solver.solve_block(indices, full_goals)


def _result_blocks(
    config: DemoConfig, procs: int, start: int, full_goals: Callable[[], frozenset[int]]
) -> Generator[list[CandidateResult], None, None]:
    """The candidates from ``start`` on, in order, in blocks; ``full_goals`` is asked when handing out."""
    stop = config.max_candidates if config.max_candidates is not None else np.iinfo(np.int64).max
    if procs == 1:
        solver = DemoSolver(config)
        try:
            for index in range(start, stop):
                yield [solver.solve(index, full_goals())]
        finally:
            solver.close()
        return
    with multiprocessing.get_context().Pool(procs, initializer=_start_worker, initargs=(config,)) as pool:
        pending: deque[Any] = deque()
        index = start
        while True:
            while len(pending) < procs * _BLOCKS_PER_WORKER and index < stop:
                block = range(index, min(index + _WORKER_BLOCK, stop))
                pending.append(pool.apply_async(_worker_block, (block, full_goals())))
                index = block.stop
            if not pending:
                return
            yield pending.popleft().get()


def parts_folder(path: str | Path) -> Path:
    """
    :param path: a demonstration store being collected
    :return: the folder of its shards, ``FILE.h5.parts``
    """
    path = Path(path)
    return path.with_name(path.name + ".parts")


@dataclass(frozen=True)
class _Shard:
    path: Path
    start: int
    stop: int


def _finished_shards(folder: Path, attrs: dict[str, AttrValue]) -> list[_Shard]:
    """The shards of an interrupted collection with the same settings, in order (partial files deleted)."""
    if not folder.is_dir():
        return []
    for partial in folder.glob(".*.partial"):
        partial.unlink()
    shards: list[_Shard] = []
    for path in sorted(folder.glob(_SHARD_PATTERN)):
        with EpisodeReader(path) as reader:
            stored = reader.attrs
        changed = [
            f"{key} {stored.get(key)!r} -> {attrs[key]!r}"
            for key in SETTINGS
            if stored.get(key) != attrs[key]
        ]
        if changed:
            raise DemoError(
                f"{folder} holds an interrupted collection with other settings ({', '.join(changed)}): rerun "
                f"with its settings to resume it, or delete {folder} to start again"
            )
        shard = _Shard(path, int(stored["candidate_start"]), int(stored["candidate_stop"]))
        if shard.start != (shards[-1].stop if shards else 0):
            raise DemoError(
                f"the shards in {folder} do not cover consecutive candidates ({path.name} starts at "
                f"{shard.start}): delete {folder} to start again"
            )
        shards.append(shard)
    return shards


class _ShardWriter:
    """Collects kept episodes and writes them as the next shard, atomically, at a candidate boundary."""

    def __init__(
        self, folder: Path, attrs: dict[str, AttrValue], config: DemoConfig, shards: int, start: int
    ) -> None:
        self.folder, self.attrs, self.config = folder, attrs, config
        self.number, self.start = shards, start
        self.episodes: list[Episode] = []
        self.opened = time.monotonic()

    def append(self, episode: Episode) -> None:
        if not self.episodes:
            self.opened = time.monotonic()
        self.episodes.append(episode)

    def due(self, every: int, seconds: float) -> bool:
        return bool(self.episodes) and (
            len(self.episodes) >= every or time.monotonic() - self.opened >= seconds
        )

    def close(self, stop: int) -> None:
        """Write the collected episodes (if any) as the shard of the candidates before ``stop``."""
        if not self.episodes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with EpisodeWriter(
            self.folder / f"part-{self.number:06d}.h5",
            env_id=self.config.env_id,
            seed=self.config.seed,
            collector=COLLECTOR,
            attrs={**self.attrs, "candidate_start": self.start, "candidate_stop": stop},
            overwrite=True,
        ) as writer:
            for episode in self.episodes:
                writer.append(episode)
        self.episodes, self.number, self.start = [], self.number + 1, stop


def generate_demos(
    config: DemoConfig,
    path: str | Path,
    *,
    procs: int = 1,
    overwrite: bool = False,
    checkpoint_every: int = 2000,
    checkpoint_seconds: float = 60.0,
    progress: Callable[[DemoProgress], object] | None = None,
) -> DemoSummary:
    """
    Collect bot demonstrations into a demonstration store, resuming an interrupted collection of the same
    settings (see the module documentation).

    :param config: What to collect.
    :param path: The store to write.
    :param procs: Worker processes solving candidates (1: solve in this process). The result does not
        depend on it.
    :param overwrite: Replace an existing file at ``path``.
    :param checkpoint_every: Kept episodes per shard.
    :param checkpoint_seconds: Longest time a shard stays open; an interruption loses at most the work
        since the last shard.
    :param progress: Called after each processed block of candidates.
    :return: what was written
    :raises DemoError: on invalid settings, shards of other settings, or when ``max_candidates`` candidates
        do not fill the quotas (the finished shards stay, so raising the limit resumes)
    """
    config.check()
    if procs < 1:
        raise DemoError(f"the number of processes must be positive, got {procs}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise DemoError(f"{path} already exists: choose another path or allow overwriting it")
    started = time.perf_counter()
    probe = DemoSolver(config)
    attrs = {**config.store_attrs(probe.room_size), "env_id": config.env_id, "seed": config.seed}
    probe.close()
    folder = parts_folder(path)
    shards = _finished_shards(folder, attrs)
    counts = np.zeros(len(GOALS), dtype=np.int64)
    for shard in shards:
        with EpisodeReader(shard.path) as reader:
            counts += np.bincount(
                reader.read_rows(EPISODES, GOAL, np.arange(len(reader))), minlength=len(GOALS)
            )
    start = shards[-1].stop if shards else 0
    state = DemoProgress(counts, config.per_goal, start, resumed=int(counts.sum()))
    outcomes = {"short": 0, "failed": 0}
    store_attrs = {key: value for key, value in attrs.items() if key not in ("env_id", "seed")}
    writer = _ShardWriter(folder, store_attrs, config, len(shards), start)
    if state.kept < state.total:
        # closing: the worker pool stops as soon as the loop ends, also through an exception
        with contextlib.closing(_result_blocks(config, procs, start, lambda: state.full_goals)) as blocks:
            for block in blocks:
                for result in block:
                    state.candidates = result.index + 1
                    if result.outcome in outcomes:
                        outcomes[result.outcome] += 1
                    elif result.episode is not None and counts[result.goal] < config.per_goal:
                        counts[result.goal] += 1
                        writer.append(result.episode)
                    if state.kept == state.total:
                        break
                if writer.due(checkpoint_every, checkpoint_seconds):
                    writer.close(state.candidates)
                if progress is not None:
                    progress(state)
                if state.kept == state.total:
                    break
    writer.close(state.candidates)
    if state.kept < state.total:
        missing = ", ".join(GOALS[goal].mission for goal in np.flatnonzero(counts < config.per_goal)[:5])
        raise DemoError(
            f"{state.candidates} candidates left goals below {config.per_goal} episodes ({missing}, ...): "
            "allow more candidates (the collection resumes where it stopped) or lower the minimum length"
        )
    episodes, transitions = _merge(folder, path, config, store_attrs, overwrite)
    shutil.rmtree(folder)
    return DemoSummary(
        path=path,
        episodes=episodes,
        transitions=transitions,
        candidates=state.candidates,
        resumed=state.resumed,
        short=outcomes["short"],
        failed=outcomes["failed"],
        seconds=time.perf_counter() - started,
    )


def _merge(
    folder: Path, path: Path, config: DemoConfig, attrs: dict[str, AttrValue], overwrite: bool
) -> tuple[int, int]:
    """Copy the episodes of the shards, in order, into the final store."""
    with EpisodeWriter(
        path, env_id=config.env_id, seed=config.seed, collector=COLLECTOR, attrs=attrs, overwrite=overwrite
    ) as writer:
        for shard_path in sorted(folder.glob(_SHARD_PATTERN)):
            for episode in _shard_episodes(shard_path):
                writer.append(episode)
    return writer.num_episodes, writer.num_transitions


def _shard_episodes(path: Path) -> Iterator[Episode]:
    """
    The episodes of a shard, reading each array once (reading episode by episode through
    :class:`EpisodeReader` costs a few HDF5 reads per array and episode, which dominates large merges).
    """
    with EpisodeReader(path) as reader:  # checks the format and the array lengths
        offsets = reader.offsets
    try:
        with h5py.File(path, "r") as file:
            arrays = {kind: {name: file[kind][name][...] for name in file[kind]} for kind in _KINDS}
    except OSError as error:
        raise DemoError(f"{path} is damaged ({error}): delete {path.parent} to collect again") from error
    for index in range(len(offsets) - 1):
        first, last = int(offsets[index]), int(offsets[index + 1])
        yield Episode(
            observations={
                name: rows[first + index : last + index + 1] for name, rows in arrays[OBSERVATIONS].items()
            },
            transitions={name: rows[first:last] for name, rows in arrays[TRANSITIONS].items()},
            info={name: rows[index] for name, rows in arrays[EPISODES].items()},
        )


def episode_goals(reader: EpisodeReader) -> np.ndarray:
    """
    :param reader: a demonstration store
    :return: the goal id of every episode, (N,) int64
    :raises EpisodeStoreError: if the store has no goal ids
    """
    if GOAL not in reader.keys(EPISODES):
        raise EpisodeStoreError(
            f"{reader.path} has no per-episode goal ids: it is not a demonstration store (structrl demos)"
        )
    return reader.read_rows(EPISODES, GOAL, np.arange(len(reader)))


def episode_seeds(reader: EpisodeReader) -> np.ndarray:
    """
    :param reader: a demonstration store
    :return: the reset seed of every episode, (N,) int64
    """
    return reader.read_rows(EPISODES, SEED, np.arange(len(reader)))


def policy_observations(episode: Episode) -> dict[str, np.ndarray]:
    """
    The observations of a demonstration as the GoToLocal env gives them (for behaviour cloning).

    :param episode: an episode of a demonstration store
    :return: ``image`` (T+1, H, W, 3), ``direction`` (T+1,) and ``mission`` (T+1, 5) arrays
    """
    steps = len(episode) + 1
    return {
        IMAGE: episode.observations[IMAGE],
        DIRECTION: episode.observations[DIRECTION],
        MISSION: np.broadcast_to(episode.info[MISSION], (steps, *episode.info[MISSION].shape)).copy(),
    }


def store_env(reader: EpisodeReader) -> gym.Env:
    """
    :param reader: a demonstration store
    :return: a GoToLocal env with the store's settings (room size, success rule), for replays and evaluation
    """
    attrs = reader.attrs
    return make_goto_local_env(
        str(attrs["env_id"]), room_size=int(attrs["room_size"]), stock_success=bool(attrs["stock_success"])
    )
