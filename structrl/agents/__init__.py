"""Algorithms and trainers."""

from structrl.agents.recurrent_a2c import RecurrentA2C
from structrl.agents.recurrent_ppo import RecurrentPPO

__all__ = ["RecurrentA2C", "RecurrentPPO"]
