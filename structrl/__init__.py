"""structrl: structured RL agents (RIM, C-SWM, factored attention) as drop-in parts of Stable-Baselines3.

Importing structrl registers its Gymnasium environments (gymnasium >= 1.0 no longer loads the
``gymnasium.envs`` entry point that pyproject declares), so ``gymnasium.make("structrl:ShapesTrain-v0")``
works without an explicit import.
"""

__version__ = "0.1.0"

from structrl.envs.registration import register_envs

register_envs()
