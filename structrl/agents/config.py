"""Zoo-style hyperparameter files and the resolved configuration of a training run.

The YAML format is the one of `rl-baselines3-zoo <https://github.com/DLR-RM/rl-baselines3-zoo>`_: one
mapping per environment id, ``n_timesteps``, ``n_envs``, ``policy``, ``env_wrapper``, ``policy_kwargs`` (a
Python expression string), ``callback``, ``env_kwargs`` and ``lin_<value>`` schedules; every other key is a
keyword argument of the algorithm. structrl adds *variants*: several configurations for one environment live
in the same file under the keys ``ENV_ID:VARIANT`` (for example ``MiniGrid-Empty-5x5-v0:lstm``). The plain
``ENV_ID`` key is the default configuration, and the only one rl_zoo3 reads. YAML anchors and merge keys
(``<<: *base``) let variants override only what differs.

When no file is given, :data:`DEFAULT_HYPERPARAMS` applies: the settings of the original RIM MiniGrid
experiments (``minigrid_experiments/train.py`` of dido1998/Recurrent-Independent-Mechanisms, run with
torch_ac), translated to Stable-Baselines3.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
import yaml
from rl_zoo3.utils import get_callback_list, get_class_by_name, get_wrapper_class, linear_schedule
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from torch import nn

from structrl.agents.recurrent_a2c import RecurrentA2C
from structrl.agents.recurrent_ppo import RecurrentPPO

#: Algorithms accepted by ``structrl train --algo``.
ALGOS = ("ppo", "a2c")

#: Policy names accepted by ``structrl train --policy``, and the class each one stands for.
POLICIES: dict[str, str] = {
    "rim": "structrl.policies.RIMPolicy",
    "lstm": "structrl.policies.MiniGridLstmPolicy",
    "mlp": "structrl.policies.MiniGridCnnPolicy",
}

#: Observation wrapper used when a configuration names none: the 7x7x3 symbolic egocentric view, whose
#: shape does not depend on the grid size (so a model trained on a small grid runs on larger ones).
DEFAULT_ENV_WRAPPER = "minigrid.wrappers.ImgObsWrapper"

#: Defaults when no hyperparameter file is given.
#:
#: ``ppo`` is the seed's ``train.py`` (16 processes, 128 frames per process, batch 256 frames, 4 epochs,
#: lr 1e-4, discount 0.99, GAE 0.95, entropy 0.01, value 0.5, grad norm 0.5, clip 0.2), translated to
#: RecurrentPPO/PPO. torch_ac's 80,000-frame budget of the README's Empty-5x5 task is the default budget.
#:
#: ``a2c`` is A2C as RecurrentPPO with one epoch and one minibatch (see ``structrl.agents.RecurrentA2C``)
#: with the seed's 16 processes, discount, entropy, value and grad-norm settings, but SB3's A2C
#: learning rate (7e-4), GAE lambda 1 and a short rollout (16 steps): the seed's A2C shared PPO's 128
#: frames per process and lr 1e-4, which give only 40 gradient steps in 80,000 frames.
DEFAULT_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_timesteps": 80_000,
        "n_envs": 16,
        "n_steps": 128,
        "batch_size": 256,
        "n_epochs": 4,
        "learning_rate": 1e-4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "clip_range": 0.2,
    },
    "a2c": {
        "n_timesteps": 80_000,
        "n_envs": 16,
        "n_steps": 16,
        "learning_rate": 7e-4,
        "gamma": 0.99,
        "gae_lambda": 1.0,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
    },
}

# Zoo keys that structrl interprets itself; they are not algorithm keyword arguments.
_ZOO_KEYS = ("n_timesteps", "n_envs", "policy", "env_wrapper", "callback", "env_kwargs")
# Zoo keys that only rl_zoo3's own training loop implements.
_RL_ZOO_ONLY_KEYS = ("normalize", "frame_stack", "vec_env_wrapper", "monitor_kwargs")
# Algorithm keyword arguments that structrl sets itself (from its own flags).
_RESERVED_KWARGS = ("policy", "env", "seed", "verbose", "tensorboard_log", "_init_setup_model")
# Keys that take ``lin_<value>`` linear schedules, as in rl_zoo3.
_SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")


class ConfigError(ValueError):
    """Invalid user input: a hyperparameter file, an environment id, an algorithm or a policy name."""


def policy_kwargs_namespace() -> dict[str, Any]:
    """
    Names available to ``policy_kwargs`` strings: those of rl_zoo3's ``exp_manager``.

    :return: the globals used to evaluate a ``policy_kwargs`` string
    """
    return {
        "nn": nn,
        "th": th,
        "torch": th,
        "np": np,
        "RMSpropTFLike": RMSpropTFLike,
        "get_class_by_name": get_class_by_name,
        "linear_schedule": linear_schedule,
    }


def eval_policy_kwargs(policy_kwargs: str | dict[str, Any] | None) -> dict[str, Any]:
    """
    Turn a ``policy_kwargs`` entry into a dictionary, evaluating it like rl_zoo3 when it is a string.

    :param policy_kwargs: ``None``, a dictionary, or a Python expression such as ``"dict(n_units=4)"``
    :return: the keyword arguments of the policy
    """
    if policy_kwargs is None:
        return {}
    if isinstance(policy_kwargs, dict):
        return dict(policy_kwargs)
    try:
        value = eval(policy_kwargs, policy_kwargs_namespace())
    except Exception as error:
        raise ConfigError(f"cannot evaluate policy_kwargs {policy_kwargs!r}: {error}") from error
    if not isinstance(value, dict):
        raise ConfigError(
            f"policy_kwargs {policy_kwargs!r} must evaluate to a dict, got {type(value).__name__}"
        )
    return value


def check_env_id(env_id: str) -> None:
    """
    Check that an environment id is registered with Gymnasium (after importing minigrid).

    :param env_id: a Gymnasium environment id such as ``MiniGrid-Empty-5x5-v0``
    :raises ConfigError: if it is not registered; the message suggests the closest registered ids
    """
    importlib.import_module("minigrid")
    if env_id in gym.registry:
        return
    suggestions = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise ConfigError(f"unknown environment id {env_id!r}{hint}")


def read_zoo_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """
    Read a zoo-style hyperparameter file (YAML anchors and merge keys are resolved).

    :param path: the YAML file
    :return: the mapping from entry keys (``ENV_ID`` or ``ENV_ID:VARIANT``) to hyperparameters
    :raises ConfigError: if the file is missing, is not valid YAML (with the line) or is not a mapping of
        mappings
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read hyperparameter file {path}: {error.strerror}") from error
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}: {problem}") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must map environment ids to hyperparameters")
    for key, entry in content.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: entry {key!r} must be a mapping of hyperparameters")
    return content


def entry_key(env_id: str, variant: str | None = None) -> str:
    """
    Key of a configuration in a zoo file.

    :param env_id: environment id
    :param variant: variant name, or ``None`` for the default entry
    :return: ``ENV_ID`` or ``ENV_ID:VARIANT``
    """
    return env_id if variant is None else f"{env_id}:{variant}"


def list_variants(zoo: dict[str, dict[str, Any]], env_id: str) -> list[str]:
    """
    Variants that a zoo file defines for an environment.

    :param zoo: the content of a zoo file (see :func:`read_zoo_file`)
    :param env_id: environment id
    :return: the variant names, in file order
    """
    prefix = f"{env_id}:"
    return [key[len(prefix) :] for key in zoo if key.startswith(prefix)]


def load_entry(path: str | Path, env_id: str, variant: str | None = None) -> dict[str, Any]:
    """
    Hyperparameters of one environment (and variant) in a zoo file.

    :param path: the YAML file
    :param env_id: environment id
    :param variant: variant name, or ``None`` for the default entry
    :return: a copy of the entry
    :raises ConfigError: if the file cannot be read or has no such entry
    """
    zoo = read_zoo_file(path)
    key = entry_key(env_id, variant)
    if key in zoo:
        return copy.deepcopy(zoo[key])
    if variant is not None and env_id in zoo:
        variants = list_variants(zoo, env_id)
        known = ", ".join(variants) if variants else "none"
        raise ConfigError(f"unknown variant {variant!r} for {env_id} in {path} (variants: {known})")
    env_ids = sorted({key.split(":", 1)[0] for key in zoo})
    raise ConfigError(f"{env_id} is not in {path} (it has: {', '.join(env_ids)})")


def import_policy(policy: str) -> type[ActorCriticPolicy]:
    """
    Import a policy class from a dotted path, a structrl policy name or an SB3/sb3-contrib alias.

    :param policy: ``rim``, ``lstm``, ``mlp``, an alias such as ``MlpLstmPolicy``, or a dotted class path
    :return: the policy class
    :raises ConfigError: if it cannot be imported or is not an actor-critic policy
    """
    name = POLICIES.get(policy, policy)
    aliases = {**PPO.policy_aliases, **RecurrentPPO.policy_aliases}
    if name in aliases:
        cls: Any = aliases[name]
    elif "." in name:
        try:
            cls = get_class_by_name(name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ConfigError(f"cannot import policy {name!r}: {error}") from error
    else:
        raise ConfigError(
            f"unknown policy {policy!r}: use {', '.join(POLICIES)}, an SB3 alias or a dotted class path"
        )
    if not (inspect.isclass(cls) and issubclass(cls, ActorCriticPolicy)):
        raise ConfigError(f"policy {name!r} is not an actor-critic policy class")
    return cls


def policy_kind(policy: str) -> str:
    """
    The structrl policy name (``rim``, ``lstm`` or ``mlp``) that a policy entry stands for.

    :param policy: a policy entry (see :func:`import_policy`)
    :return: ``rim`` for RIM policies, ``lstm`` for other recurrent policies, ``mlp`` for feed-forward ones
    """
    if policy in POLICIES:
        return policy
    cls = import_policy(policy)
    if not issubclass(cls, RecurrentActorCriticPolicy):
        return "mlp"
    rim_policy = import_policy(POLICIES["rim"])
    return "rim" if issubclass(cls, rim_policy) else "lstm"


def algorithm_class(algo: str, policy: str) -> type[BaseAlgorithm]:
    """
    The algorithm class for an algorithm name and a structrl policy name.

    ``ppo`` is :class:`structrl.agents.RecurrentPPO` (sb3-contrib's, plus ``bptt_length``) for recurrent
    policies and SB3's PPO otherwise; ``a2c`` is
    :class:`structrl.agents.RecurrentA2C` for recurrent policies and SB3's A2C otherwise.

    :param algo: ``ppo`` or ``a2c``
    :param policy: ``rim``, ``lstm`` or ``mlp``
    :return: the algorithm class
    """
    if algo not in ALGOS:
        raise ConfigError(f"unknown algorithm {algo!r} (choose from {', '.join(ALGOS)})")
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
    recurrent = policy != "mlp"
    if algo == "ppo":
        return RecurrentPPO if recurrent else PPO
    if not recurrent:
        return A2C
    return RecurrentA2C


def _accepted_kwargs(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword arguments of a class constructor, following ``**kwargs`` up the class hierarchy."""
    accepted: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters  # type: ignore[misc]
        named = {
            name: parameter
            for name, parameter in parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        }
        for name, parameter in named.items():
            accepted.setdefault(name, parameter)
        if not any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters.values()):
            break
    return accepted


def _check_value(key: str, value: Any, parameter: inspect.Parameter, where: str) -> Any:
    """Check the type of one algorithm keyword argument against its default; return it normalised."""
    default = parameter.default
    if key in _SCHEDULE_KEYS and isinstance(value, str):
        prefix, _, initial = value.partition("_")
        try:
            float(initial)
        except ValueError:
            initial = ""
        if prefix != "lin" or not initial:
            raise ConfigError(f"{where}: {key} must be a number or 'lin_<number>', got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return int(value)
    elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    return value


def _positive_int(key: str, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class TrainConfig:
    """
    Everything that defines a training run; written to ``config.yml`` in the run directory.

    Values are kept in their YAML form (``policy_kwargs`` as a string, ``lin_`` schedules as strings), so
    the file can be read back with :meth:`from_dict` to resume a run.

    :param algo: ``ppo`` or ``a2c``
    :param policy: ``rim``, ``lstm`` or ``mlp``
    :param env_id: Gymnasium environment id
    :param policy_class: the policy entry: a dotted class path or an SB3 alias
    :param n_timesteps: training budget in environment steps (summed over environments)
    :param n_envs: number of environments (``DummyVecEnv``)
    :param seed: seed of the environments, the algorithm and torch
    :param env_wrapper: wrapper specification in rl_zoo3's format (dotted path, list, or ``None``)
    :param env_kwargs: keyword arguments of ``gymnasium.make``
    :param callback: callback specification in rl_zoo3's format, or ``None``
    :param hyperparams: algorithm keyword arguments, in YAML form
    :param hyperparams_file: the zoo file the configuration came from, if any
    :param variant: the variant of the zoo entry, if any
    """

    algo: str
    policy: str
    env_id: str
    policy_class: str
    n_timesteps: int
    n_envs: int
    seed: int = 1
    env_wrapper: Any = DEFAULT_ENV_WRAPPER
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    callback: Any = None
    hyperparams: dict[str, Any] = field(default_factory=dict)
    hyperparams_file: str | None = None
    variant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """
        :return: the configuration as plain YAML-serialisable data
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """
        Rebuild a configuration written by :meth:`to_dict` (extra keys such as versions are ignored).

        :param data: the dictionary
        :return: the configuration
        """
        names = {name for name in cls.__dataclass_fields__}
        missing = {"algo", "policy", "env_id", "policy_class", "n_timesteps", "n_envs"} - set(data)
        if missing:
            raise ConfigError(f"configuration lacks {', '.join(sorted(missing))}")
        return cls(**{key: value for key, value in data.items() if key in names})

    def algorithm_class(self) -> type[BaseAlgorithm]:
        """
        :return: the algorithm class (see :func:`algorithm_class`)
        """
        return algorithm_class(self.algo, self.policy)

    def algorithm_kwargs(self) -> dict[str, Any]:
        """
        Keyword arguments of the algorithm constructor (without ``env``): the policy class, schedules
        turned into callables and ``policy_kwargs`` evaluated.

        :return: the keyword arguments
        """
        kwargs = copy.deepcopy(self.hyperparams)
        for key in _SCHEDULE_KEYS:
            if isinstance(kwargs.get(key), str):
                kwargs[key] = linear_schedule(kwargs[key].split("_", 1)[1])
        if "policy_kwargs" in kwargs:
            kwargs["policy_kwargs"] = eval_policy_kwargs(kwargs["policy_kwargs"])
        policy = POLICIES.get(self.policy_class, self.policy_class)
        kwargs["policy"] = import_policy(policy) if "." in policy else policy
        kwargs["seed"] = self.seed
        return kwargs

    def wrapper(self) -> Callable[[gym.Env], gym.Env] | None:
        """
        :return: the function that wraps each environment, built by rl_zoo3 from :attr:`env_wrapper`
        """
        try:
            return get_wrapper_class({"env_wrapper": self.env_wrapper})
        except (ImportError, AttributeError, ValueError, AssertionError) as error:
            raise ConfigError(f"cannot import env_wrapper {self.env_wrapper!r}: {error}") from error

    def callbacks(self) -> list[BaseCallback]:
        """
        :return: the callbacks of the ``callback`` entry, built by rl_zoo3
        """
        try:
            return get_callback_list({"callback": self.callback})
        except (ImportError, AttributeError, ValueError, TypeError, AssertionError) as error:
            raise ConfigError(f"cannot build callback {self.callback!r}: {error}") from error


def build_config(
    algo: str,
    env_id: str,
    policy: str | None = None,
    hyperparams_file: str | Path | None = None,
    variant: str | None = None,
    n_timesteps: int | None = None,
    n_envs: int | None = None,
    seed: int = 1,
    params: dict[str, Any] | None = None,
) -> TrainConfig:
    """
    Resolve a training configuration: defaults or a zoo file entry, then explicit overrides.

    :param algo: ``ppo`` or ``a2c``
    :param env_id: Gymnasium environment id
    :param policy: ``rim``, ``lstm`` or ``mlp``; it must agree with the entry's ``policy`` when a file is
        given. ``None`` takes the entry's policy, or ``rim`` without a file.
    :param hyperparams_file: a zoo-style YAML file, or ``None`` for :data:`DEFAULT_HYPERPARAMS`
    :param variant: the variant of the entry (key ``ENV_ID:VARIANT``); needs ``hyperparams_file``
    :param n_timesteps: overrides the entry's ``n_timesteps``
    :param n_envs: overrides the entry's ``n_envs``
    :param seed: random seed
    :param params: overrides of any entry key (like rl_zoo3's ``-params``)
    :return: the resolved configuration
    :raises ConfigError: for an unknown algorithm, policy or environment, or an invalid file or entry
    """
    if algo not in ALGOS:
        raise ConfigError(f"unknown algorithm {algo!r} (choose from {', '.join(ALGOS)})")
    if policy is not None and policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
    check_env_id(env_id)
    if hyperparams_file is None:
        if variant is not None:
            raise ConfigError("a variant needs a hyperparameter file")
        entry = copy.deepcopy(DEFAULT_HYPERPARAMS[algo])
        where = f"default {algo} hyperparameters"
    else:
        entry = load_entry(hyperparams_file, env_id, variant)
        where = f"{hyperparams_file}[{entry_key(env_id, variant)}]"
    entry.update(params or {})

    if "policy" in entry:
        if not isinstance(entry["policy"], str):
            raise ConfigError(f"{where}: policy must be a string, got {entry['policy']!r}")
        entry_policy = policy_kind(entry["policy"])
        if policy is not None and policy != entry_policy:
            raise ConfigError(
                f"--policy {policy} disagrees with {where}, whose policy {entry['policy']} is a "
                f"{entry_policy} policy; pick another entry with --variant or leave --policy out"
            )
        policy = entry_policy
        policy_class = entry.pop("policy")
    else:
        policy = policy or "rim"
        policy_class = POLICIES[policy]

    unsupported = [key for key in _RL_ZOO_ONLY_KEYS if key in entry]
    if unsupported:
        raise ConfigError(f"{where}: {', '.join(unsupported)} is only supported by rl_zoo3's train")
    if n_timesteps is not None:
        entry["n_timesteps"] = n_timesteps
    if n_envs is not None:
        entry["n_envs"] = n_envs
    for key in ("n_timesteps", "n_envs"):
        if key not in entry:
            raise ConfigError(f"{where}: {key} is missing")
        entry[key] = _positive_int(key, entry[key], where)

    config = TrainConfig(
        algo=algo,
        policy=policy,
        env_id=env_id,
        policy_class=policy_class,
        n_timesteps=entry.pop("n_timesteps"),
        n_envs=entry.pop("n_envs"),
        seed=seed,
        env_wrapper=entry.pop("env_wrapper", DEFAULT_ENV_WRAPPER),
        env_kwargs=entry.pop("env_kwargs", None) or {},
        callback=entry.pop("callback", None),
        hyperparams=entry,
        hyperparams_file=None if hyperparams_file is None else str(hyperparams_file),
        variant=variant,
    )
    if not isinstance(config.env_kwargs, dict):
        raise ConfigError(f"{where}: env_kwargs must be a mapping, got {config.env_kwargs!r}")
    _check_hyperparams(config, where)
    return config


def _check_hyperparams(config: TrainConfig, where: str) -> None:
    """Check the algorithm keyword arguments of a configuration, normalising numbers in place."""
    accepted = _accepted_kwargs(config.algorithm_class())
    name = config.algorithm_class().__name__
    for key in list(config.hyperparams):
        if key in _RESERVED_KWARGS:
            raise ConfigError(f"{where}: {key} is set by structrl, not by the hyperparameter file")
        if key not in accepted:
            valid = sorted(set(accepted) - set(_RESERVED_KWARGS)) + sorted(_ZOO_KEYS)
            raise ConfigError(f"{where}: unknown key {key!r} for {name}; valid keys: {', '.join(valid)}")
        config.hyperparams[key] = _check_value(key, config.hyperparams[key], accepted[key], where)
    if config.hyperparams.get("bptt_length") is not None:
        config.hyperparams["bptt_length"] = _positive_int(
            "bptt_length", config.hyperparams["bptt_length"], where
        )
    policy_kwargs = config.hyperparams.get("policy_kwargs")
    if policy_kwargs is not None and not isinstance(policy_kwargs, str | dict):
        raise ConfigError(f"{where}: policy_kwargs must be a string or a mapping, got {policy_kwargs!r}")
    eval_policy_kwargs(policy_kwargs)
    if config.algo == "a2c" and config.policy != "mlp" and "batch_size" in config.hyperparams:
        # A2C's single minibatch is the whole rollout, whatever the number of environments.
        n_steps = config.hyperparams.get("n_steps", accepted["n_steps"].default)
        config.hyperparams["batch_size"] = n_steps * config.n_envs
    config.wrapper()
    import_policy(config.policy_class)
