"""A Stable-Baselines3 recurrent actor-critic policy whose memory is a RIM."""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from structrl.policies.minigrid_policies import with_minigrid_defaults
from structrl.policies.rim import RIM
from structrl.policies.row_normalized_init import row_normalized_init_
from structrl.policies.shared_memory import SharedMemoryRecurrentPolicy

#: RIM settings of the seed's MiniGrid agent (input values of 64); attention dropout is off because SB3
#: collects rollouts in eval mode and trains in train mode, so dropout would make PPO's ratio noisy and
#: break A2C's exact ratio of 1.
DEFAULT_RIM_KWARGS: dict[str, Any] = {"input_value_size": 64, "input_dropout": 0.0, "comm_dropout": 0.0}


class RIMCore(nn.Module):
    """
    A single-layer RIM that looks like an ``nn.LSTM`` to sb3-contrib's recurrent machinery.

    sb3-contrib sizes its rollout buffer from ``num_layers`` and ``hidden_size`` and stores exactly two state
    tensors of shape ``(num_layers, batch, hidden_size)``; the RIM's ``(num_units, unit_size)`` state is
    packed into that last dimension. GRU units carry an unused all-zero cell state.

    :param input_size: Number of input features.
    :param n_units: Number of RIM units (Kt).
    :param unit_size: Hidden size of each unit.
    :param k_active: Number of units active per step (Ka).
    :param rim_cell: ``"LSTM"`` or ``"GRU"`` units.
    :param rim_kwargs: Further :class:`structrl.policies.rim.RIMCell` arguments.
    """

    def __init__(
        self,
        input_size: int,
        n_units: int,
        unit_size: int,
        k_active: int,
        rim_cell: str = "LSTM",
        rim_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.rim = RIM(input_size, unit_size, n_units, k_active, rim_cell, **(rim_kwargs or {}))
        self.input_size = input_size
        self.hidden_size = n_units * unit_size
        self.num_layers = 1

    @property
    def last_masks(self) -> th.Tensor | None:
        """Active-unit masks of the last call, ``(T, 1, B, n_units)`` bool, or None before the first call."""
        return getattr(self.rim, "last_masks", None)

    def forward(
        self,
        x: th.Tensor,
        state: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor | None = None,
    ) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """
        :param x: Inputs ``(T, B, input_size)``.
        :param state: ``(h, c)``, each ``(1, B, n_units * unit_size)``.
        :param episode_starts: Optional ``(T, B)``: a row's state is zeroed before each step where it is 1.
        :return: Outputs ``(T, B, n_units * unit_size)`` and the new ``(h, c)``.
        """
        h, c = state
        if self.rim.rnn_cell == "GRU":
            output, h_n = self.rim(x, h, episode_starts=episode_starts)
            return output, (h_n, th.zeros_like(h_n))
        output, (h_n, c_n) = self.rim(x, (h, c), episode_starts=episode_starts)
        return output, (h_n, c_n)


class RIMPolicy(SharedMemoryRecurrentPolicy):
    """
    Recurrent actor-critic policy with a RIM memory, for ``sb3_contrib.RecurrentPPO`` and
    :class:`structrl.agents.RecurrentA2C`.

    It is sb3-contrib's recurrent policy with its ``nn.LSTM`` modules swapped for :class:`RIMCore` (the
    actor's, and the critic's when ``enable_critic_lstm``), so buffers, ``predict`` with states, and ``.zip``
    save/load all work unchanged. Episode resets are handed to the RIM, which runs the whole sequence in one
    time loop. Defaults follow the seed's MiniGrid agent: Kt=4 units of 16, Ka=3, LSTM units,
    :class:`MiniGridCNN` features and ``normalize_images=False``.

    :param observation_space: Observation space.
    :param action_space: Action space.
    :param lr_schedule: Learning-rate schedule.
    :param n_units: Number of RIM units (Kt).
    :param unit_size: Hidden size of each unit; the memory width is ``n_units * unit_size``.
    :param k_active: Number of units active per step (Ka).
    :param rim_cell: ``"LSTM"`` or ``"GRU"`` units.
    :param rim_kwargs: Further :class:`structrl.policies.rim.RIMCell` arguments, merged over
        :data:`DEFAULT_RIM_KWARGS`.
    :param kwargs: Any :class:`structrl.policies.shared_memory.SharedMemoryRecurrentPolicy` argument
        (sb3-contrib's, and ``shared_memory_value_gradient``) except ``lstm_hidden_size`` and
        ``n_lstm_layers``, which the RIM fixes.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        n_units: int = 4,
        unit_size: int = 16,
        k_active: int = 3,
        rim_cell: str = "LSTM",
        rim_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for fixed in ("lstm_hidden_size", "n_lstm_layers", "lstm_kwargs"):
            assert fixed not in kwargs, (
                f"RIMPolicy sets {fixed} itself (memory width = n_units * unit_size, one layer); "
                "use n_units, unit_size and rim_kwargs instead"
            )
        self.n_units = n_units
        self.unit_size = unit_size
        self.k_active = k_active
        self.rim_cell = rim_cell
        self.rim_kwargs = {**DEFAULT_RIM_KWARGS, **(rim_kwargs or {})}
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            lstm_hidden_size=n_units * unit_size,
            n_lstm_layers=1,
            **with_minigrid_defaults(kwargs),
        )
        self.lstm_actor = self._make_core()  # type: ignore[assignment]
        if self.lstm_critic is not None:
            self.lstm_critic = self._make_core()  # type: ignore[assignment]
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _make_core(self) -> RIMCore:
        core = RIMCore(
            self.features_dim, self.n_units, self.unit_size, self.k_active, self.rim_cell, self.rim_kwargs
        )
        if self.row_normalized_init:
            row_normalized_init_(core)
        return core

    @staticmethod
    def _process_sequence(  # type: ignore[override]
        features: th.Tensor,
        lstm_states: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
        lstm: nn.Module,
    ) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
        if not isinstance(lstm, RIMCore):
            return RecurrentActorCriticPolicy._process_sequence(  # type: ignore[return-value]
                features,
                lstm_states,
                episode_starts,
                lstm,  # type: ignore[arg-type]
            )
        n_seq = lstm_states[0].shape[1]
        features_sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
        starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
        output, states = lstm(features_sequence, lstm_states, episode_starts=starts)
        return th.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), states

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            n_units=self.n_units,
            unit_size=self.unit_size,
            k_active=self.k_active,
            rim_cell=self.rim_cell,
            rim_kwargs=self.rim_kwargs,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
        )
        return data
