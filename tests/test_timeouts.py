"""TimeoutAsTermination: step-limit cuts become terminal, so SB3 stops bootstrapping them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from rl_zoo3.utils import get_wrapper_class
from stable_baselines3.common.vec_env import DummyVecEnv

from structrl.envs import TimeoutAsTermination

ENV_ID = "MiniGrid-Empty-5x5-v0"
WRAPPERS = ["minigrid.wrappers.ImgObsWrapper", "structrl.envs.TimeoutAsTermination"]
LEFT, RIGHT, FORWARD = 0, 1, 2


def _steps(env: gym.Env, actions: list[int]) -> list[tuple[float, bool, bool]]:
    env.reset(seed=0)
    return [tuple(env.step(action)[1:4]) for action in actions]  # type: ignore[misc]


def test_a_timeout_ends_as_terminal_with_the_same_reward() -> None:
    plain = _steps(gym.make(ENV_ID, max_steps=3), [LEFT] * 3)
    wrapped = _steps(TimeoutAsTermination(gym.make(ENV_ID, max_steps=3)), [LEFT] * 3)
    assert plain[-1] == (0, False, True)
    assert wrapped[-1] == (0, True, False)
    assert [step[0] for step in plain] == [step[0] for step in wrapped]


def test_reaching_the_goal_is_unchanged() -> None:
    # Empty-5x5 starts at (1, 1) facing east; the goal is at (3, 3).
    route = [FORWARD, FORWARD, RIGHT, FORWARD, FORWARD]
    plain = _steps(gym.make(ENV_ID), route)
    wrapped = _steps(TimeoutAsTermination(gym.make(ENV_ID)), route)
    assert wrapped == plain
    reward, terminated, truncated = wrapped[-1]
    assert float(reward) > 0 and terminated and not truncated


def test_sb3_sees_no_truncation_to_bootstrap() -> None:
    flags = []
    for wrap in (False, True):
        wrapper = get_wrapper_class({"env_wrapper": WRAPPERS if wrap else WRAPPERS[:1]})
        assert wrapper is not None
        venv = DummyVecEnv([lambda wrapper=wrapper: wrapper(gym.make(ENV_ID, max_steps=2))])
        venv.seed(0)
        assert venv.reset().shape == (1, 7, 7, 3)
        venv.step(np.array([LEFT]))
        _, _, dones, infos = venv.step(np.array([LEFT]))
        assert dones[0] and "terminal_observation" in infos[0]
        flags.append(infos[0]["TimeLimit.truncated"])
    assert flags == [True, False]
