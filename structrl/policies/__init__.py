"""Torch modules and Stable-Baselines3 policies: the RIM core, feature extractors and baselines."""

from structrl.policies.factored_attention import (
    FactoredAttention,
    FactoredAttentionExtractor,
    SimpleAttention,
    SimpleAttentionExtractor,
    SparsitySchedule,
    sparsity_penalty,
)
from structrl.policies.goal_mask import ImageComponentsToMask
from structrl.policies.grounding import WordGrounding, attribute_labels, ground_words, grounding_accuracy
from structrl.policies.language_baselines import (
    FiLMGRUExtractor,
    TransformerEncoderDecoderExtractor,
    language_policy_kwargs,
)
from structrl.policies.minigrid_extractor import MiniGridCNN
from structrl.policies.minigrid_policies import MiniGridCnnPolicy, MiniGridLstmPolicy
from structrl.policies.mvprop import MVProp2D, MVPropExtractor, MVPropPlanner, MVPropPolicy, QHead
from structrl.policies.rim import RIM, RIMCell, compile_rim
from structrl.policies.rim_policy import RIMCore, RIMPolicy
from structrl.policies.row_normalized_init import row_normalized_init_
from structrl.policies.shared_memory import SharedMemoryRecurrentPolicy

__all__ = [
    "RIM",
    "FactoredAttention",
    "FactoredAttentionExtractor",
    "FiLMGRUExtractor",
    "ImageComponentsToMask",
    "MVProp2D",
    "MVPropExtractor",
    "MVPropPlanner",
    "MVPropPolicy",
    "MiniGridCNN",
    "MiniGridCnnPolicy",
    "MiniGridLstmPolicy",
    "QHead",
    "RIMCell",
    "RIMCore",
    "RIMPolicy",
    "SharedMemoryRecurrentPolicy",
    "SimpleAttention",
    "SimpleAttentionExtractor",
    "SparsitySchedule",
    "TransformerEncoderDecoderExtractor",
    "WordGrounding",
    "attribute_labels",
    "compile_rim",
    "ground_words",
    "grounding_accuracy",
    "language_policy_kwargs",
    "row_normalized_init_",
    "sparsity_penalty",
]
