"""torch_ac's PPO update on sb3-contrib's buffer: chunk layout, shifted epochs, memory refresh, losses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

from structrl.agents import RecurrentA2C, RecurrentPPO
from structrl.agents.evaluation import evaluate
from structrl.agents.torch_ac_update import FlatRollout, chunk_starts, torch_ac_losses
from structrl.envs import make_minigrid_env
from structrl.policies import MiniGridLstmPolicy, RIMPolicy

ENV_ID = "MiniGrid-Empty-5x5-v0"
SINGLE_MEMORY = dict(shared_lstm=True, enable_critic_lstm=False, shared_memory_value_gradient=True)


def _model(policy: type = RIMPolicy, **kwargs: Any) -> RecurrentPPO:
    env = make_vec_env(make_minigrid_env, n_envs=2, seed=0, env_kwargs={"env_id": ENV_ID})
    settings: dict[str, Any] = dict(
        n_steps=16,
        batch_size=8,
        n_epochs=4,
        bptt_length=4,
        seed=5,
        policy_kwargs=SINGLE_MEMORY,
        update_rule="torch_ac",
    )
    settings.update(kwargs)
    return RecurrentPPO(policy, env, **settings)


def _parameters(model: RecurrentPPO) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


def test_chunk_starts_follow_torch_ac_with_the_seed_settings() -> None:
    # 16 processes x 128 steps, recurrence 32, minibatches of 256 frames = 8 chunks, 4 epochs.
    rng = np.random.default_rng(0)
    plain = chunk_starts(16 * 128, 128, 32, shifted=False, rng=rng)
    shifted = chunk_starts(16 * 128, 128, 32, shifted=True, rng=rng)
    assert sorted(plain.tolist()) == list(range(0, 16 * 128, 32))
    assert len(shifted) == 16 * 3
    assert set((shifted % 32).tolist()) == {16}
    assert ((shifted % 128) + 32 <= 128).all(), "a shifted chunk runs into the next process"
    batches = [int(np.ceil(len(starts) / 8)) for starts in (plain, shifted, plain, shifted)]
    assert sum(batches) == 28


def test_update_takes_torch_ac_optimizer_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 processes x 16 steps in chunks of 4: 8 chunks, then 6 shifted ones; 2 chunks per minibatch.
    # Each minibatch writes back its chunks' memories halfway, where shifted chunks start.
    model = _model()
    steps, refreshed = [], []
    step = model.policy.optimizer.step
    store = FlatRollout.store_memory
    monkeypatch.setattr(model.policy.optimizer, "step", lambda *a, **k: steps.append(1) or step(*a, **k))
    monkeypatch.setattr(
        FlatRollout, "store_memory", lambda self, f, s: refreshed.append(f) or store(self, f, s)
    )
    model.learn(total_timesteps=32)
    assert len(steps) == 4 + 3 + 4 + 3
    assert model.logger.name_to_value["train/optimizer_steps"] == 14
    assert len(refreshed) == 14
    assert {len(frames) for frames in refreshed} == {2}
    assert {int(frame) % 2 for frames in refreshed for frame in frames} == {0}


@pytest.mark.parametrize("policy", [RIMPolicy, MiniGridLstmPolicy])
def test_chunks_replay_the_rollout_from_stored_and_refreshed_memories(policy: type) -> None:
    # With a zero learning rate the policy is the one that acted: every chunk, plain or shifted, stepped
    # from its stored memory must reproduce the rollout's values and log-probs, and the memory it writes
    # back for the next step must be the one stored there (the refresh changes nothing yet).
    model = _model(policy, learning_rate=0.0, n_steps=24)
    model.learn(total_timesteps=48)
    rollout = FlatRollout.from_buffer(model.rollout_buffer, model.device)
    assert rollout.observations.shape[0] == 48 and rollout.hidden.shape[0] == 48
    episode_starts = rollout.episode_starts.reshape(2, 24)
    assert episode_starts[:, 0].all(), "each process's first frame follows the previous rollout's end"
    stored_hidden = rollout.hidden.clone()
    rng = np.random.default_rng(1)
    for shifted in (False, True):
        frames = th.as_tensor(chunk_starts(48, 24, 4, shifted, rng))
        states = rollout.memory_at(frames)
        for offset in range(4):
            step = frames + offset
            with th.no_grad():
                values, log_prob, _, states = model.policy.evaluate_sequence(
                    rollout.observations[step], rollout.actions[step], states, rollout.episode_starts[step]
                )
            th.testing.assert_close(log_prob, rollout.old_log_prob[step], atol=1e-5, rtol=0)
            th.testing.assert_close(values.flatten(), rollout.old_values[step], atol=1e-5, rtol=0)
            if offset < 3:
                rollout.store_memory(step + 1, states)
    th.testing.assert_close(rollout.hidden, stored_hidden, atol=1e-5, rtol=0)


def test_losses_take_the_larger_value_error_and_the_clipped_surrogate() -> None:
    log_prob = th.log(th.tensor([1.5, 1.5, 1.0]))
    advantages = th.tensor([2.0, -2.0, 0.0])
    values = th.tensor([1.0, 0.5, 0.0])
    old_values = th.zeros(3)
    returns = th.tensor([0.0, 1.0, 0.0])
    policy_loss, value_loss, clip_fraction = torch_ac_losses(
        log_prob, th.zeros(3), advantages, values, old_values, returns, clip_range=0.2
    )
    # surrogates min(1.5 * 2, 1.2 * 2) = 2.4 and min(1.5 * -2, 1.2 * -2) = -3, and 0
    assert policy_loss.item() == pytest.approx(-(2.4 - 3.0) / 3)
    # unclipped 1 beats clipped 0.2^2; clipped (0.2 - 1)^2 = 0.64 beats unclipped 0.25; both 0
    assert value_loss.item() == pytest.approx((1.0 + 0.64 + 0.0) / 3)
    assert clip_fraction.item() == pytest.approx(2 / 3)


def test_update_is_seeded_and_differs_from_sb3() -> None:
    runs = []
    for update_rule in ("torch_ac", "torch_ac", "sb3"):
        model = _model(update_rule=update_rule)
        model.learn(total_timesteps=32)
        runs.append(_parameters(model))
    assert th.equal(runs[0], runs[1])
    assert not th.allclose(runs[0], runs[2])


def test_rim_learns_empty_5x5_with_the_torch_ac_update() -> None:
    """Seeds 0-2 reach mean return 0.94-0.95 (success 1.0) after 8k steps, from 0.13-0.19 untrained."""
    env = make_vec_env(make_minigrid_env, n_envs=8, seed=0, env_kwargs={"env_id": ENV_ID})
    model = RecurrentPPO(
        RIMPolicy,
        env,
        n_steps=32,
        batch_size=64,
        n_epochs=4,
        bptt_length=8,
        learning_rate=1e-3,
        seed=0,
        policy_kwargs=SINGLE_MEMORY,
        update_rule="torch_ac",
    )
    before = evaluate(model, ENV_ID, episodes=50, seed=11)
    model.learn(total_timesteps=8000)
    after = evaluate(model, ENV_ID, episodes=50, seed=11)
    assert after["mean_return"] > max(0.8, before["mean_return"] + 0.5)
    assert after["mean_length"] < before["mean_length"] / 4


def test_update_rule_survives_save_and_load(tmp_path: Path) -> None:
    model = _model()
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.update_rule == "torch_ac"
    loaded.learn(total_timesteps=32)
    assert loaded.logger.name_to_value["train/optimizer_steps"] == 14


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(update_rule="torch"), "unknown update_rule 'torch': choose from sb3, torch_ac"),
        (dict(bptt_length=None), "set bptt_length to a divisor of n_steps and batch_size"),
        (dict(bptt_length=5), r"bptt_length=5, n_steps=16, batch_size=8"),
        (dict(policy_kwargs=None), "use structrl's RIMPolicy or MiniGridLstmPolicy with policy_kwargs"),
        (dict(target_kl=0.01, clip_range_vf=0.2), "has no target_kl or clip_range_vf"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)


def test_a2c_refuses_the_ppo_update() -> None:
    env = make_vec_env(make_minigrid_env, n_envs=2, seed=0, env_kwargs={"env_id": ENV_ID})
    with pytest.raises(ValueError, match="RecurrentA2C makes A2C's update"):
        RecurrentA2C(RIMPolicy, env, update_rule="torch_ac")
