"""Recorded episodes: the HDF5 episode store and the seeded collectors that fill it."""

from structrl.data.collection import (
    CollectionConfig,
    CollectionError,
    CollectionSummary,
    EpisodeGenerator,
    collect,
    excluded_start_states,
)
from structrl.data.episode_store import (
    Episode,
    EpisodeReader,
    EpisodeStoreError,
    EpisodeWriter,
    TransitionBatch,
    TransitionsView,
)
from structrl.data.policies import ActionPolicy, ModelPolicy, RandomPolicy

__all__ = [
    "ActionPolicy",
    "CollectionConfig",
    "CollectionError",
    "CollectionSummary",
    "Episode",
    "EpisodeGenerator",
    "EpisodeReader",
    "EpisodeStoreError",
    "EpisodeWriter",
    "ModelPolicy",
    "RandomPolicy",
    "TransitionBatch",
    "TransitionsView",
    "collect",
    "excluded_start_states",
]
