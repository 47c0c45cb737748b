"""The HDF5 episode store: round trip, atomic writes, damaged and foreign files, streaming."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import structrl
from structrl.data.episode_store import (
    Episode,
    EpisodeReader,
    EpisodeStoreError,
    EpisodeWriter,
)


def random_episode(rng: np.random.Generator, steps: int) -> Episode:
    """An episode with frames, state ids, a BabyAI-like extra per-step array and per-episode values."""
    return Episode(
        observations={
            "frames": rng.integers(0, 256, (steps + 1, 3, 50, 50), dtype=np.uint8),
            "state_ids": rng.integers(0, 5, (steps + 1, 10)),
            "direction": rng.integers(0, 4, steps + 1).astype(np.uint8),
        },
        transitions={"actions": rng.integers(0, 20, steps), "rewards": rng.random(steps).astype(np.float32)},
        info={"mission_ids": rng.integers(0, 30, 6), "seed": np.array(steps)},
    )


def write(path: Path, episodes: list[Episode], **attrs: str | int) -> None:
    with EpisodeWriter(path, env_id="ShapesTrain-v0", seed=3, collector="test", attrs=attrs) as writer:
        for episode in episodes:
            writer.append(episode)


def assert_equal_episodes(first: Episode, second: Episode) -> None:
    for kind in ("observations", "transitions", "info"):
        arrays, expected = getattr(first, kind), getattr(second, kind)
        assert arrays.keys() == expected.keys()
        for name in arrays:
            assert np.array_equal(arrays[name], expected[name]), (kind, name)
            assert arrays[name].dtype == np.asarray(expected[name]).dtype, (kind, name)


@pytest.fixture
def episodes() -> list[Episode]:
    rng = np.random.default_rng(0)
    return [random_episode(rng, steps) for steps in (5, 40, 1, 12, 70)]


def test_round_trip(tmp_path: Path, episodes: list[Episode]) -> None:
    path = tmp_path / "data" / "store.h5"
    write(path, episodes, policy="random")
    with EpisodeReader(path) as reader:
        assert len(reader) == 5 and reader.num_transitions == 128
        assert reader.episode_lengths.tolist() == [5, 40, 1, 12, 70]
        assert reader.attrs == {
            "format": "structrl-episodes",
            "format_version": 1,
            "structrl_version": structrl.__version__,
            "env_id": "ShapesTrain-v0",
            "seed": 3,
            "collector": "test",
            "policy": "random",
        }
        for read, written in zip(reader, episodes, strict=True):
            assert_equal_episodes(read, written)
        assert_equal_episodes(reader[-1], episodes[-1])
        assert reader.first_observations("state_ids").tolist() == [
            e.observations["state_ids"][0].tolist() for e in episodes
        ]
        # Frames are stored once: T + 1 per episode.
        with h5py.File(path) as raw:
            assert raw["observations/frames"].shape[0] == 128 + 5
            assert raw["observations/frames"].fletcher32 and raw["observations/frames"].compression == "gzip"


def test_transitions_view_uses_next_frame(tmp_path: Path, episodes: list[Episode]) -> None:
    write(tmp_path / "store.h5", episodes)
    with EpisodeReader(tmp_path / "store.h5") as reader:
        view = reader.transitions
        assert len(view) == 128
        # Transition 45 is step 0 of episode 2 (episodes 0 and 1 have 5 + 40 steps).
        one = view[45]
        assert int(one.episode_indices) == 2 and int(one.step_indices) == 0
        assert np.array_equal(one.observations["frames"], episodes[2].frames[0])
        assert np.array_equal(one.next_observations["frames"], episodes[2].frames[1])
        assert one.transitions["actions"] == episodes[2].actions[0]
        batch = view[np.array([127, 0, 127, 44])]
        assert batch.episode_indices.tolist() == [4, 0, 4, 1] and batch.step_indices.tolist() == [
            69,
            0,
            69,
            39,
        ]
        assert np.array_equal(batch.next_observations["frames"][0], episodes[4].frames[70])
        assert np.array_equal(batch.observations["state_ids"][3], episodes[1].observations["state_ids"][39])
        assert np.array_equal(
            batch.next_observations["state_ids"][3], episodes[1].observations["state_ids"][40]
        )
        assert view[10:13].step_indices.tolist() == [5, 6, 7]
        with pytest.raises(IndexError):
            view[128]


def test_reading_streams_by_episode(
    tmp_path: Path, episodes: list[Episode], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "store.h5", episodes)
    reads: list[tuple[str, object]] = []
    original = EpisodeReader._read

    def recording_read(self: EpisodeReader, dataset: h5py.Dataset, selection: object) -> np.ndarray:
        reads.append((dataset.name, selection))
        return original(self, dataset, selection)

    monkeypatch.setattr(EpisodeReader, "_read", recording_read)
    with EpisodeReader(tmp_path / "store.h5") as reader:
        assert reads == [("/transition_offsets", Ellipsis)]  # opening reads only the offsets
        reads.clear()
        episode = reader[3]
    frames = dict(reads)["/observations/frames"]
    # Episode 3 starts after 5 + 40 + 1 transitions, which have 3 more observations (one last per episode).
    assert frames == slice(49, 62) and len(episode.frames) == 13


def test_write_is_atomic(tmp_path: Path, episodes: list[Episode]) -> None:
    path = tmp_path / "store.h5"
    with (
        pytest.raises(RuntimeError, match="interrupted"),
        EpisodeWriter(path, env_id="X", seed=0, collector="t") as writer,
    ):
        writer.append(episodes[0])
        assert path.exists() is False and len(list(tmp_path.iterdir())) == 1  # only the partial file
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_overwrite(tmp_path: Path, episodes: list[Episode]) -> None:
    path = tmp_path / "store.h5"
    write(path, episodes[:1])
    with pytest.raises(EpisodeStoreError, match="already exists"):
        EpisodeWriter(path, env_id="X", seed=0, collector="t")
    with EpisodeWriter(path, env_id="X", seed=0, collector="t", overwrite=True) as writer:
        writer.append(episodes[1])
    with EpisodeReader(path) as reader:
        assert reader.episode_lengths.tolist() == [40]


def test_inconsistent_episodes_are_refused(tmp_path: Path, episodes: list[Episode]) -> None:
    with EpisodeWriter(tmp_path / "store.h5", env_id="X", seed=0, collector="t") as writer:
        writer.append(episodes[0])
        bad = Episode(
            {**episodes[1].observations, "frames": episodes[1].frames[:-1]}, episodes[1].transitions
        )
        with pytest.raises(
            EpisodeStoreError, match=r"\['frames'\] has 40 rows; an episode of 40 steps needs 41"
        ):
            writer.append(bad)
        other_keys = Episode({"frames": episodes[1].frames}, episodes[1].transitions, episodes[1].info)
        with pytest.raises(EpisodeStoreError, match="differ from the first episode"):
            writer.append(other_keys)
        wrong_dtype = random_episode(np.random.default_rng(1), 3)
        wrong_dtype.observations["frames"] = wrong_dtype.frames.astype(np.float32)
        with pytest.raises(EpisodeStoreError, match="dtype uint8"):
            writer.append(wrong_dtype)


def test_corrupt_chunk_is_detected(tmp_path: Path, episodes: list[Episode]) -> None:
    path = tmp_path / "store.h5"
    write(path, episodes)
    with h5py.File(path) as raw:
        chunk = raw["observations/frames"].id.get_chunk_info(1)
    with open(path, "r+b") as file:
        file.seek(chunk.byte_offset + chunk.size // 2)
        data = file.read(8)
        file.seek(chunk.byte_offset + chunk.size // 2)
        file.write(bytes(byte ^ 0xFF for byte in data))
    with EpisodeReader(path) as reader:
        reader[0]  # the first chunk is intact
        with pytest.raises(EpisodeStoreError, match=f"{path}: reading /observations/frames failed.*damaged"):
            reader[4]
        with pytest.raises(EpisodeStoreError, match=str(path)):
            reader.verify()


def test_truncated_file(tmp_path: Path, episodes: list[Episode]) -> None:
    path = tmp_path / "store.h5"
    write(path, episodes)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(EpisodeStoreError, match=f"{path} cannot be opened as HDF5.*truncated.*collect"):
        EpisodeReader(path)


def test_foreign_and_missing_files(tmp_path: Path) -> None:
    original = tmp_path / "cswm.h5"  # the original C-SWM layout: one group per episode
    with h5py.File(original, "w") as raw:
        raw.create_group("0").create_dataset("obs", data=np.zeros((2, 3, 50, 50), dtype=np.float32))
    with pytest.raises(
        EpisodeStoreError, match=f"{original} is HDF5 but not a structrl episode store.*EpisodeWriter"
    ):
        EpisodeReader(original)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(EpisodeStoreError, match="not an HDF5 file"):
        EpisodeReader(text)
    with pytest.raises(EpisodeStoreError, match="does not exist"):
        EpisodeReader(tmp_path / "missing.h5")


def test_newer_format_is_refused(tmp_path: Path, episodes: list[Episode]) -> None:
    path = tmp_path / "store.h5"
    write(path, episodes[:1])
    with h5py.File(path, "r+") as raw:
        raw.attrs["format_version"] = 99
    with pytest.raises(EpisodeStoreError, match=r"format 99.*upgrade structrl"):
        EpisodeReader(path)


def test_atomic_open_replaces_whole_files_only(tmp_path) -> None:
    from structrl.data.atomic_files import atomic_open

    target = tmp_path / "sub" / "result.json"
    with atomic_open(target) as file:
        file.write("first")
    assert target.read_text() == "first"
    assert target.stat().st_mode & 0o044, "an atomic write must keep the usual read permissions"
    with pytest.raises(RuntimeError), atomic_open(target) as file:
        file.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"], "no temporary file may remain"
