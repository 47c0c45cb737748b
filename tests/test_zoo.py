"""Zoo-style hyperparameter files: parsing, variants, merge keys, errors, runs under rl_zoo3's train."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from stable_baselines3 import PPO

from structrl.agents import RecurrentA2C, RecurrentPPO
from structrl.agents.config import (
    DEFAULT_HYPERPARAMS,
    ConfigError,
    TrainConfig,
    build_config,
    list_variants,
    load_entry,
    read_zoo_file,
)
from structrl.policies import MiniGridCnnPolicy, MiniGridLstmPolicy, RIMPolicy

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "zoo"
TASKS = {
    "MiniGrid-Empty-5x5-v0": 80_000,
    "MiniGrid-DoorKey-5x5-v0": 300_000,
    "MiniGrid-MultiRoom-N2-S4-v0": 1_000_000,
}
SEED_SETTINGS = {"gamma": 0.99, "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5}


@pytest.mark.parametrize("algo, file", [("ppo", "ppo_lstm.yml"), ("a2c", "a2c_lstm.yml")])
@pytest.mark.parametrize("env_id", list(TASKS))
def test_recurrent_zoo_entries(algo: str, file: str, env_id: str) -> None:
    zoo = read_zoo_file(ZOO / file)
    assert list_variants(zoo, env_id) == ["rim-ka2", "lstm"]
    default = build_config(algo, env_id, hyperparams_file=ZOO / file)
    ka2 = build_config(algo, env_id, hyperparams_file=ZOO / file, variant="rim-ka2")
    lstm = build_config(algo, env_id, policy="lstm", hyperparams_file=ZOO / file, variant="lstm")
    assert (default.policy, ka2.policy, lstm.policy) == ("rim", "rim", "lstm")
    assert default.n_timesteps == ka2.n_timesteps == lstm.n_timesteps == TASKS[env_id]
    assert default.env_wrapper == lstm.env_wrapper == "minigrid.wrappers.ImgObsWrapper"
    policy_kwargs = [config.algorithm_kwargs()["policy_kwargs"] for config in (default, ka2, lstm)]
    assert (policy_kwargs[0]["n_units"], policy_kwargs[0]["k_active"]) == (4, 3)
    assert (policy_kwargs[1]["n_units"], policy_kwargs[1]["k_active"]) == (4, 2)
    assert policy_kwargs[2]["lstm_hidden_size"] == 64 and "k_active" not in policy_kwargs[2]
    if file == "ppo_lstm.yml":  # the seed's single memory, trained by actor and critic
        for kwargs in policy_kwargs:
            assert kwargs["shared_lstm"] and kwargs["shared_memory_value_gradient"]
            assert not kwargs["enable_critic_lstm"]
    assert default.algorithm_kwargs()["policy"] is RIMPolicy
    assert lstm.algorithm_kwargs()["policy"] is MiniGridLstmPolicy
    # merge keys: the variants inherit everything else from the default entry
    assert ka2.hyperparams.keys() == default.hyperparams.keys() == lstm.hyperparams.keys()
    assert default.n_envs == 16
    assert {key: default.hyperparams[key] for key in SEED_SETTINGS} == SEED_SETTINGS
    if algo == "a2c":
        assert default.algorithm_class() is RecurrentA2C
        assert default.hyperparams["n_epochs"] == 1 and default.hyperparams["gae_lambda"] == 1.0
        assert default.hyperparams["batch_size"] == default.hyperparams["n_steps"] * default.n_envs
        assert default.algorithm_kwargs()["policy_kwargs"]["optimizer_class"].__name__ == "RMSprop"
    else:
        assert default.algorithm_class() is RecurrentPPO
        assert default.hyperparams["n_steps"] == 128 and default.hyperparams["batch_size"] == 256


@pytest.mark.parametrize("env_id", list(TASKS))
def test_feed_forward_zoo_entries(env_id: str) -> None:
    config = build_config("ppo", env_id, hyperparams_file=ZOO / "ppo.yml")
    assert config.policy == "mlp" and config.algorithm_class() is PPO
    assert config.algorithm_kwargs()["policy"] is MiniGridCnnPolicy
    assert config.n_timesteps == TASKS[env_id]


def test_defaults_without_file() -> None:
    ppo = build_config("ppo", "MiniGrid-Empty-5x5-v0")
    assert ppo.policy == "rim" and ppo.algorithm_class() is RecurrentPPO
    assert ppo.n_envs == 16 and ppo.hyperparams["learning_rate"] == 1e-4
    a2c = build_config("a2c", "MiniGrid-Empty-5x5-v0", policy="lstm")
    assert a2c.algorithm_class() is RecurrentA2C
    assert a2c.hyperparams == {
        k: v for k, v in DEFAULT_HYPERPARAMS["a2c"].items() if k not in ("n_envs", "n_timesteps")
    }


def test_overrides_and_round_trip(tmp_path: Path) -> None:
    config = build_config(
        "a2c",
        "MiniGrid-Empty-5x5-v0",
        hyperparams_file=ZOO / "a2c_lstm.yml",
        n_timesteps=1000,
        n_envs=2,
        seed=7,
        params={"n_steps": 8, "learning_rate": "lin_1e-3"},
    )
    assert (config.n_timesteps, config.n_envs, config.seed) == (1000, 2, 7)
    assert config.hyperparams["batch_size"] == 16  # A2C: one minibatch = the whole rollout
    schedule = config.algorithm_kwargs()["learning_rate"]
    assert schedule(1.0) == pytest.approx(1e-3) and schedule(0.5) == pytest.approx(5e-4)
    assert TrainConfig.from_dict(config.to_dict()) == config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hyperparams.yml"
    path.write_text(text)
    return path


def test_merge_keys_and_variants(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "MiniGrid-Empty-5x5-v0: &base\n"
        "  n_timesteps: !!float 2e3\n  n_envs: 4\n  n_steps: 32\n  policy: rim\n"
        "MiniGrid-Empty-5x5-v0:short:\n  <<: *base\n  n_steps: 8\n",
    )
    assert load_entry(path, "MiniGrid-Empty-5x5-v0", "short")["n_envs"] == 4
    config = build_config("ppo", "MiniGrid-Empty-5x5-v0", hyperparams_file=path, variant="short")
    assert (config.n_timesteps, config.hyperparams["n_steps"], config.policy) == (2000, 8, "rim")


@pytest.mark.parametrize(
    "text, variant, message",
    [
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: [1,\n", None, "malformed YAML in .*hyperparams.yml:3"),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n n_steps: 3\n", None, "malformed YAML in .*hyperparams.yml:3"),
        ("CartPole-v1:\n  n_envs: 1\n", None, "MiniGrid-Empty-5x5-v0 is not in .* \\(it has: CartPole-v1\\)"),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n", "lstm", "unknown variant 'lstm' .*variants: none"),
        (
            "MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 10\n  n_stepz: 3\n",
            None,
            "unknown key 'n_stepz'",
        ),
        (
            "MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 10\n  n_steps: 1.5\n",
            None,
            "must be an integer",
        ),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 10\n  gamma: high\n", None, "must be a number"),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 10\n  learning_rate: exp_3\n", None, "lin_"),
        (
            "MiniGrid-Empty-5x5-v0:\n  n_envs: 0\n  n_timesteps: 10\n",
            None,
            "n_envs must be a positive integer",
        ),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n", None, "n_timesteps is missing"),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 9\n  seed: 3\n", None, "set by structrl"),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 9\n  normalize: true\n", None, "rl_zoo3"),
        ("MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 9\n  policy: no.such.Policy\n", None, "import"),
        (
            "MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 9\n  policy_kwargs: 'dict(a=b)'\n",
            None,
            "policy_kw",
        ),
        (
            "MiniGrid-Empty-5x5-v0:\n  n_envs: 1\n  n_timesteps: 9\n  env_wrapper: no.Wrapper\n",
            None,
            "env_wrapper",
        ),
        ("- just\n- a list\n", None, "must map environment ids"),
    ],
)
def test_file_errors(tmp_path: Path, text: str, variant: str | None, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        build_config("ppo", "MiniGrid-Empty-5x5-v0", hyperparams_file=path, variant=variant)


def test_input_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean MiniGrid-DoorKey-5x5-v0"):
        build_config("ppo", "MiniGrid-DoorKey-5x5")
    with pytest.raises(ConfigError, match="unknown algorithm"):
        build_config("dqn", "MiniGrid-Empty-5x5-v0")
    with pytest.raises(ConfigError, match="unknown policy"):
        build_config("ppo", "MiniGrid-Empty-5x5-v0", policy="transformer")
    with pytest.raises(ConfigError, match="disagrees"):
        build_config("ppo", "MiniGrid-Empty-5x5-v0", policy="mlp", hyperparams_file=ZOO / "ppo_lstm.yml")
    with pytest.raises(ConfigError, match="cannot read"):
        build_config("ppo", "MiniGrid-Empty-5x5-v0", hyperparams_file=ZOO / "missing.yml")
    with pytest.raises(ConfigError, match="needs a hyperparameter file"):
        build_config("ppo", "MiniGrid-Empty-5x5-v0", variant="lstm")


def rl_zoo_train(tmp_path: Path, algo: str, conf_file: str, *params: str) -> Path:
    """Run rl_zoo3's own training script on a tiny budget; return the saved model."""
    command = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", "MiniGrid-Empty-5x5-v0",
        "--gym-packages", "structrl", "--conf-file", str(ZOO / conf_file), "-n", "128", "--num-threads", "1",
        "-f", str(tmp_path), "--eval-freq", "-1", "--seed", "0", "-params", *params,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / algo / "MiniGrid-Empty-5x5-v0_1" / "MiniGrid-Empty-5x5-v0.zip"


@pytest.mark.parametrize(
    "conf_file, params",
    [
        ("ppo_lstm.yml", ("n_envs:2", "n_steps:32", "batch_size:32")),
        ("a2c_lstm.yml", ("n_envs:2", "n_steps:16", "batch_size:32")),
    ],
)
def test_rl_zoo3_trains_rim_entries(tmp_path: Path, conf_file: str, params: tuple[str, ...]) -> None:
    model = RecurrentPPO.load(rl_zoo_train(tmp_path, "ppo_lstm", conf_file, *params))
    assert type(model.policy) is RIMPolicy
    assert (model.policy.n_units, model.policy.k_active) == (4, 3)
    assert model.num_timesteps >= 128


def test_rl_zoo3_trains_feed_forward_entry(tmp_path: Path) -> None:
    model = PPO.load(rl_zoo_train(tmp_path, "ppo", "ppo.yml", "n_envs:2", "n_steps:64", "batch_size:64"))
    assert type(model.policy) is MiniGridCnnPolicy
