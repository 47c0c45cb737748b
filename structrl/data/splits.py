"""
Goal splits of BabyAI GoToLocal for compositional generalisation, and the training and validation episodes
they select from a demonstration store.

The paper's split (``"paper"``) holds out 12 of the 36 instructions: "go to {a, the}" + red ball, green box,
blue key, yellow key, grey box, purple ball. Every colour is held out with exactly one type and every type
with two colours, so training still shows each colour with two types and each type with four colours.

From a demonstration store (episodes of each goal in seed-draw order, see :mod:`structrl.data.demos`), a
split selects, as the paper does:

* **training**: the first ``limit`` episodes of each in-distribution (ID) goal, at most all but the last
  ``id_valid_per_goal``, interleaved goal by goal so that any prefix is balanced;
* **ID validation**: the last ``id_valid_per_goal`` (20) episodes of each ID goal, never trained on;
* **OOD validation**: the first ``ood_valid_per_goal`` (40) episodes of each held-out goal.

The validation episodes' seeds are the fixed evaluation sets: resetting the environment with them recreates
their layouts and missions (480 ID and 480 OOD episodes with the paper's numbers). For environments other
than the store's (larger rooms), :func:`find_goal_seeds` draws fixed seeds per goal by resetting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from structrl.data.demos import episode_goals, episode_seeds
from structrl.data.episode_store import EpisodeReader
from structrl.envs.babyai import GOALS, goal_id, make_goto_local_env

#: The (colour, type) pairs of the paper's held-out instructions (both determiners of each).
PAPER_HELD_OUT = (
    ("red", "ball"),
    ("green", "box"),
    ("blue", "key"),
    ("yellow", "key"),
    ("grey", "box"),
    ("purple", "ball"),
)
#: First spawn key of the seeds of :func:`find_goal_seeds` (the demonstrations' keys have one entry).
EVALUATION_STREAM = 1
#: The two validation sets.
VALIDATION_SETS = ("id", "ood")
#: The paper's validation episodes per goal.
ID_VALID_PER_GOAL = 20
OOD_VALID_PER_GOAL = 40


class SplitError(ValueError):
    """An unknown split or validation set, or a demonstration store too small for a split."""


@dataclass(frozen=True)
class GoalSplit:
    """
    A partition of the 36 GoToLocal goals into training (ID) and held-out (OOD) goals.

    :param name: The split's name.
    :param held_out: Ids (indices in :data:`~structrl.envs.babyai.GOALS`) of the held-out goals.
    """

    name: str
    held_out: frozenset[int]

    @property
    def train_goals(self) -> tuple[int, ...]:
        """The in-distribution goal ids, ascending."""
        return tuple(goal for goal in range(len(GOALS)) if goal not in self.held_out)

    @property
    def test_goals(self) -> tuple[int, ...]:
        """The held-out goal ids, ascending."""
        return tuple(sorted(self.held_out))

    def goals(self, which: str) -> tuple[int, ...]:
        """
        :param which: ``"id"`` or ``"ood"``
        :return: the goals of that validation set
        """
        if which not in VALIDATION_SETS:
            raise SplitError(f"unknown validation set {which!r}: use one of {', '.join(VALIDATION_SETS)}")
        return self.train_goals if which == "id" else self.test_goals


def _held_out_goals(pairs: Sequence[tuple[str, str]]) -> frozenset[int]:
    return frozenset(
        index for index, goal in enumerate(GOALS) if (goal.colour, goal.object_type) in set(pairs)
    )


#: The named goal splits.
GOAL_SPLITS: dict[str, GoalSplit] = {"paper": GoalSplit("paper", _held_out_goals(PAPER_HELD_OUT))}


def goal_split(name: str) -> GoalSplit:
    """
    :param name: a split name (``"paper"``)
    :return: the split
    :raises SplitError: if there is no split of that name
    """
    if name not in GOAL_SPLITS:
        raise SplitError(f"unknown goal split {name!r}: use one of {', '.join(GOAL_SPLITS)}")
    return GOAL_SPLITS[name]


@dataclass(frozen=True)
class DemoSplit:
    """
    Episode indices of a demonstration store selected by a goal split.

    :param split: The goal split.
    :param train: Training episodes, interleaved goal by goal (item ``i`` has ID goal ``i mod 24``).
    :param id_valid: ID validation episodes, grouped by goal.
    :param ood_valid: OOD validation episodes, grouped by goal.
    :param seeds: Reset seed of every episode of the store.
    :param limit: Training episodes per ID goal.
    """

    split: GoalSplit
    train: np.ndarray
    id_valid: np.ndarray
    ood_valid: np.ndarray
    seeds: np.ndarray
    limit: int

    def validation(self, which: str) -> np.ndarray:
        """
        :param which: ``"id"`` or ``"ood"``
        :return: the episode indices of that validation set
        """
        self.split.goals(which)  # checks the name
        return self.id_valid if which == "id" else self.ood_valid

    def validation_seeds(self, which: str) -> np.ndarray:
        """
        :param which: ``"id"`` or ``"ood"``
        :return: the reset seeds of that validation set, the fixed evaluation episodes
        """
        return self.seeds[self.validation(which)]


def split_episodes(
    goals: np.ndarray,
    seeds: np.ndarray,
    split: GoalSplit,
    limit: int | None = None,
    id_valid_per_goal: int = ID_VALID_PER_GOAL,
    ood_valid_per_goal: int = OOD_VALID_PER_GOAL,
) -> DemoSplit:
    """
    Select the training and validation episodes of a demonstration store from its goal ids.

    :param goals: Goal id of every episode, in store order.
    :param seeds: Reset seed of every episode.
    :param split: The goal split.
    :param limit: Training episodes per ID goal (default and maximum: all but the ID validation ones of the
        goal with the fewest).
    :param id_valid_per_goal: ID validation episodes per ID goal (the last ones of each goal).
    :param ood_valid_per_goal: OOD validation episodes per held-out goal (the first ones of each goal).
    :return: the selected episodes
    :raises SplitError: if some goal has too few episodes or the limit is not positive
    """
    if limit is not None and limit < 1:
        raise SplitError(f"the training limit per goal must be positive, got {limit}")
    groups = {goal: np.flatnonzero(goals == goal) for goal in range(len(GOALS))}
    fewest_id = min(len(groups[goal]) for goal in split.train_goals)
    fewest_ood = min(len(groups[goal]) for goal in split.test_goals)
    if fewest_id <= id_valid_per_goal or fewest_ood < ood_valid_per_goal:
        raise SplitError(
            f"the store has as few as {fewest_id} episodes of an ID goal and {fewest_ood} of a held-out "
            f"goal; the {split.name!r} split needs more than {id_valid_per_goal} and at least "
            f"{ood_valid_per_goal}: collect more episodes per goal (structrl demos --per-goal) or lower the "
            "validation sizes"
        )
    available = fewest_id - id_valid_per_goal
    effective = available if limit is None else min(limit, available)
    train = np.stack([groups[goal][:effective] for goal in split.train_goals], axis=1).reshape(-1)
    id_valid = np.concatenate([groups[goal][-id_valid_per_goal:] for goal in split.train_goals])
    ood_valid = np.concatenate([groups[goal][:ood_valid_per_goal] for goal in split.test_goals])
    return DemoSplit(split, train, id_valid, ood_valid, np.asarray(seeds), effective)


def split_demo_store(
    path: str | Path,
    split: str = "paper",
    limit: int | None = None,
    id_valid_per_goal: int = ID_VALID_PER_GOAL,
    ood_valid_per_goal: int = OOD_VALID_PER_GOAL,
) -> DemoSplit:
    """
    :func:`split_episodes` on a demonstration store written by ``structrl demos``.

    :param path: The store.
    :param split: The goal split's name.
    :param limit: Training episodes per ID goal (default: as many as possible).
    :param id_valid_per_goal: ID validation episodes per ID goal.
    :param ood_valid_per_goal: OOD validation episodes per held-out goal.
    :return: the selected episodes
    """
    with EpisodeReader(path) as reader:
        goals, seeds = episode_goals(reader), episode_seeds(reader)
    return split_episodes(goals, seeds, goal_split(split), limit, id_valid_per_goal, ood_valid_per_goal)


def find_goal_seeds(
    env_id: str,
    goals: Sequence[int],
    per_goal: int,
    seed: int = 0,
    room_size: int | None = None,
    max_candidates: int = 1_000_000,
) -> np.ndarray:
    """
    Fixed evaluation seeds for some goals in any GoToLocal environment (e.g. a larger room), found by
    resetting with the seeds ``SeedSequence(seed, spawn_key=(EVALUATION_STREAM, i))``, i = 0, 1, ...: a
    stream apart from the demonstrations' (:func:`~structrl.data.demos.candidate_seed`), so the same ``seed``
    does not give their layouts back.

    :param env_id: A BabyAI GoTo level or ``structrl/GoToLocal*`` id.
    :param goals: The wanted goal ids (e.g. ``goal_split("paper").goals("ood")``).
    :param per_goal: Seeds per goal.
    :param seed: Seed of the stream of reset seeds.
    :param room_size: Side of the room (default: the id's).
    :param max_candidates: Resets before giving up.
    :return: the seeds, grouped by goal in the order of ``goals``, (len(goals) * per_goal,)
    :raises SplitError: if ``max_candidates`` resets do not give ``per_goal`` seeds of every goal
    """
    wanted: dict[int, list[int]] = {goal: [] for goal in goals}
    env = make_goto_local_env(env_id, room_size=room_size)
    missing = len(wanted) * per_goal
    for index in range(max_candidates):
        if missing == 0:
            break
        reset_seed = int(
            np.random.SeedSequence(seed, spawn_key=(EVALUATION_STREAM, index)).generate_state(1)[0]
        )
        env.reset(seed=reset_seed)
        goal = goal_id(env.unwrapped.mission)  # type: ignore[attr-defined]
        if goal in wanted and len(wanted[goal]) < per_goal:
            wanted[goal].append(reset_seed)
            missing -= 1
    env.close()
    if missing:
        raise SplitError(
            f"{max_candidates} resets of {env_id} gave fewer than {per_goal} seeds of some goal: "
            "ask for fewer seeds per goal or allow more resets"
        )
    return np.asarray([reset_seed for goal in goals for reset_seed in wanted[goal]], dtype=np.int64)
