"""Bot demonstrations of GoToLocal: reproducibility, quotas, replay, resume, the ID/OOD split and the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from structrl.cli.demos import add_demos_parser, add_split_arguments, evaluation_seeds_from_args, goal_fill
from structrl.data.demos import (
    AGENT_POS,
    DIRECTION,
    IMAGE,
    TARGET_MASK,
    DemoConfig,
    DemoError,
    DemoProgress,
    episode_goals,
    generate_demos,
    parts_folder,
    policy_observations,
    store_env,
)
from structrl.data.episode_store import EpisodeReader
from structrl.data.splits import (
    GOAL_SPLITS,
    SplitError,
    find_goal_seeds,
    goal_split,
    split_demo_store,
    split_episodes,
)
from structrl.envs.babyai import COLOURS, GOALS, OBJECT_TYPES, goal_id, make_goto_local_env

PER_GOAL = 2
CONFIG = DemoConfig(per_goal=PER_GOAL, min_length=7, seed=3)
DONE = 6


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two demonstrations per goal, collected in one process."""
    path = tmp_path_factory.mktemp("demos") / "demos.h5"
    generate_demos(CONFIG, path)
    return path


def test_per_goal_quotas_and_episode_contents(demos: Path) -> None:
    with EpisodeReader(demos) as reader:
        assert reader.attrs["collector"] == "babyai-bot" and reader.attrs["per_goal"] == PER_GOAL
        assert reader.attrs["goals"].split("\n") == [goal.mission for goal in GOALS]
        assert np.bincount(episode_goals(reader), minlength=36).tolist() == [PER_GOAL] * 36
        assert (reader.episode_lengths >= 7).all()
        candidates = [int(episode.info["candidate"]) for episode in reader]
        assert candidates == sorted(candidates), "episodes are stored in candidate order"
        for episode in reader:
            steps = len(episode)
            assert episode.actions[-1] == DONE
            assert (episode.rewards[:-1] == 0).all() and episode.rewards[-1] > 0
            images = episode.observations[IMAGE]
            assert images.shape == (steps + 1, 8, 8, 3)
            rows, columns = episode.observations[AGENT_POS].T
            assert (images[np.arange(steps + 1), rows, columns, 0] == 10).all()
            assert episode.observations[DIRECTION].shape == (steps + 1,)
            goal = GOALS[int(episode.info["goal"])]
            assert goal_id(" ".join(["go", "to", goal.determiner, goal.colour, goal.object_type])) == int(
                episode.info["goal"]
            )
            masks = episode.observations[TARGET_MASK]
            assert masks.sum(axis=(1, 2)).min() >= (2 if goal.determiner == "a" else 1)
            assert (masks[0].sum() == 1) == (goal.determiner == "the")
            # Just before done the agent faces a target cell.
            direction = episode.observations[DIRECTION][-2]
            dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0)][direction]
            row, column = episode.observations[AGENT_POS][-2]
            assert masks[-2, row + dy, column + dx]


def test_demos_replay_to_success_from_their_seeds(demos: Path) -> None:
    with EpisodeReader(demos) as reader:
        env = store_env(reader)
        for index in range(0, len(reader), 7):
            episode = reader[index]
            obs, _ = env.reset(seed=int(episode.info["seed"]))
            observations = policy_observations(episode)
            np.testing.assert_array_equal(observations["mission"][0], obs["mission"])
            for step, action in enumerate(episode.actions):
                np.testing.assert_array_equal(observations[IMAGE][step], obs["image"])
                assert observations[DIRECTION][step] == obs["direction"]
                obs, reward, terminated, _, _ = env.step(int(action))
                assert terminated == (step == len(episode) - 1)
            assert float(reward) == pytest.approx(float(episode.rewards[-1])) and float(reward) > 0


def test_same_settings_same_file_any_procs(
    demos: Path, tmp_path: Path, hdf5_bytes: Callable[[Path], dict[str, bytes]]
) -> None:
    summary = generate_demos(CONFIG, tmp_path / "two.h5", procs=2)
    assert summary.episodes == 36 * PER_GOAL
    assert hdf5_bytes(tmp_path / "two.h5") == hdf5_bytes(demos)
    generate_demos(DemoConfig(per_goal=1, min_length=7, seed=4), tmp_path / "other.h5")
    with EpisodeReader(tmp_path / "other.h5") as other, EpisodeReader(demos) as first:
        assert set(other.read_rows("episodes", "seed", np.arange(36))).isdisjoint(
            first.read_rows("episodes", "seed", np.arange(72))
        )


def test_resume_after_interruption_keeps_finished_episodes(
    demos: Path, tmp_path: Path, hdf5_bytes: Callable[[Path], dict[str, bytes]]
) -> None:
    path = tmp_path / "resumed.h5"

    def interrupt(progress: DemoProgress) -> None:
        if progress.kept >= 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_demos(CONFIG, path, checkpoint_every=10, progress=interrupt)
    assert not path.exists()
    shards = sorted(parts_folder(path).glob("part-*.h5"))
    assert len(shards) >= 3
    finished = sum(len(EpisodeReader(shard)) for shard in shards)
    assert 30 <= finished < 72
    with pytest.raises(DemoError, match="other settings"):
        generate_demos(DemoConfig(per_goal=3, min_length=7, seed=3), path)
    summary = generate_demos(CONFIG, path, procs=2)
    assert summary.resumed == finished and summary.episodes == 72
    assert not parts_folder(path).exists()
    assert hdf5_bytes(path) == hdf5_bytes(demos)


def test_give_up_after_max_candidates_then_resume(tmp_path: Path) -> None:
    path = tmp_path / "limited.h5"
    limited = DemoConfig(per_goal=1, min_length=7, seed=3, max_candidates=60)
    with pytest.raises(DemoError, match="60 candidates left goals below 1 episodes"):
        generate_demos(limited, path, checkpoint_every=1)
    assert list(parts_folder(path).glob("part-*.h5"))
    path.touch()
    with pytest.raises(DemoError, match="already exists"):
        generate_demos(limited, path)


def test_invalid_settings() -> None:
    with pytest.raises(DemoError, match="episodes per goal must be positive"):
        DemoConfig(per_goal=0).check()
    with pytest.raises(DemoError, match="number of processes"):
        generate_demos(CONFIG, "unused.h5", procs=0)


def test_paper_split_holds_out_12_goals_and_keeps_every_attribute() -> None:
    split = goal_split("paper")
    assert len(split.test_goals) == 12 and len(split.train_goals) == 24
    held = {(GOALS[goal].colour, GOALS[goal].object_type) for goal in split.test_goals}
    assert held == {
        ("red", "ball"),
        ("green", "box"),
        ("blue", "key"),
        ("yellow", "key"),
        ("grey", "box"),
        ("purple", "ball"),
    }
    assert {GOALS[goal].determiner for goal in split.test_goals} == {"a", "the"}
    train = [GOALS[goal] for goal in split.train_goals]
    assert {goal.colour for goal in train} == set(COLOURS)
    assert {goal.object_type for goal in train} == set(OBJECT_TYPES)
    for colour in COLOURS:
        assert len({goal.object_type for goal in train if goal.colour == colour}) == 2
    for object_type in OBJECT_TYPES:
        assert len({goal.colour for goal in train if goal.object_type == object_type}) == 4
    assert set(GOAL_SPLITS) == {"paper"}
    with pytest.raises(SplitError, match="unknown goal split"):
        goal_split("random")


def test_split_selects_paper_slices() -> None:
    rng = np.random.default_rng(0)
    goals = rng.permutation(np.repeat(np.arange(36), 100))
    seeds = np.arange(len(goals)) + 1000
    selected = split_episodes(goals, seeds, goal_split("paper"))
    assert selected.limit == 80 and len(selected.train) == 24 * 80
    assert len(selected.id_valid) == 480 and len(selected.ood_valid) == 480
    train_goals = goal_split("paper").train_goals
    np.testing.assert_array_equal(goals[selected.train[:24]], train_goals)  # balanced prefix
    for goal in train_goals:
        group = np.flatnonzero(goals == goal)
        np.testing.assert_array_equal(np.sort(selected.train[goals[selected.train] == goal]), group[:80])
        np.testing.assert_array_equal(selected.id_valid[goals[selected.id_valid] == goal], group[-20:])
    for goal in goal_split("paper").test_goals:
        np.testing.assert_array_equal(
            selected.ood_valid[goals[selected.ood_valid] == goal], np.flatnonzero(goals == goal)[:40]
        )
    assert set(goals[selected.ood_valid]) == set(goal_split("paper").test_goals)
    assert not set(selected.train) & set(selected.id_valid)
    np.testing.assert_array_equal(selected.validation_seeds("ood"), seeds[selected.ood_valid])
    limited = split_episodes(goals, seeds, goal_split("paper"), limit=10)
    assert len(limited.train) == 240 and set(limited.train) <= set(selected.train)
    with pytest.raises(SplitError, match="needs more than 20 and at least 40"):
        split_episodes(goals[goals != 0], seeds[goals != 0], goal_split("paper"))
    with pytest.raises(SplitError, match="unknown validation set"):
        selected.validation("test")


def test_split_cli_options_and_seeds(demos: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demos")
    parser.add_argument("--seed", type=int, default=0)
    add_split_arguments(parser, evaluation=True)
    args = parser.parse_args(
        ["--demos", str(demos), "--split", "ood", "--id-valid-per-goal", "1", "--ood-valid-per-goal", "2"]
    )
    seeds = evaluation_seeds_from_args(args, "BabyAI-GoToLocal-v0")
    assert seeds.tolist() == split_demo_store(demos, "paper", None, 1, 2).validation_seeds("ood").tolist()
    env = make_goto_local_env()
    held_out = set(goal_split("paper").test_goals)
    for seed in seeds:
        env.reset(seed=int(seed))
        assert goal_id(env.unwrapped.mission) in held_out  # type: ignore[attr-defined]
    larger = parser.parse_args(["--split", "id", "--episodes-per-goal", "1", "--seed", "5"])
    found = evaluation_seeds_from_args(larger, "structrl/GoToLocal-S12-v0")
    assert len(found) == 24
    np.testing.assert_array_equal(
        found, find_goal_seeds("structrl/GoToLocal-S12-v0", goal_split("paper").train_goals, 1, seed=5)
    )
    env12 = make_goto_local_env(room_size=12)
    for seed, goal in zip(found, goal_split("paper").train_goals, strict=True):
        env12.reset(seed=int(seed))
        assert goal_id(env12.unwrapped.mission) == goal  # type: ignore[attr-defined]
    training = argparse.ArgumentParser()
    add_split_arguments(training, evaluation=False)
    assert training.parse_args(["--limit", "5"]).limit == 5


def test_demos_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_demos_parser(parser.add_subparsers())
    out = tmp_path / "cli.h5"
    args = parser.parse_args(
        ["demos", "--per-goal", "1", "--min-length", "3", "--procs", "1", "--out", str(out), "--no-progress"]
    )
    assert args.run(args) == 0
    assert "36 episodes" in capsys.readouterr().out
    with EpisodeReader(out) as reader:
        assert len(reader) == 36 and reader.attrs["min_length"] == 3 and (reader.episode_lengths >= 3).all()
    progress = DemoProgress(np.array([0, 1, 2, 4] + [4] * 32), per_goal=4, candidates=10)
    assert goal_fill(progress) == " ▂▄" + "█" * 33
