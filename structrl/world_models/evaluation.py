"""
Evaluation of a C-SWM on an episode store: encode ``o_0``, roll the transition model out ``k`` steps with the
recorded actions and rank the prediction against the encoded ``o_k`` (Hits@k, MRR).

The store is streamed in blocks of episodes; only the embeddings (a few floats per observation) stay in
memory, and the rankings are computed in blocks (:mod:`structrl.world_models.ranking`), so memory grows
linearly with the number of episodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch as th

from structrl.world_models.cswm import ContrastiveSWM
from structrl.world_models.episode_frames import (
    EpisodeFrames,
    check_episodes_fit,
    iter_episode_blocks,
    open_store,
)
from structrl.world_models.errors import WorldModelError
from structrl.world_models.ranking import (
    RANKINGS,
    batched_ranks,
    global_ranks,
    hits_at,
    in_episode_ranks,
    mean_reciprocal_rank,
)

#: Evaluation modes: ranking among all episodes, within consecutive batches of episodes, within each episode.
EVALUATION_MODES = ("all", "batched", "in-episode")
#: Images per forward pass of the encoder, and episodes per forward pass of the transition model.
FORWARD_BATCH = 1024
#: Episodes read from the store at a time.
READ_BLOCK_EPISODES = 1000


@dataclass(frozen=True)
class RankingResult:
    """
    Hits@k and MRR of one evaluation mode and horizon.

    :param mode: ``"all"``, ``"batched"`` or ``"in-episode"``
    :param steps: prediction horizon
    :param episodes: episodes ranked
    :param hits: Hits@k by cut-off ``k``
    :param mrr: mean reciprocal rank
    """

    mode: str
    steps: int
    episodes: int
    hits: dict[int, float]
    mrr: float


@dataclass
class EncodedEpisodes:
    """
    What the rankings need from a set of episodes; embeddings are flattened to ``K * D`` features.

    :param predictions: (N, F) prediction from ``o_0`` by horizon ``k``
    :param targets: (N, F) encoded ``o_k`` by horizon ``k``
    :param target_ids: (N, S) state id of ``o_k`` by horizon (empty without state ids)
    :param observations: (M, F) every encoded observation, episode after episode (only for in-episode
        ranking)
    :param observation_ids: (M, S) their state ids (with state ids and in-episode ranking)
    :param num_observations: (N,) observations of each episode
    """

    predictions: dict[int, th.Tensor]
    targets: dict[int, th.Tensor]
    target_ids: dict[int, th.Tensor]
    observations: th.Tensor | None
    observation_ids: th.Tensor | None
    num_observations: np.ndarray

    @staticmethod
    def concatenate(parts: Sequence[EncodedEpisodes]) -> EncodedEpisodes:
        """
        :param parts: encodings of consecutive blocks of episodes
        :return: the encoding of all of them
        """

        def join(tensors: Sequence[th.Tensor | None]) -> th.Tensor | None:
            present = [tensor for tensor in tensors if tensor is not None]
            return th.cat(present) if present else None

        first = parts[0]
        return EncodedEpisodes(
            predictions={k: th.cat([part.predictions[k] for part in parts]) for k in first.predictions},
            targets={k: th.cat([part.targets[k] for part in parts]) for k in first.targets},
            target_ids={k: th.cat([part.target_ids[k] for part in parts]) for k in first.target_ids},
            observations=join([part.observations for part in parts]),
            observation_ids=join([part.observation_ids for part in parts]),
            num_observations=np.concatenate([part.num_observations for part in parts]),
        )


def encode_frames(model: ContrastiveSWM, frames: np.ndarray) -> th.Tensor:
    """
    :param model: the world model (in evaluation mode)
    :param frames: (n, C, H, W) uint8 images
    :return: (n, K, D) embeddings, on the CPU
    """
    device = next(model.parameters()).device
    with th.inference_mode():
        parts = [
            model.encode(th.from_numpy(frames[start : start + FORWARD_BATCH]).to(device)).cpu()
            for start in range(0, len(frames), FORWARD_BATCH)
        ]
    return th.cat(parts)


def encode_episodes(
    model: ContrastiveSWM, block: EpisodeFrames, steps: Sequence[int], *, every_observation: bool
) -> EncodedEpisodes:
    """
    Encode a block of episodes and predict ``k`` steps ahead from each first observation.

    :param model: the world model (in evaluation mode)
    :param block: episodes of at least ``max(steps)`` steps
    :param steps: horizons ``k``
    :param every_observation: encode all observations (for in-episode ranking), not only ``o_0`` and ``o_k``
    :return: the encoding
    """
    episodes = np.arange(len(block))
    if every_observation:
        embeddings = encode_frames(model, block.frames)
        first = embeddings[block.frame_starts]
        targets = {k: embeddings[block.frame_starts + k] for k in steps}
    else:
        needed = np.array(sorted({0, *steps}))
        rows = block.frame_rows(episodes[:, None], needed[None, :]).reshape(-1)
        embeddings = encode_frames(model, block.frames[rows])
        embeddings = embeddings.view(len(block), len(needed), *embeddings.shape[1:])
        first = embeddings[:, 0]
        targets = {k: embeddings[:, int(np.searchsorted(needed, k))] for k in steps}
    max_steps = max(steps)
    actions = th.from_numpy(
        block.actions[block.transition_rows(episodes[:, None], np.arange(max_steps)[None, :])]
    )
    device = next(model.parameters()).device
    predicted: dict[int, list[th.Tensor]] = {k: [] for k in steps}
    with th.inference_mode():
        for start in range(0, len(block), FORWARD_BATCH):
            z = first[start : start + FORWARD_BATCH].to(device)
            block_actions = actions[start : start + FORWARD_BATCH].to(device)
            for step in range(1, max_steps + 1):
                z = model.predict(z, block_actions[:, step - 1])
                if step in predicted:
                    predicted[step].append(z.cpu())
    ids = block.state_ids
    return EncodedEpisodes(
        predictions={k: th.cat(parts).flatten(1) for k, parts in predicted.items()},
        targets={k: target.flatten(1) for k, target in targets.items()},
        target_ids={} if ids is None else {k: th.from_numpy(ids[block.frame_starts + k]) for k in steps},
        observations=embeddings.flatten(1) if every_observation else None,
        observation_ids=th.from_numpy(ids) if every_observation and ids is not None else None,
        num_observations=block.num_observations,
    )


def rank_episodes(
    encoded: EncodedEpisodes,
    *,
    steps: Sequence[int],
    modes: Sequence[str],
    dedup: bool,
    batch_size: int = 100,
    hits: Sequence[int] = (1,),
    rank: str = "targets",
) -> list[RankingResult]:
    """
    :param encoded: the encoded episodes (with state ids if ``dedup``; with every observation for
        ``in-episode``)
    :param steps: horizons ``k``
    :param modes: evaluation modes
    :param dedup: whether candidates of the correct state do not count
    :param batch_size: episodes per batch of the ``batched`` mode
    :param hits: cut-offs of Hits@k
    :param rank: ``"targets"`` or ``"predictions"`` (see :func:`~structrl.world_models.ranking.global_ranks`)
    :return: one result per mode and horizon
    """
    results = []
    for mode in modes:
        for k in steps:
            target_ids = encoded.target_ids[k] if dedup else None
            if mode == "all":
                ranks = global_ranks(encoded.predictions[k], encoded.targets[k], target_ids, rank=rank)
            elif mode == "batched":
                ranks = batched_ranks(
                    encoded.predictions[k], encoded.targets[k], target_ids, batch_size=batch_size, rank=rank
                )
            else:
                assert encoded.observations is not None
                ranks = in_episode_ranks(
                    encoded.predictions[k],
                    encoded.observations,
                    encoded.num_observations,
                    k,
                    encoded.observation_ids if dedup else None,
                )
            results.append(
                RankingResult(
                    mode=mode,
                    steps=k,
                    episodes=len(ranks),
                    hits={cutoff: hits_at(ranks, cutoff) for cutoff in hits},
                    mrr=mean_reciprocal_rank(ranks),
                )
            )
    return results


def evaluate(
    model: ContrastiveSWM,
    dataset: str | os.PathLike[str],
    *,
    steps: Sequence[int] = (1,),
    modes: Sequence[str] = ("all",),
    dedup: bool = False,
    batch_size: int = 100,
    hits: Sequence[int] = (1,),
    rank: str = "targets",
    progress: Callable[[int], object] | None = None,
) -> list[RankingResult]:
    """
    Rank the model's ``k``-step predictions from the first observation of each episode of a store.

    :param model: the world model
    :param dataset: episode store of evaluation episodes (each at least ``max(steps)`` steps long)
    :param steps: prediction horizons ``k``
    :param modes: ``"all"`` (rank among all episodes), ``"batched"`` (among consecutive batches of
        ``batch_size`` episodes, in store order) and/or ``"in-episode"`` (among the observations of the
        episode itself, ``o_0`` included)
    :param dedup: do not count candidates of the same true state as the correct one (needs state ids)
    :param batch_size: episodes per batch of the ``batched`` mode
    :param hits: cut-offs ``k`` of Hits@k
    :param rank: ``"targets"`` (each prediction ranks the targets, as the paper describes) or
        ``"predictions"`` (each target ranks the predictions, as the original code does), for the ``all`` and
        ``batched`` modes
    :param progress: called with the number of episodes encoded, after each block
    :return: one result per mode and horizon, in the order of ``modes`` then ``steps``
    :raises WorldModelError: for bad settings, a missing or unsuitable dataset, or episodes too short
    """
    _check_settings(model, steps, modes, batch_size, hits, rank)
    every_observation = "in-episode" in modes
    model.eval()
    parts = []
    with open_store(dataset, need_state_ids=dedup) as reader:
        lengths = reader.episode_lengths
        if lengths.min() < max(steps):
            short = int(np.argmin(lengths))
            raise WorldModelError(
                f"episode {short} of {dataset} has {lengths[short]} steps, fewer than the {max(steps)} "
                "asked: evaluate fewer --steps or collect longer episodes"
            )
        blocks = iter_episode_blocks(
            reader, READ_BLOCK_EPISODES, state_ids=dedup, max_steps=None if every_observation else max(steps)
        )
        for block in blocks:
            check_episodes_fit(block, model.config, dataset)
            parts.append(encode_episodes(model, block, steps, every_observation=every_observation))
            if progress is not None:
                progress(len(block))
    encoded = EncodedEpisodes.concatenate(parts)
    return rank_episodes(
        encoded, steps=steps, modes=modes, dedup=dedup, batch_size=batch_size, hits=hits, rank=rank
    )


def _check_settings(
    model: ContrastiveSWM,
    steps: Sequence[int],
    modes: Sequence[str],
    batch_size: int,
    hits: Sequence[int],
    rank: str,
) -> None:
    problems = (
        (not steps or min(steps) < 1, f"the horizons (--steps) must be positive integers, got {list(steps)}"),
        (not modes, "give at least one evaluation mode"),
        (
            any(mode not in EVALUATION_MODES for mode in modes),
            f"unknown evaluation mode in {list(modes)}: use {', '.join(EVALUATION_MODES)}",
        ),
        (batch_size < 1, f"the batch size must be positive, got {batch_size}"),
        (not hits or min(hits) < 1, f"the Hits@k cut-offs must be positive, got {list(hits)}"),
        (rank not in RANKINGS, f"unknown ranking {rank!r}: use {', '.join(RANKINGS)}"),
    )
    for failed, message in problems:
        if failed:
            raise WorldModelError(message)
