"""MiniGrid extractor, mission tokeniser and the SB3 policies (RIM and baselines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from structrl.envs import MissionTokenWrapper, make_minigrid_env, mission_vocabulary
from structrl.policies import MiniGridCNN, MiniGridCnnPolicy, MiniGridLstmPolicy, RIMCore, RIMPolicy

ENV_ID = "MiniGrid-Empty-5x5-v0"


def _vec_env(n_envs: int = 2, seed: int = 0, env_id: str = ENV_ID, mission: bool = False):
    return make_vec_env(
        make_minigrid_env, n_envs=n_envs, seed=seed, env_kwargs={"env_id": env_id, "mission": mission}
    )


def test_extractor_reads_raw_codes_in_both_layouts() -> None:
    last = spaces.Box(0, 255, (7, 7, 3), np.uint8)
    first = spaces.Box(0, 255, (3, 7, 7), np.uint8)
    cnn_last, cnn_first = MiniGridCNN(last), MiniGridCNN(first)
    cnn_first.load_state_dict(cnn_last.state_dict())
    assert cnn_last.features_dim == 64
    codes = th.randint(0, 11, (5, 7, 7, 3)).float()
    out_last = cnn_last(codes)
    out_first = cnn_first(codes.permute(0, 3, 1, 2))
    assert out_last.shape == (5, 64)
    th.testing.assert_close(out_last, out_first)
    assert not th.allclose(out_last[0], out_last[1]), "different grids must give different features"


def test_extractor_rejects_non_minigrid_images() -> None:
    with pytest.raises(AssertionError, match=r"\(H, W, 3\) or \(3, H, W\)"):
        MiniGridCNN(spaces.Box(0, 1, (10,), np.float32))


def test_policies_do_not_divide_codes_by_255() -> None:
    env = _vec_env()
    for policy in (MiniGridCnnPolicy, MiniGridLstmPolicy, RIMPolicy):
        algo = PPO if policy is MiniGridCnnPolicy else RecurrentPPO
        model = algo(policy, env, n_steps=8, batch_size=16)
        assert model.policy.normalize_images is False
        assert isinstance(model.policy.features_extractor, MiniGridCNN)


def test_mission_tokens() -> None:
    env = MissionTokenWrapper(make_minigrid_env("BabyAI-GoToLocal-v0", mission=False).unwrapped, max_length=8)
    vocab = mission_vocabulary()
    tokens = env.tokenize("Go to the red ball, zebra")
    assert tokens.tolist() == [vocab["go"], vocab["to"], vocab["the"], vocab["red"], vocab["ball"], 1, 0, 0]
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["mission"][0] == vocab["go"]


def test_extractor_with_mission_concatenates_gru_state() -> None:
    env = _vec_env(env_id="BabyAI-GoToLocal-v0", mission=True)
    model = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=16)
    extractor = model.policy.features_extractor
    assert extractor.features_dim == 64 + 128
    model.learn(16)


def test_rim_policy_uses_rim_cores_and_packed_states() -> None:
    env = _vec_env(n_envs=3)
    model = RecurrentPPO(
        RIMPolicy, env, n_steps=8, batch_size=24, policy_kwargs=dict(n_units=6, unit_size=8, k_active=2)
    )
    policy = model.policy
    assert isinstance(policy.lstm_actor, RIMCore) and isinstance(policy.lstm_critic, RIMCore)
    assert not any(isinstance(m, th.nn.LSTM) for m in policy.modules()), (
        "the throw-away nn.LSTMs must be gone"
    )
    core_params = {id(p) for p in policy.lstm_actor.parameters()}
    optimised = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert core_params <= optimised, "the optimizer must cover the RIM parameters"
    model.learn(48)
    assert model._last_lstm_states.pi[0].shape == (1, 3, 48)
    assert model.rollout_buffer.hidden_states_pi.shape == (8 * 3, 1, 48)  # flattened by train()


def test_rim_sequence_with_resets_matches_stepwise_loop() -> None:
    policy = RIMPolicy(spaces.Box(0, 255, (3, 7, 7), np.uint8), spaces.Discrete(7), lambda _: 1e-3)
    policy.eval()
    core = policy.lstm_actor
    n_seq, steps = 3, 6
    features = th.randn(n_seq * steps, core.input_size)
    starts = th.zeros(n_seq, steps)
    starts[0, 2] = starts[2, 4] = 1.0
    states = (th.randn(1, n_seq, core.hidden_size), th.randn(1, n_seq, core.hidden_size))
    fast, fast_states = RIMPolicy._process_sequence(features, states, starts.flatten(), core)
    slow, slow_states = RecurrentActorCriticPolicy._process_sequence(features, states, starts.flatten(), core)  # type: ignore[arg-type]
    th.testing.assert_close(fast, slow)
    th.testing.assert_close(fast_states[0], slow_states[0])
    th.testing.assert_close(fast_states[1], slow_states[1])


@pytest.mark.parametrize("rim_cell", ["LSTM", "GRU"])
def test_model_save_load_gives_identical_actions_and_states(tmp_path, rim_cell: str) -> None:
    env = _vec_env()
    model = RecurrentPPO(
        RIMPolicy, env, n_steps=8, batch_size=16, seed=0, policy_kwargs=dict(rim_cell=rim_cell)
    )
    model.learn(32)
    model.save(tmp_path / "rim.zip")
    loaded = RecurrentPPO.load(tmp_path / "rim.zip")
    obs = env.reset()
    starts = np.ones(env.num_envs, dtype=bool)
    state = loaded_state = None
    for _ in range(20):
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        loaded_action, loaded_state = loaded.predict(
            obs, state=loaded_state, episode_start=starts, deterministic=True
        )
        np.testing.assert_array_equal(action, loaded_action)
        np.testing.assert_array_equal(state[0], loaded_state[0])
        np.testing.assert_array_equal(state[1], loaded_state[1])
        obs, _, starts, _ = env.step(action)


def test_policy_level_save_load_keeps_core_settings(tmp_path) -> None:
    env = _vec_env()
    kwargs = dict(
        n_units=5, unit_size=8, k_active=2, rim_cell="GRU", shared_lstm=True, enable_critic_lstm=False
    )
    model = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=16, policy_kwargs=kwargs)
    model.policy.save(tmp_path / "policy.pt")
    policy = RIMPolicy.load(tmp_path / "policy.pt")
    assert (policy.n_units, policy.unit_size, policy.k_active, policy.rim_cell) == (5, 8, 2, "GRU")
    assert policy.shared_lstm and policy.lstm_critic is None
    assert policy.lstm_actor.rim.num_units == 5

    lstm_model = RecurrentPPO(
        MiniGridLstmPolicy, env, n_steps=8, batch_size=16, policy_kwargs=dict(lstm_hidden_size=32)
    )
    lstm_model.policy.save(tmp_path / "lstm.pt")
    assert MiniGridLstmPolicy.load(tmp_path / "lstm.pt").lstm_actor.hidden_size == 32


@pytest.mark.parametrize("policy_class", [RIMPolicy, MiniGridLstmPolicy])
def test_value_gradient_reaches_the_shared_memory_only_when_asked(tmp_path, policy_class: type) -> None:
    env = _vec_env()
    shared = dict(shared_lstm=True, enable_critic_lstm=False)
    starts = th.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # two sequences of 3 steps
    memory_grads = {}
    for flag in (False, True):
        model = RecurrentPPO(
            policy_class,
            env,
            n_steps=8,
            batch_size=16,
            seed=0,
            policy_kwargs=dict(**shared, shared_memory_value_gradient=flag),
        )
        policy = model.policy
        obs = th.as_tensor(np.concatenate([model.env.reset()] * 3))
        zeros = th.zeros(1, 2, policy.lstm_actor.hidden_size)
        states = RNNStates((zeros, zeros), (zeros, zeros))
        values, log_prob, entropy = policy.evaluate_actions(obs, th.zeros(6), states, starts)
        assert values.shape == (6, 1) and log_prob.shape == entropy.shape == (6,)
        policy.zero_grad()
        values.sum().backward()
        memory_grads[flag] = sum(
            float(p.grad.abs().sum()) for p in policy.lstm_actor.parameters() if p.grad is not None
        )
        if flag:
            model.policy.save(tmp_path / "policy.pt")
            assert policy_class.load(tmp_path / "policy.pt").shared_memory_value_gradient
    assert memory_grads[False] == 0.0 and memory_grads[True] > 0.0


def test_shared_memory_value_gradient_needs_a_shared_memory() -> None:
    with pytest.raises(AssertionError, match="shared_lstm=True"):
        RecurrentPPO(RIMPolicy, _vec_env(), n_steps=8, policy_kwargs=dict(shared_memory_value_gradient=True))


def test_rim_policy_rejects_lstm_sizes() -> None:
    with pytest.raises(AssertionError, match="n_units \\* unit_size"):
        RIMPolicy(
            spaces.Box(0, 255, (3, 7, 7), np.uint8), spaces.Discrete(7), lambda _: 1e-3, lstm_hidden_size=32
        )


def test_feedforward_policy_beats_random_on_empty_5x5() -> None:
    env = _vec_env(n_envs=8, seed=1)
    model = PPO(MiniGridCnnPolicy, env, n_steps=64, batch_size=128, n_epochs=4, learning_rate=1e-3, seed=1)
    untrained, _ = evaluate_policy(model, _vec_env(n_envs=4, seed=100), n_eval_episodes=40)
    model.learn(12_000)
    trained, _ = evaluate_policy(model, _vec_env(n_envs=4, seed=100), n_eval_episodes=40)
    assert trained > 0.8 and trained > untrained + 0.2, f"return {untrained:.2f} -> {trained:.2f}"
