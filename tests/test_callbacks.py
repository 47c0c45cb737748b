"""Generalisation, RIM activation and train-mode rollout callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from torch import nn

from structrl.callbacks import GeneralizationCallback, RIMActivationCallback, TrainModeRolloutsCallback
from structrl.envs import make_minigrid_env
from structrl.policies import MiniGridCnnPolicy, MiniGridLstmPolicy, RIMPolicy


def _vec_env(n_envs: int = 2):
    return make_vec_env(
        make_minigrid_env, n_envs=n_envs, seed=0, env_kwargs={"env_id": "MiniGrid-Empty-5x5-v0"}
    )


def test_generalization_callback_logs_each_env(tmp_path) -> None:
    model = PPO(MiniGridCnnPolicy, _vec_env(), n_steps=16, batch_size=32, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    envs = ["MiniGrid-Empty-6x6-v0", "MiniGrid-Empty-8x8-v0"]
    callback = GeneralizationCallback(envs, eval_freq=32, n_eval_episodes=3, n_envs=2)
    model.learn(64, callback=callback)
    assert [entry["timesteps"] for entry in callback.history] == [32, 64]
    for entry in callback.history:
        assert set(entry["results"]) == set(envs)
        for summary in entry["results"].values():
            assert 0.0 <= summary["success_rate"] <= 1.0
            assert summary["mean_ep_length"] > 0
    header = (tmp_path / "progress.csv").read_text().splitlines()[0]
    assert "generalization/MiniGrid-Empty-8x8-v0/success_rate" in header


def test_rim_activation_frequencies_sum_to_k(tmp_path) -> None:
    model = RecurrentPPO(
        RIMPolicy, _vec_env(n_envs=3), n_steps=8, batch_size=24, policy_kwargs=dict(n_units=5, k_active=2)
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    callback = RIMActivationCallback()
    model.learn(24, callback=callback)
    frequencies = callback.last_frequencies
    assert frequencies is not None and frequencies.shape == (5,)
    assert np.all((frequencies >= 0) & (frequencies <= 1))
    assert frequencies.sum() == pytest.approx(2.0)
    assert "rim/unit_4_active" in (tmp_path / "progress.csv").read_text().splitlines()[0]


def test_rim_activation_rejects_non_rim_policy() -> None:
    model = RecurrentPPO(MiniGridLstmPolicy, _vec_env(), n_steps=8, batch_size=16)
    with pytest.raises(AssertionError, match="RIMPolicy"):
        model.learn(16, callback=RIMActivationCallback())


class _RolloutModes(BaseCallback):
    """
    Records whether the actor's RIM ran in training mode at each forward pass over the training envs
    during rollouts (an evaluation's forward passes run on a batch of another size).
    """

    def __init__(self, n_envs: int) -> None:
        super().__init__()
        self.n_envs = n_envs
        self.collecting = False
        self.modes: list[bool] = []

    def _init_callback(self) -> None:
        self.model.policy.lstm_actor.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple[th.Tensor, ...]) -> None:
        if self.collecting and inputs[0].shape[1] == self.n_envs:
            self.modes.append(module.training)

    def _on_rollout_start(self) -> None:
        self.collecting = True

    def _on_rollout_end(self) -> None:
        self.collecting = False

    def _on_step(self) -> bool:
        return True


@pytest.mark.parametrize("train_mode_rollouts", [False, True])
def test_train_mode_rollouts_keep_dropout_on_while_acting(tmp_path, train_mode_rollouts: bool) -> None:
    model = RecurrentPPO(
        RIMPolicy,
        _vec_env(),
        n_steps=16,
        batch_size=32,
        n_epochs=1,
        seed=0,
        policy_kwargs=dict(rim_kwargs=dict(input_dropout=0.1, comm_dropout=0.1)),
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    modes = _RolloutModes(n_envs=2)
    # an evaluation during the rollout switches the policy to eval mode; the callback placed after it
    # must switch it back before the next action
    evaluation = GeneralizationCallback(["MiniGrid-Empty-6x6-v0"], eval_freq=8, n_eval_episodes=1, n_envs=1)
    callbacks = [modes, evaluation] + ([TrainModeRolloutsCallback()] if train_mode_rollouts else [])
    model.learn(64, callback=callbacks)
    # 2 rollouts of 16 steps (the critic has its own memory, which values the last observation)
    assert len(modes.modes) == 2 * 16
    assert set(modes.modes) == {train_mode_rollouts}
    model.policy.predict(model.env.reset(), deterministic=True)
    assert not model.policy.training, "predict after training must run in eval mode"
