"""structrl: structured RL agents (RIM, C-SWM, factored attention) as drop-in parts of Stable-Baselines3."""

__version__ = "0.1.0"
