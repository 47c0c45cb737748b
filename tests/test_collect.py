"""Episode collection: reproducibility, policies, burn-in, excluded start states and the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO

from structrl.cli.collect import add_collect_parser, parse_burn_in
from structrl.data.collection import BURN_IN_STEPS, CollectionConfig, CollectionError, collect
from structrl.data.episode_store import EpisodeReader, EpisodeStoreError
from structrl.data.policies import ModelPolicy
from structrl.envs.block_pushing import BlockPushingEnv
from structrl.envs.registration import register_envs

register_envs()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained PPO model for ShapesEval-v0 (its argmax is a fixed function of the image)."""
    path = tmp_path_factory.mktemp("model") / "ppo.zip"
    model = PPO(
        "MlpPolicy",
        gym.make("ShapesEval-v0"),
        n_steps=8,
        batch_size=8,
        policy_kwargs={"net_arch": [8]},
        seed=0,
    )
    model.save(path)
    return path


def test_same_seed_same_arrays_any_procs(
    tmp_path: Path, hdf5_bytes: Callable[[Path], dict[str, bytes]]
) -> None:
    config = CollectionConfig("ShapesImmovableEval-v0", num_episodes=40, seed=5, save_state_ids=True)
    first = collect(config, tmp_path / "a.h5")
    collect(config, tmp_path / "b.h5")
    collect(config, tmp_path / "c.h5", procs=2)
    assert first.episodes == 40 and first.transitions == 400
    assert hdf5_bytes(tmp_path / "a.h5") == hdf5_bytes(tmp_path / "b.h5") == hdf5_bytes(tmp_path / "c.h5")
    other = CollectionConfig("ShapesImmovableEval-v0", num_episodes=40, seed=6, save_state_ids=True)
    collect(other, tmp_path / "d.h5")
    assert (
        hdf5_bytes(tmp_path / "d.h5")["observations/frames"]
        != hdf5_bytes(tmp_path / "a.h5")["observations/frames"]
    )
    with EpisodeReader(tmp_path / "a.h5") as reader:
        assert reader.attrs["env_id"] == "ShapesImmovableEval-v0" and reader.attrs["seed"] == 5
        assert reader.attrs["collector"] == "random"


def test_frames_and_state_ids_follow_the_dynamics(tmp_path: Path) -> None:
    collect(
        CollectionConfig("CubesImmovableEval-v0", num_episodes=3, seed=0, save_state_ids=True),
        tmp_path / "c.h5",
    )
    env = BlockPushingEnv(render_type="cubes", immovable=True)
    with EpisodeReader(tmp_path / "c.h5") as reader:
        for episode in reader:
            assert (
                len(episode) == 10
                and episode.frames.shape == (11, 3, 50, 50)
                and episode.frames.dtype == np.uint8
            )
            env.reset(options={"positions": episode.observations["state_ids"][0].reshape(5, 2)})
            for step, action in enumerate(episode.actions):
                observation, _, _, _, info = env.step(action)
                assert np.array_equal(observation, episode.frames[step + 1])
                assert np.array_equal(info["state_id"], episode.observations["state_ids"][step + 1])
            assert np.all(
                episode.observations["state_ids"][:, :4] == episode.observations["state_ids"][0, :4]
            )  # immovable objects 0 and 1


def test_burn_in_range_and_fixed_steps(tmp_path: Path) -> None:
    config = CollectionConfig("ShapesEval-v0", num_episodes=30, seed=1, burn_in=(3, 6), steps_per_episode=4)
    collect(config, tmp_path / "b.h5")
    with EpisodeReader(tmp_path / "b.h5") as reader:
        assert reader.episode_lengths.tolist() == [4] * 30
        burn_in = np.array([episode.info[BURN_IN_STEPS] for episode in reader])
        assert reader.attrs["burn_in_min"] == 3 and reader.attrs["burn_in_max"] == 6
    assert burn_in.min() >= 3 and burn_in.max() <= 6 and set(burn_in.tolist()) == {3, 4, 5, 6}


def test_steps_beyond_time_limit_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CollectionError, match="after 10 steps, fewer than the 11 asked"):
        collect(
            CollectionConfig("ShapesEval-v0", num_episodes=1, seed=0, steps_per_episode=11), tmp_path / "x.h5"
        )
    with pytest.raises(CollectionError, match="burn-in range"):
        collect(CollectionConfig("ShapesEval-v0", num_episodes=1, seed=0, burn_in=(5, 2)), tmp_path / "x.h5")
    with pytest.raises(CollectionError, match="unknown environment 'NoSuchEnv-v0'"):
        collect(CollectionConfig("NoSuchEnv-v0", num_episodes=1, seed=0), tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_excluded_start_states_are_redrawn(tmp_path: Path) -> None:
    train = CollectionConfig("ShapesImmovableEval-v0", num_episodes=25, seed=9, save_state_ids=True)
    collect(train, tmp_path / "train.h5")
    # Same seed: every first draw repeats a train episode, so every episode must be drawn again.
    valid = CollectionConfig(
        "ShapesImmovableEval-v0",
        num_episodes=25,
        seed=9,
        save_state_ids=True,
        exclude=(str(tmp_path / "train.h5"),),
    )
    summary = collect(valid, tmp_path / "valid.h5")
    assert summary.duplicate_starts == 25 and summary.episodes == 25
    with (
        EpisodeReader(tmp_path / "train.h5") as train_reader,
        EpisodeReader(tmp_path / "valid.h5") as valid_reader,
    ):
        train_starts = {row.tobytes() for row in train_reader.first_observations("state_ids")}
        valid_starts = {row.tobytes() for row in valid_reader.first_observations("state_ids")}
    assert len(train_starts) == 25 and train_starts.isdisjoint(valid_starts)


def test_exclusion_needs_state_ids(tmp_path: Path) -> None:
    collect(CollectionConfig("ShapesEval-v0", num_episodes=2, seed=0), tmp_path / "plain.h5")
    config = CollectionConfig("ShapesEval-v0", num_episodes=2, seed=1, exclude=(str(tmp_path / "plain.h5"),))
    with pytest.raises(CollectionError, match=f"{tmp_path / 'plain.h5'} has no state ids.*--save-state-ids"):
        collect(config, tmp_path / "new.h5")


def test_epsilon_greedy_model_policy(
    tmp_path: Path, tiny_model: Path, hdf5_bytes: Callable[[Path], dict[str, bytes]]
) -> None:
    model = PPO.load(tiny_model, device="cpu")
    greedy = CollectionConfig("ShapesEval-v0", 6, seed=2, policy_path=str(tiny_model), deterministic=True)
    collect(greedy, tmp_path / "greedy.h5")
    half = CollectionConfig(
        "ShapesEval-v0", 30, seed=2, policy_path=str(tiny_model), epsilon=0.5, deterministic=True
    )
    collect(half, tmp_path / "half.h5")
    collect(half, tmp_path / "half_again.h5")
    assert hdf5_bytes(tmp_path / "half.h5") == hdf5_bytes(tmp_path / "half_again.h5")

    def agreement(path: Path) -> float:
        with EpisodeReader(path) as reader:
            matches = [
                int(model.predict(episode.frames[step], deterministic=True)[0]) == action
                for episode in reader
                for step, action in enumerate(episode.actions)
            ]
            assert reader.attrs["collector"] == "sb3-policy" and reader.attrs["epsilon"] == pytest.approx(
                half.epsilon if "half" in path.name else 0.0
            )
        return float(np.mean(matches))

    assert agreement(tmp_path / "greedy.h5") == 1.0
    # A random action is the model's with probability 1/20: agreement 0.5 + 0.5 / 20 = 0.525 on average.
    assert 0.35 < agreement(tmp_path / "half.h5") < 0.7


def test_model_policy_carries_recurrent_state() -> None:
    env = gym.make("ShapesEval-v0")
    model = RecurrentPPO(
        "MlpLstmPolicy",
        env,
        n_steps=8,
        batch_size=8,
        policy_kwargs={"net_arch": [8], "lstm_hidden_size": 8},
        seed=0,
    )
    policy = ModelPolicy(model, num_actions=20, deterministic=True)
    observations = [env.reset(seed=0)[0]] + [env.step(action)[0] for action in range(5)]
    policy.reset(seed=0)
    actions = [policy.act(observation) for observation in observations]
    state, expected = None, []
    for step, observation in enumerate(observations):
        action, state = model.predict(
            observation, state=state, episode_start=np.array([step == 0]), deterministic=True
        )
        expected.append(int(action))
    assert actions == expected
    assert state is not None and np.abs(state[0]).sum() > 0


def test_model_must_fit_the_environment(tmp_path: Path, tiny_model: Path) -> None:
    config = CollectionConfig("PongCswm-v0", 1, seed=0, policy_path=str(tiny_model))
    with pytest.raises(CollectionError, match=r"takes Box.*but PongCswm-v0 has"):
        collect(config, tmp_path / "pong.h5")


def test_cli_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_collect_parser(parser.add_subparsers())
    out = tmp_path / "shapes.h5"
    args = parser.parse_args(
        [
            "collect",
            "--env",
            "ShapesImmovableEval-v0",
            "--episodes",
            "12",
            "--seed",
            "4",
            "--out",
            str(out),
            "--save-state-ids",
            "--no-progress",
        ]
    )
    assert args.run(args) == 0
    assert f"wrote {out}: 12 episodes, 120 transitions" in capsys.readouterr().out
    with EpisodeReader(out) as reader:
        assert len(reader) == 12 and "state_ids" in reader.keys("observations")
    with pytest.raises(EpisodeStoreError, match="already exists"):
        args.run(args)
    assert parse_burn_in("58:100") == (58, 100)
    with pytest.raises(CollectionError, match="MIN:MAX"):
        parse_burn_in("58")
    bad = parser.parse_args(
        ["collect", "--env", "ShapesEval-v0", "--episodes", "0", "--out", str(tmp_path / "x.h5")]
    )
    with pytest.raises(CollectionError, match="number of episodes must be positive"):
        bad.run(bad)
    assert issubclass(CollectionError, ValueError) and issubclass(EpisodeStoreError, ValueError)


def test_collect_if_missing_keeps_an_existing_store(tmp_path: Path) -> None:
    from structrl.data.collection import collect_if_missing

    path = tmp_path / "cached.h5"
    config = CollectionConfig("ShapesEval-v0", 3, seed=1)
    assert collect_if_missing(config, path) == path
    written = path.stat().st_mtime_ns
    collect_if_missing(CollectionConfig("ShapesEval-v0", 5, seed=2), path)
    assert path.stat().st_mtime_ns == written
    with EpisodeReader(path) as reader:
        assert len(reader) == 3
