"""Torch modules and Stable-Baselines3 policies: the RIM core, feature extractors and baselines."""

from structrl.policies.minigrid_extractor import MiniGridCNN
from structrl.policies.minigrid_policies import MiniGridCnnPolicy, MiniGridLstmPolicy
from structrl.policies.rim import RIM, RIMCell
from structrl.policies.rim_policy import RIMCore, RIMPolicy

__all__ = ["RIM", "MiniGridCNN", "MiniGridCnnPolicy", "MiniGridLstmPolicy", "RIMCell", "RIMCore", "RIMPolicy"]
