"""
Ranking metrics of a world model's predictions: the rank of the correct candidate, Hits@k and the mean
reciprocal rank (MRR), over all episodes, over consecutive batches of episodes, or within each episode.

A query ranks a set of candidates by squared Euclidean distance. Its rank is one plus the number of
candidates strictly closer than the correct one, so ties go to the correct candidate (as in the original).
With state ids (deduplication), candidates showing the same true state as the correct one never count
against it; this corrects the whole ranking, where the original corrected only the top-1 slot.
"""

from __future__ import annotations

import numpy as np
import torch as th

#: What a prediction is ranked against in the global and batched rankings.
RANKINGS = ("targets", "predictions")
#: Elements of a block of the distance matrix (16 MB of float32).
DISTANCE_BLOCK_ELEMENTS = 4 * 1024 * 1024


def _squared_distances(queries: th.Tensor, candidates: th.Tensor) -> th.Tensor:
    """(Q, F) and (C, F) to the (Q, C) squared distances, summed feature by feature (exact, low memory)."""
    distances = queries.new_zeros((queries.shape[0], candidates.shape[0]))
    for feature in range(queries.shape[1]):
        distances += (queries[:, feature, None] - candidates[None, :, feature]).square()
    return distances


def state_labels(ids: th.Tensor | np.ndarray) -> th.Tensor:
    """
    :param ids: (N, S) state ids
    :return: (N,) int64 labels, equal exactly where the state ids are equal
    """
    _, labels = np.unique(np.asarray(ids), axis=0, return_inverse=True)
    return th.from_numpy(labels.reshape(-1).astype(np.int64))


def global_ranks(
    predictions: th.Tensor,
    targets: th.Tensor,
    target_ids: th.Tensor | None = None,
    *,
    rank: str = "targets",
    block_size: int | None = None,
) -> np.ndarray:
    """
    The rank of the correct pair of each episode among all episodes. Computed in blocks of queries, so the
    memory grows linearly with the number of episodes.

    :param predictions: (N, F) predicted embedding of each episode
    :param targets: (N, F) encoded true outcome of each episode
    :param target_ids: (N, S) true state of each target; when given, candidates of the same state as the
        correct one do not count (deduplication)
    :param rank: ``"targets"``: each prediction ranks the N targets (the C-SWM paper);
        ``"predictions"``: each target ranks the N predictions (the original code)
    :param block_size: queries per block (default: a block of the distance matrix holds
        :data:`DISTANCE_BLOCK_ELEMENTS`)
    :return: (N,) ranks, 1 = best
    """
    if rank not in RANKINGS:
        raise ValueError(f"unknown ranking {rank!r}: use one of {', '.join(RANKINGS)}")
    queries, candidates = (predictions, targets) if rank == "targets" else (targets, predictions)
    count = len(queries)
    block = block_size or max(1, DISTANCE_BLOCK_ELEMENTS // max(count, 1))
    labels = None if target_ids is None else state_labels(target_ids)
    ranks = np.empty(count, dtype=np.int64)
    for start in range(0, count, block):
        rows = slice(start, min(start + block, count))
        distances = _squared_distances(queries[rows], candidates)
        correct = distances[th.arange(rows.stop - start), th.arange(start, rows.stop)]
        closer = distances < correct[:, None]
        if labels is not None:
            closer &= labels[rows, None] != labels[None, :]
        ranks[rows] = 1 + closer.sum(dim=1).numpy()
    return ranks


def batched_ranks(
    predictions: th.Tensor,
    targets: th.Tensor,
    target_ids: th.Tensor | None = None,
    *,
    batch_size: int = 100,
    rank: str = "targets",
) -> np.ndarray:
    """
    The rank of the correct pair of each episode among the episodes of its batch: consecutive groups of
    ``batch_size`` episodes, the last one possibly smaller (the original dropped it).

    :param predictions: (N, F) predicted embedding of each episode
    :param targets: (N, F) encoded true outcome of each episode
    :param target_ids: (N, S) true state of each target, for deduplication
    :param batch_size: episodes per batch
    :param rank: ``"targets"`` or ``"predictions"``, as in :func:`global_ranks`
    :return: (N,) ranks; their mean weighs every episode equally
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    parts = []
    for start in range(0, len(predictions), batch_size):
        batch = slice(start, start + batch_size)
        ids = None if target_ids is None else target_ids[batch]
        parts.append(global_ranks(predictions[batch], targets[batch], ids, rank=rank))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def in_episode_ranks(
    predictions: th.Tensor,
    observations: th.Tensor,
    num_observations: np.ndarray,
    steps: int,
    observation_ids: th.Tensor | None = None,
) -> np.ndarray:
    """
    The "local" rank: each episode's prediction ranks all encoded observations of its own episode (``o_0``
    included), the correct one being ``o_steps``.

    :param predictions: (N, F) prediction of each episode, ``steps`` steps from ``o_0``
    :param observations: (M, F) encoded observations of all episodes, episode after episode
    :param num_observations: (N,) observations of each episode (``M`` in all)
    :param steps: index of the correct observation in each episode
    :param observation_ids: (M, S) true state of each observation, for deduplication
    :return: (N,) ranks
    """
    counts = np.asarray(num_observations, dtype=np.int64)
    if len(counts) and counts.min() <= steps:
        raise ValueError(f"every episode needs more than {steps} observations for {steps}-step ranking")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    offsets = np.arange(counts.max() if len(counts) else 0)
    valid = th.from_numpy(offsets[None, :] < counts[:, None])
    rows = th.from_numpy(
        np.minimum(starts[:, None] + offsets[None, :], starts[:, None] + counts[:, None] - 1)
    )
    distances = (observations[rows] - predictions[:, None, :]).square().sum(dim=-1)
    correct = distances[:, steps]
    closer = (distances < correct[:, None]) & valid
    if observation_ids is not None:
        episode_labels = state_labels(observation_ids)[rows]
        closer &= episode_labels != episode_labels[:, steps, None]
    return 1 + closer.sum(dim=1).numpy()


def hits_at(ranks: np.ndarray, k: int) -> float:
    """
    :param ranks: ranks of the correct candidates
    :param k: cut-off
    :return: the fraction of ranks at most ``k``
    """
    return float(np.mean(ranks <= k))


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    """
    :param ranks: ranks of the correct candidates
    :return: the mean of ``1 / rank``
    """
    return float(np.mean(1.0 / ranks))
