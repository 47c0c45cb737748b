"""Episodes cut by a step limit, reported as terminal: the gym of early 2020, which the RIM seed ran on."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym


class TimeoutAsTermination(gym.Wrapper):
    """
    Reports an episode cut by the step limit (``truncated``) as terminated.

    Gymnasium separates the two, and Stable-Baselines3 then bootstraps a truncated episode's last reward with
    the value of its final observation. The gym of early 2020 had a single ``done``, so torch_ac, which the
    RIM seed trained with, treated a MiniGrid time-out like reaching a terminal state: a return of 0 from
    there. Wrapping the training environment reproduces that; it changes no reward, episode length or
    success.

    :param env: The environment whose time-outs become terminations.
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated or truncated, False, info
