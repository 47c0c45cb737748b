"""Stable-Baselines3 callbacks: generalisation evaluation and RIM activation logging."""

from structrl.callbacks.generalization import GeneralizationCallback
from structrl.callbacks.rim_activation import RIMActivationCallback

__all__ = ["GeneralizationCallback", "RIMActivationCallback"]
