"""structrl's RecurrentPPO: truncated BPTT cuts sequences every N steps and restarts from stored states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from structrl.agents import RecurrentPPO
from structrl.agents.config import ConfigError, build_config
from structrl.agents.recurrent_ppo import TruncatedRecurrentRolloutBuffer, truncation_points
from structrl.envs import make_minigrid_env
from structrl.policies import MiniGridLstmPolicy, RIMPolicy

ENV_ID = "MiniGrid-Empty-5x5-v0"
ZOO_FILE = Path(__file__).resolve().parents[1] / "zoo" / "ppo_lstm.yml"


def _model(policy: type, bptt_length: int | None, **kwargs: Any) -> RecurrentPPO:
    env = make_vec_env(make_minigrid_env, n_envs=2, seed=0, env_kwargs={"env_id": ENV_ID})
    settings: dict[str, Any] = dict(n_steps=40, batch_size=40, n_epochs=1, seed=5)
    settings.update(kwargs)
    return RecurrentPPO(policy, env, bptt_length=bptt_length, **settings)


def test_truncation_points_flag_every_bptt_length_steps_of_each_env() -> None:
    buffer_size, n_envs = 7, 2
    env_change = np.zeros((buffer_size * n_envs, 1))
    env_change[::buffer_size] = 1.0
    flags = truncation_points(env_change, buffer_size, bptt_length=3)
    assert flags.shape == env_change.shape
    expected_steps = {0, 3, 6}
    for env in range(n_envs):
        starts = {step for step in range(buffer_size) if flags[env * buffer_size + step, 0]}
        assert starts == expected_steps


@pytest.mark.parametrize("policy", [RIMPolicy, MiniGridLstmPolicy])
def test_truncated_sequences_restart_from_the_stored_memory(policy: type) -> None:
    # With a zero learning rate the policy after the update is the one that collected the rollout, so
    # re-evaluating every truncated sequence from its stored start state must give the rollout's log-probs.
    model = _model(policy, bptt_length=8, learning_rate=0.0)
    assert isinstance(model.rollout_buffer, TruncatedRecurrentRolloutBuffer)
    model.learn(total_timesteps=80)
    buffer = model.rollout_buffer
    for batch in buffer.get(batch_size=40):
        lengths = np.diff(np.append(buffer.seq_start_indices, 40))
        assert lengths.max() <= 8, f"a training sequence is {lengths.max()} steps long, above bptt_length 8"
        assert len(lengths) >= 5, "40 steps cut every 8 must give at least 5 sequences"
        with th.no_grad():
            _, log_prob, _ = model.policy.evaluate_actions(
                batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
            )
        mask = batch.mask > 0
        np.testing.assert_allclose(log_prob[mask].numpy(), batch.old_log_prob[mask].numpy(), atol=1e-5)


def test_bptt_length_of_a_whole_rollout_changes_nothing() -> None:
    parameters = []
    for bptt_length in (None, 40):
        model = _model(RIMPolicy, bptt_length)
        model.learn(total_timesteps=80)
        parameters.append(th.cat([p.detach().flatten() for p in model.policy.parameters()]))
    assert th.equal(parameters[0], parameters[1])


def test_truncation_changes_the_update() -> None:
    parameters = []
    for bptt_length in (None, 4):
        model = _model(RIMPolicy, bptt_length)
        model.learn(total_timesteps=80)
        parameters.append(th.cat([p.detach().flatten() for p in model.policy.parameters()]))
    assert not th.allclose(parameters[0], parameters[1])


def test_bptt_length_survives_save_and_load(tmp_path: Path) -> None:
    model = _model(RIMPolicy, bptt_length=8)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.bptt_length == 8
    assert isinstance(loaded.rollout_buffer, TruncatedRecurrentRolloutBuffer)
    assert loaded.rollout_buffer.bptt_length == 8


@pytest.mark.parametrize("value", [0, -3, 2.5, "long"])
def test_config_rejects_a_bad_bptt_length(value: Any) -> None:
    with pytest.raises(ConfigError, match="bptt_length must be a positive integer"):
        build_config("ppo", ENV_ID, hyperparams_file=ZOO_FILE, params={"bptt_length": value})


def test_constructor_rejects_a_bad_bptt_length() -> None:
    with pytest.raises(ValueError, match="bptt_length must be a positive number of steps or None, got 0"):
        _model(RIMPolicy, bptt_length=0)
