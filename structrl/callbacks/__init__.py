"""Stable-Baselines3 callbacks: generalisation evaluation, RIM activation logging, C-SWM auxiliary, and
torch_ac-style train-mode rollouts."""

from structrl.callbacks.cswm_auxiliary import CSWMAuxiliaryCallback
from structrl.callbacks.generalization import GeneralizationCallback
from structrl.callbacks.rim_activation import RIMActivationCallback
from structrl.callbacks.train_mode_rollouts import TrainModeRolloutsCallback

__all__ = [
    "CSWMAuxiliaryCallback",
    "GeneralizationCallback",
    "RIMActivationCallback",
    "TrainModeRolloutsCallback",
]
