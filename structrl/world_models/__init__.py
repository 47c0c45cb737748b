"""
Contrastive structured world models (C-SWM, Kipf et al., 2020) with the negative sampling strategies of
Biza et al. (2021), and their ranking evaluation (Hits@k, MRR).
"""

from structrl.world_models.cswm import ContrastiveLoss, ContrastiveSWM, CSWMConfig, energy, hinge_loss
from structrl.world_models.encoders import ENCODERS, ObjectEncoder, ObjectMLP, object_extractor
from structrl.world_models.episode_frames import EpisodeFrames, iter_episode_blocks, open_store, read_episodes
from structrl.world_models.errors import WorldModelError
from structrl.world_models.evaluation import EVALUATION_MODES, RankingResult, evaluate
from structrl.world_models.negatives import (
    NEGATIVE_STRATEGIES,
    EpisodeLayout,
    EpisodicNegatives,
    InBatchNegatives,
    MixedNegatives,
    Negatives,
    NegativeSampler,
    OutOfEpisodeNegatives,
    TimeAlignedNegatives,
    make_negative_sampler,
)
from structrl.world_models.ranking import (
    batched_ranks,
    global_ranks,
    hits_at,
    in_episode_ranks,
    mean_reciprocal_rank,
)
from structrl.world_models.transition import TransitionGNN

__all__ = [
    "ENCODERS",
    "EVALUATION_MODES",
    "NEGATIVE_STRATEGIES",
    "CSWMConfig",
    "ContrastiveLoss",
    "ContrastiveSWM",
    "EpisodeFrames",
    "EpisodeLayout",
    "EpisodicNegatives",
    "InBatchNegatives",
    "MixedNegatives",
    "NegativeSampler",
    "Negatives",
    "ObjectEncoder",
    "ObjectMLP",
    "OutOfEpisodeNegatives",
    "RankingResult",
    "TimeAlignedNegatives",
    "TransitionGNN",
    "WorldModelError",
    "batched_ranks",
    "energy",
    "evaluate",
    "global_ranks",
    "hinge_loss",
    "hits_at",
    "in_episode_ranks",
    "iter_episode_blocks",
    "make_negative_sampler",
    "mean_reciprocal_rank",
    "object_extractor",
    "open_store",
    "read_episodes",
]
