"""Recorded episodes: the HDF5 episode store and the seeded collectors that fill it."""

from structrl.data.collection import (
    CollectionConfig,
    CollectionError,
    CollectionSummary,
    EpisodeGenerator,
    collect,
    excluded_start_states,
)
from structrl.data.demos import DemoConfig, DemoError, DemoSummary, generate_demos, policy_observations
from structrl.data.episode_store import (
    Episode,
    EpisodeReader,
    EpisodeStoreError,
    EpisodeWriter,
    TransitionBatch,
    TransitionsView,
)
from structrl.data.policies import ActionPolicy, ModelPolicy, RandomPolicy
from structrl.data.splits import (
    DemoSplit,
    GoalSplit,
    SplitError,
    find_goal_seeds,
    goal_split,
    split_demo_store,
)

__all__ = [
    "ActionPolicy",
    "CollectionConfig",
    "CollectionError",
    "CollectionSummary",
    "DemoConfig",
    "DemoError",
    "DemoSplit",
    "DemoSummary",
    "Episode",
    "EpisodeGenerator",
    "EpisodeReader",
    "EpisodeStoreError",
    "EpisodeWriter",
    "GoalSplit",
    "ModelPolicy",
    "RandomPolicy",
    "SplitError",
    "TransitionBatch",
    "TransitionsView",
    "collect",
    "excluded_start_states",
    "find_goal_seeds",
    "generate_demos",
    "goal_split",
    "policy_observations",
    "split_demo_store",
]
