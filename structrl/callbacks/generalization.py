"""Periodic evaluation on larger variants of the training task, logged to tensorboard."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from structrl.envs import make_minigrid_env


class GeneralizationCallback(BaseCallback):
    """
    Every ``eval_freq`` environment steps, evaluate the agent on each env of ``env_ids`` and log
    ``generalization/<env_id>/{success_rate,mean_reward,mean_ep_length}``.

    Success is an episode return above 0 (MiniGrid's rule: reward only on reaching the goal). Each
    evaluation runs exactly ``n_eval_episodes`` episodes per env, with fixed evaluation seeds so that
    successive evaluations are comparable. Results are also kept in :attr:`history`.

    :param env_ids: Env ids to evaluate on, e.g. ``["MiniGrid-Empty-8x8-v0", "MiniGrid-Empty-16x16-v0"]``.
    :param eval_freq: Evaluate every this many environment steps (summed over training envs).
    :param n_eval_episodes: Episodes per env and evaluation.
    :param deterministic: Take the most probable action instead of sampling.
    :param n_envs: Parallel evaluation envs per env id.
    :param seed: Seed of the evaluation envs.
    :param env_factory: Builds one env from an id; defaults to :func:`structrl.envs.make_minigrid_env`.
    :param verbose: Verbosity level.
    """

    def __init__(
        self,
        env_ids: Sequence[str],
        eval_freq: int = 10_000,
        n_eval_episodes: int = 20,
        deterministic: bool = False,
        n_envs: int = 4,
        seed: int = 0,
        env_factory: Callable[..., gym.Env] = make_minigrid_env,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        assert len(env_ids) > 0, "GeneralizationCallback needs at least one env id to evaluate on"
        assert eval_freq > 0 and n_eval_episodes > 0, (
            f"eval_freq and n_eval_episodes must be positive, got {eval_freq} and {n_eval_episodes}"
        )
        self.env_ids = list(env_ids)
        self.eval_freq = eval_freq
        self.n_eval_episodes = n_eval_episodes
        self.deterministic = deterministic
        self.n_envs = n_envs
        self.seed = seed
        self.env_factory = env_factory
        self.history: list[dict[str, Any]] = []
        self._eval_envs: dict[str, VecEnv] = {}
        self._next_eval = eval_freq

    def _init_callback(self) -> None:
        self._eval_envs = {
            env_id: make_vec_env(self.env_factory, n_envs=self.n_envs, env_kwargs={"env_id": env_id})
            for env_id in self.env_ids
        }

    def evaluate(self) -> dict[str, dict[str, float]]:
        """
        Evaluate now on every env and log the results.

        :return: Per env id: success rate, mean reward and mean episode length.
        """
        results: dict[str, dict[str, float]] = {}
        for env_id, env in self._eval_envs.items():
            env.seed(self.seed)
            rewards, lengths = evaluate_policy(
                self.model,
                env,
                n_eval_episodes=self.n_eval_episodes,
                deterministic=self.deterministic,
                return_episode_rewards=True,
            )
            summary = {
                "success_rate": float(np.mean(np.asarray(rewards) > 0)),
                "mean_reward": float(np.mean(rewards)),
                "mean_ep_length": float(np.mean(lengths)),
            }
            for key, value in summary.items():
                self.logger.record(f"generalization/{env_id}/{key}", value)
            results[env_id] = summary
        self.history.append({"timesteps": self.num_timesteps, "results": results})
        return results

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_eval:
            self.evaluate()
            self._next_eval = self.num_timesteps + self.eval_freq
        return True

    def _on_training_end(self) -> None:
        for env in self._eval_envs.values():
            env.close()
