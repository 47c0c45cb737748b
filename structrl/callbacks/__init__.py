"""Stable-Baselines3 callbacks: generalisation evaluation, RIM activation logging, C-SWM auxiliary."""

from structrl.callbacks.cswm_auxiliary import CSWMAuxiliaryCallback
from structrl.callbacks.generalization import GeneralizationCallback
from structrl.callbacks.rim_activation import RIMActivationCallback

__all__ = ["CSWMAuxiliaryCallback", "GeneralizationCallback", "RIMActivationCallback"]
