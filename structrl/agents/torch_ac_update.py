"""
torch_ac's recurrent PPO update, run on sb3-contrib's rollout buffer.

The RIM seed trained with torch_ac (rl-starter-files). Its update differs from Stable-Baselines3's in four
ways, all reproduced here (``RecurrentPPO(..., update_rule="torch_ac")``):

- every process's rollout is cut into chunks of ``recurrence`` steps; an epoch shuffles the chunks and
  every other epoch shifts them by half a chunk, dropping each process's last one, so the default 16
  processes x 128 steps, chunks of 32 and minibatches of 256 frames give 8 + 6 + 8 + 6 = 28 optimiser
  steps per update instead of 32;
- the memory state that starts a chunk is the one stored for it, refreshed by earlier minibatches: torch_ac
  writes every step's new (detached) memory back as the stored state of the next step, and chunks start
  only at multiples of half a chunk, so writing back the memory halfway through each chunk is the same;
- the value loss takes the larger of the unclipped and the clipped squared errors, clipped with the
  policy's clip range;
- advantages are not normalised. torch_ac sums the mean losses of a chunk's steps and divides by the chunk
  length, which is the mean over all the frames of the minibatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.buffers import RecurrentRolloutBuffer

from structrl.policies.shared_memory import SharedMemoryRecurrentPolicy

if TYPE_CHECKING:
    from structrl.agents.recurrent_ppo import RecurrentPPO


@dataclass
class FlatRollout:
    """
    A rollout laid out as torch_ac does: process by process, so frame ``p * n_steps + t`` is step ``t`` of
    process ``p`` and a chunk of consecutive frames never crosses processes.

    :param observations: Observations, ``(n_frames, *obs_shape)``.
    :param actions: Actions taken, ``(n_frames,)`` for discrete actions.
    :param episode_starts: 1 where a frame starts an episode (torch_ac's mask is one minus it).
    :param old_values: Values predicted while collecting.
    :param old_log_prob: Log-likelihoods of the actions while collecting.
    :param advantages: GAE advantages.
    :param returns: Value targets (values plus advantages).
    :param hidden: The memory's hidden state fed to each frame, ``(n_frames, n_layers, hidden)``.
    :param cell: The memory's cell state fed to each frame, same shape.
    :param n_steps: Steps per process.
    """

    observations: th.Tensor
    actions: th.Tensor
    episode_starts: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    hidden: th.Tensor
    cell: th.Tensor
    n_steps: int

    @classmethod
    def from_buffer(cls, buffer: RecurrentRolloutBuffer, device: th.device) -> FlatRollout:
        """
        :param buffer: A full rollout buffer with advantages computed, before ``get`` flattens it.
        :param device: Where the tensors go.
        :return: The rollout in process-major order.
        """
        assert buffer.full and not buffer.generator_ready, (
            "torch_ac's update reads a full rollout buffer that get() has not flattened yet"
        )

        def by_process(array: np.ndarray) -> th.Tensor:
            flat = array.swapaxes(0, 1).reshape(buffer.n_envs * buffer.buffer_size, *array.shape[2:])
            return th.as_tensor(flat, device=device)

        def memory(states: np.ndarray) -> th.Tensor:  # (n_steps, n_layers, n_envs, hidden)
            return by_process(states.transpose(0, 2, 1, 3)).clone()

        actions = by_process(buffer.actions)
        if isinstance(buffer.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        return cls(
            observations=by_process(buffer.observations),
            actions=actions,
            episode_starts=by_process(buffer.episode_starts),
            old_values=by_process(buffer.values),
            old_log_prob=by_process(buffer.log_probs),
            advantages=by_process(buffer.advantages),
            returns=by_process(buffer.returns),
            hidden=memory(buffer.hidden_states_pi),
            cell=memory(buffer.cell_states_pi),
            n_steps=buffer.buffer_size,
        )

    def memory_at(self, frames: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        :param frames: Frame indexes, one per sequence.
        :return: The stored ``(h, c)`` of those frames, each ``(n_layers, n_seq, hidden)``.
        """
        return self.hidden[frames].transpose(0, 1), self.cell[frames].transpose(0, 1)

    def store_memory(self, frames: th.Tensor, states: tuple[th.Tensor, th.Tensor]) -> None:
        """
        :param frames: Frame indexes, one per sequence.
        :param states: ``(h, c)`` to store for those frames, each ``(n_layers, n_seq, hidden)``; detached.
        """
        self.hidden[frames] = states[0].detach().transpose(0, 1)
        self.cell[frames] = states[1].detach().transpose(0, 1)


def chunk_starts(
    n_frames: int, n_steps: int, recurrence: int, shifted: bool, rng: np.random.Generator
) -> np.ndarray:
    """
    torch_ac's chunk starts for one epoch: ``0, R, 2R...`` in random order, or, for a shifted epoch, the same
    moved by ``R // 2`` without each process's last chunk (it would run into the next process).

    :param n_frames: Frames in the rollout (processes x steps).
    :param n_steps: Steps per process.
    :param recurrence: Chunk length ``R``.
    :param shifted: Whether this is a shifted epoch.
    :param rng: Random generator for the order.
    :return: Frame indexes that start a chunk.
    """
    starts = rng.permutation(np.arange(0, n_frames, recurrence))
    if shifted:
        starts = starts[(starts + recurrence) % n_steps != 0] + recurrence // 2
    return starts


def torch_ac_losses(
    log_prob: th.Tensor,
    old_log_prob: th.Tensor,
    advantages: th.Tensor,
    values: th.Tensor,
    old_values: th.Tensor,
    returns: th.Tensor,
    clip_range: float,
) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """
    torch_ac's PPO losses for one step of a batch of chunks.

    :param log_prob: Log-likelihoods of the actions under the current policy.
    :param old_log_prob: Their log-likelihoods while collecting.
    :param advantages: Advantages, not normalised.
    :param values: Current values.
    :param old_values: Values while collecting.
    :param returns: Value targets.
    :param clip_range: PPO's epsilon, for the ratio and the value change alike.
    :return: The clipped surrogate policy loss, the value loss (the larger of the unclipped and clipped
        squared errors) and the fraction of ratios outside the clip range.
    """
    ratio = th.exp(log_prob - old_log_prob)
    surrogate = th.min(ratio * advantages, th.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages)
    clipped_values = old_values + th.clamp(values - old_values, -clip_range, clip_range)
    value_loss = th.max((values - returns) ** 2, (clipped_values - returns) ** 2).mean()
    clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
    return -surrogate.mean(), value_loss, clip_fraction


@dataclass
class UpdateStats:
    """
    Averages over the optimiser steps of one update, for the logger.

    :param policy_loss: Clipped surrogate loss.
    :param value_loss: torch_ac's value loss.
    :param entropy_loss: Minus the entropy.
    :param clip_fraction: Fraction of clipped ratios.
    :param optimizer_steps: Optimiser steps taken.
    """

    policy_loss: float
    value_loss: float
    entropy_loss: float
    clip_fraction: float
    optimizer_steps: int


def torch_ac_update(model: RecurrentPPO, rng: np.random.Generator, first_batch_num: int) -> UpdateStats:
    """
    Run torch_ac's PPO update on the model's rollout buffer.

    :param model: A RecurrentPPO with ``bptt_length`` (torch_ac's ``recurrence``) and a policy whose one
        memory both losses train (``shared_memory_value_gradient=True``).
    :param rng: Random generator for the chunk order.
    :param first_batch_num: torch_ac's epoch counter at the start of this update; epochs with an odd
        counter are shifted.
    :return: Loss averages and the number of optimiser steps.
    """
    policy = model.policy
    assert isinstance(policy, SharedMemoryRecurrentPolicy) and policy.shared_memory_value_gradient, (
        "update_rule='torch_ac' trains torch_ac's single memory: use a structrl recurrent policy with "
        "shared_lstm=True, enable_critic_lstm=False, shared_memory_value_gradient=True"
    )
    assert isinstance(model.rollout_buffer, RecurrentRolloutBuffer)
    assert model.bptt_length is not None and model.batch_size is not None
    recurrence = model.bptt_length
    rollout = FlatRollout.from_buffer(model.rollout_buffer, model.device)
    n_frames = rollout.observations.shape[0]
    sequences_per_batch = model.batch_size // recurrence
    clip_range = float(model.clip_range(model._current_progress_remaining))  # type: ignore[operator]
    totals = np.zeros(4)
    steps_taken = 0
    split = recurrence // 2  # chunks start at multiples of half a chunk: the only memories ever read
    pieces = ((0, split), (split, recurrence)) if split else ((0, recurrence),)
    for epoch in range(model.n_epochs):
        shifted = (first_batch_num + epoch) % 2 == 1
        starts = chunk_starts(n_frames, rollout.n_steps, recurrence, shifted, rng)
        for first in range(0, len(starts), sequences_per_batch):
            frames = th.as_tensor(starts[first : first + sequences_per_batch], device=model.device)
            states = rollout.memory_at(frames)
            outputs = []
            for begin, end in pieces:
                steps = (frames[:, None] + th.arange(begin, end, device=model.device)).flatten()
                values, log_prob, entropy, states = policy.evaluate_sequence(
                    rollout.observations[steps], rollout.actions[steps], states, rollout.episode_starts[steps]
                )
                outputs.append((steps, values.flatten(), log_prob, entropy))
                if end < recurrence:
                    rollout.store_memory(frames + end, states)
            steps, values, log_prob, entropy = (th.cat(column) for column in zip(*outputs, strict=True))
            policy_loss, value_loss, clip_fraction = torch_ac_losses(
                log_prob,
                rollout.old_log_prob[steps],
                rollout.advantages[steps],
                values,
                rollout.old_values[steps],
                rollout.returns[steps],
                clip_range,
            )
            entropy_loss = -entropy.mean()
            loss = policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss
            policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
            policy.optimizer.step()
            totals += th.stack([policy_loss, value_loss, entropy_loss, clip_fraction]).detach().cpu().numpy()
            steps_taken += 1
    means = totals / max(steps_taken, 1)
    return UpdateStats(
        policy_loss=float(means[0]),
        value_loss=float(means[1]),
        entropy_loss=float(means[2]),
        clip_fraction=float(means[3]),
        optimizer_steps=steps_taken,
    )
