"""Registration of structrl's Gymnasium environments."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from structrl.envs.atari import CSWM_ATARI_GAMES
from structrl.envs.babyai import register_goto_local_envs

_BLOCK_PUSHING = "structrl.envs.block_pushing:BlockPushingEnv"
_CSWM_ATARI = "structrl.envs.atari:make_cswm_atari_env"

#: Episode lengths of the block-pushing ``*Train-v0`` and ``*Eval-v0`` ids.
TRAIN_EPISODE_STEPS = 100
EVAL_EPISODE_STEPS = 10
#: Transitions per episode of the C-SWM Atari ids (after the warm-up steps).
ATARI_EPISODE_STEPS = 10

#: Keyword arguments of the block-pushing worlds, by id stem.
BLOCK_PUSHING_WORLDS: dict[str, dict[str, Any]] = {
    "Shapes": {"render_type": "shapes"},
    "Cubes": {"render_type": "cubes"},
    "ShapesImmovable": {"render_type": "shapes", "immovable": True},
    "CubesImmovable": {"render_type": "cubes", "immovable": True},
}


def _specs() -> list[tuple[str, str, dict[str, Any], int]]:
    """(id, entry point, kwargs, max_episode_steps) of every structrl id."""
    specs = []
    for stem, kwargs in BLOCK_PUSHING_WORLDS.items():
        specs.append((f"{stem}Train-v0", _BLOCK_PUSHING, kwargs, TRAIN_EPISODE_STEPS))
        specs.append((f"{stem}Eval-v0", _BLOCK_PUSHING, kwargs, EVAL_EPISODE_STEPS))
    for game in CSWM_ATARI_GAMES:
        specs.append((f"{game}Cswm-v0", _CSWM_ATARI, {"game": game}, ATARI_EPISODE_STEPS))
    return specs


def register_envs() -> None:
    """
    Register every structrl environment id with Gymnasium (idempotent): the block-pushing worlds
    ``{Shapes,Cubes,ShapesImmovable,CubesImmovable}{Train,Eval}-v0`` and C-SWM's preprocessed Atari games
    ``PongCswm-v0`` and ``SpaceInvadersCswm-v0`` (10 transitions after the warm-up), and the BabyAI
    GoToLocal task of the compositional-generalisation study (``structrl/GoToLocal[-S10|-S12|-S16]-v0``).
    """
    for env_id, entry_point, kwargs, max_episode_steps in _specs():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point, kwargs=kwargs, max_episode_steps=max_episode_steps)
    register_goto_local_envs()
