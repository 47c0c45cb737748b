"""
The episode store: one HDF5 format for every dataset of recorded episodes in structrl.

An episode of ``T`` steps has ``T + 1`` observations (``o_0 .. o_T``; the next observation of step ``t`` is
observation ``t + 1``, stored once), ``T`` transition values (the action and reward of each step) and
per-episode values. Each kind holds any number of named arrays, concatenated over episodes::

    /observations/<name>     (sum of T_i + 1, ...)   e.g. frames (uint8), state_ids
    /transitions/<name>      (sum of T_i, ...)       at least actions and rewards
    /episodes/<name>         (N, ...)                optional per-episode values
    /transition_offsets      (N + 1,) int64          episode i has transitions [o_i, o_{i+1})
                                                     and observations [o_i + i, o_{i+1} + i + 1)

The root attributes record the format (``format``, ``format_version``), ``env_id``, ``seed``,
``collector``, ``structrl_version`` and any extra attributes given to the writer. Every dataset is chunked,
gzip- or lzf-compressed and fletcher32-checksummed, so a damaged chunk fails on read instead of returning
wrong data. :class:`EpisodeWriter` writes to a temporary file renamed over the target when it finishes
without error; :class:`EpisodeReader` reads one episode (or one batch of transitions) at a time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from structrl import __version__

#: Value of the root ``format`` attribute of every episode store.
FORMAT_NAME = "structrl-episodes"
#: Version of the layout; readers refuse files from a newer version.
FORMAT_VERSION = 1
#: Group of the arrays with one row per observation, per transition and per episode.
OBSERVATIONS = "observations"
TRANSITIONS = "transitions"
EPISODES = "episodes"
#: Dataset of the episode boundaries.
OFFSETS = "transition_offsets"
#: Conventional array names.
FRAMES = "frames"
STATE_IDS = "state_ids"
ACTIONS = "actions"
REWARDS = "rewards"
#: Compression filters the writer accepts.
COMPRESSIONS = ("gzip", "lzf")
#: gzip level of the writer: level 1 is about as fast as lzf and smaller on rendered frames.
GZIP_LEVEL = 1
#: Target size of one HDF5 chunk, in bytes.
CHUNK_BYTES = 256 * 1024
# Chunk cache of a reader: sequential episode reads decompress every chunk once.
_READER_CACHE_BYTES = 32 * 1024 * 1024
_READER_CACHE_SLOTS = 10007
# Rows per block when a reader scans a whole dataset.
_SCAN_BLOCK_BYTES = 16 * 1024 * 1024

AttrValue = str | int | float | bool


class EpisodeStoreError(ValueError):
    """A file that is missing, damaged, incomplete or not a structrl episode store, or misuse of a store."""


@dataclass
class Episode:
    """
    One recorded episode of ``T`` steps.

    :param observations: Arrays with ``T + 1`` rows: the observation before each step and the last one
        (conventionally ``frames`` and, optionally, ``state_ids``).
    :param transitions: Arrays with ``T`` rows, at least ``actions`` and ``rewards``.
    :param info: Per-episode arrays (any shape, one value per episode).
    """

    observations: dict[str, np.ndarray]
    transitions: dict[str, np.ndarray]
    info: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.transitions[ACTIONS])

    @property
    def frames(self) -> np.ndarray:
        """The ``frames`` observations, (T + 1, ...)."""
        return self.observations[FRAMES]

    @property
    def actions(self) -> np.ndarray:
        """The actions, (T, ...)."""
        return self.transitions[ACTIONS]

    @property
    def rewards(self) -> np.ndarray:
        """The rewards, (T,)."""
        return self.transitions[REWARDS]

    @property
    def state_ids(self) -> np.ndarray | None:
        """The ``state_ids`` observations, (T + 1, ...), if the episode has them."""
        return self.observations.get(STATE_IDS)

    def check(self) -> None:
        """
        Check that the arrays are consistent: ``actions`` and ``rewards`` present, ``T`` rows per transition
        array and ``T + 1`` per observation array.

        :raises EpisodeStoreError: naming the first inconsistent array
        """
        if ACTIONS not in self.transitions or REWARDS not in self.transitions:
            raise EpisodeStoreError(f"an episode needs transitions {ACTIONS!r} and {REWARDS!r}")
        if not self.observations:
            raise EpisodeStoreError("an episode needs at least one observation array")
        steps = len(self)
        for kind, arrays, rows in (
            (OBSERVATIONS, self.observations, steps + 1),
            (TRANSITIONS, self.transitions, steps),
        ):
            for name, array in arrays.items():
                if len(array) != rows:
                    raise EpisodeStoreError(
                        f"{kind}[{name!r}] has {len(array)} rows; an episode of {steps} steps needs {rows}"
                    )


class _ChunkedColumn:
    """A growing, compressed HDF5 dataset, written one whole chunk at a time."""

    def __init__(self, group: h5py.Group, name: str, example: np.ndarray, compression: str) -> None:
        row_shape = example.shape[1:]
        row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * example.dtype.itemsize)
        rows_per_chunk = max(1, CHUNK_BYTES // row_bytes)
        self.dataset = group.create_dataset(
            name,
            shape=(0, *row_shape),
            maxshape=(None, *row_shape),
            dtype=example.dtype,
            chunks=(rows_per_chunk, *row_shape),
            compression=compression,
            compression_opts=GZIP_LEVEL if compression == "gzip" else None,
            fletcher32=True,
        )
        self._buffer = np.empty((rows_per_chunk, *row_shape), dtype=example.dtype)
        self._buffered = 0

    def check(self, rows: np.ndarray) -> None:
        """
        :param rows: rows to append
        :raises EpisodeStoreError: unless they have this column's row shape and a dtype safely castable to its
            dtype
        """
        if rows.shape[1:] != self._buffer.shape[1:] or not np.can_cast(
            rows.dtype, self._buffer.dtype, "safe"
        ):
            raise EpisodeStoreError(
                f"{self.dataset.name} holds rows of shape {self._buffer.shape[1:]} and dtype "
                f"{self._buffer.dtype}; got shape {rows.shape[1:]} and dtype {rows.dtype}"
            )

    def append(self, rows: np.ndarray) -> None:
        """
        :param rows: rows to append, accepted by :meth:`check`
        """
        start = 0
        while start < len(rows):
            count = min(len(rows) - start, len(self._buffer) - self._buffered)
            self._buffer[self._buffered : self._buffered + count] = rows[start : start + count]
            self._buffered += count
            start += count
            if self._buffered == len(self._buffer):
                self.flush()

    def flush(self) -> None:
        """Write the buffered rows."""
        if self._buffered == 0:
            return
        end = self.dataset.shape[0] + self._buffered
        self.dataset.resize(end, axis=0)
        self.dataset[end - self._buffered : end] = self._buffer[: self._buffered]
        self._buffered = 0


class EpisodeWriter:
    """
    Write episodes to an episode store, atomically: the data goes to a hidden ``.<name>.*.partial`` file in
    the target's folder, renamed to ``path`` by :meth:`close`. Leaving the ``with`` block through an exception
    (or calling :meth:`abort`) deletes the partial file, so ``path`` is either absent or complete.

    The array names, dtypes and row shapes are fixed by the first episode; later episodes must match.

    .. code-block:: python

        with EpisodeWriter("shapes.h5", env_id="ShapesTrain-v0", seed=1, collector="random") as writer:
            writer.append(episode)

    :param path: The file to write.
    :param env_id: Id of the environment the episodes come from.
    :param seed: Seed of the collection (``None`` if unseeded).
    :param collector: What produced the episodes (e.g. ``"random"``, ``"sb3-policy"``, ``"babyai-bot"``).
    :param attrs: Extra root attributes (strings, numbers or booleans).
    :param compression: ``"gzip"`` (level 1; readable by any HDF5 library) or ``"lzf"`` (h5py only).
    :param overwrite: Whether to replace an existing file at ``path``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        env_id: str,
        seed: int | None,
        collector: str,
        attrs: Mapping[str, AttrValue] | None = None,
        compression: str = "gzip",
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if compression not in COMPRESSIONS:
            raise EpisodeStoreError(
                f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}"
            )
        if self.path.exists() and not overwrite:
            raise EpisodeStoreError(
                f"{self.path} already exists: choose another path or allow overwriting it"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial_path = self.path.with_name(
            f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
        )
        self._file = h5py.File(self.partial_path, "x")
        self._compression = compression
        self._columns: dict[tuple[str, str], _ChunkedColumn] = {}
        self._offsets = [0]
        root_attrs: dict[str, AttrValue] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "structrl_version": __version__,
            "env_id": env_id,
            "collector": collector,
            **(attrs or {}),
        }
        if seed is not None:
            root_attrs["seed"] = seed
        self._file.attrs.update(root_attrs)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def num_episodes(self) -> int:
        """Episodes appended so far."""
        return len(self._offsets) - 1

    @property
    def num_transitions(self) -> int:
        """Transitions appended so far."""
        return self._offsets[-1]

    def append(self, episode: Episode) -> None:
        """
        Append an episode.

        :param episode: the episode; its array names, dtypes and row shapes must match the first episode's
        """
        if not self._file:
            raise EpisodeStoreError(f"the writer of {self.path} is closed")
        episode.check()
        arrays = {
            (kind, name): np.asarray(array)
            for kind, group in ((OBSERVATIONS, episode.observations), (TRANSITIONS, episode.transitions))
            for name, array in group.items()
        }
        arrays.update({(EPISODES, name): np.asarray(value)[None] for name, value in episode.info.items()})
        if not self._columns:
            for (kind, name), array in arrays.items():
                group = self._file.require_group(kind)
                self._columns[kind, name] = _ChunkedColumn(group, name, array, self._compression)
        if arrays.keys() != self._columns.keys():
            raise EpisodeStoreError(
                f"episode arrays {sorted('/'.join(key) for key in arrays)} differ from the first episode's "
                f"{sorted('/'.join(key) for key in self._columns)}"
            )
        for key, array in arrays.items():
            self._columns[key].check(array)
        for key, array in arrays.items():
            self._columns[key].append(array)
        self._offsets.append(self._offsets[-1] + len(episode))

    def close(self) -> Path:
        """
        Finish the file and rename it to ``path`` (if finishing fails, for example on a full disk, the partial
        file is deleted).

        :return: the path of the finished file
        """
        try:
            for column in self._columns.values():
                column.flush()
            self._file.create_dataset(
                OFFSETS,
                data=np.asarray(self._offsets, dtype=np.int64),
                chunks=True,
                compression="gzip",
                fletcher32=True,
            )
            self._file.close()
            with open(self.partial_path, "rb+") as finished:
                os.fsync(finished.fileno())
            os.replace(self.partial_path, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Discard the file being written."""
        if self._file:
            self._file.close()
        self.partial_path.unlink(missing_ok=True)


@dataclass
class TransitionBatch:
    """
    Transitions read by global index: rows ``i`` of every array belong to the same transition.

    :param observations: Observation arrays before each transition.
    :param next_observations: Observation arrays after each transition.
    :param transitions: Transition arrays (actions, rewards, ...).
    :param episode_indices: Episode of each transition.
    :param step_indices: Step of each transition within its episode.
    """

    observations: dict[str, np.ndarray]
    next_observations: dict[str, np.ndarray]
    transitions: dict[str, np.ndarray]
    episode_indices: np.ndarray
    step_indices: np.ndarray


class EpisodeReader:
    """
    Read an episode store written by :class:`EpisodeWriter`. Opening it reads only the attributes and the
    episode offsets; episodes and transitions are read on demand, so iterating streams the file.

    .. code-block:: python

        with EpisodeReader("shapes.h5") as reader:
            for episode in reader:
                ...

    :param path: The file to read.
    :raises EpisodeStoreError: if the file is missing, truncated, not HDF5, not an episode store, from a
        newer structrl, or inconsistent; reads raise it too when a chunk fails its checksum.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EpisodeStoreError(
                f"{self.path} {'is not a file' if self.path.exists() else 'does not exist'}"
            )
        try:
            self._file = h5py.File(
                self.path, "r", rdcc_nbytes=_READER_CACHE_BYTES, rdcc_nslots=_READER_CACHE_SLOTS
            )
        except OSError as error:
            raise EpisodeStoreError(
                f"{self.path} cannot be opened as HDF5 ({error}): it is truncated, damaged or not an HDF5 "
                "file. A collection that was interrupted leaves no file, so recreate it (structrl collect)"
            ) from error
        try:
            self._check_format()
            self.offsets = self._read(self._file[OFFSETS], ...)
            self._check_lengths()
        except BaseException:
            self._file.close()
            raise
        #: Row of each episode's first observation: one more observation than transitions per episode.
        self.frame_starts = self.offsets[:-1] + np.arange(len(self.offsets) - 1)

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_transitions(self) -> int:
        """Transitions in the store."""
        return int(self.offsets[-1])

    @property
    def episode_lengths(self) -> np.ndarray:
        """Steps of each episode."""
        return np.diff(self.offsets)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes: ``env_id``, ``seed`` (if seeded), ``collector``, ``structrl_version``, extras."""
        return {
            key: value.item() if isinstance(value, np.generic) else value
            for key, value in self._file.attrs.items()
        }

    def keys(self, kind: str) -> list[str]:
        """
        :param kind: ``"observations"``, ``"transitions"`` or ``"episodes"``
        :return: the names of the arrays of that kind
        """
        return list(self._file[kind].keys()) if kind in self._file else []

    def __getitem__(self, index: int) -> Episode:
        """
        :param index: episode index (negative counts from the end)
        :return: the episode
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"episode {index} out of range: {self.path} has {len(self)} episodes")
        index %= len(self)
        first, last = int(self.offsets[index]), int(self.offsets[index + 1])
        frames = slice(first + index, last + index + 1)
        return Episode(
            observations=self._read_group(OBSERVATIONS, frames),
            transitions=self._read_group(TRANSITIONS, slice(first, last)),
            info=self._read_group(EPISODES, index),
        )

    def __iter__(self) -> Iterator[Episode]:
        for index in range(len(self)):
            yield self[index]

    @property
    def transitions(self) -> TransitionsView:
        """Random access to the transitions by global index."""
        return TransitionsView(self)

    def first_observations(self, name: str) -> np.ndarray:
        """
        The first row of an observation array in every episode (e.g. the start state ids), read in blocks.

        :param name: the observation array
        :return: (num_episodes, ...) array
        """
        dataset = self._dataset(OBSERVATIONS, name)
        row_bytes = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64)))
        block = max(1, _SCAN_BLOCK_BYTES // row_bytes)
        result = np.empty((len(self), *dataset.shape[1:]), dtype=dataset.dtype)
        for start in range(0, dataset.shape[0], block):
            stop = min(start + block, dataset.shape[0])
            wanted = np.flatnonzero((self.frame_starts >= start) & (self.frame_starts < stop))
            if len(wanted):
                result[wanted] = self._read(dataset, slice(start, stop))[self.frame_starts[wanted] - start]
        return result

    def verify(self) -> None:
        """
        Read every chunk of every array, checking its checksum.

        :raises EpisodeStoreError: naming the first damaged array
        """
        for kind in (OBSERVATIONS, TRANSITIONS, EPISODES):
            for name in self.keys(kind):
                dataset = self._dataset(kind, name)
                for chunk in dataset.iter_chunks():
                    self._read(dataset, chunk)

    def read_rows(self, kind: str, name: str, rows: np.ndarray) -> np.ndarray:
        """
        Read rows of an array by index, in any order and with repeats.

        :param kind: ``"observations"``, ``"transitions"`` or ``"episodes"``
        :param name: the array
        :param rows: integer row indices
        :return: the rows, in the order of ``rows``
        """
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._read(self._dataset(kind, name), unique)[inverse]

    def _dataset(self, kind: str, name: str) -> h5py.Dataset:
        if name not in self.keys(kind):
            raise EpisodeStoreError(f"{self.path} has no {kind} array {name!r} (it has {self.keys(kind)})")
        dataset = self._file[kind][name]
        assert isinstance(dataset, h5py.Dataset)
        return dataset

    def _read_group(self, kind: str, selection: slice | int) -> dict[str, np.ndarray]:
        return {name: self._read(self._dataset(kind, name), selection) for name in self.keys(kind)}

    def _read(self, dataset: h5py.Dataset, selection: Any) -> np.ndarray:
        try:
            return np.asarray(dataset[selection])
        except OSError as error:
            raise EpisodeStoreError(
                f"{self.path}: reading {dataset.name} failed ({error}); the file is damaged. "
                "Restore it from a copy or collect it again"
            ) from error

    def _check_format(self) -> None:
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT_NAME:
            raise EpisodeStoreError(
                f"{self.path} is HDF5 but not a structrl episode store (no format={FORMAT_NAME!r} "
                f"attribute; top-level keys {sorted(self._file.keys())[:8]}). Write episode stores with "
                "structrl collect or structrl.data.EpisodeWriter"
            )
        version = int(attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise EpisodeStoreError(
                f"{self.path} uses episode-store format {version}, newer than this structrl "
                f"{__version__} reads ({FORMAT_VERSION}): upgrade structrl"
            )
        if OFFSETS not in self._file:
            raise EpisodeStoreError(f"{self.path} has no {OFFSETS} dataset: it is damaged, collect it again")

    def _check_lengths(self) -> None:
        offsets = self.offsets
        problem = None
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            problem = f"{OFFSETS} is not an increasing sequence starting at 0"
        else:
            expected = {
                OBSERVATIONS: offsets[-1] + len(offsets) - 1,
                TRANSITIONS: offsets[-1],
                EPISODES: len(offsets) - 1,
            }
            for kind, rows in expected.items():
                for name in self.keys(kind):
                    if self._dataset(kind, name).shape[0] != rows:
                        problem = (
                            f"{kind}/{name} has {self._dataset(kind, name).shape[0]} rows, expected {rows}"
                        )
        if problem is not None:
            raise EpisodeStoreError(
                f"{self.path} is inconsistent ({problem}): it is damaged, collect it again"
            )


class TransitionsView:
    """
    The transitions of an episode store as a sequence: ``view[j]`` is transition ``j`` of the concatenated
    episodes and ``view[indices]`` a :class:`TransitionBatch` of several, read on demand.

    :param reader: The store.
    """

    def __init__(self, reader: EpisodeReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return self.reader.num_transitions

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> TransitionBatch:
        """
        :param index: a transition index, a slice or an array of indices
        :return: a :class:`TransitionBatch` (with rows for an array or a slice, without for an integer)
        """
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        indices = np.asarray(index, dtype=np.int64)
        flat = np.atleast_1d(indices)
        if len(flat) and (flat.min() < -len(self) or flat.max() >= len(self)):
            raise IndexError(f"transition index out of range: {self.reader.path} has {len(self)} transitions")
        flat = flat % max(len(self), 1)
        episodes = np.searchsorted(self.reader.offsets, flat, side="right") - 1
        frames = flat + episodes
        reader = self.reader
        # One read per observation array for both ends of the transitions.
        both_ends = {
            name: np.split(reader.read_rows(OBSERVATIONS, name, np.concatenate([frames, frames + 1])), 2)
            for name in reader.keys(OBSERVATIONS)
        }
        batch = TransitionBatch(
            observations={name: rows[0] for name, rows in both_ends.items()},
            next_observations={name: rows[1] for name, rows in both_ends.items()},
            transitions={
                name: reader.read_rows(TRANSITIONS, name, flat) for name in reader.keys(TRANSITIONS)
            },
            episode_indices=episodes,
            step_indices=flat - reader.offsets[episodes],
        )
        if indices.ndim == 0:
            return _first_row(batch)
        return batch


def _first_row(batch: TransitionBatch) -> TransitionBatch:
    """A batch of one transition without its batch axis."""

    def rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: array[0] for name, array in arrays.items()}

    return TransitionBatch(
        observations=rows(batch.observations),
        next_observations=rows(batch.next_observations),
        transitions=rows(batch.transitions),
        episode_indices=batch.episode_indices[0],
        step_indices=batch.step_indices[0],
    )
