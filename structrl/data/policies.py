"""Action policies of the episode collectors: uniform random, and a trained SB3 model with epsilon-greedy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

# Random actions drawn at once by RandomPolicy (one numpy call per block instead of per step).
_ACTION_BLOCK = 256


class ActionPolicy(Protocol):
    """Chooses the actions of one episode at a time, reproducibly from the seed given to ``reset``."""

    def reset(self, seed: int) -> None:
        """
        Start an episode.

        :param seed: seed of the episode's random choices
        """
        ...

    def act(self, observation: Any) -> int:
        """
        :param observation: the current observation
        :return: the action
        """
        ...


class RandomPolicy:
    """
    Uniformly random actions of a ``Discrete(n)`` space (``start`` ignored: actions are ``0 .. n-1``).

    :param num_actions: Number of actions ``n``.
    """

    def __init__(self, num_actions: int) -> None:
        self.num_actions = num_actions
        self._rng = np.random.default_rng()
        self._block = np.empty(0, dtype=np.int64)
        self._next = 0

    def reset(self, seed: int) -> None:
        """
        Start an episode.

        :param seed: seed of the episode's actions
        """
        self._rng = np.random.default_rng(seed)
        self._next = len(self._block)

    def act(self, observation: Any) -> int:
        """
        :param observation: ignored
        :return: a uniformly random action
        """
        if self._next == len(self._block):
            self._block = self._rng.integers(self.num_actions, size=_ACTION_BLOCK)
            self._next = 0
        self._next += 1
        return int(self._block[self._next - 1])


class ModelPolicy:
    """
    The actions of a trained Stable-Baselines3 model (``model.predict``, carrying the recurrent state of
    recurrent policies through the episode), replaced with probability ``epsilon`` by a uniformly random one.
    The model is queried at every step, also when the random action is taken, so its recurrent state follows
    the observations.

    :param model: The trained model; it must take this environment's observations.
    :param num_actions: Number of actions of the ``Discrete`` action space.
    :param epsilon: Probability of a random action.
    :param deterministic: Take the model's most probable action (else sample from it; the sampling uses
        torch's global generator, which ``reset`` seeds).
    """

    def __init__(
        self, model: BaseAlgorithm, num_actions: int, epsilon: float = 0.0, deterministic: bool = False
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.model = model
        self.num_actions = num_actions
        self.epsilon = epsilon
        self.deterministic = deterministic
        self._rng = np.random.default_rng()
        self._state: tuple[np.ndarray, ...] | None = None
        self._episode_start = np.ones(1, dtype=bool)

    def reset(self, seed: int) -> None:
        """
        Start an episode: clear the recurrent state and seed the random choices.

        :param seed: seed of the episode's random choices
        """
        import torch as th

        self._rng = np.random.default_rng(seed)
        self._state = None
        self._episode_start = np.ones(1, dtype=bool)
        if not self.deterministic:
            th.manual_seed(seed)

    def act(self, observation: Any) -> int:
        """
        :param observation: the current observation
        :return: the model's action, or a random one with probability ``epsilon``
        """
        action, self._state = self.model.predict(
            observation,
            state=self._state,
            episode_start=self._episode_start,
            deterministic=self.deterministic,
        )
        self._episode_start = np.zeros(1, dtype=bool)
        if self.epsilon > 0 and self._rng.random() < self.epsilon:
            return int(self._rng.integers(self.num_actions))
        return int(action)
