"""
The goal discriminator of Spilsbury & Ilin (2022): training an interaction model (factored or simple
attention) on the final, "rewarding" frames of GoToLocal demonstrations, without any cell-level labels.

**Sampling** (:class:`DiscriminatorSampler`, the reference's ``DiscriminatorDataset``). The training
episodes of a demonstration store (the first ``limit`` of each ID goal, :mod:`structrl.data.splits`) are
grouped by goal. A draw picks two distinct goals ``g+`` and ``g-``, two distinct episodes ``i1``, ``i2`` of
``g+`` and one episode ``j`` of ``g-``, and gives a pair of examples, positive then negative:

* positive: the mission of ``i1``, the final frame of ``i1`` (the agent facing the goal, just before ``done``)
  as the source and the final frame of ``i2`` as the target, label 1;
* negative: the same mission and source, the final frame of ``j`` as the target, label 0; with probability
  ``1 / n_goals`` (a "null" negative) the target is instead a uniformly drawn earlier frame of ``i1`` itself.

So ``limit`` must be at least 2.

**Losses** (:func:`discriminator_losses`, the reference's harness). With ``l`` the interaction model's goal
logits on the target frame and mission, ``m_src``, ``m_tgt`` the masks of
:class:`~structrl.policies.goal_mask.ImageComponentsToMask` on the two frames (with their directions) and
``phi`` the interaction model's factor embeddings:

* ``L_int = BCE(log sum_p exp(log(m_tgt_p + 1e-6) + l_p), label)``, the mask detached (trains the
  interaction model);
* ``L_img = MSE(clamp(prod_c ReLU(cos(sum_p m_src_p phi_src_cp, sum_p m_tgt_p phi_tgt_cp)), 0, 1), label)``,
  the embeddings detached (trains the mask);
* ``L = L_int + L_img + lambda(step) * L1c``, ``lambda`` the :class:`~structrl.policies.SparsitySchedule`
  of the global step (0 until step 1000, then a ramp to ``sparsity_weight`` at step 6000; weight 0 gives the
  reference's ``*_noreg`` models).

**Validation** (:func:`goal_map_metrics`): the goal logits of the first frame of every ID and OOD validation
episode against its target mask (the cells holding a matching object): ``vtarget`` (BCE with
``pos_weight = H * W``), soft precision ``mean_b sum q t / sum q``, soft recall ``mean_b sum q t / sum t`` and
soft F1 ``2PR / (P + R)`` of the batch means, ``q = sigmoid(logits)``. For factored attention the record
also holds ``grounding_accuracy`` (:func:`~structrl.policies.grounding.grounding_accuracy`: the fraction of
colour and object-type words whose most similar attribute is the one they name).

**A run directory** (:func:`train_discriminator`) holds ``config.yml``, ``best_discriminator.pt`` (the
weights with the best ID soft F1, written at each improvement), ``discriminator.pt`` (the final weights, or
the current ones after Ctrl-C), ``checkpoint.pt`` (everything needed to continue, every
``checkpoint_every`` steps and at the end), ``summary.json`` and ``tensorboard/`` (``train/bce``,
``train/timg``, ``train/me``, ``train/l1c``, ``train/l1c_weight``, ``train/loss``,
``eval/{id,ood}_vtarget``, ``..._vsprec``, ``..._vsrecall``, ``..._vsf1`` and ``eval/grounding``). Every file
is written atomically. The batch of step ``s`` is drawn from ``numpy.random.default_rng([seed, s])``, so
:func:`resume_discriminator` continues an interrupted run to the same weights as an uninterrupted one (with
the same number of torch threads).
:func:`load_interaction_model` gives the trained interaction model to the MVProp planner
(:mod:`structrl.agents.mvprop_training`). The run directory's shared files, the resume checks and the
validation records are those of all the offline trainers (:mod:`structrl.agents.offline_runs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import torch as th
from torch import nn
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

from structrl.agents.behavior_cloning import BCError
from structrl.agents.offline_runs import CHECKPOINT_FILE as CHECKPOINT_FILE
from structrl.agents.offline_runs import CONFIG_FILE as CONFIG_FILE
from structrl.agents.offline_runs import SUMMARY_FILE as SUMMARY_FILE
from structrl.agents.offline_runs import TENSORBOARD_DIR as TENSORBOARD_DIR
from structrl.agents.offline_runs import (
    OfflineSettings,
    RunKind,
    RunProgress,
    check_resume,
    cpu_state_dict,
    fresh_run_dir,
    read_checkpoint,
    read_run_config,
    save_checkpoint,
    save_torch_file,
    tensorboard_writer,
    write_run_config,
    write_summary,
)
from structrl.data.demos import DIRECTION, GOAL, IMAGE, MISSION, SEED, TARGET_MASK
from structrl.data.episode_store import (
    ACTIONS,
    EPISODES,
    OBSERVATIONS,
    TRANSITIONS,
    EpisodeReader,
    EpisodeStoreError,
)
from structrl.data.splits import ID_VALID_PER_GOAL, OOD_VALID_PER_GOAL, VALIDATION_SETS, DemoSplit
from structrl.envs.babyai import GOTO_LOCAL_VOCABULARY
from structrl.policies.factored_attention import EMBEDDING_DIM, FACTOR_SIZES, FactoredAttention
from structrl.policies.goal_mask import ImageComponentsToMask, mask_entropy
from structrl.policies.grounding import grounding_accuracy
from structrl.policies.mvprop import INTERACTION_MODELS, InteractionModel, build_interaction_model

BEST_FILE = "best_discriminator.pt"
FINAL_FILE = "discriminator.pt"
#: Format tags of the weight files and of the checkpoint.
WEIGHTS_FORMAT = "structrl-goal-discriminator"
CHECKPOINT_FORMAT = "structrl-goal-discriminator-checkpoint-1"
#: Settings :func:`resume_discriminator` may change; the others must stay those of the checkpoint.
RESUMABLE_SETTINGS = ("steps", "checkpoint_every", "log_every")
#: Added to the mask before its log in ``L_int``.
MASK_LOG_EPS = 1e-6
# Bytes read at a time when gathering rows of a store's arrays.
_BLOCK_BYTES = 16 * 1024 * 1024


class DiscriminatorError(BCError):
    """Goal-discriminator settings that cannot work, or a demonstration store or run they cannot use."""


_RUN = RunKind(
    name="discriminator",
    article="a",
    error=DiscriminatorError,
    tag="discriminator",
    checkpoint_format=CHECKPOINT_FORMAT,
    unit="step",
    resumable=RESUMABLE_SETTINGS,
    outputs=(BEST_FILE, FINAL_FILE),
    metric="id_soft_f1",
    best_weights="best_model",
)


# --------------------------------------------------------------------------------------------------------
# Demonstration frames


@dataclass(frozen=True)
class DemoFrames:
    """
    The frames before each action of some episodes of a demonstration store (the observation after the final
    ``done`` is left out), concatenated: episode ``i`` has rows ``starts[i] .. starts[i + 1] - 1``, its final
    row being the frame facing the goal.

    :param episodes: Store indices of the episodes, ``(N,)``.
    :param starts: Row offsets, ``(N + 1,)``.
    :param images: Grids, ``(sum T, H, W, 3)`` uint8.
    :param directions: Agent directions, ``(sum T,)`` int64.
    :param actions: Demonstrated actions, ``(sum T,)`` int64.
    :param missions: Word ids of each episode's mission, ``(N, L)`` int64.
    :param goals: Goal id of each episode, ``(N,)`` int64.
    :param seeds: Reset seed of each episode, ``(N,)`` int64.
    """

    episodes: np.ndarray
    starts: np.ndarray
    images: np.ndarray
    directions: np.ndarray
    actions: np.ndarray
    missions: np.ndarray
    goals: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def lengths(self) -> np.ndarray:
        """Steps (frames) of each episode, ``(N,)``."""
        return np.diff(self.starts)

    @property
    def final_rows(self) -> np.ndarray:
        """Row of each episode's final frame (facing the goal), ``(N,)``."""
        return self.starts[1:] - 1


@dataclass(frozen=True)
class FirstFrames:
    """
    The first frame of some episodes with its target mask: a validation set of the discriminator.

    :param episodes: Store indices, ``(N,)``.
    :param images: Grids, ``(N, H, W, 3)`` uint8.
    :param directions: Directions, ``(N,)``.
    :param missions: Word ids, ``(N, L)``.
    :param targets: Cells holding an object matching the mission, ``(N, H, W)`` bool.
    """

    episodes: np.ndarray
    images: np.ndarray
    directions: np.ndarray
    missions: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.episodes)


def _gather_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows of a dataset in the order given, reading contiguous blocks (fast for many rows)."""
    result = np.empty((len(rows), *dataset.shape[1:]), dtype=dataset.dtype)
    if not len(rows):
        return result
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    row_bytes = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64)))
    block = max(1, _BLOCK_BYTES // row_bytes)
    first = 0
    while first < len(ordered):
        start = int(ordered[first])
        last = int(np.searchsorted(ordered, start + block, side="left"))
        chunk = dataset[start : int(ordered[last - 1]) + 1]
        result[order[first:last]] = chunk[ordered[first:last] - start]
        first = last
    return result


def _read_arrays(path: Path, wanted: dict[str, tuple[np.ndarray, tuple[str, ...]]]) -> dict[str, np.ndarray]:
    """
    Read rows of arrays of a store (already checked by :class:`EpisodeReader`).

    :param path: the store
    :param wanted: by kind (``observations``, ...), the rows and the names of the arrays to read
    :return: the rows of each array, by name
    """
    try:
        with h5py.File(path, "r") as file:
            return {
                name: _gather_rows(file[f"{kind}/{name}"], rows)
                for kind, (rows, names) in wanted.items()
                for name in names
            }
    except (OSError, KeyError) as error:
        raise EpisodeStoreError(
            f"reading {path} failed ({error}): it is damaged or not a demonstration store (structrl demos)"
        ) from error


def _check_demo_arrays(reader: EpisodeReader) -> None:
    needed = {OBSERVATIONS: (IMAGE, DIRECTION, TARGET_MASK), EPISODES: (MISSION, GOAL, SEED)}
    for kind, names in needed.items():
        missing = [name for name in names if name not in reader.keys(kind)]
        if missing:
            raise EpisodeStoreError(
                f"{reader.path} has no {kind} array {', '.join(missing)}: it is not a GoToLocal "
                "demonstration store (record one with structrl demos)"
            )


def read_demo_frames(path: str | Path, indices: np.ndarray) -> DemoFrames:
    """
    :param path: a demonstration store (``structrl demos``)
    :param indices: the episodes to read, in the order wanted
    :return: their frames before each action, actions, missions, goals and seeds
    :raises EpisodeStoreError: if the file is not a readable demonstration store
    """
    path = Path(path)
    indices = np.asarray(indices, dtype=np.int64)
    with EpisodeReader(path) as reader:
        _check_demo_arrays(reader)
        offsets, frame_starts = reader.offsets, reader.frame_starts
    lengths = (offsets[indices + 1] - offsets[indices]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    within = np.arange(int(starts[-1])) - np.repeat(starts[:-1], lengths)
    observation_rows = np.repeat(frame_starts[indices], lengths) + within
    transition_rows = np.repeat(offsets[indices], lengths) + within
    arrays = _read_arrays(
        path,
        {
            OBSERVATIONS: (observation_rows, (IMAGE, DIRECTION)),
            TRANSITIONS: (transition_rows, (ACTIONS,)),
            EPISODES: (indices, (MISSION, GOAL, SEED)),
        },
    )
    integers = {name: arrays[name].astype(np.int64) for name in (DIRECTION, ACTIONS, MISSION, GOAL, SEED)}
    return DemoFrames(
        episodes=indices,
        starts=starts,
        images=arrays[IMAGE],
        directions=integers[DIRECTION],
        actions=integers[ACTIONS],
        missions=integers[MISSION],
        goals=integers[GOAL],
        seeds=integers[SEED],
    )


def read_first_frames(path: str | Path, indices: np.ndarray) -> FirstFrames:
    """
    :param path: a demonstration store
    :param indices: the episodes (e.g. a validation set of :class:`~structrl.data.splits.DemoSplit`)
    :return: their first frames, directions, missions and target masks
    :raises EpisodeStoreError: if the file is not a readable demonstration store
    """
    path = Path(path)
    indices = np.asarray(indices, dtype=np.int64)
    with EpisodeReader(path) as reader:
        _check_demo_arrays(reader)
        rows = reader.frame_starts[indices]
    arrays = _read_arrays(
        path, {OBSERVATIONS: (rows, (IMAGE, DIRECTION, TARGET_MASK)), EPISODES: (indices, (MISSION,))}
    )
    return FirstFrames(
        episodes=indices,
        images=arrays[IMAGE],
        directions=arrays[DIRECTION].astype(np.int64),
        missions=arrays[MISSION].astype(np.int64),
        targets=arrays[TARGET_MASK].astype(bool),
    )


# --------------------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class DiscriminatorBatch:
    """
    Examples of the discriminator, positives at even rows and negatives at odd rows (row ``2i + 1`` is the
    negative of the draw of row ``2i``).

    :param mission: Word ids, ``(B, L)``.
    :param source_image: Source frames (the final frame of ``i1``), ``(B, H, W, 3)``.
    :param source_direction: Their directions, ``(B,)``.
    :param target_image: Target frames, ``(B, H, W, 3)``.
    :param target_direction: Their directions, ``(B,)``.
    :param label: 1.0 for positives, 0.0 for negatives, ``(B,)`` float32.
    :param source_episode: Store index of the source (and mission) episode, ``(B,)``.
    :param target_episode: Store index of the target frame's episode, ``(B,)``.
    :param target_frame: Index of the target frame in its episode, ``(B,)``.
    """

    mission: np.ndarray
    source_image: np.ndarray
    source_direction: np.ndarray
    target_image: np.ndarray
    target_direction: np.ndarray
    label: np.ndarray
    source_episode: np.ndarray
    target_episode: np.ndarray
    target_frame: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def example(self, row: int) -> dict[str, Any]:
        """
        :param row: a row of the batch
        :return: that example's fields
        """
        return {item.name: getattr(self, item.name)[row] for item in dataclasses.fields(self)}

    def tensors(self, device: th.device | str = "cpu") -> dict[str, th.Tensor]:
        """
        :param device: torch device
        :return: the model inputs and labels as tensors (``mission``, ``source_image``, ``source_direction``,
            ``target_image``, ``target_direction``, ``label``)
        """
        names = ("mission", "source_image", "source_direction", "target_image", "target_direction")
        result = {name: th.as_tensor(getattr(self, name), device=device).long() for name in names}
        result["label"] = th.as_tensor(self.label, device=device)
        return result


class DiscriminatorSampler:
    """
    Draws the discriminator's positive and negative pairs from training episodes (see the module
    documentation). The episodes are grouped by goal and each group is cut to the size of the smallest (the
    split's ``limit``; its training episodes come goal by goal in equal numbers).

    :param frames: The training episodes.
    :raises DiscriminatorError: with fewer than 2 goals or fewer than 2 episodes of some goal
    """

    def __init__(self, frames: DemoFrames) -> None:
        goals = np.unique(frames.goals)
        groups = [np.flatnonzero(frames.goals == goal) for goal in goals]
        limit = min((len(group) for group in groups), default=0)
        if len(goals) < 2:
            raise DiscriminatorError(
                f"the discriminator's negatives come from another goal: the training episodes hold "
                f"{len(goals)} goal(s), at least 2 are needed"
            )
        if limit < 2:
            raise DiscriminatorError(
                "each positive pair of the discriminator takes two different trajectories of one goal: "
                f"some goal has {limit} training episode(s); use --limit 2 or more (and a store with enough "
                "episodes per goal)"
            )
        self.frames = frames
        self.goals = goals
        #: Item (index in ``frames``) of element ``e`` of goal group ``g``: ``items[g, e]``.
        self.items = np.stack([group[:limit] for group in groups])

    @property
    def n_goals(self) -> int:
        """Goal groups."""
        return int(self.items.shape[0])

    @property
    def limit(self) -> int:
        """Episodes per goal group."""
        return int(self.items.shape[1])

    def sample_pairs(self, rng: np.random.Generator, pairs: int) -> DiscriminatorBatch:
        """
        :param rng: the random generator (the draws are a function of its state only)
        :param pairs: draws; the batch holds ``2 * pairs`` examples, positive then negative
        :return: the examples
        """
        n_goals, limit = self.items.shape
        frames = self.frames
        positive_goal = rng.integers(n_goals, size=pairs)
        negative_goal = (positive_goal + rng.integers(1, n_goals, size=pairs)) % n_goals
        null = rng.random(pairs) < 1.0 / n_goals
        first = rng.integers(limit, size=pairs)
        second = (first + rng.integers(1, limit, size=pairs)) % limit
        other = rng.integers(limit, size=pairs)
        uniform = rng.random(pairs)
        i1 = self.items[positive_goal, first]
        i2 = self.items[positive_goal, second]
        j = self.items[negative_goal, other]
        lengths = frames.lengths
        null &= lengths[i1] >= 2  # a one-step episode has no earlier frame
        null_frame = np.minimum((uniform * (lengths[i1] - 1)).astype(np.int64), lengths[i1] - 2)
        negative_item = np.where(null, i1, j)
        negative_frame = np.where(null, null_frame, lengths[j] - 1)

        def interleave(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
            return np.stack([positive, negative], axis=1).reshape(-1, *positive.shape[1:])

        target_item = interleave(i2, negative_item)
        target_frame = interleave(lengths[i2] - 1, negative_frame)
        source_item = np.repeat(i1, 2)
        source_rows = frames.final_rows[source_item]
        target_rows = frames.starts[target_item] + target_frame
        return DiscriminatorBatch(
            mission=frames.missions[source_item],
            source_image=frames.images[source_rows],
            source_direction=frames.directions[source_rows],
            target_image=frames.images[target_rows],
            target_direction=frames.directions[target_rows],
            label=np.tile(np.array([1.0, 0.0], dtype=np.float32), pairs),
            source_episode=frames.episodes[source_item],
            target_episode=frames.episodes[target_item],
            target_frame=target_frame,
        )

    def iterate(self, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """
        The reference's infinite stream of examples: positive, negative, positive, ...

        :param rng: the random generator
        :return: an endless iterator of examples (see :meth:`DiscriminatorBatch.example`)
        """
        while True:
            batch = self.sample_pairs(rng, 1)
            yield batch.example(0)
            yield batch.example(1)


# --------------------------------------------------------------------------------------------------------
# Model, losses and metrics


class GoalDiscriminator(nn.Module):
    """
    The interaction model and the masking module trained together by :func:`discriminator_losses`.

    :param model: The interaction model: ``"factored-attention"`` or ``"simple-attention"``.
    :param vocab_size: Number of word ids.
    :param embedding_dim: Width of the embeddings of both modules.
    :param factor_sizes: Number of values of each factor (object type, colour).
    """

    def __init__(
        self,
        model: str = "factored-attention",
        vocab_size: int = len(GOTO_LOCAL_VOCABULARY),
        embedding_dim: int = EMBEDDING_DIM,
        factor_sizes: tuple[int, ...] = FACTOR_SIZES,
    ) -> None:
        super().__init__()
        self.model_name = model
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.interaction: InteractionModel = build_interaction_model(model, vocab_size, embedding_dim)
        self.mask = ImageComponentsToMask(embedding_dim, factor_sizes)

    def goal_logits(self, image: th.Tensor, mission: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= 2)`` integer grids
        :param mission: ``(B, L)`` word ids
        :return: the interaction model's goal logit of every cell, ``(B, H, W)``
        """
        return self.interaction(image.long(), mission.long())

    def description(self) -> dict[str, Any]:
        """
        :return: what is needed to rebuild the module: ``model``, ``vocab_size``, ``embedding_dim``
        """
        return {"model": self.model_name, "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim}


@dataclass(frozen=True)
class DiscriminatorLosses:
    """
    The terms of a batch's loss (logged as ``train/<name>`` with the reference's names ``bce``, ``timg``,
    ``l1c``, ``me``).

    :param interaction: ``L_int`` (``bce``).
    :param image: ``L_img`` (``timg``).
    :param sparsity: The L1 sparsity penalty ``L1c`` (with gradient).
    :param sparsity_weight: Its scheduled weight.
    :param mask_entropy: Mean entropy of the source and target masks (``me``, logged only).
    :param loss: ``L_int + L_img + sparsity_weight * L1c``.
    """

    interaction: th.Tensor
    image: th.Tensor
    sparsity: th.Tensor
    sparsity_weight: float
    mask_entropy: th.Tensor
    loss: th.Tensor


def discriminator_losses(
    discriminator: GoalDiscriminator, batch: dict[str, th.Tensor], sparsity_weight: float = 0.0
) -> DiscriminatorLosses:
    """
    The reference harness's losses (see the module documentation).

    :param discriminator: the interaction model and the masking module
    :param batch: :meth:`DiscriminatorBatch.tensors`
    :param sparsity_weight: weight of the L1 sparsity penalty
    :return: the loss and its terms
    """
    interaction = discriminator.interaction
    mission, label = batch["mission"], batch["label"]
    source, target = batch["source_image"], batch["target_image"]
    logits = interaction(target, mission)
    source_mask = discriminator.mask(source, batch["source_direction"])
    target_mask = discriminator.mask(target, batch["target_direction"])
    pooled = th.logsumexp((th.log(target_mask.detach() + MASK_LOG_EPS) + logits).flatten(1), dim=1)
    interaction_loss = F.binary_cross_entropy_with_logits(pooled, label)
    source_cells = interaction.embed_cells(source).detach()  # (B, C, H, W, E)
    target_cells = interaction.embed_cells(target).detach()
    source_vector = th.einsum("bhw,bchwe->bce", source_mask, source_cells)
    target_vector = th.einsum("bhw,bchwe->bce", target_mask, target_cells)
    match = F.cosine_similarity(source_vector, target_vector, dim=-1).relu().prod(dim=1).clamp(0.0, 1.0)
    image_loss = F.mse_loss(match, label)
    penalty = interaction.sparsity_penalty()
    loss = interaction_loss + image_loss
    if sparsity_weight:
        loss = loss + sparsity_weight * penalty
    entropy = 0.5 * (mask_entropy(source_mask.detach()) + mask_entropy(target_mask.detach()))
    return DiscriminatorLosses(interaction_loss, image_loss, penalty, sparsity_weight, entropy, loss)


def goal_map_metrics(logits: th.Tensor, targets: th.Tensor) -> dict[str, float]:
    """
    The reference's validation metrics of goal logits against target masks.

    :param logits: goal logits ``(B, H, W)``
    :param targets: target masks ``(B, H, W)`` (bool or 0/1)
    :return: ``vtarget`` (BCE with ``pos_weight = H * W``), ``soft_precision``, ``soft_recall`` and
        ``soft_f1``
    """
    target = targets.float()
    cells = target[0].numel()
    vtarget = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=th.tensor(float(cells), device=logits.device)
    )
    q = th.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    overlap = (q * flat).sum(dim=1)
    precision = (overlap / q.sum(dim=1).clamp_min(1e-12)).mean().item()
    recall = (overlap / flat.sum(dim=1).clamp_min(1.0)).mean().item()
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"vtarget": vtarget.item(), "soft_precision": precision, "soft_recall": recall, "soft_f1": f1}


def evaluate_goal_maps(
    interaction: nn.Module, frames: FirstFrames, device: th.device | str = "cpu"
) -> dict[str, float]:
    """
    :param interaction: an interaction model (or a :class:`GoalDiscriminator`'s ``interaction``)
    :param frames: first frames with their target masks
    :param device: torch device of the model
    :return: :func:`goal_map_metrics` of the model's goal logits on the frames, in one batch
    """
    with th.no_grad():
        logits = interaction(
            th.as_tensor(frames.images, device=device).long(), th.as_tensor(frames.missions, device=device)
        )
        return goal_map_metrics(logits, th.as_tensor(frames.targets, device=device))


# --------------------------------------------------------------------------------------------------------
# Weight files


def save_discriminator(
    discriminator: GoalDiscriminator, path: str | Path, step: int, metrics: dict[str, Any] | None = None
) -> None:
    """
    Write a discriminator's weights and description atomically.

    :param discriminator: the discriminator
    :param path: the ``.pt`` file
    :param step: training steps done
    :param metrics: its evaluation record, if any
    """
    save_torch_file(
        path,
        {
            "format": WEIGHTS_FORMAT,
            **discriminator.description(),
            "step": step,
            "metrics": metrics,
            "state_dict": cpu_state_dict(discriminator),
        },
    )


def _weights_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / BEST_FILE
    if not path.is_file():
        raise DiscriminatorError(
            f"{path} not found: give a discriminator run directory (with {BEST_FILE}) or a weights file "
            "written by structrl discriminator"
        )
    return path


def load_discriminator(
    path: str | Path, device: th.device | str = "cpu"
) -> tuple[GoalDiscriminator, dict[str, Any]]:
    """
    :param path: a discriminator run directory (its ``best_discriminator.pt`` is read) or a weights file
        (``best_discriminator.pt``, ``discriminator.pt``)
    :param device: torch device
    :return: the discriminator (in evaluation mode) and the file's ``step`` and ``metrics``
    :raises DiscriminatorError: if the file is missing or not a discriminator's
    """
    file = _weights_file(path)
    try:
        payload = th.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DiscriminatorError(
            f"cannot read {file} ({error}): it is not a discriminator weights file"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise DiscriminatorError(f"{file} is not a goal-discriminator weights file of this structrl version")
    discriminator = GoalDiscriminator(
        str(payload["model"]), int(payload["vocab_size"]), int(payload["embedding_dim"])
    )
    discriminator.load_state_dict(payload["state_dict"])
    discriminator.to(device).eval()
    return discriminator, {"step": payload["step"], "metrics": payload["metrics"], "path": str(file)}


def load_interaction_model(path: str | Path, device: th.device | str = "cpu") -> tuple[InteractionModel, str]:
    """
    The trained interaction model of a discriminator, for the MVProp planner.

    :param path: a discriminator run directory or weights file (see :func:`load_discriminator`)
    :param device: torch device
    :return: the interaction model and its name (``"factored-attention"`` or ``"simple-attention"``)
    """
    discriminator, _ = load_discriminator(path, device)
    return discriminator.interaction, discriminator.model_name


# --------------------------------------------------------------------------------------------------------
# Training


@dataclass
class DiscriminatorConfig(OfflineSettings):
    """
    A goal-discriminator run. The defaults are the paper's (batch 1024, Adam at 1e-4, 200 000 steps, the
    L1 penalty ramped to 1 between steps 1000 and 6000, validation every 20 steps).

    :param dataset: The demonstration store (``structrl demos``).
    :param model: The interaction model: ``factored-attention`` or ``simple-attention``.
    :param limit: Training episodes per ID goal, at least 2 (default: all but the ID validation ones).
    :param goal_split: The goal split (``paper``).
    :param id_valid_per_goal: ID validation episodes per ID goal (the last ones of each goal).
    :param ood_valid_per_goal: OOD validation episodes per held-out goal (the first ones of each goal).
    :param sparsity_weight: Final weight of the L1 sparsity penalty (0: the ``*_noreg`` models).
    :param sparsity_start: Steps before the weight ramps up.
    :param sparsity_ramp: Steps of the linear ramp.
    :param steps: Optimizer steps.
    :param batch_size: Examples per step (half positive, half negative; even).
    :param learning_rate: Adam's learning rate.
    :param embedding_dim: Width of the embeddings (48 in the paper; smaller for quick runs).
    :param seed: Seed of the weights and of every batch.
    :param eval_every: Steps between validations (there is always one at the end).
    :param checkpoint_every: Steps between checkpoints (there is always one at the end).
    :param log_every: Steps between tensorboard records of the training losses.
    """

    run_kind: ClassVar[RunKind] = _RUN
    dataset: str
    model: str = "factored-attention"
    limit: int | None = None
    goal_split: str = "paper"
    id_valid_per_goal: int = ID_VALID_PER_GOAL
    ood_valid_per_goal: int = OOD_VALID_PER_GOAL
    sparsity_weight: float = 1.0
    sparsity_start: int = 1000
    sparsity_ramp: int = 5000
    steps: int = 200_000
    batch_size: int = 1024
    learning_rate: float = 1e-4
    embedding_dim: int = EMBEDDING_DIM
    seed: int = 0
    eval_every: int = 20
    checkpoint_every: int = 1000
    log_every: int = 20

    def check(self) -> None:
        """
        :raises DiscriminatorError: naming the first invalid setting and how to fix it
        """
        problems = (
            (
                self.model not in INTERACTION_MODELS,
                f"unknown interaction model {self.model!r}: use one of {', '.join(INTERACTION_MODELS)}",
            ),
            (
                self.limit is not None and self.limit < 2,
                "each positive pair of the discriminator takes two different trajectories of one goal: "
                f"--limit must be at least 2, got {self.limit}",
            ),
            (self.sparsity_weight < 0, f"the sparsity weight must be >= 0, got {self.sparsity_weight}"),
            (
                self.sparsity_start < 0 or self.sparsity_ramp < 0,
                "the sparsity schedule's start and ramp must be >= 0",
            ),
            (self.steps < 1, f"the number of steps must be positive, got {self.steps}"),
            (
                self.batch_size < 2 or self.batch_size % 2,
                f"the batch holds positive/negative pairs: --batch-size must be even and >= 2, got "
                f"{self.batch_size}",
            ),
            (self.learning_rate <= 0, f"the learning rate must be positive, got {self.learning_rate}"),
            (self.embedding_dim < 1, f"the embedding width must be positive, got {self.embedding_dim}"),
            (self.seed < 0, f"the seed must be >= 0, got {self.seed}"),
            (
                min(self.eval_every, self.checkpoint_every, self.log_every) < 1,
                "the evaluation, checkpoint and log intervals must be positive",
            ),
        )
        self._raise_first(problems)


def store_vocabulary_size(path: str | Path) -> int:
    """
    :param path: a demonstration store
    :return: the number of word ids of its missions (its ``vocabulary`` attribute, else GoToLocal's)
    """
    with EpisodeReader(path) as reader:
        vocabulary = reader.attrs.get("vocabulary")
    return len(str(vocabulary).split(" ")) if vocabulary else len(GOTO_LOCAL_VOCABULARY)


@dataclass(frozen=True)
class _DiscriminatorData:
    split: DemoSplit
    train: DemoFrames
    valid: dict[str, FirstFrames]
    vocab_size: int

    @classmethod
    def load(cls, config: DiscriminatorConfig) -> _DiscriminatorData:
        split = config.demo_split()
        if split.limit < 2:
            raise DiscriminatorError(
                f"{config.dataset} leaves {split.limit} training episode(s) per ID goal after the "
                f"{config.id_valid_per_goal} ID validation ones; each positive pair takes two: collect more "
                "episodes per goal or lower --id-valid-per-goal"
            )
        train = read_demo_frames(config.dataset, split.train)
        valid = {
            which: read_first_frames(config.dataset, split.validation(which)) for which in VALIDATION_SETS
        }
        return cls(split, train, valid, store_vocabulary_size(config.dataset))


def load_discriminator_config(run_dir: str | Path) -> DiscriminatorConfig:
    """
    :param run_dir: a discriminator run directory
    :return: the settings of its ``config.yml``
    :raises DiscriminatorError: if it holds no discriminator ``config.yml``
    """
    return read_run_config(run_dir, DiscriminatorConfig)


def read_discriminator_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """
    :param run_dir: a discriminator run directory
    :return: its checkpoint (``None`` without one): ``config``, ``step``, ``finished``, ``seconds``,
        ``resumed``, ``history``, ``best``, ``model``, ``optimizer`` and ``best_model`` (state dicts)
    :raises DiscriminatorError: if the file is not a readable checkpoint of this version
    """
    return read_checkpoint(run_dir, _RUN)


class _Run:
    """The state of a discriminator run and its files."""

    def __init__(
        self,
        config: DiscriminatorConfig,
        run_dir: Path,
        data: _DiscriminatorData,
        device: th.device | str,
        on_evaluation: Callable[[dict[str, Any]], object] | None,
    ) -> None:
        self.config, self.run_dir, self.data, self.device = config, run_dir, data, device
        th.manual_seed(config.seed)
        self.model = GoalDiscriminator(config.model, data.vocab_size, config.embedding_dim).to(device)
        self.optimizer = th.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        self.step = 0
        self.progress = RunProgress(_RUN, on_evaluation)

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step = int(saved["step"])
        self.progress.restore(saved)
        best, best_state = self.progress.best, self.progress.best_state
        if best_state is not None and best is not None:
            # an evaluation after the checkpoint may have replaced the best file before an interruption
            model = GoalDiscriminator(self.config.model, self.data.vocab_size, self.config.embedding_dim)
            model.load_state_dict(best_state)
            save_discriminator(model, self.run_dir / BEST_FILE, int(best["step"]), best)

    def validate(self, writer: SummaryWriter) -> dict[str, Any]:
        record: dict[str, Any] = {"step": self.step}
        for which in VALIDATION_SETS:
            metrics = evaluate_goal_maps(self.model.interaction, self.data.valid[which], self.device)
            short = {
                "vtarget": "vtarget",
                "soft_precision": "vsprec",
                "soft_recall": "vsrecall",
                "soft_f1": "vsf1",
            }
            for name, value in metrics.items():
                record[f"{which}_{name}"] = value
                writer.add_scalar(f"eval/{which}_{short[name]}", value, self.step)
        interaction = self.model.interaction
        if isinstance(interaction, FactoredAttention) and interaction.words.shape[0] == len(
            GOTO_LOCAL_VOCABULARY
        ):
            with th.no_grad():
                similarity = interaction.similarity_matrix().cpu().numpy()
            record["grounding_accuracy"] = grounding_accuracy(similarity)
            writer.add_scalar("eval/grounding", record["grounding_accuracy"], self.step)
        self.progress.add(
            record,
            lambda: cpu_state_dict(self.model),
            lambda: save_discriminator(self.model, self.run_dir / BEST_FILE, self.step, record),
        )
        return record

    def save_checkpoint(self, finished: bool) -> None:
        save_checkpoint(
            self.run_dir,
            _RUN,
            {
                "config": self.config.to_dict(),
                "step": self.step,
                "finished": finished,
                "model": cpu_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(),
                **self.progress.checkpoint(),
            },
        )

    def train(self) -> None:
        config = self.config
        sampler = DiscriminatorSampler(self.data.train)
        schedule = config.sparsity_schedule()
        writer = tensorboard_writer(self.run_dir)
        try:
            while self.step < config.steps:
                rng = np.random.default_rng([config.seed, self.step])
                batch = sampler.sample_pairs(rng, config.batch_size // 2).tensors(self.device)
                self.model.train()
                losses = discriminator_losses(self.model, batch, schedule(self.step))
                self.optimizer.zero_grad()
                losses.loss.backward()
                self.optimizer.step()
                self.step += 1
                if self.step % config.log_every == 0:
                    for name, value in (
                        ("bce", losses.interaction),
                        ("timg", losses.image),
                        ("me", losses.mask_entropy),
                        ("l1c", losses.sparsity),
                        ("loss", losses.loss),
                    ):
                        writer.add_scalar(f"train/{name}", value.item(), self.step)
                    writer.add_scalar("train/l1c_weight", losses.sparsity_weight, self.step)
                if self.step % config.eval_every == 0 or self.step == config.steps:
                    self.validate(writer)
                if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    self.save_checkpoint(finished=self.step == config.steps)
        except KeyboardInterrupt:
            save_discriminator(self.model, self.run_dir / FINAL_FILE, self.step)
            raise
        finally:
            writer.close()
        save_discriminator(self.model, self.run_dir / FINAL_FILE, self.step, self.progress.history[-1])


def train_discriminator(
    config: DiscriminatorConfig,
    run_dir: str | Path,
    threads: int = 1,
    device: th.device | str = "cpu",
    on_evaluation: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """
    Train a goal discriminator on a demonstration store and write the run directory (see the module
    documentation); the run replaces the files of an earlier run in the same directory. On
    ``KeyboardInterrupt`` the current weights are saved to ``discriminator.pt`` before the exception
    propagates; :func:`resume_discriminator` continues from the last checkpoint.

    :param config: the run's settings
    :param run_dir: the run directory (created if needed)
    :param threads: torch intra-op threads
    :param device: torch device
    :param on_evaluation: called with each validation record (``step``, ``{id,ood}_vtarget``,
        ``{id,ood}_soft_precision``, ``..._soft_recall``, ``..._soft_f1``, ``best``)
    :return: the summary written to ``summary.json``
    :raises DiscriminatorError: on invalid settings (the store's own errors are
        :class:`~structrl.data.episode_store.EpisodeStoreError` and :class:`~structrl.data.splits.SplitError`)
    """
    config.check()
    th.set_num_threads(threads)
    data = _DiscriminatorData.load(config)
    return _run(config, fresh_run_dir(run_dir, _RUN), data, threads, device, on_evaluation, saved=None)


def resume_discriminator(
    run_dir: str | Path,
    steps: int | None = None,
    threads: int = 1,
    device: th.device | str = "cpu",
    on_evaluation: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """
    Continue an interrupted (or finished, with more ``steps``) discriminator run from its checkpoint; it
    ends with the weights the uninterrupted run would have had (with the same ``threads``). A run without a
    checkpoint starts again.

    :param run_dir: the run directory
    :param steps: a new number of steps (default: the configured one)
    :param threads: torch intra-op threads
    :param device: torch device
    :param on_evaluation: called with each new validation record
    :return: the summary written to ``summary.json``
    :raises DiscriminatorError: if the directory holds no discriminator run, the run has finished its steps,
        or its checkpoint disagrees with its settings
    """
    run_dir = Path(run_dir)
    config = load_discriminator_config(run_dir)
    if steps is not None:
        config.steps = steps
    config.check()
    th.set_num_threads(threads)
    saved = read_discriminator_checkpoint(run_dir)
    data = _DiscriminatorData.load(config)
    if saved is None:
        return _run(config, fresh_run_dir(run_dir, _RUN), data, threads, device, on_evaluation, saved=None)
    check_resume(run_dir, config, saved)
    return _run(config, run_dir, data, threads, device, on_evaluation, saved=saved)


def _run(
    config: DiscriminatorConfig,
    run_dir: Path,
    data: _DiscriminatorData,
    threads: int,
    device: th.device | str,
    on_evaluation: Callable[[dict[str, Any]], object] | None,
    saved: dict[str, Any] | None,
) -> dict[str, Any]:
    write_run_config(run_dir, config, threads)
    run = _Run(config, run_dir, data, device, on_evaluation)
    if saved is not None:
        run.restore(saved)
    run.train()
    return write_summary(
        run_dir,
        {
            "config": config.to_dict(),
            "limit": data.split.limit,
            "train_episodes": len(data.train),
            "validation_episodes": {which: len(data.valid[which]) for which in VALIDATION_SETS},
            "steps": run.step,
            "resumed_at_steps": run.progress.resumed,
            "seconds": run.progress.elapsed(),
            "sparsity_penalty": run.model.interaction.sparsity_penalty().item(),
            **run.progress.results(BEST_FILE, FINAL_FILE),
        },
    )
