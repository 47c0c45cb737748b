"""
C-SWM as a world-model auxiliary: train a contrastive structured world model on the experience an on-policy
Stable-Baselines3 agent collects, rollout after rollout.
"""

from __future__ import annotations

import os

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

from structrl.agents.cswm_training import TransitionSplit
from structrl.world_models.cswm import ContrastiveSWM, CSWMConfig
from structrl.world_models.episode_frames import EpisodeFrames
from structrl.world_models.evaluation import FORWARD_BATCH
from structrl.world_models.negatives import make_negative_sampler
from structrl.world_models.ranking import global_ranks, hits_at, mean_reciprocal_rank

#: Negative sampling strategies a rollout supports. Time-aligned negatives are left out: a rollout cuts
#: episodes into pieces of unequal lengths, most starting mid-episode, so steps are not aligned across them.
ROLLOUT_NEGATIVES = ("batch", "episodic", "out-of-episode", "mixed")
#: The strategies drawing negatives from other episodes.
OTHER_EPISODE_NEGATIVES = ("out-of-episode", "mixed")


def rollout_episodes(buffer: RolloutBuffer) -> EpisodeFrames:
    """
    The transitions ``(o_t, a_t, o_{t+1})`` of a rollout buffer, as the episodes a C-SWM trains on.

    Each env's steps are cut before every episode start into *pieces*: runs of consecutive observations of
    one episode. Pairs crossing a cut are dropped (``o_{t+1}`` is then a reset observation, not the
    successor), and so is each env's last step (its successor is not in the buffer). Pieces of a single
    observation give no transition and are left out.

    :param buffer: A rollout buffer of uint8 image observations, channel-first or channel-last, and
        discrete actions, filled by an on-policy algorithm (or partly filled: only its rows so far count).
    :return: The pieces of at least two observations, env after env and in time order within an env, with
        channel-first frames and actions counted from 0.
    """
    assert isinstance(buffer.observation_space, spaces.Box) and isinstance(
        buffer.action_space, spaces.Discrete
    )
    n_steps = buffer.buffer_size if buffer.full else buffer.pos
    observations = buffer.observations[:n_steps]
    if not is_image_space_channels_first(buffer.observation_space):
        observations = np.moveaxis(observations, -1, 2)
    actions = buffer.actions[:n_steps].reshape(n_steps, buffer.n_envs) - buffer.action_space.start
    cuts = buffer.episode_starts[:n_steps].T.astype(bool)  # (n_envs, n_steps)
    cuts[:, 0] = True
    cuts = cuts.reshape(-1)
    lengths = np.diff(np.flatnonzero(cuts), append=cuts.size)
    in_kept_piece = np.repeat(lengths >= 2, lengths)
    has_successor = np.append(~cuts[1:], False)
    frames = observations.swapaxes(0, 1).reshape(buffer.n_envs * n_steps, *observations.shape[2:])
    return EpisodeFrames(
        frames=frames[in_kept_piece].astype(np.uint8, copy=False),
        actions=actions.T.reshape(-1)[has_successor].astype(np.int64, copy=False),
        num_steps=lengths[lengths >= 2] - 1,
    )


class CSWMAuxiliaryCallback(BaseCallback):
    """
    Train a contrastive structured world model (C-SWM, Kipf et al., 2020) on the agent's own experience while
    an on-policy algorithm (PPO, A2C, sb3-contrib's RecurrentPPO) learns.

    At the end of each rollout, the transitions ``(o_t, a_t, o_{t+1})`` of the rollout buffer (see
    :func:`rollout_episodes`) are first ranked by the world model, which has not trained on them yet: its
    1-step prediction ranks the encoded ``o_{t+1}`` of every transition of the rollout. The world model then
    trains ``n_epochs`` passes over them with its own Adam optimiser. The callback never touches the policy,
    its optimiser or the global random generators (it has its own), so the agent learns exactly as it would
    without it. Logged once per rollout:

    * ``cswm/loss``, ``cswm/positive_energy``, ``cswm/hinge``: mean training loss and its terms;
    * ``cswm/hits_at_1``, ``cswm/mrr``: 1-step Hits@1 and mean reciprocal rank on the new rollout;
    * ``cswm/transitions``: transitions of the rollout (pairs crossing an episode end are dropped).

    The observations must be uint8 images, channel-first or channel-last (SB3's ``VecTransposeImage``
    makes them channel-first in the buffer), and the actions discrete. The same values are kept in
    :attr:`last_metrics`; the model is :attr:`world_model`.

    :param encoder: Object extractor: ``"small"``, ``"medium"`` or ``"large"``.
    :param num_objects: Object slots ``K``.
    :param embedding_dim: Size of an object embedding.
    :param hidden_dim: Hidden units of the MLPs (the CNNs use ``hidden_dim // 16`` channels).
    :param copy_action: Give every object slot the whole action (Atari); otherwise action ``a`` acts on
        object ``a // (n_actions / num_objects)`` (block pushing), and ``num_objects`` must divide the
        number of actions.
    :param learning_rate: Adam's learning rate.
    :param negatives: Negative sampling: ``"batch"`` (another transition of the batch), ``"episodic"``
        (another observation of the same episode piece), ``"out-of-episode"`` (an observation of another
        piece) or ``"mixed"`` (episodic with probability ``beta``, out-of-episode otherwise).
    :param beta: Probability of an episodic negative with ``"mixed"``.
    :param n_epochs: Passes over each rollout's transitions.
    :param batch_size: Transitions per optimiser step.
    :param save_path: Where to save the world model when training ends (a ``.pt`` file that
        :meth:`~structrl.world_models.cswm.ContrastiveSWM.load` and ``structrl cswm eval`` read), or ``None``.
    :param seed: Seed of the initial weights, the shuffling and the negatives.
    :param verbose: Verbosity level.
    """

    def __init__(
        self,
        encoder: str = "small",
        num_objects: int = 5,
        embedding_dim: int = 2,
        hidden_dim: int = 512,
        copy_action: bool = False,
        learning_rate: float = 5e-4,
        negatives: str = "batch",
        beta: float = 0.5,
        n_epochs: int = 4,
        batch_size: int = 512,
        save_path: str | os.PathLike[str] | None = None,
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if negatives not in ROLLOUT_NEGATIVES:
            raise ValueError(
                f"negative sampling {negatives!r} is not available on rollouts: use one of "
                f"{', '.join(ROLLOUT_NEGATIVES)} (time-aligned negatives need whole episodes, as "
                "'structrl cswm train' reads them from an episode store)"
            )
        if n_epochs < 1 or batch_size < 2 or learning_rate <= 0:
            raise ValueError(
                "n_epochs must be positive, batch_size at least 2 and learning_rate positive; got "
                f"n_epochs={n_epochs}, batch_size={batch_size}, learning_rate={learning_rate}"
            )
        self.encoder = encoder
        self.num_objects = num_objects
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.copy_action = copy_action
        self.learning_rate = learning_rate
        self.negatives = negatives
        self.sampler = make_negative_sampler(negatives, beta)
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.save_path = save_path
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.world_model: ContrastiveSWM | None = None
        self.optimizer: th.optim.Optimizer | None = None
        self.last_metrics: dict[str, float] = {}

    def _world_model_config(self) -> CSWMConfig:
        """The C-SWM settings for the algorithm's spaces; raises if the C-SWM cannot use them."""
        observation_space, action_space = self.model.observation_space, self.model.action_space
        if isinstance(observation_space, spaces.Dict):
            raise ValueError(
                "CSWMAuxiliaryCallback needs image observations, got a Dict observation space "
                f"({list(observation_space.spaces)}): wrap the env so that it observes the image alone"
            )
        if not isinstance(observation_space, spaces.Box) or not is_image_space(observation_space):
            raise ValueError(
                "CSWMAuxiliaryCallback needs image observations (a uint8 Box of shape (C, H, W) or "
                f"(H, W, C) with bounds 0 and 255), got {observation_space}: use an image env"
            )
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(
                "CSWMAuxiliaryCallback needs a Discrete action space (the C-SWM transition model takes "
                f"one-hot actions), got {action_space}: use an env with discrete actions"
            )
        n_actions = int(action_space.n)
        if not self.copy_action and n_actions % self.num_objects:
            raise ValueError(
                f"{n_actions} actions cannot be split among {self.num_objects} objects: set num_objects "
                f"to a divisor of {n_actions}, or copy_action=True to give every object the whole action"
            )
        shape = observation_space.shape
        if not is_image_space_channels_first(observation_space):
            shape = (shape[2], shape[0], shape[1])
        return CSWMConfig(
            observation_shape=(shape[0], shape[1], shape[2]),
            encoder=self.encoder,
            num_objects=self.num_objects,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            action_dim=n_actions if self.copy_action else n_actions // self.num_objects,
            action_encoding="copy" if self.copy_action else "per-object",
        )

    def _rollout_buffer(self) -> RolloutBuffer:
        buffer = getattr(self.model, "rollout_buffer", None)
        if not isinstance(buffer, RolloutBuffer):
            raise TypeError(
                "CSWMAuxiliaryCallback trains on the rollout buffer of an on-policy algorithm (PPO, A2C, "
                f"RecurrentPPO); {type(self.model).__name__} has none"
            )
        return buffer

    def _init_callback(self) -> None:
        buffer = self._rollout_buffer()
        config = self._world_model_config()
        if buffer.buffer_size < 2:
            raise ValueError(
                f"rollouts of n_steps={buffer.buffer_size} give no transition (o_t, a_t, o_t+1): use "
                "n_steps of at least 2"
            )
        if self.negatives in OTHER_EPISODE_NEGATIVES and buffer.n_envs < 2:
            raise ValueError(
                f"{self.negatives!r} negatives come from other episodes, which a rollout of a single env "
                "may not hold: use at least 2 envs, or negatives='batch' or 'episodic'"
            )
        if self.world_model is None:
            # Initialise the weights without drawing from (or reseeding) the algorithm's torch generator.
            with th.random.fork_rng(devices=[]):
                th.manual_seed(self.seed)
                self.world_model = ContrastiveSWM(config).to(self.model.device)
            self.optimizer = th.optim.Adam(self.world_model.parameters(), lr=self.learning_rate)
        elif self.world_model.config != config:
            raise ValueError(
                f"this callback's world model was built for {self.world_model.config}, not for the spaces "
                f"of this algorithm ({config}): use a new CSWMAuxiliaryCallback"
            )

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self._rollout_buffer()
        episodes = rollout_episodes(buffer)
        transitions = int(episodes.num_steps.sum())
        if transitions < 2:
            raise ValueError(
                f"a rollout of n_steps={buffer.buffer_size} and {buffer.n_envs} envs gave {transitions} "
                "transition(s) within episodes (pairs crossing an episode end are dropped), too few to "
                "train on (at least 2): use a larger n_steps or longer episodes"
            )
        split = TransitionSplit(episodes, np.arange(len(episodes)))
        hits, mrr = self._rank(episodes, split)
        loss, positive, hinge = self._train(split)
        self.last_metrics = {
            "loss": loss,
            "positive_energy": positive,
            "hinge": hinge,
            "hits_at_1": hits,
            "mrr": mrr,
            "transitions": float(transitions),
        }
        for name, value in self.last_metrics.items():
            self.logger.record(f"cswm/{name}", value)

    def _rank(self, episodes: EpisodeFrames, split: TransitionSplit) -> tuple[float, float]:
        """1-step Hits@1 and MRR of the world model's predictions among all transitions of the rollout."""
        assert self.world_model is not None
        model = self.world_model.eval()
        rows = th.from_numpy(episodes.frame_rows(split.transition_episodes, split.transition_steps))
        with th.inference_mode():
            frames = th.from_numpy(episodes.frames)
            z = th.cat([model.encode(chunk.to(self.model.device)) for chunk in frames.split(FORWARD_BATCH)])
            predicted = model.predict(z[rows], th.from_numpy(episodes.actions).to(self.model.device))
            ranks = global_ranks(predicted.flatten(1).cpu(), z[rows + 1].flatten(1).cpu())
        return hits_at(ranks, 1), mean_reciprocal_rank(ranks)

    def _train(self, split: TransitionSplit) -> tuple[float, float, float]:
        """Train ``n_epochs`` passes over the transitions; the mean loss, positive energy and hinge."""
        assert self.world_model is not None and self.optimizer is not None
        model = self.world_model.train()
        sums, samples = np.zeros(3), 0
        for _ in range(self.n_epochs):
            for batch in split.batches(self._rng.permutation(len(split)), self.batch_size):
                inputs = split.batch(batch, self.sampler, model.config.negative_anchor, self._rng)
                loss = model.loss(*(tensor.to(self.model.device) for tensor in inputs))
                self.optimizer.zero_grad()
                loss.loss.backward()
                self.optimizer.step()
                sums += len(batch) * np.array([term.item() for term in loss])
                samples += len(batch)
        loss_value, positive, hinge = sums / samples
        return float(loss_value), float(positive), float(hinge)

    def _on_training_end(self) -> None:
        if self.save_path is not None and self.world_model is not None:
            self.world_model.save(self.save_path, num_timesteps=self.num_timesteps, negatives=self.negatives)
