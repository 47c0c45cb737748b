"""
sb3-contrib's recurrent actor-critic with the option of one memory trained by both the actor and the critic.

With ``shared_lstm=True`` sb3-contrib's critic reads the actor's memory output but detaches it, so only the
policy loss trains the memory. torch_ac, which the RIM seed used, has a single memory that both losses
train. ``shared_memory_value_gradient=True`` gives that: the value loss's gradient reaches the shared memory
during training. Rollouts and bootstrapping run without gradients, so only :meth:`evaluate_actions` differs.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.type_aliases import Schedule

from structrl.policies.row_normalized_init import row_normalized_init_


class SharedMemoryRecurrentPolicy(RecurrentActorCriticPolicy):
    """
    :class:`sb3_contrib.common.recurrent.policies.RecurrentActorCriticPolicy` whose shared memory can be
    trained by the value loss too (torch_ac's single memory).

    :param observation_space: Observation space.
    :param action_space: Action space.
    :param lr_schedule: Learning-rate schedule.
    :param shared_memory_value_gradient: Let the value loss's gradient reach the memory that actor and
        critic share; needs ``shared_lstm=True`` (sb3-contrib detaches the critic's input there).
    :param row_normalized_init: Initialise every linear layer as torch_ac did (see
        :func:`structrl.policies.row_normalized_init.row_normalized_init_`) instead of SB3's orthogonal init;
        needs ``ortho_init=False``, so that the convolutions keep PyTorch's default init as in the seed.
    :param kwargs: Any :class:`sb3_contrib.common.recurrent.policies.RecurrentActorCriticPolicy` argument.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        shared_memory_value_gradient: bool = False,
        row_normalized_init: bool = False,
        **kwargs: Any,
    ) -> None:
        assert not shared_memory_value_gradient or kwargs.get("shared_lstm", False), (
            "shared_memory_value_gradient=True trains a memory shared by actor and critic: also pass "
            "shared_lstm=True and enable_critic_lstm=False"
        )
        assert not row_normalized_init or not kwargs.get("ortho_init", True), (
            "row_normalized_init=True replaces SB3's orthogonal init: also pass ortho_init=False"
        )
        self.shared_memory_value_gradient = shared_memory_value_gradient
        self.row_normalized_init = row_normalized_init
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        if row_normalized_init:
            row_normalized_init_(self)

    def evaluate_actions(  # type: ignore[override]
        self, obs: th.Tensor, actions: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        :param obs: Observations ``(T * n_seq, ...)``.
        :param actions: Actions taken.
        :param lstm_states: Memory states at the start of each sequence.
        :param episode_starts: Whether each observation starts an episode.
        :return: Values, log-likelihoods of the actions and entropies of the action distributions.
        """
        if not self.shared_memory_value_gradient:
            return super().evaluate_actions(obs, actions, lstm_states, episode_starts)
        h, c = lstm_states.pi
        values, log_prob, entropy, _ = self.evaluate_sequence(obs, actions, (h, c), episode_starts)
        return values, log_prob, entropy

    def evaluate_sequence(
        self,
        obs: th.Tensor,
        actions: th.Tensor,
        memory_states: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """
        Evaluate actions through the memory that actor and critic share, and return the memory's last state.

        :param obs: Observations ``(T * n_seq, ...)``, sequence by sequence.
        :param actions: Actions taken.
        :param memory_states: The shared memory's ``(h, c)`` at the start of each sequence, each
            ``(n_layers, n_seq, hidden)``.
        :param episode_starts: Whether each observation starts an episode (the memory is reset there).
        :return: Values, log-likelihoods of the actions, entropies of the action distributions, and the
            memory's ``(h, c)`` after the last step of each sequence.
        """
        assert self.shared_memory_value_gradient, (
            "evaluate_sequence runs the single memory of shared_memory_value_gradient=True: build the policy "
            "with shared_lstm=True, enable_critic_lstm=False, shared_memory_value_gradient=True"
        )
        features = self.extract_features(obs)
        assert isinstance(features, th.Tensor), "a shared memory needs a shared features extractor"
        memory, states = self._process_sequence(features, memory_states, episode_starts, self.lstm_actor)
        distribution = self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(memory))
        values = self.value_net(self.mlp_extractor.forward_critic(memory))
        entropy = distribution.entropy()
        assert entropy is not None, "the action distribution has no closed-form entropy"
        h, c = states
        return values, distribution.log_prob(actions), entropy, (h, c)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            shared_memory_value_gradient=self.shared_memory_value_gradient,
            row_normalized_init=self.row_normalized_init,
        )
        return data
