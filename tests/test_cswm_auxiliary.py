"""The C-SWM auxiliary callback: a contrastive world model trained on an on-policy agent's rollouts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv

from structrl.callbacks.cswm_auxiliary import CSWMAuxiliaryCallback, rollout_episodes
from structrl.world_models.cswm import ContrastiveSWM, CSWMConfig

IMAGE = spaces.Box(0, 255, (3, 50, 50), dtype=np.uint8)
METRICS = ("loss", "positive_energy", "hinge", "hits_at_1", "mrr", "transitions")


def _shapes(env_id: str = "ShapesTrain-v0", n_envs: int = 2, **kwargs: Any) -> VecEnv:
    return make_vec_env(env_id, n_envs=n_envs, seed=0, **kwargs)


def _untrained(config: CSWMConfig, seed: int = 0) -> ContrastiveSWM:
    """The world model the callback starts from."""
    with th.random.fork_rng(devices=[]):
        th.manual_seed(seed)
        return ContrastiveSWM(config).eval()


def _fixed_transitions(count: int = 64) -> tuple[th.Tensor, ...]:
    """Transitions from ``count`` independent Shapes states, each negative the next state of another one."""
    env = gym.make("ShapesTrain-v0")
    rng = np.random.default_rng(1)
    observations, actions, next_observations = [], [], []
    for index in range(count):
        observation, _ = env.reset(seed=1000 + index)
        action = int(rng.integers(20))
        observations.append(observation)
        actions.append(action)
        next_observations.append(env.step(action)[0])
    negatives = np.roll(np.arange(count), 1)
    return tuple(
        th.as_tensor(np.array(part)) for part in (observations, actions, next_observations, negatives)
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[CSWMAuxiliaryCallback, Path]:
    """Five 64-step rollouts of PPO on Shapes with 2 envs, the world model trained on each."""
    out = tmp_path_factory.mktemp("cswm_auxiliary")
    model = PPO("CnnPolicy", _shapes(), n_steps=64, batch_size=128, n_epochs=1, seed=0)
    model.set_logger(configure(str(out), ["csv"]))
    callback = CSWMAuxiliaryCallback(
        hidden_dim=64, learning_rate=1e-3, n_epochs=4, batch_size=32, save_path=out / "cswm.pt"
    )
    model.learn(5 * 128, callback=callback)
    return callback, out


def test_world_model_learns_from_rollouts(trained: tuple[CSWMAuxiliaryCallback, Path]) -> None:
    callback, _ = trained
    assert callback.world_model is not None
    transitions = _fixed_transitions()
    with th.inference_mode():
        before = _untrained(callback.world_model.config).loss(*transitions).loss.item()
        after = callback.world_model.eval().loss(*transitions).loss.item()
    assert after < 0.5 * before


def test_metrics_are_logged_every_rollout(trained: tuple[CSWMAuxiliaryCallback, Path]) -> None:
    callback, out = trained
    with (out / "progress.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 5
    for row in rows:
        values = {name: float(row[f"cswm/{name}"]) for name in METRICS}
        assert 0.0 <= values["hits_at_1"] <= values["mrr"] <= 1.0
        assert values["loss"] == pytest.approx(values["positive_energy"] + values["hinge"])
        # 63 pairs per env, less one per episode end (episodes last 100 steps).
        assert values["transitions"] in (124, 126)
    assert float(rows[0]["cswm/transitions"]) == 126
    assert float(rows[-1]["cswm/loss"]) < float(rows[0]["cswm/loss"])
    assert callback.last_metrics == {name: float(rows[-1][f"cswm/{name}"]) for name in METRICS}


def test_saved_world_model_gives_identical_embeddings(trained: tuple[CSWMAuxiliaryCallback, Path]) -> None:
    callback, out = trained
    assert callback.world_model is not None
    loaded = ContrastiveSWM.load(out / "cswm.pt")
    assert loaded.config == callback.world_model.config
    observations = _fixed_transitions(8)[0]
    with th.inference_mode():
        assert th.equal(loaded.encode(observations), callback.world_model.eval().encode(observations))
    metadata = th.load(out / "cswm.pt", weights_only=True)["metadata"]
    assert metadata == {"num_timesteps": 640, "negatives": "batch"}


def test_policy_learns_exactly_as_without_the_callback() -> None:
    def policy_after_training(callback: CSWMAuxiliaryCallback | None) -> dict[str, th.Tensor]:
        model = PPO("CnnPolicy", _shapes(), n_steps=16, batch_size=32, n_epochs=2, seed=3)
        model.learn(64, callback=callback)
        return model.policy.state_dict()

    callback = CSWMAuxiliaryCallback(hidden_dim=32, batch_size=8, negatives="mixed", seed=5)
    with_callback, without = policy_after_training(callback), policy_after_training(None)
    assert with_callback.keys() == without.keys()
    assert all(th.equal(with_callback[name], without[name]) for name in without)
    assert callback.world_model is not None and callback.last_metrics["transitions"] == 30
    untrained = _untrained(callback.world_model.config, seed=5).state_dict()
    trained = callback.world_model.state_dict()
    assert any(not th.equal(trained[name], untrained[name]) for name in untrained)


@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 5, 3)], ids=["channels-first", "channels-last"])
def test_rollout_transitions_stop_at_episode_ends(shape: tuple[int, int, int]) -> None:
    n_steps, n_envs, first_action = 6, 2, 3
    buffer = RolloutBuffer(
        n_steps,
        spaces.Box(0, 255, shape, dtype=np.uint8),
        spaces.Discrete(40, start=first_action),
        n_envs=n_envs,
    )
    episode_starts = np.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=np.float32).T
    channel_axis = 0 if shape[0] == 3 else 2
    channel_offsets = 50 * np.arange(3).reshape([3 if axis == channel_axis else 1 for axis in range(3)])
    for step in range(n_steps):
        labels = 10 * np.arange(n_envs) + step  # env e, step t: label 10 e + t
        images = (labels[:, None, None, None] + channel_offsets).astype(np.uint8) * np.ones(shape, np.uint8)
        buffer.add(
            images,
            labels + first_action,
            np.zeros(n_envs),
            episode_starts[step],
            th.zeros(n_envs),
            th.zeros(n_envs),
        )
    episodes = rollout_episodes(buffer)

    # env 0: episodes [0, 1, 2] and [3, 4, 5]; env 1: [0 .. 4], then [5], a lone reset observation.
    expected = [0, 1, 3, 4, 10, 11, 12, 13]
    assert episodes.num_steps.tolist() == [2, 2, 4]
    assert episodes.frames.shape == (sum(episodes.num_observations), 3, 4, 5)
    assert episodes.actions.tolist() == expected
    steps = np.concatenate([np.arange(count) for count in episodes.num_steps])
    rows = episodes.frame_rows(np.repeat(np.arange(len(episodes)), episodes.num_steps), steps)
    for channel in range(3):
        offset = 50 * channel
        assert np.all(episodes.frames[rows, channel] == (np.array(expected) + offset)[:, None, None])
        assert np.all(episodes.frames[rows + 1, channel] == (np.array(expected) + 1 + offset)[:, None, None])


def test_recurrent_ppo_with_short_episodes() -> None:
    # ShapesEval episodes last 10 steps: each env's 32 steps hold pieces of 10, 10, 10 and 2 observations.
    model = RecurrentPPO(
        "CnnLstmPolicy",
        _shapes("ShapesEval-v0"),
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        policy_kwargs={"lstm_hidden_size": 16},
        seed=0,
    )
    callback = CSWMAuxiliaryCallback(hidden_dim=32, batch_size=16, negatives="episodic")
    model.learn(64, callback=callback)
    assert callback.last_metrics["transitions"] == 2 * (9 + 9 + 9 + 1)
    assert np.isfinite(callback.last_metrics["loss"])


def test_a2c_on_channel_last_images() -> None:
    channel_last = spaces.Box(0, 255, (50, 50, 3), dtype=np.uint8)

    def to_channel_last(env: gym.Env) -> gym.Env:
        return gym.wrappers.TransformObservation(env, lambda image: image.transpose(1, 2, 0), channel_last)

    model = A2C("CnnPolicy", _shapes(wrapper_class=to_channel_last), n_steps=8, seed=0)
    callback = CSWMAuxiliaryCallback(hidden_dim=32, batch_size=8)
    model.learn(16, callback=callback)
    assert callback.world_model is not None
    assert callback.world_model.config.observation_shape == (3, 50, 50)
    assert callback.last_metrics["transitions"] == 14


class _ImageEnv(gym.Env):
    """Random observations of any space; every episode lasts ``episode_steps`` steps."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, episode_steps: int = 100):
        self.observation_space, self.action_space = observation_space, action_space
        self.episode_steps = episode_steps
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._steps = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._steps += 1
        return self.observation_space.sample(), 0.0, self._steps >= self.episode_steps, False, {}


def _vec(observation_space: spaces.Space, action_space: spaces.Space, episode_steps: int = 100) -> VecEnv:
    return make_vec_env(lambda: _ImageEnv(observation_space, action_space, episode_steps), n_envs=2, seed=0)


@pytest.mark.parametrize(
    ("make_model", "callback_kwargs", "error", "message"),
    [
        (
            lambda: PPO(
                "MultiInputPolicy",
                _vec(spaces.Dict({"image": IMAGE}), spaces.Discrete(4)),
                n_steps=8,
                batch_size=16,
            ),
            {},
            ValueError,
            "Dict observation space",
        ),
        (
            lambda: PPO("CnnPolicy", _vec(IMAGE, spaces.Box(-1, 1, (2,))), n_steps=8, batch_size=16),
            {},
            ValueError,
            "Discrete action space",
        ),
        (
            lambda: PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), n_steps=8, batch_size=16),
            {},
            ValueError,
            "image observations",
        ),
        (
            lambda: PPO("CnnPolicy", _shapes(), n_steps=1, batch_size=2),
            {},
            ValueError,
            "n_steps of at least 2",
        ),
        (
            lambda: PPO(
                "CnnPolicy", _vec(IMAGE, spaces.Discrete(4), episode_steps=1), n_steps=2, batch_size=4
            ),
            {"num_objects": 2},
            ValueError,
            "use a larger n_steps",
        ),
        (
            lambda: PPO("CnnPolicy", _shapes(), n_steps=8, batch_size=16),
            {"num_objects": 3},
            ValueError,
            "divisor of 20",
        ),
        (
            lambda: PPO("CnnPolicy", _shapes(n_envs=1), n_steps=8, batch_size=8),
            {"negatives": "out-of-episode"},
            ValueError,
            "at least 2 envs",
        ),
        (lambda: DQN("CnnPolicy", _shapes(n_envs=1), buffer_size=16), {}, TypeError, "on-policy algorithm"),
    ],
    ids=[
        "dict-observations",
        "continuous-actions",
        "vector-observations",
        "one-step-rollouts",
        "one-step-episodes",
        "actions-per-object",
        "single-env-out-of-episode",
        "off-policy",
    ],
)
def test_unusable_setups_raise_errors_naming_the_fix(
    make_model: Any, callback_kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    model = make_model()
    with pytest.raises(error, match=message):
        model.learn(32, callback=CSWMAuxiliaryCallback(hidden_dim=32, **callback_kwargs))


def test_time_aligned_negatives_are_refused() -> None:
    with pytest.raises(ValueError, match="episodic, out-of-episode, mixed"):
        CSWMAuxiliaryCallback(negatives="time-aligned")
