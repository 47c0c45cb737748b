"""torch_ac's row-normalised layer init, on its own and as a policy option."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from structrl.envs import make_minigrid_env
from structrl.policies import MiniGridLstmPolicy, RIMCell, RIMPolicy, row_normalized_init_

SHARED = dict(shared_lstm=True, enable_critic_lstm=False, shared_memory_value_gradient=True)


def _assert_unit_rows(weight: th.Tensor, input_dim: int) -> None:
    th.testing.assert_close(weight.norm(dim=input_dim), th.ones(weight.shape[1 - input_dim]))


def test_linear_layers_and_rim_key_value_get_unit_rows_and_zero_biases() -> None:
    th.manual_seed(0)
    cell = RIMCell(12, 8, 4, 2, input_value_size=10)
    module = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3, bias=False))
    module.append(cell)
    untouched = {
        name: param.detach().clone()
        for name, param in module.named_parameters()
        if name.startswith("0.") or (name.startswith("4.") and not name.endswith("_kv"))
    }
    row_normalized_init_(module)
    _assert_unit_rows(module[1].weight, input_dim=1)
    _assert_unit_rows(module[3].weight, input_dim=1)
    _assert_unit_rows(cell.weight_kv, input_dim=0)
    assert float(module[1].bias.detach().abs().max()) == 0.0
    assert float(cell.bias_kv.detach().abs().max()) == 0.0
    # Gaussian directions: far from the uniform init's rows, and not all the same
    assert float(module[1].weight.detach().std()) > 0.2
    params = dict(module.named_parameters())
    for name, before in untouched.items():
        assert th.equal(params[name], before), f"{name} should keep its own init"


def test_rim_policy_option_reinitialises_heads_and_rim_and_survives_save_load(tmp_path) -> None:
    env = make_vec_env(make_minigrid_env, n_envs=2, seed=0, env_kwargs={"env_id": "MiniGrid-Empty-5x5-v0"})
    kwargs = dict(**SHARED, ortho_init=False, row_normalized_init=True)
    model = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=16, seed=0, policy_kwargs=kwargs)
    policy = model.policy
    for head in (policy.action_net, policy.value_net, policy.mlp_extractor.policy_net[0]):
        _assert_unit_rows(head.weight, input_dim=1)
        assert float(head.bias.detach().abs().max()) == 0.0
    _assert_unit_rows(policy.lstm_actor.rim.cells[0].weight_kv, input_dim=0)
    # the optimiser holds the re-initialised parameters
    optimised = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert id(policy.action_net.weight) in optimised
    assert id(policy.lstm_actor.rim.cells[0].weight_kv) in optimised
    model.learn(16)
    model.save(tmp_path / "rim.zip")
    loaded = RecurrentPPO.load(tmp_path / "rim.zip")
    assert loaded.policy.row_normalized_init
    for name, param in policy.state_dict().items():
        assert th.equal(param, loaded.policy.state_dict()[name]), name


def test_lstm_policy_option_keeps_the_lstm_and_changes_the_heads() -> None:
    space, actions = spaces.Box(0, 255, (7, 7, 3), np.uint8), spaces.Discrete(7)
    policies = {}
    for flag in (False, True):
        th.manual_seed(0)
        policies[flag] = MiniGridLstmPolicy(
            space, actions, lambda _: 1e-3, **SHARED, ortho_init=False, row_normalized_init=flag
        )
    for name, param in policies[False].lstm_actor.named_parameters():
        assert th.equal(param, dict(policies[True].lstm_actor.named_parameters())[name]), name
    _assert_unit_rows(policies[True].action_net.weight, input_dim=1)
    assert not th.allclose(policies[False].action_net.weight, policies[True].action_net.weight)


def test_row_normalized_init_needs_ortho_init_off() -> None:
    space, actions = spaces.Box(0, 255, (7, 7, 3), np.uint8), spaces.Discrete(7)
    with pytest.raises(AssertionError, match="ortho_init=False"):
        RIMPolicy(space, actions, lambda _: 1e-3, **SHARED, row_normalized_init=True)
