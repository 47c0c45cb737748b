"""Gymnasium environments and wrappers."""

from structrl.envs.minigrid import MissionTokenWrapper, make_minigrid_env, mission_vocabulary

__all__ = ["MissionTokenWrapper", "make_minigrid_env", "mission_vocabulary"]
