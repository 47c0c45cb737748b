"""
Behaviour cloning of recurrent policies (RIM, LSTM) on whole demonstration episodes.

The ``imitation`` library has no recurrent behaviour cloning: its ``BC`` trainer calls
``policy.evaluate_actions(obs, acts)`` on shuffled single transitions, which a sb3-contrib
``RecurrentActorCriticPolicy`` cannot take (it needs its state and the episode starts) and which would carry
no temporal context anyway. :class:`SequenceCloningTrainer` is the smallest honest replacement, the
padded-sequence pattern of sb3-contrib's own ``RecurrentPPO`` training:

* each batch holds whole episodes, padded at the end to the longest one (by repeating the last real
  observation, so the network never sees made-up inputs) with a mask of the real steps;
* every episode starts from the zero state (the state a recurrent policy has at an episode start when it
  acts), so no reset is needed inside a sequence;
* features go through the policy's ``_process_sequence`` (the RIM or LSTM over time), its actor head and
  action distribution;
* the loss is the masked mean negative log-likelihood of the demonstrated actions minus ``ent_weight``
  times the masked mean entropy (as ``imitation``'s BC loss), plus the scheduled sparsity penalty of the
  policy's attention models when a :class:`~structrl.policies.factored_attention.SparsitySchedule` is given.

Only the actor is trained; the critic (unused by behaviour cloning) keeps its initial weights.

Training is resumable at epoch boundaries: :meth:`SequenceCloningTrainer.state_dict` holds the optimizer, the
step and epoch counters and the episode-order generator, so a trainer restored from it (on the same episodes,
with the policy's weights restored too) continues exactly as the saved one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.logger import Logger

from structrl.policies.factored_attention import SparsitySchedule, sparsity_penalty


class SequenceCloningError(ValueError):
    """Demonstrations or settings the sequence trainer cannot use."""


@dataclass(frozen=True)
class Demonstration:
    """
    One demonstrated episode of ``T`` actions.

    :param observations: Observation arrays with ``T + 1`` rows (the observation after the last action
        included, as an episode store holds them) or ``T`` rows, keyed as the policy's Dict observation space.
    :param actions: The demonstrated actions, ``(T,)``.
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class SequenceBatch:
    """
    Episodes padded to a common length and flattened sequence-major (row ``i * max_length + t`` is step
    ``t`` of episode ``i``), as ``_process_sequence`` expects them.

    :param observations: Observation tensors, ``(n_episodes * max_length, ...)``.
    :param actions: Demonstrated actions, ``(n_episodes * max_length,)`` (0 on padding).
    :param mask: True on real steps, ``(n_episodes * max_length,)``.
    :param n_episodes: Episodes in the batch.
    """

    observations: dict[str, th.Tensor]
    actions: th.Tensor
    mask: th.Tensor
    n_episodes: int


@dataclass(frozen=True)
class SequenceCloningMetrics:
    """
    The terms of a batch's loss (logged as ``bc/<name>``).

    :param neglogp: Masked mean negative log-likelihood of the demonstrated actions.
    :param entropy: Masked mean entropy of the action distribution.
    :param prob_true_act: Masked mean probability of the demonstrated actions.
    :param sparsity: Sparsity penalty of the policy's attention models (``None`` without any).
    :param sparsity_weight: Its scheduled weight at this step.
    :param loss: ``neglogp - ent_weight * entropy + sparsity_weight * sparsity``.
    """

    neglogp: th.Tensor
    entropy: th.Tensor
    prob_true_act: th.Tensor
    sparsity: th.Tensor | None
    sparsity_weight: float
    loss: th.Tensor


def pad_episodes(demonstrations: Sequence[Demonstration], device: th.device | str = "cpu") -> SequenceBatch:
    """
    Pad episodes to the longest one by repeating their last real step, and flatten them sequence-major.

    :param demonstrations: the episodes of the batch
    :param device: torch device of the tensors
    :return: the batch
    """
    lengths = np.array([len(demonstration) for demonstration in demonstrations])
    max_length = int(lengths.max())
    # row t of episode i reads step min(t, T_i - 1): real steps, then the last real one repeated
    steps = np.minimum(np.arange(max_length)[None, :], lengths[:, None] - 1)
    observations = {
        key: th.as_tensor(
            np.concatenate(
                [demo.observations[key][row] for demo, row in zip(demonstrations, steps, strict=True)]
            ),
            device=device,
        )
        for key in demonstrations[0].observations
    }
    actions = np.concatenate([demo.actions[row] for demo, row in zip(demonstrations, steps, strict=True)])
    mask = (np.arange(max_length)[None, :] < lengths[:, None]).reshape(-1)
    return SequenceBatch(
        observations=observations,
        actions=th.as_tensor(np.where(mask, actions, 0), device=device),
        mask=th.as_tensor(mask, device=device),
        n_episodes=len(demonstrations),
    )


class SequenceCloningTrainer:
    """
    Behaviour cloning of a sb3-contrib recurrent policy (:class:`~structrl.policies.RIMPolicy`,
    :class:`~structrl.policies.MiniGridLstmPolicy`) on whole episodes; see the module documentation.

    :param policy: The policy to train (its actor: features extractor, recurrent core, action head).
    :param demonstrations: The training episodes.
    :param batch_size: Episodes per batch (one optimizer step each).
    :param learning_rate: Adam's learning rate.
    :param ent_weight: Weight of the entropy bonus.
    :param sparsity_schedule: Weight of the sparsity penalty of the policy's attention models by step
        (``None``: no penalty).
    :param rng: Random generator of the episode order.
    :param logger: Where to record the loss terms (``bc/...``) after each batch (``None``: nowhere).
    :raises SequenceCloningError: without episodes, with an empty episode, with a non-positive batch size,
        or with a sparsity schedule and no attention model in the policy
    """

    def __init__(
        self,
        policy: RecurrentActorCriticPolicy,
        demonstrations: Sequence[Demonstration],
        *,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        ent_weight: float = 1e-2,
        sparsity_schedule: SparsitySchedule | None = None,
        rng: np.random.Generator,
        logger: Logger | None = None,
    ) -> None:
        if not demonstrations or min(len(demonstration) for demonstration in demonstrations) < 1:
            raise SequenceCloningError("sequence cloning needs at least one episode, each of at least 1 step")
        if batch_size < 1:
            raise SequenceCloningError(f"the batch size must be positive, got {batch_size}")
        if sparsity_schedule is not None and sparsity_penalty(policy) is None:
            raise SequenceCloningError(
                "a sparsity schedule needs an attention model in the policy: use a factored or simple "
                "attention features extractor, or no schedule"
            )
        self.policy = policy
        self.demonstrations = list(demonstrations)
        self.batch_size = batch_size
        self.ent_weight = ent_weight
        self.sparsity_schedule = sparsity_schedule
        self.rng = rng
        self.logger = logger
        self.optimizer = th.optim.Adam(policy.parameters(), lr=learning_rate)
        #: Optimizer steps taken so far.
        self.step = 0
        #: Epochs completed so far.
        self.epoch = 0

    def state_dict(self) -> dict[str, Any]:
        """
        The trainer's state between epochs, for a checkpoint (``torch.save``, readable with
        ``weights_only=True``). The policy's weights are not in it: save ``policy.state_dict()`` beside it.

        :return: ``optimizer`` (its state dict), ``step``, ``epoch`` and ``rng`` (the state of the generator
            of the episode order)
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """
        Restore the state saved by :meth:`state_dict` (restore the policy's weights as well), so that training
        continues as the saved trainer would have.

        :param state: a :meth:`state_dict`
        :raises SequenceCloningError: if the generator of the episode order is of another kind than the saved
            one
        """
        saved_kind = state["rng"].get("bit_generator")
        kind = type(self.rng.bit_generator).__name__
        if saved_kind != kind:
            raise SequenceCloningError(
                f"the saved episode order comes from a {saved_kind} generator, this trainer has a {kind}: "
                f"give the trainer a numpy.random.Generator({saved_kind}(...))"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.rng.bit_generator.state = state["rng"]

    def batches(self) -> Iterator[SequenceBatch]:
        """
        :return: one epoch of batches, the episodes in a fresh random order
        """
        order = self.rng.permutation(len(self.demonstrations))
        for start in range(0, len(order), self.batch_size):
            chunk = [self.demonstrations[index] for index in order[start : start + self.batch_size]]
            yield pad_episodes(chunk, self.policy.device)

    def metrics(self, batch: SequenceBatch) -> SequenceCloningMetrics:
        """
        :param batch: padded episodes
        :return: the loss and its terms (with gradients), at the current step's sparsity weight
        """
        policy = self.policy
        extracted = policy.extract_features(batch.observations)
        features = extracted if isinstance(extracted, th.Tensor) else extracted[0]  # (actor, critic) features
        assert policy.lstm_actor is not None
        layers, _, hidden = policy.lstm_hidden_state_shape
        zeros = th.zeros(layers, batch.n_episodes, hidden, device=policy.device)
        no_resets = th.zeros(len(batch.mask), device=policy.device)
        latent, _ = policy._process_sequence(features, (zeros, zeros), no_resets, policy.lstm_actor)
        distribution = policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(latent))
        log_prob = distribution.log_prob(batch.actions)[batch.mask]
        entropy = distribution.entropy()
        assert entropy is not None
        entropy = entropy[batch.mask].mean()
        neglogp = -log_prob.mean()
        loss = neglogp - self.ent_weight * entropy
        penalty = sparsity_penalty(policy)
        weight = 0.0
        if self.sparsity_schedule is not None and penalty is not None:
            weight = self.sparsity_schedule(self.step)
            loss = loss + weight * penalty
        return SequenceCloningMetrics(
            neglogp=neglogp,
            entropy=entropy,
            prob_true_act=log_prob.exp().mean(),
            sparsity=penalty.detach() if penalty is not None else None,
            sparsity_weight=weight,
            loss=loss,
        )

    def train(
        self,
        n_epochs: int,
        on_batch_end: Callable[[], None] | None = None,
        on_epoch_end: Callable[[], None] | None = None,
    ) -> None:
        """
        Train for some more epochs (passes over the episodes), one optimizer step per batch.

        :param n_epochs: number of epochs
        :param on_batch_end: called after each optimizer step (the policy is put back in training mode
            after it, so it may evaluate the policy)
        :param on_epoch_end: called after each epoch, once :attr:`epoch` counts it (e.g. to save a checkpoint
            with :meth:`state_dict`)
        """
        for _ in range(n_epochs):
            for batch in self.batches():
                self.policy.set_training_mode(True)
                metrics = self.metrics(batch)
                self.optimizer.zero_grad()
                metrics.loss.backward()
                self.optimizer.step()
                if self.logger is not None:
                    self._log(metrics, self.epoch, batch)
                self.step += 1
                if on_batch_end is not None:
                    on_batch_end()
            self.epoch += 1
            if on_epoch_end is not None:
                on_epoch_end()

    def _log(self, metrics: SequenceCloningMetrics, epoch: int, batch: SequenceBatch) -> None:
        assert self.logger is not None
        self.logger.record("bc/epoch", epoch)
        self.logger.record("bc/batch", self.step)
        self.logger.record("bc/episodes", batch.n_episodes)
        for name in ("neglogp", "entropy", "prob_true_act", "sparsity", "sparsity_weight", "loss"):
            value = getattr(metrics, name)
            if value is not None:
                self.logger.record(f"bc/{name}", value.item() if isinstance(value, th.Tensor) else value)
        self.logger.dump(self.step)
