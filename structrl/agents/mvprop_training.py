"""
Training the MVProp planner (:class:`~structrl.policies.mvprop.MVPropPolicy`) on GoToLocal demonstrations
with the "CQL-like" imitation loss of Spilsbury & Ilin (2022), the reference's VIN harness.

**Batches** hold ``batch_size`` (32) whole demonstrations, padded to the longest of the batch (images and
directions with 0, actions with -1, returns with 0) with a mask of the real steps; the frames are those before
each action (the observation after the final ``done`` is left out). Every frame is planned independently, with
the episode's mission.

**Loss** (:func:`imitation_losses`), over the real steps, with ``a_t`` the demonstrated action and
``G_t = 0.9 ** (T - 1 - t)`` the discounted return of the binary success reward:

* ``q_mse = mean (Q(s_t, a_t) - G_t) ** 2``;
* ``q_reg = mean`` of ``Q(s_t, a) ** 2`` over the untaken actions;
* ``v_reg = mean`` of ``V ** 2`` over the value maps (of the real frames only: the reference also averaged
  over the padding);
* ``loss = q_mse + 0.01 * (q_reg + v_reg)`` (plus the scheduled L1 sparsity penalty when the interaction
  model is trained end to end with ``sparsity_weight > 0``).

**Interaction model.** With ``discriminator`` (a run directory of ``structrl discriminator`` or its weights
file) the planner's interaction model is the discriminator's, frozen: only MVProp and the Q-head are trained
(Adam, learning rate 1e-3). Without it, everything is trained end to end.

**A run directory** is laid out like a behaviour-cloning run's (:mod:`structrl.agents.behavior_cloning`):
``config.yml`` (settings, the environment and its ``env_kwargs``, versions), ``best_model.zip`` (the best ID
success rate of the greedy policy on the fixed ID validation seeds), ``model.zip`` (final, or current after
Ctrl-C), ``checkpoint.pt`` (the state after each epoch), ``summary.json`` and ``tensorboard/``
(``train/path``, ``train/reg``, ``train/vreg``, ``train/loss``, ``train/l1c``, ``eval/{id,ood}_success_rate``,
...). The models are SB3 ``PPO`` files holding the planner's policy, so ``structrl evaluate MODEL --demos
FILE.h5 --split ood`` and :func:`~structrl.agents.evaluation.load_model` read them. The batch order of epoch
``e`` is ``numpy.random.default_rng([seed, e])``, so :func:`resume_mvprop` continues to the same weights as
an uninterrupted run (with the same number of torch threads). The run directory, the resume checks and the
greedy evaluations are shared with behaviour cloning (:mod:`structrl.agents.offline_runs`,
:mod:`structrl.agents.greedy_validation`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.utils.tensorboard import SummaryWriter

from structrl.agents.behavior_cloning import BCError, store_env_settings
from structrl.agents.evaluation import load_model
from structrl.agents.goal_discriminator import DemoFrames, load_interaction_model, read_demo_frames
from structrl.agents.greedy_validation import BEST_MODEL_FILE as BEST_MODEL_FILE
from structrl.agents.greedy_validation import MODEL_FILE as MODEL_FILE
from structrl.agents.greedy_validation import GreedyValidation, evaluation_problems, validation_seeds
from structrl.agents.offline_runs import CHECKPOINT_FILE as CHECKPOINT_FILE
from structrl.agents.offline_runs import CONFIG_FILE as CONFIG_FILE
from structrl.agents.offline_runs import SUMMARY_FILE as SUMMARY_FILE
from structrl.agents.offline_runs import TENSORBOARD_DIR as TENSORBOARD_DIR
from structrl.agents.offline_runs import (
    OfflineSettings,
    RunKind,
    RunProgress,
    check_resume,
    check_train_transitions,
    fresh_run_dir,
    read_checkpoint,
    read_run_config,
    save_checkpoint,
    tensorboard_writer,
    write_run_config,
    write_summary,
)
from structrl.data.splits import ID_VALID_PER_GOAL, OOD_VALID_PER_GOAL, VALIDATION_SETS, DemoSplit
from structrl.policies.factored_attention import EMBEDDING_DIM, HEAD_CHANNELS
from structrl.policies.mvprop import (
    DEFAULT_K,
    INTERACTION_MODELS,
    MVPropPlanner,
    MVPropPolicy,
)

#: Format tag of ``checkpoint.pt``.
CHECKPOINT_FORMAT = "structrl-mvprop-checkpoint-1"
#: Settings :func:`resume_mvprop` may change; the others must stay those of the checkpoint.
RESUMABLE_SETTINGS = ("epochs", "eval_envs")
#: Discount of the demonstrations' returns (the reference's preprocessing).
RETURN_DISCOUNT = 0.9
#: Weight of the regularisers of untaken actions and of the value map.
REGULARISATION_WEIGHT = 0.01


class MVPropError(BCError):
    """MVProp-planner settings that cannot work, or a store, discriminator or run they cannot use."""


_RUN = RunKind(
    name="MVProp",
    article="an",
    error=MVPropError,
    tag="mvprop",
    checkpoint_format=CHECKPOINT_FORMAT,
    unit="epoch",
    resumable=RESUMABLE_SETTINGS,
    outputs=(MODEL_FILE, BEST_MODEL_FILE),
    metric="id_success_rate",
    best_weights="best_policy",
)


# --------------------------------------------------------------------------------------------------------
# Batches and losses


@dataclass(frozen=True)
class TrajectoryBatch:
    """
    Whole demonstrations padded to the longest of the batch.

    :param images: Grids ``(B, T, H, W, 3)``, 0 on padding.
    :param directions: ``(B, T)``, 0 on padding.
    :param missions: Word ids ``(B, L)``.
    :param actions: Demonstrated actions ``(B, T)``, -1 on padding.
    :param returns: ``G_t = discount ** (T_i - 1 - t)``, ``(B, T)``, 0 on padding.
    :param mask: True on real steps, ``(B, T)``.
    """

    images: th.Tensor
    directions: th.Tensor
    missions: th.Tensor
    actions: th.Tensor
    returns: th.Tensor
    mask: th.Tensor


def pad_trajectories(
    frames: DemoFrames,
    items: np.ndarray,
    discount: float = RETURN_DISCOUNT,
    device: th.device | str = "cpu",
) -> TrajectoryBatch:
    """
    :param frames: demonstrations
    :param items: the episodes of the batch (indices in ``frames``)
    :param discount: discount of the returns
    :param device: torch device
    :return: the padded batch
    """
    lengths = frames.lengths[items]
    steps = int(lengths.max())
    time_index = np.arange(steps)[None, :]
    mask = time_index < lengths[:, None]
    rows = np.where(mask, frames.starts[items][:, None] + time_index, 0)
    images = np.where(mask[..., None, None, None], frames.images[rows], 0)
    directions = np.where(mask, frames.directions[rows], 0)
    actions = np.where(mask, frames.actions[rows], -1)
    returns = np.where(mask, discount ** np.maximum(lengths[:, None] - 1 - time_index, 0), 0.0)

    def tensor(array: np.ndarray, dtype: th.dtype) -> th.Tensor:
        return th.as_tensor(array, device=device).to(dtype)

    return TrajectoryBatch(
        images=tensor(images, th.long),
        directions=tensor(directions, th.long),
        missions=tensor(frames.missions[items], th.long),
        actions=tensor(actions, th.long),
        returns=tensor(returns, th.float32),
        mask=tensor(mask, th.bool),
    )


@dataclass(frozen=True)
class ImitationLosses:
    """
    The terms of a batch's loss (logged as ``train/path``, ``train/reg``, ``train/vreg``, ``train/l1c``).

    :param q_mse: ``mean (Q(s, a_demo) - G) ** 2`` over the real steps (``path``).
    :param q_reg: ``mean Q(s, a) ** 2`` over the real steps and the untaken actions (``reg``).
    :param v_reg: ``mean V ** 2`` over the value maps of the real steps (``vreg``).
    :param sparsity: The interaction model's L1 sparsity penalty (``None`` when it is not added).
    :param sparsity_weight: Its weight at this step.
    :param accuracy: Fraction of real steps whose greedy action is the demonstrated one (logged only).
    :param loss: ``q_mse + reg_weight * (q_reg + v_reg) [+ sparsity_weight * sparsity]``.
    """

    q_mse: th.Tensor
    q_reg: th.Tensor
    v_reg: th.Tensor
    sparsity: th.Tensor | None
    sparsity_weight: float
    accuracy: th.Tensor
    loss: th.Tensor


def imitation_losses(
    planner: MVPropPlanner,
    batch: TrajectoryBatch,
    regularisation_weight: float = REGULARISATION_WEIGHT,
    sparsity_weight: float = 0.0,
) -> ImitationLosses:
    """
    The reference's "CQL-like" imitation loss on whole demonstrations (see the module documentation); the
    padded steps are left out of every term.

    :param planner: the planner
    :param batch: padded demonstrations
    :param regularisation_weight: weight of ``q_reg + v_reg``
    :param sparsity_weight: weight of the interaction model's sparsity penalty (0: not added)
    :return: the loss and its terms
    """
    mask = batch.mask
    missions = batch.missions[:, None, :].expand(-1, mask.shape[1], -1)[mask]
    output = planner.plan(batch.images[mask], batch.directions[mask], missions)
    q_values, actions, returns = output.q_values, batch.actions[mask], batch.returns[mask]
    taken = q_values.gather(1, actions[:, None]).squeeze(1)
    q_mse = (taken - returns).pow(2).mean()
    untaken = th.ones_like(q_values, dtype=th.bool).scatter_(1, actions[:, None], False)
    q_reg = q_values[untaken].pow(2).mean()
    v_reg = output.value.pow(2).mean()
    loss = q_mse + regularisation_weight * (q_reg + v_reg)
    penalty = None
    if sparsity_weight:
        penalty = planner.interaction.sparsity_penalty()
        loss = loss + sparsity_weight * penalty
    accuracy = (q_values.detach().argmax(dim=1) == actions).float().mean()
    return ImitationLosses(q_mse, q_reg, v_reg, penalty, sparsity_weight, accuracy, loss)


# --------------------------------------------------------------------------------------------------------
# Settings


@dataclass
class MVPropConfig(OfflineSettings):
    """
    An MVProp-planner run. The defaults are the paper's (batch 32, Adam at 1e-3, ``k = 10``, returns
    discounted by 0.9, regularisers weighted 0.01, the interaction model of a discriminator frozen).

    :param dataset: The demonstration store (``structrl demos``).
    :param limit: Training demonstrations per ID goal (default: all but the ID validation ones).
    :param goal_split: The goal split (``paper``).
    :param id_valid_per_goal: ID validation episodes per ID goal (the last ones of each goal).
    :param ood_valid_per_goal: OOD validation episodes per held-out goal (the first ones of each goal).
    :param discriminator: A discriminator run directory or weights file whose interaction model is used,
        frozen (default: none, the interaction model is trained end to end).
    :param interaction_model: ``factored-attention`` or ``simple-attention`` (default: the discriminator's,
        or factored attention).
    :param embedding_dim: Width of the interaction model's embeddings (default: the discriminator's, or 48).
    :param k: MVProp's value iterations (0: the "Factored/CNN policy" ablation).
    :param head_channels: Channels of the Q-head's 3x3 and first 1x1 convolutions.
    :param epochs: Passes over the training demonstrations.
    :param batch_size: Demonstrations per optimizer step.
    :param learning_rate: Adam's learning rate.
    :param discount: Discount of the returns ``G_t``.
    :param regularisation_weight: Weight of ``q_reg + v_reg``.
    :param sparsity_weight: Final weight of the L1 sparsity penalty, end-to-end training only (0: none).
    :param sparsity_start: Steps before that weight ramps up.
    :param sparsity_ramp: Steps of the linear ramp.
    :param seed: Seed of the weights and of the batch order.
    :param eval_every: Optimizer steps between greedy evaluations (0: only at the end; there is always one
        at the end).
    :param eval_episodes: Validation episodes per set and evaluation, goal by goal (default: all).
    :param eval_envs: Environments stepped together in evaluations.
    """

    run_kind: ClassVar[RunKind] = _RUN
    dataset: str
    limit: int | None = None
    goal_split: str = "paper"
    id_valid_per_goal: int = ID_VALID_PER_GOAL
    ood_valid_per_goal: int = OOD_VALID_PER_GOAL
    discriminator: str | None = None
    interaction_model: str | None = None
    embedding_dim: int | None = None
    k: int = DEFAULT_K
    head_channels: list[int] = field(default_factory=lambda: list(HEAD_CHANNELS))
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    discount: float = RETURN_DISCOUNT
    regularisation_weight: float = REGULARISATION_WEIGHT
    sparsity_weight: float = 0.0
    sparsity_start: int = 1000
    sparsity_ramp: int = 5000
    seed: int = 0
    eval_every: int = 500
    eval_episodes: int | None = None
    eval_envs: int = 32

    def check(self) -> None:
        """
        :raises MVPropError: naming the first invalid setting and how to fix it
        """
        problems = (
            (
                self.interaction_model is not None and self.interaction_model not in INTERACTION_MODELS,
                f"unknown interaction model {self.interaction_model!r}: use one of "
                f"{', '.join(INTERACTION_MODELS)}",
            ),
            (
                self.embedding_dim is not None and self.embedding_dim < 1,
                f"the embedding width must be positive, got {self.embedding_dim}",
            ),
            (self.k < 0, f"the number of value iterations (--k) must be >= 0, got {self.k}"),
            (
                len(self.head_channels) != 2 or min(self.head_channels) < 1,
                f"the Q-head needs two positive channel counts, got {self.head_channels}",
            ),
            (self.epochs < 1, f"the number of epochs must be positive, got {self.epochs}"),
            (self.batch_size < 1, f"the batch size must be positive, got {self.batch_size}"),
            (self.learning_rate <= 0, f"the learning rate must be positive, got {self.learning_rate}"),
            (not 0 < self.discount <= 1, f"the discount must be in (0, 1], got {self.discount}"),
            (
                self.regularisation_weight < 0,
                f"the regularisation weight must be >= 0, got {self.regularisation_weight}",
            ),
            (self.sparsity_weight < 0, f"the sparsity weight must be >= 0, got {self.sparsity_weight}"),
            (
                self.sparsity_weight > 0 and self.discriminator is not None,
                "--sparsity-weight trains the interaction model end to end, but the discriminator's is "
                "frozen: drop --sparsity-weight or --discriminator",
            ),
            (
                self.sparsity_start < 0 or self.sparsity_ramp < 0,
                "the sparsity schedule's start and ramp must be >= 0",
            ),
            (self.seed < 0, f"the seed must be >= 0, got {self.seed}"),
            *evaluation_problems(self.eval_every, self.eval_episodes, self.eval_envs),
        )
        self._raise_first(problems)


# --------------------------------------------------------------------------------------------------------
# Model


def _resolve_interaction(config: MVPropConfig) -> tuple[MVPropConfig, Any]:
    """
    The settings with the interaction model and embedding width filled in, and the discriminator's
    interaction model (``None`` without a discriminator).
    """
    if config.discriminator is None:
        resolved = dataclasses.replace(
            config,
            interaction_model=config.interaction_model or "factored-attention",
            embedding_dim=config.embedding_dim or EMBEDDING_DIM,
        )
        return resolved, None
    interaction, name = load_interaction_model(config.discriminator)
    width = int(interaction.attributes.shape[1])
    if config.interaction_model not in (None, name):
        raise MVPropError(
            f"the discriminator {config.discriminator} holds a {name} model, not {config.interaction_model}: "
            f"drop --interaction-model or use a {config.interaction_model} discriminator"
        )
    if config.embedding_dim not in (None, width):
        raise MVPropError(
            f"the discriminator {config.discriminator} has embeddings {width} wide, not "
            f"{config.embedding_dim}: drop --embedding-dim"
        )
    return dataclasses.replace(config, interaction_model=name, embedding_dim=width), interaction


def build_mvprop_model(config: MVPropConfig, env: gym.Env, device: th.device | str = "cpu") -> PPO:
    """
    The SB3 ``PPO`` model whose :class:`~structrl.policies.mvprop.MVPropPolicy` is trained, seeded with
    ``config.seed`` (its interaction model freshly initialised: see :func:`train_mvprop` for the
    discriminator's).

    :param config: the run's settings (``interaction_model`` and ``embedding_dim`` default as in
        :class:`MVPropConfig`)
    :param env: the GoToLocal env (its spaces)
    :param device: torch device
    :return: the model
    """
    extractor_kwargs = {
        "interaction": config.interaction_model or "factored-attention",
        "k": config.k,
        "embedding_dim": config.embedding_dim or EMBEDDING_DIM,
        "head_channels": list(config.head_channels),
    }
    return PPO(
        MVPropPolicy,
        DummyVecEnv([lambda: env]),
        learning_rate=config.learning_rate,
        policy_kwargs={"features_extractor_kwargs": extractor_kwargs},
        seed=config.seed,
        device=device,
    )


def _planner(model: PPO) -> MVPropPlanner:
    policy = model.policy
    assert isinstance(policy, MVPropPolicy)
    return policy.planner


# --------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class _MVPropData:
    env_id: str
    env_kwargs: dict[str, Any]
    split: DemoSplit
    train: DemoFrames

    @classmethod
    def load(cls, config: MVPropConfig) -> _MVPropData:
        try:
            env_id, env_kwargs = store_env_settings(config.dataset)
        except BCError as error:
            raise MVPropError(str(error).replace("behaviour cloning", "the MVProp planner")) from error
        split = config.demo_split()
        return cls(env_id, env_kwargs, split, read_demo_frames(config.dataset, split.train))


def load_mvprop_config(run_dir: str | Path) -> MVPropConfig:
    """
    :param run_dir: an MVProp run directory
    :return: the settings of its ``config.yml``
    :raises MVPropError: if it holds no MVProp ``config.yml``
    """
    return read_run_config(run_dir, MVPropConfig)


def read_mvprop_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """
    :param run_dir: an MVProp run directory
    :return: its checkpoint (``None`` without one): ``config``, ``epoch``, ``steps``, ``finished``,
        ``seconds``, ``resumed``, ``history``, ``best``, ``train_transitions``, ``policy``, ``optimizer`` and
        ``best_policy``
    :raises MVPropError: if the file is not a readable checkpoint of this version
    """
    return read_checkpoint(run_dir, _RUN)


class _Run:
    """The model, optimizer, counters, evaluations and files of an MVProp run."""

    def __init__(
        self,
        config: MVPropConfig,
        run_dir: Path,
        data: _MVPropData,
        interaction: Any,
        device: th.device | str,
        on_evaluation: Callable[[dict[str, Any]], object] | None,
    ) -> None:
        self.config, self.run_dir, self.data, self.device = config, run_dir, data, device
        self.model = build_mvprop_model(config, gym.make(data.env_id, **data.env_kwargs), device)
        planner = _planner(self.model)
        self.frozen = config.discriminator is not None
        if interaction is not None:
            try:
                planner.interaction.load_state_dict(interaction.state_dict())
            except RuntimeError as error:
                raise MVPropError(
                    f"the interaction model of {config.discriminator} does not fit the environment's "
                    f"vocabulary ({error}): train the discriminator on the same demonstrations' vocabulary"
                ) from error
        if self.frozen:
            planner.freeze_interaction()
        self.parameters = [parameter for parameter in planner.parameters() if parameter.requires_grad]
        self.optimizer = th.optim.Adam(self.parameters, lr=config.learning_rate)
        self.schedule = config.sparsity_schedule()
        self.progress = RunProgress(_RUN, on_evaluation)
        seeds = validation_seeds(data.split, config.eval_episodes)
        self.validation = GreedyValidation(
            self.model, data.env_id, data.env_kwargs, seeds, config.eval_envs, run_dir, self.progress
        )
        self.transitions = int(data.train.lengths.sum())
        self.epoch = 0
        self.steps = 0

    def restore(self, saved: dict[str, Any]) -> None:
        self.validation.restore(saved)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.epoch = int(saved["epoch"])
        self.steps = int(saved["steps"])

    def batches(self, epoch: int) -> Iterator[TrajectoryBatch]:
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.data.train))
        for start in range(0, len(order), self.config.batch_size):
            items = order[start : start + self.config.batch_size]
            yield pad_trajectories(self.data.train, items, self.config.discount, self.device)

    def evaluate(self, writer: SummaryWriter) -> dict[str, Any]:
        record = self.validation.evaluate(
            self.steps, lambda name, value: writer.add_scalar(name, value, self.steps)
        )
        self.validation.keep(record)
        return record

    def save_checkpoint(self, finished: bool) -> None:
        save_checkpoint(
            self.run_dir,
            _RUN,
            {
                "config": self.config.to_dict(),
                "train_transitions": self.transitions,
                "epoch": self.epoch,
                "steps": self.steps,
                "finished": finished,
                "optimizer": self.optimizer.state_dict(),
                **self.validation.checkpoint(),
            },
        )

    def train(self) -> None:
        config = self.config
        planner = _planner(self.model)
        writer = tensorboard_writer(self.run_dir)
        try:
            while self.epoch < config.epochs:
                for batch in self.batches(self.epoch):
                    self.model.policy.set_training_mode(True)
                    weight = self.schedule(self.steps) if not self.frozen else 0.0
                    losses = imitation_losses(planner, batch, config.regularisation_weight, weight)
                    self.optimizer.zero_grad()
                    losses.loss.backward()
                    self.optimizer.step()
                    self.steps += 1
                    for name, value in (
                        ("path", losses.q_mse),
                        ("reg", losses.q_reg),
                        ("vreg", losses.v_reg),
                        ("accuracy", losses.accuracy),
                        ("loss", losses.loss),
                    ):
                        writer.add_scalar(f"train/{name}", value.item(), self.steps)
                    if losses.sparsity is not None:
                        writer.add_scalar("train/l1c", losses.sparsity.item(), self.steps)
                        writer.add_scalar("train/l1c_weight", losses.sparsity_weight, self.steps)
                    if config.eval_every and self.steps % config.eval_every == 0:
                        self.evaluate(writer)
                self.epoch += 1
                if self.epoch < config.epochs:
                    self.save_checkpoint(finished=False)
            if not self.progress.evaluated_at(self.steps):
                self.evaluate(writer)
        except KeyboardInterrupt:
            self.validation.save_current()
            raise
        finally:
            writer.close()
        self.save_checkpoint(finished=True)
        self.validation.save_current()


def train_mvprop(
    config: MVPropConfig,
    run_dir: str | Path,
    threads: int = 1,
    device: th.device | str = "cpu",
    on_evaluation: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """
    Train an MVProp planner on the demonstrations of a store and write the run directory (see the module
    documentation); the run replaces the files of an earlier run in the same directory. On
    ``KeyboardInterrupt`` the current policy is saved to ``model.zip`` before the exception propagates;
    :func:`resume_mvprop` continues from the last completed epoch.

    :param config: the run's settings
    :param run_dir: the run directory (created if needed)
    :param threads: torch intra-op threads
    :param device: torch device
    :param on_evaluation: called with each evaluation record (``step``, ``id_success_rate``,
        ``ood_success_rate``, mean returns and lengths, ``best``)
    :return: the summary written to ``summary.json``
    :raises MVPropError: on invalid settings or an unusable discriminator (the store's own errors are
        :class:`~structrl.data.episode_store.EpisodeStoreError` and :class:`~structrl.data.splits.SplitError`;
        an unreadable discriminator raises
        :class:`~structrl.agents.goal_discriminator.DiscriminatorError`)
    """
    config.check()
    th.set_num_threads(threads)
    config, interaction = _resolve_interaction(config)
    data = _MVPropData.load(config)
    run_dir = fresh_run_dir(run_dir, _RUN)
    return _run(config, run_dir, data, interaction, threads, device, on_evaluation, saved=None)


def resume_mvprop(
    run_dir: str | Path,
    epochs: int | None = None,
    threads: int = 1,
    eval_envs: int | None = None,
    device: th.device | str = "cpu",
    on_evaluation: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """
    Continue an interrupted (or finished, with more ``epochs``) MVProp run from the checkpoint of its last
    completed epoch; it ends with the weights the uninterrupted run would have had (with the same
    ``threads``). The discriminator is not read again (its frozen weights are in the checkpoint). A run
    without a checkpoint starts again.

    :param run_dir: the run directory
    :param epochs: a new number of epochs (default: the configured one)
    :param threads: torch intra-op threads
    :param eval_envs: environments stepped together in evaluations (the results do not depend on it)
    :param device: torch device
    :param on_evaluation: called with each new evaluation record
    :return: the summary written to ``summary.json``
    :raises MVPropError: if the directory holds no MVProp run, the run has finished its epochs, or its
        checkpoint disagrees with its settings or demonstrations
    """
    run_dir = Path(run_dir)
    config = load_mvprop_config(run_dir)
    if epochs is not None:
        config.epochs = epochs
    if eval_envs is not None:
        config.eval_envs = eval_envs
    config.check()
    th.set_num_threads(threads)
    saved = read_mvprop_checkpoint(run_dir)
    if saved is None:
        config, interaction = _resolve_interaction(config)
        data = _MVPropData.load(config)
        run_dir = fresh_run_dir(run_dir, _RUN)
        return _run(config, run_dir, data, interaction, threads, device, on_evaluation, saved=None)
    check_resume(run_dir, config, saved)
    data = _MVPropData.load(config)
    check_train_transitions(config, int(data.train.lengths.sum()), saved)
    return _run(config, run_dir, data, None, threads, device, on_evaluation, saved=saved)


def _run(
    config: MVPropConfig,
    run_dir: Path,
    data: _MVPropData,
    interaction: Any,
    threads: int,
    device: th.device | str,
    on_evaluation: Callable[[dict[str, Any]], object] | None,
    saved: dict[str, Any] | None,
) -> dict[str, Any]:
    write_run_config(run_dir, config, threads, env_id=data.env_id, env_kwargs=data.env_kwargs)
    run = _Run(config, run_dir, data, interaction, device, on_evaluation)
    if saved is not None:
        run.restore(saved)
    run.train()
    seeds = run.validation.seeds
    return write_summary(
        run_dir,
        {
            "config": config.to_dict(),
            "env_id": data.env_id,
            "env_kwargs": data.env_kwargs,
            "limit": data.split.limit,
            "train_episodes": len(data.train),
            "train_transitions": run.transitions,
            "validation_episodes": {which: len(seeds[which]) for which in VALIDATION_SETS},
            "frozen_interaction": run.frozen,
            "epochs": config.epochs,
            "steps": run.steps,
            "resumed_at_epochs": run.progress.resumed,
            "seconds": run.progress.elapsed(),
            **run.progress.results(BEST_MODEL_FILE, MODEL_FILE),
        },
    )


def load_planner(path: str | Path, device: th.device | str = "cpu") -> MVPropPlanner:
    """
    :param path: a model file of an MVProp run (``best_model.zip`` or ``model.zip``)
    :param device: torch device
    :return: its planner (in evaluation mode)
    :raises MVPropError: if the file holds another kind of policy
    """
    model = load_model(path, device=str(device))
    policy = model.policy
    if not isinstance(policy, MVPropPolicy):
        raise MVPropError(f"{path} holds a {type(policy).__name__}, not an MVProp planner (structrl mvprop)")
    planner = policy.planner
    planner.eval()
    return planner
