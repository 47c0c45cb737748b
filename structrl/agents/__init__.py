"""Algorithms and trainers."""

from structrl.agents.recurrent_a2c import RecurrentA2C

__all__ = ["RecurrentA2C"]
