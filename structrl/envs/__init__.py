"""Gymnasium environments and wrappers."""

from structrl.envs.atari import CswmAtariWrapper, make_cswm_atari_env, preprocess_frame
from structrl.envs.babyai import GOALS, FullyObservedBot, make_goto_local_env, register_goto_local_envs
from structrl.envs.block_pushing import BlockPushingEnv
from structrl.envs.minigrid import MissionTokenWrapper, make_minigrid_env, mission_vocabulary
from structrl.envs.registration import register_envs
from structrl.envs.timeouts import TimeoutAsTermination

__all__ = [
    "GOALS",
    "BlockPushingEnv",
    "CswmAtariWrapper",
    "FullyObservedBot",
    "MissionTokenWrapper",
    "TimeoutAsTermination",
    "make_cswm_atari_env",
    "make_goto_local_env",
    "make_minigrid_env",
    "mission_vocabulary",
    "preprocess_frame",
    "register_envs",
    "register_goto_local_envs",
]
