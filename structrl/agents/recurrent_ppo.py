"""sb3-contrib's RecurrentPPO with optional truncated backpropagation through time."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from sb3_contrib import RecurrentPPO as ContribRecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
)
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecNormalize

from structrl.agents.torch_ac_update import torch_ac_update
from structrl.policies.shared_memory import SharedMemoryRecurrentPolicy


def truncation_points(env_change: np.ndarray, buffer_size: int, bptt_length: int) -> np.ndarray:
    """
    Add a sequence start every ``bptt_length`` rollout steps to the env-change flags of a flattened buffer.

    sb3-contrib flattens a rollout env by env, so flat index ``i`` is step ``i % buffer_size`` of its env.

    :param env_change: flags of the flattened buffer, shape ``(n_envs * buffer_size, ...)``, 1 where a new
        env's data begins
    :param buffer_size: steps per env in the rollout (``n_steps``)
    :param bptt_length: the longest sequence that gradients flow through
    :return: the flags, also 1 at steps 0, ``bptt_length``, ``2 * bptt_length``... of every env
    """
    step = (np.arange(env_change.shape[0]) % buffer_size).reshape(
        env_change.shape[:1] + (1,) * (env_change.ndim - 1)
    )
    return np.logical_or(env_change, step % bptt_length == 0).astype(env_change.dtype)


class _TruncatedSequences:
    """
    Cuts the training sequences of an sb3-contrib recurrent rollout buffer every ``bptt_length`` steps.

    sb3-contrib's buffers override ``_get_samples`` with a signature of their own (an extra ``env_change``),
    which mypy reports as incompatible with SB3's; the ``type: ignore[misc]`` below are for that.
    """

    buffer_size: int

    def __init__(self, *args: Any, bptt_length: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bptt_length = bptt_length

    def _get_samples(
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: VecNormalize | None = None
    ) -> RecurrentRolloutBufferSamples | RecurrentDictRolloutBufferSamples:
        cuts = truncation_points(env_change, self.buffer_size, self.bptt_length)
        return super()._get_samples(batch_inds, cuts, env)  # type: ignore[misc]


class TruncatedRecurrentRolloutBuffer(_TruncatedSequences, RecurrentRolloutBuffer):  # type: ignore[misc]
    """
    sb3-contrib's recurrent rollout buffer whose training sequences are at most ``bptt_length`` steps.

    A sequence that would run longer is cut into pieces, each starting from the memory state the policy had
    at that step during the rollout (the buffer stores it), as torch_ac's ``recurrence`` does.

    :param args: :class:`sb3_contrib.common.recurrent.buffers.RecurrentRolloutBuffer` arguments
    :param bptt_length: the longest training sequence, in steps
    :param kwargs: :class:`sb3_contrib.common.recurrent.buffers.RecurrentRolloutBuffer` keyword arguments
    """


class TruncatedRecurrentDictRolloutBuffer(_TruncatedSequences, RecurrentDictRolloutBuffer):  # type: ignore[misc]
    """
    :class:`TruncatedRecurrentRolloutBuffer` for Dict observations.

    :param args: :class:`sb3_contrib.common.recurrent.buffers.RecurrentDictRolloutBuffer` arguments
    :param bptt_length: the longest training sequence, in steps
    :param kwargs: :class:`sb3_contrib.common.recurrent.buffers.RecurrentDictRolloutBuffer` keyword arguments
    """


#: The update rules RecurrentPPO can train with.
UPDATE_RULES = ("sb3", "torch_ac")


class RecurrentPPO(ContribRecurrentPPO):
    """
    sb3-contrib's RecurrentPPO, plus truncated backpropagation through time and torch_ac's update.

    sb3-contrib trains on whole episode pieces of up to ``n_steps`` steps, so a minibatch of a few long
    sequences runs the memory step by step ``n_steps`` times. With ``bptt_length`` set, sequences are cut
    every ``bptt_length`` rollout steps and start from the stored memory state, like torch_ac's
    ``recurrence`` (the RIM paper's setting is 32): the update sees the same frames, runs the memory over
    fewer, wider steps, and gradients stop at the cuts. ``None`` keeps sb3-contrib's behaviour exactly.

    ``update_rule="torch_ac"`` trains with the update of torch_ac, which the RIM seed used
    (:mod:`structrl.agents.torch_ac_update`): chunks of ``bptt_length`` steps, every other epoch shifted by
    half a chunk, memories refreshed during the update, the larger of the unclipped and clipped value
    losses, advantages unnormalised. It needs ``bptt_length``, with ``n_steps`` and ``batch_size`` multiples
    of it, and a policy whose one memory both losses train (``shared_memory_value_gradient``). It has no
    early stopping and clips the value loss with ``clip_range``, so it refuses ``target_kl`` and
    ``clip_range_vf``; ``normalize_advantage`` does not apply to it.

    :param args: :class:`sb3_contrib.RecurrentPPO` arguments (policy, env...)
    :param bptt_length: the longest training sequence in steps, or ``None`` for whole pieces
    :param update_rule: ``"sb3"`` for sb3-contrib's update, ``"torch_ac"`` for torch_ac's
    :param kwargs: :class:`sb3_contrib.RecurrentPPO` keyword arguments
    """

    def __init__(
        self, *args: Any, bptt_length: int | None = None, update_rule: str = "sb3", **kwargs: Any
    ) -> None:
        if bptt_length is not None and (isinstance(bptt_length, bool) or bptt_length < 1):
            raise ValueError(f"bptt_length must be a positive number of steps or None, got {bptt_length!r}")
        if update_rule not in UPDATE_RULES:
            raise ValueError(f"unknown update_rule {update_rule!r}: choose from {', '.join(UPDATE_RULES)}")
        if update_rule == "torch_ac":
            n_steps, batch_size = kwargs.get("n_steps", 128), kwargs.get("batch_size", 128)
            if bptt_length is None or n_steps % bptt_length or batch_size % bptt_length:
                raise ValueError(
                    "update_rule='torch_ac' cuts the rollout into chunks of bptt_length steps: set "
                    "bptt_length to a divisor of n_steps and batch_size (got "
                    f"bptt_length={bptt_length}, n_steps={n_steps}, batch_size={batch_size})"
                )
            ignored = [key for key in ("target_kl", "clip_range_vf") if kwargs.get(key) is not None]
            if ignored:
                raise ValueError(
                    f"update_rule='torch_ac' has no {' or '.join(ignored)} (it never stops early and clips "
                    "the value loss with clip_range): leave them out or use update_rule='sb3'"
                )
        self.bptt_length = bptt_length
        self.update_rule = update_rule
        self._torch_ac_batch_num = 0
        super().__init__(*args, **kwargs)

    def train(self) -> None:
        """Update the policy from the rollout buffer with the chosen update rule."""
        if self.update_rule == "sb3":
            super().train()
            return
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        rng = np.random.default_rng(np.random.randint(2**31))  # SB3 seeds numpy's global generator
        stats = torch_ac_update(self, rng, self._torch_ac_batch_num)
        self._torch_ac_batch_num += self.n_epochs
        self._n_updates += self.n_epochs
        self.logger.record("train/policy_gradient_loss", stats.policy_loss)
        self.logger.record("train/value_loss", stats.value_loss)
        self.logger.record("train/entropy_loss", stats.entropy_loss)
        self.logger.record("train/clip_fraction", stats.clip_fraction)
        self.logger.record("train/optimizer_steps", stats.optimizer_steps)
        self.logger.record(
            "train/explained_variance",
            explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()),
        )
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _setup_model(self) -> None:
        super()._setup_model()
        policy = self.policy
        if self.update_rule == "torch_ac" and not (
            isinstance(policy, SharedMemoryRecurrentPolicy) and policy.shared_memory_value_gradient
        ):
            raise ValueError(
                "update_rule='torch_ac' trains torch_ac's single memory: use structrl's RIMPolicy or "
                "MiniGridLstmPolicy with policy_kwargs shared_lstm=True, enable_critic_lstm=False, "
                "shared_memory_value_gradient=True"
            )
        if self.bptt_length is None:
            return
        contrib_buffer = self.rollout_buffer
        assert isinstance(contrib_buffer, RecurrentRolloutBuffer | RecurrentDictRolloutBuffer)
        truncated = (
            TruncatedRecurrentDictRolloutBuffer
            if isinstance(self.observation_space, spaces.Dict)
            else TruncatedRecurrentRolloutBuffer
        )
        self.rollout_buffer = truncated(
            self.n_steps,
            self.observation_space,
            self.action_space,
            contrib_buffer.hidden_state_shape,
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            bptt_length=self.bptt_length,
        )
