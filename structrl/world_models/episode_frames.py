"""
Episodes of an episode store held in memory as uint8 frames, read in blocks of whole episodes: what the
C-SWM trainer and evaluator consume.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from structrl.data.episode_store import (
    ACTIONS,
    FRAMES,
    OBSERVATIONS,
    STATE_IDS,
    TRANSITIONS,
    EpisodeReader,
    EpisodeStoreError,
)
from structrl.world_models.cswm import CSWMConfig
from structrl.world_models.errors import WorldModelError

#: Frames read from the store at a time (about 8 MB of 3 x 50 x 50 images).
READ_BLOCK_FRAMES = 1024


@dataclass
class EpisodeFrames:
    """
    Consecutive episodes of an episode store. Episode ``i`` has ``num_steps[i]`` transitions and one more
    observation; its observations are rows ``frame_starts[i] ..`` of :attr:`frames` and its actions rows
    ``transition_starts[i] ..`` of :attr:`actions`.

    :param frames: (sum of T_i + 1, C, H, W) uint8 observations
    :param actions: (sum of T_i,) int64 actions
    :param num_steps: (N,) transitions of each episode
    :param state_ids: (sum of T_i + 1, S) state id of each observation, if the store has them
    """

    frames: np.ndarray
    actions: np.ndarray
    num_steps: np.ndarray
    state_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.transition_starts = np.concatenate([[0], np.cumsum(self.num_steps)[:-1]]).astype(np.int64)
        self.frame_starts = self.transition_starts + np.arange(len(self.num_steps))

    def __len__(self) -> int:
        return len(self.num_steps)

    @property
    def num_observations(self) -> np.ndarray:
        """(N,) observations of each episode (``T_i + 1``)."""
        return self.num_steps + 1

    def frame_rows(self, episodes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """
        :param episodes: episode indices
        :param steps: observation indices within those episodes (0 .. T_i)
        :return: the rows of those observations in :attr:`frames`
        """
        return self.frame_starts[episodes] + steps

    def transition_rows(self, episodes: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """
        :param episodes: episode indices
        :param steps: transition indices within those episodes (0 .. T_i - 1)
        :return: the rows of those transitions in :attr:`actions`
        """
        return self.transition_starts[episodes] + steps


def open_store(path: str | os.PathLike[str], *, need_state_ids: bool = False) -> EpisodeReader:
    """
    Open an episode store of image observations for a world model.

    :param path: the HDF5 episode store
    :param need_state_ids: whether the store must hold state ids (deduplicated evaluation)
    :return: the open reader
    :raises WorldModelError: if the file is missing or unreadable, has no ``frames`` or no ``state_ids`` when
        needed, naming the ``structrl collect`` command that fixes it
    """
    path = Path(path)
    if not path.exists():
        raise WorldModelError(
            f"dataset {path} does not exist: collect it first, e.g. 'structrl collect --env "
            f"ShapesImmovableTrain-v0 --episodes 1000 --seed 1 --out {path}'"
        )
    try:
        reader = EpisodeReader(path)
    except EpisodeStoreError as error:
        raise WorldModelError(f"dataset {path} cannot be used: {error}") from error
    observations = reader.keys(OBSERVATIONS)
    problem = None
    if FRAMES not in observations:
        problem = f"it has no image observations ({OBSERVATIONS}/{FRAMES}); it holds {observations}"
    elif len(reader) == 0:
        problem = "it holds no episodes"
    elif need_state_ids and STATE_IDS not in observations:
        problem = (
            "it has no state ids, needed to deduplicate: collect it again with --save-state-ids, "
            "or evaluate without --dedup"
        )
    if problem is not None:
        reader.close()
        raise WorldModelError(f"dataset {path} cannot be used: {problem}")
    return reader


def read_episodes(
    reader: EpisodeReader, start: int, stop: int, *, state_ids: bool = False, max_steps: int | None = None
) -> EpisodeFrames:
    """
    Read episodes ``start .. stop - 1`` into memory, in blocks of about :data:`READ_BLOCK_FRAMES` frames.

    :param reader: the open store
    :param start: first episode
    :param stop: one past the last episode
    :param state_ids: also read the state ids
    :param max_steps: keep only the first ``max_steps`` transitions of each episode (``None``: all)
    :return: the episodes
    """
    num_steps = reader.episode_lengths[start:stop].astype(np.int64)
    kept_steps = num_steps if max_steps is None else np.minimum(num_steps, max_steps)
    # Whole episodes are read as one contiguous range (much faster than scattered rows), then cut in memory.
    first_frame, first_transition = reader.frame_starts[start], reader.offsets[start]
    frame_rows = np.arange(first_frame, first_frame + int(num_steps.sum()) + len(num_steps))
    transition_rows = np.arange(first_transition, reader.offsets[stop])
    kept_frames = _first_rows(num_steps + 1, kept_steps + 1)
    kept_transitions = _first_rows(num_steps, kept_steps)
    try:
        frames = _read_in_blocks(reader, FRAMES, frame_rows)[kept_frames]
        episodes = EpisodeFrames(
            frames=frames,
            actions=reader.read_rows(TRANSITIONS, ACTIONS, transition_rows)[kept_transitions].astype(
                np.int64
            ),
            num_steps=kept_steps,
            state_ids=_read_in_blocks(reader, STATE_IDS, frame_rows)[kept_frames] if state_ids else None,
        )
    except EpisodeStoreError as error:
        raise WorldModelError(f"dataset {reader.path} cannot be read: {error}") from error
    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise WorldModelError(
            f"dataset {reader.path} holds {frames.dtype} frames of shape {frames.shape[1:]}; a C-SWM needs "
            "uint8 images (C, H, W), as 'structrl collect' records them"
        )
    return episodes


def iter_episode_blocks(
    reader: EpisodeReader, block_episodes: int, *, state_ids: bool = False, max_steps: int | None = None
) -> Iterator[EpisodeFrames]:
    """
    Stream a store as consecutive blocks of whole episodes. The next block is read (and decompressed) in a
    background thread while the caller works on the current one; h5py serialises its own calls.

    :param reader: the open store
    :param block_episodes: episodes per block
    :param state_ids: also read the state ids
    :param max_steps: keep only the first ``max_steps`` transitions of each episode
    :return: the blocks, in store order
    """

    def read(start: int) -> EpisodeFrames:
        stop = min(start + block_episodes, len(reader))
        return read_episodes(reader, start, stop, state_ids=state_ids, max_steps=max_steps)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, 0)
        for start in range(block_episodes, len(reader) + block_episodes, block_episodes):
            block = pending.result()
            if start < len(reader):
                pending = pool.submit(read, start)
            yield block


def _first_rows(counts: np.ndarray, kept: np.ndarray) -> slice | np.ndarray:
    """Index of the first ``kept[i]`` of the ``counts[i]`` rows of each group of consecutive rows."""
    if np.array_equal(counts, kept):
        return slice(None)
    starts = np.cumsum(counts) - counts
    return np.concatenate([start + np.arange(count) for start, count in zip(starts, kept, strict=True)])


def _read_in_blocks(reader: EpisodeReader, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows of an observation array, read :data:`READ_BLOCK_FRAMES` at a time into one array."""
    first = reader.read_rows(OBSERVATIONS, name, rows[:READ_BLOCK_FRAMES])
    result = np.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
    result[: len(first)] = first
    for block in range(READ_BLOCK_FRAMES, len(rows), READ_BLOCK_FRAMES):
        result[block : block + READ_BLOCK_FRAMES] = reader.read_rows(
            OBSERVATIONS, name, rows[block : block + READ_BLOCK_FRAMES]
        )
    return result


def check_episodes_fit(episodes: EpisodeFrames, config: CSWMConfig, dataset: str | os.PathLike[str]) -> None:
    """
    :param episodes: episodes a world model is to be trained or evaluated on
    :param config: the world model's configuration
    :param dataset: where the episodes come from (for the message)
    :raises WorldModelError: if their images or actions do not fit the model
    """
    shape = tuple(episodes.frames.shape[1:])
    if shape != config.observation_shape:
        raise WorldModelError(
            f"{dataset} holds images of shape {shape}, the model takes {config.observation_shape}: use a "
            "dataset of the environment the model was trained on"
        )
    actions = episodes.actions
    if len(actions) and (actions.min() < 0 or actions.max() >= config.num_actions):
        raise WorldModelError(
            f"{dataset} has actions from {actions.min()} to {actions.max()}, but the model takes "
            f"{config.num_actions} actions ({config.action_encoding} encoding, "
            f"action_dim={config.action_dim}, num_objects={config.num_objects}): match --num-objects and the "
            "action settings to the environment"
        )
