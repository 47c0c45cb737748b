"""
Negative sampling for the C-SWM hinge loss (Biza et al., 2021): where the negative state ``z~`` of each
transition comes from.

Each transition of a batch has an *anchor*, the observation its negative is compared with (``o_{t+1}`` or
``o_t``, see :attr:`~structrl.world_models.cswm.CSWMConfig.negative_anchor`), given as an episode index and
an observation step. A :class:`NegativeSampler` returns the episode and step of each negative; it never
returns the anchor itself:

* :class:`InBatchNegatives` (the original baseline): the anchor of another sample of the batch;
* :class:`EpisodicNegatives`: another observation of the same episode;
* :class:`TimeAlignedNegatives`: the observation at the same step of another episode;
* :class:`OutOfEpisodeNegatives`: any observation of another episode;
* :class:`MixedNegatives`: one sampler with probability ``beta``, another otherwise.

:func:`make_negative_sampler` builds them by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np

from structrl.world_models.errors import WorldModelError

#: Names accepted by :func:`make_negative_sampler`.
NEGATIVE_STRATEGIES = ("batch", "episodic", "time-aligned", "out-of-episode", "mixed", "mixed-time-aligned")


class EpisodeLayout:
    """
    The episodes negatives are drawn from, described by the number of observations of each.

    :param num_observations: (N,) observations of each episode (steps + 1)
    """

    def __init__(self, num_observations: np.ndarray) -> None:
        self.num_observations = np.asarray(num_observations, dtype=np.int64)
        if self.num_observations.ndim != 1 or len(self.num_observations) == 0:
            raise WorldModelError("negative sampling needs at least one episode")
        if self.num_observations.min() < 2:
            raise WorldModelError("negative sampling needs episodes of at least one step (two observations)")
        #: Episodes from the longest to the shortest, and the position of each episode in that order.
        self.by_length = np.argsort(-self.num_observations, kind="stable")
        self.length_rank = np.empty_like(self.by_length)
        self.length_rank[self.by_length] = np.arange(len(self.by_length))
        self._ascending_lengths = self.num_observations[self.by_length][::-1]

    def __len__(self) -> int:
        return len(self.num_observations)

    def episodes_reaching(self, steps: np.ndarray) -> np.ndarray:
        """
        :param steps: observation steps
        :return: for each step, the number of episodes having an observation at that step; they are the first
            ones of :attr:`by_length`
        """
        return len(self) - np.searchsorted(self._ascending_lengths, steps, side="right")

    def other_episodes(
        self, episodes: np.ndarray, steps: np.ndarray | None, rng: np.random.Generator
    ) -> np.ndarray:
        """
        Draw, for each episode, another episode uniformly: any other one, or one having an observation at
        the given step.

        :param episodes: episode of each anchor
        :param steps: step of each anchor, or ``None`` for no constraint
        :param rng: random generator
        :return: the drawn episodes, never equal to ``episodes``
        :raises WorldModelError: if some anchor has no other episode to draw from
        """
        reaching = np.full(len(episodes), len(self)) if steps is None else self.episodes_reaching(steps)
        if len(episodes) and reaching.min() < 2:
            raise WorldModelError(
                "negatives from other episodes need at least two episodes (of that length for time-aligned "
                f"negatives); this split has {len(self)}: use more episodes or --negatives episodic"
            )
        # Uniform over the eligible episodes but the anchor's own, which is eligible itself.
        drawn = rng.integers(0, reaching - 1)
        drawn += drawn >= self.length_rank[episodes]
        return self.by_length[drawn]


class Negatives(NamedTuple):
    """
    The negatives of a batch.

    :param episodes: episode of each negative
    :param steps: observation step of each negative within its episode
    :param batch_positions: for in-batch negatives, the batch sample whose anchor each negative is (its
        encoding can be reused); ``None`` otherwise
    """

    episodes: np.ndarray
    steps: np.ndarray
    batch_positions: np.ndarray | None = None


class NegativeSampler(ABC):
    """Draws one negative per anchor; never the anchor itself."""

    @abstractmethod
    def sample(
        self, layout: EpisodeLayout, episodes: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> Negatives:
        """
        :param layout: the episodes to draw from
        :param episodes: (B,) episode of each anchor
        :param steps: (B,) observation step of each anchor
        :param rng: random generator
        :return: the negatives
        """


class InBatchNegatives(NegativeSampler):
    """
    The anchor of another sample of the batch: a random permutation without fixed points (a random cyclic
    order), so a sample is never its own negative as the original's plain permutation allowed. A batch of
    distinct transitions therefore never yields its own anchor.
    """

    def sample(
        self, layout: EpisodeLayout, episodes: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> Negatives:
        if len(episodes) < 2:
            raise WorldModelError("in-batch negatives need batches of at least two transitions")
        order = rng.permutation(len(episodes))
        positions = np.empty_like(order)
        positions[order] = np.roll(order, -1)
        return Negatives(episodes[positions], steps[positions], positions)


class EpisodicNegatives(NegativeSampler):
    """Another observation of the same episode, uniformly over its other steps."""

    def sample(
        self, layout: EpisodeLayout, episodes: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> Negatives:
        count = layout.num_observations[episodes]
        return Negatives(episodes.copy(), (steps + rng.integers(1, count)) % count)


class TimeAlignedNegatives(NegativeSampler):
    """The observation at the same step of another episode (uniform among those long enough)."""

    def sample(
        self, layout: EpisodeLayout, episodes: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> Negatives:
        return Negatives(layout.other_episodes(episodes, steps, rng), steps.copy())


class OutOfEpisodeNegatives(NegativeSampler):
    """Any observation of another episode: the episode uniformly, then the step uniformly."""

    def sample(
        self, layout: EpisodeLayout, episodes: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> Negatives:
        others = layout.other_episodes(episodes, None, rng)
        return Negatives(others, rng.integers(0, layout.num_observations[others]))


class MixedNegatives(NegativeSampler):
    """
    For each anchor, a negative of ``first`` with probability ``beta``, else of ``second`` (Biza et al.:
    episodic with ``beta``, out-of-episode otherwise).

    :param first: sampler used with probability ``beta``
    :param second: sampler used otherwise
    :param beta: probability of ``first``
    """

    def __init__(self, first: NegativeSampler, second: NegativeSampler, beta: float) -> None:
        if not 0.0 <= beta <= 1.0:
            raise WorldModelError(f"beta must be a probability in [0, 1], got {beta}")
        self.first, self.second, self.beta = first, second, beta

    def sample(
        self, layout: EpisodeLayout, episodes: np.ndarray, steps: np.ndarray, rng: np.random.Generator
    ) -> Negatives:
        use_first = rng.random(len(episodes)) < self.beta
        first = self.first.sample(layout, episodes[use_first], steps[use_first], rng)
        second = self.second.sample(layout, episodes[~use_first], steps[~use_first], rng)
        negative_episodes, negative_steps = np.empty_like(episodes), np.empty_like(steps)
        negative_episodes[use_first], negative_steps[use_first] = first.episodes, first.steps
        negative_episodes[~use_first], negative_steps[~use_first] = second.episodes, second.steps
        return Negatives(negative_episodes, negative_steps)


def make_negative_sampler(name: str, beta: float = 0.5) -> NegativeSampler:
    """
    :param name: ``"batch"``, ``"episodic"``, ``"time-aligned"``, ``"out-of-episode"``, ``"mixed"``
        (episodic with probability ``beta``, out-of-episode otherwise: the paper's choice) or
        ``"mixed-time-aligned"`` (episodic with probability ``beta``, time-aligned otherwise: the original
        ``--custom-neg`` default)
    :param beta: probability of an episodic negative in the mixtures
    :return: the sampler
    :raises WorldModelError: for an unknown name or a ``beta`` outside [0, 1]
    """
    simple: dict[str, type[NegativeSampler]] = {
        "batch": InBatchNegatives,
        "episodic": EpisodicNegatives,
        "time-aligned": TimeAlignedNegatives,
        "out-of-episode": OutOfEpisodeNegatives,
    }
    if name in simple:
        return simple[name]()
    if name == "mixed":
        return MixedNegatives(EpisodicNegatives(), OutOfEpisodeNegatives(), beta)
    if name == "mixed-time-aligned":
        return MixedNegatives(EpisodicNegatives(), TimeAlignedNegatives(), beta)
    raise WorldModelError(f"unknown negative sampling {name!r}: use one of {', '.join(NEGATIVE_STRATEGIES)}")
