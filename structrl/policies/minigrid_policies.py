"""Feed-forward and LSTM baseline policies for MiniGrid with the seed's CNN as their default extractor."""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule

from structrl.policies.minigrid_extractor import MiniGridCNN
from structrl.policies.shared_memory import SharedMemoryRecurrentPolicy


def with_minigrid_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    Fill in the MiniGrid defaults that every structrl MiniGrid policy shares, keeping explicit choices.

    The defaults are the seed's actor-critic heads (one hidden layer of 64 for each, tanh), the
    :class:`MiniGridCNN` extractor and ``normalize_images=False``, because the symbolic codes must not be
    divided by 255. Policies default their own extractor so that rl_zoo3, which evaluates ``policy_kwargs``
    without structrl in scope, needs no structrl names in its YAML.

    :param kwargs: The keyword arguments given to the policy.
    :return: A new dict with the defaults filled in.
    """
    defaults: dict[str, Any] = {
        "net_arch": {"pi": [64], "vf": [64]},
        "features_extractor_class": MiniGridCNN,
        "normalize_images": False,
    }
    return {**defaults, **kwargs}


class MiniGridCnnPolicy(ActorCriticPolicy):
    """
    Feed-forward actor-critic policy for MiniGrid (``--policy mlp``): :class:`MiniGridCNN` and two heads.

    :param observation_space: Observation space.
    :param action_space: Action space.
    :param lr_schedule: Learning-rate schedule.
    :param kwargs: Any :class:`stable_baselines3.common.policies.ActorCriticPolicy` argument.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        **kwargs: Any,
    ) -> None:
        super().__init__(observation_space, action_space, lr_schedule, **with_minigrid_defaults(kwargs))


class MiniGridLstmPolicy(SharedMemoryRecurrentPolicy):
    """
    sb3-contrib's recurrent (LSTM) actor-critic with :class:`MiniGridCNN`: the baseline RIM is compared to.

    The seed's LSTM is an ``LSTMCell(64, 64)``, hence the default ``lstm_hidden_size=64``. Unlike
    sb3-contrib's class, it records its LSTM settings for a policy-level ``save``/``load`` round trip.

    :param observation_space: Observation space.
    :param action_space: Action space.
    :param lr_schedule: Learning-rate schedule.
    :param lstm_hidden_size: LSTM state size.
    :param kwargs: Any :class:`structrl.policies.shared_memory.SharedMemoryRecurrentPolicy` argument
        (sb3-contrib's, and ``shared_memory_value_gradient``).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        lstm_hidden_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            lstm_hidden_size=lstm_hidden_size,
            **with_minigrid_defaults(kwargs),
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            lstm_hidden_size=self.lstm_output_dim,
            n_lstm_layers=self.lstm_actor.num_layers,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            lstm_kwargs=self.lstm_kwargs,
        )
        return data
