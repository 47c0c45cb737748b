"""RecurrentA2C: its update is exactly A2C's, for RIM and LSTM policies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

from structrl.agents import RecurrentA2C
from structrl.envs import make_minigrid_env
from structrl.policies import MiniGridLstmPolicy, RIMPolicy

ENV_ID = "MiniGrid-Empty-5x5-v0"


def _vec_env(n_envs: int = 2, seed: int = 0):
    return make_vec_env(make_minigrid_env, n_envs=n_envs, seed=seed, env_kwargs={"env_id": ENV_ID})


def _capture_one_update(model: RecurrentA2C) -> tuple[Any, dict[str, th.Tensor]]:
    """Run one rollout + update; return the minibatch and the gradients, leaving the parameters unchanged."""
    captured: dict[str, Any] = {}
    buffer_get = model.rollout_buffer.get

    def recording_get(batch_size: int | None = None):
        for batch in buffer_get(batch_size):
            captured.setdefault("batches", []).append(batch)
            yield batch

    def recording_step(*args: Any, **kwargs: Any) -> None:
        captured["grads"] = {
            name: p.grad.detach().clone() for name, p in model.policy.named_parameters() if p.grad is not None
        }

    model.rollout_buffer.get = recording_get  # type: ignore[method-assign]
    model.policy.optimizer.step = recording_step  # type: ignore[method-assign]
    model.learn(total_timesteps=model.n_steps * model.n_envs)
    assert len(captured["batches"]) == 1, "A2C must make exactly one gradient step per rollout"
    return captured["batches"][0], captured["grads"]


#: the seed's single memory for actor and critic, trained by both losses
SINGLE_MEMORY = dict(shared_lstm=True, enable_critic_lstm=False, shared_memory_value_gradient=True)


@pytest.mark.parametrize("policy_kwargs", [{}, SINGLE_MEMORY], ids=["separate-memories", "single-memory"])
@pytest.mark.parametrize("policy", [RIMPolicy, MiniGridLstmPolicy])
def test_gradient_equals_hand_written_a2c_loss(policy: type, policy_kwargs: dict[str, bool]) -> None:
    ent_coef, vf_coef = 0.01, 0.5
    model = RecurrentA2C(
        policy,
        _vec_env(),
        n_steps=16,
        policy_kwargs=policy_kwargs,
        ent_coef=ent_coef,
        vf_coef=vf_coef,
        max_grad_norm=1e9,  # compare raw gradients, not clipped ones
        seed=3,
    )
    batch, ppo_grads = _capture_one_update(model)

    model.policy.optimizer.zero_grad()
    mask = batch.mask > 1e-8
    values, log_prob, entropy = model.policy.evaluate_actions(
        batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
    )
    ratio = th.exp(log_prob - batch.old_log_prob)[mask]
    assert th.max(th.abs(ratio - 1)).item() < 1e-5, (
        "the only A2C step must see the collecting policy (ratio 1)"
    )
    policy_loss = -(batch.advantages * log_prob)[mask].mean()
    value_loss = ((batch.returns - values.flatten()) ** 2)[mask].mean()
    loss = policy_loss - ent_coef * entropy[mask].mean() + vf_coef * value_loss
    loss.backward()

    a2c_grads = {n: p.grad for n, p in model.policy.named_parameters() if p.grad is not None}
    assert set(a2c_grads) == set(ppo_grads)
    flat_ppo = th.cat([ppo_grads[n].flatten() for n in sorted(ppo_grads)])
    flat_a2c = th.cat([a2c_grads[n].flatten() for n in sorted(a2c_grads)])
    assert flat_a2c.norm() > 0
    relative = ((flat_ppo - flat_a2c).norm() / flat_a2c.norm()).item()
    assert relative < 1e-5, f"RecurrentA2C gradient differs from the A2C loss gradient by {relative:.2e}"


def test_a2c_settings_and_validation() -> None:
    env = _vec_env(n_envs=3)
    model = RecurrentA2C(RIMPolicy, env, n_steps=8, seed=0)
    assert model.n_epochs == 1
    assert model.batch_size == 24
    assert model.gae_lambda == 1.0
    assert model.normalize_advantage is False
    assert isinstance(model.policy.optimizer, th.optim.RMSprop)
    with pytest.raises(ValueError, match="n_epochs must be 1"):
        RecurrentA2C(RIMPolicy, env, n_epochs=4)
    with pytest.raises(ValueError, match=r"batch_size must be n_steps \* n_envs = 8 \* 3 = 24"):
        RecurrentA2C(RIMPolicy, env, n_steps=8, batch_size=64)


def test_save_load_round_trip(tmp_path) -> None:
    env = _vec_env()
    model = RecurrentA2C(RIMPolicy, env, n_steps=8, seed=1)
    model.learn(total_timesteps=32)
    model.save(tmp_path / "a2c.zip")
    loaded = RecurrentA2C.load(tmp_path / "a2c.zip")
    assert loaded.batch_size == model.batch_size
    obs = env.reset()
    state, loaded_state = None, None
    starts = np.ones(env.num_envs, dtype=bool)
    for _ in range(10):
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        loaded_action, loaded_state = loaded.predict(
            obs, state=loaded_state, episode_start=starts, deterministic=True
        )
        np.testing.assert_array_equal(action, loaded_action)
        np.testing.assert_allclose(state[0], loaded_state[0])
        obs, _, dones, _ = env.step(action)
        starts = dones
    assert isinstance(loaded, RecurrentPPO)
