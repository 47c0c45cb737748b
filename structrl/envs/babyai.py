"""
BabyAI GoToLocal as in "Compositional Generalization in Grounded Language Learning via Induced Model Sparsity"
(Spilsbury & Ilin, 2022): a fully observed, north-up symbolic grid, the agent's direction and the mission as
word ids, with success only when the agent takes ``done`` facing a matching object.

The wrappers work on any room size of minigrid's ``GoToLocal`` (``room_size=8`` is the paper's task; 10, 12
and 16 keep the same 8 objects, the same observation layout and the same vocabulary), so an agent trained
on 8 x 8 can be evaluated on larger grids. Use :func:`make_goto_local_env`, or the ids registered by
:func:`register_goto_local_envs` (``structrl/GoToLocal-v0``, ``structrl/GoToLocal-S12-v0``, ...).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel
from minigrid.envs.babyai.core.verifier import GoToInstr
from minigrid.minigrid_env import MiniGridEnv
from minigrid.utils.baby_ai_bot import BabyAIBot

from structrl.envs.minigrid import PAD_TOKEN, MissionTokenWrapper, mission_vocabulary

#: minigrid's GoToLocal level: one 8 x 8 room, the agent and 8 objects (non-unique), no doors.
GOTO_LOCAL_ID = "BabyAI-GoToLocal-v0"
#: Room sizes of the registered ``structrl/GoToLocal*`` ids.
ROOM_SIZES = (8, 10, 12, 16)
#: Colours, object types and determiners of the GoToLocal missions ("go to {the|a} {colour} {type}").
COLOURS = ("red", "green", "blue", "purple", "yellow", "grey")
OBJECT_TYPES = ("key", "ball", "box")
DETERMINERS = ("the", "a")
#: The 13 words of the GoToLocal missions; with padding and unknown words the vocabulary has 15 ids.
GOTO_LOCAL_WORDS = (
    "a", "ball", "blue", "box", "go", "green", "grey", "key", "purple", "red", "the", "to", "yellow",
)  # fmt: skip
#: Word -> id of the missions: ``<pad>`` 0, ``<unk>`` 1, then the words in alphabetical order.
GOTO_LOCAL_VOCABULARY = mission_vocabulary(GOTO_LOCAL_WORDS)
#: Every GoToLocal mission has exactly this many words.
MISSION_LENGTH = 5
#: Encoding of the agent's cell in the grid: object "agent", colour red, state = type of the carried object
#: ("empty" when it carries nothing), as in the paper's BabyAI fork.
AGENT_TYPE = OBJECT_TO_IDX["agent"]
AGENT_COLOUR = COLOR_TO_IDX["red"]
EMPTY_HANDED = OBJECT_TO_IDX["empty"]
#: Encoding of an empty cell, as ``Grid.encode`` writes it.
EMPTY_CELL = (OBJECT_TO_IDX["empty"], 0, 0)
#: Largest code in the grid (the object types run to "agent"; colours and states stay below it).
GRID_CODE_MAX = max(OBJECT_TO_IDX.values())


class BabyAIEnvError(ValueError):
    """An environment that is not a single-room BabyAI GoTo level, or an unknown mission."""


@dataclass(frozen=True)
class Goal:
    """
    One of the 36 GoToLocal instructions.

    :param determiner: ``"the"`` when exactly one object matches, ``"a"`` when several do.
    :param colour: The object's colour.
    :param object_type: The object's type (key, ball or box).
    """

    determiner: str
    colour: str
    object_type: str

    @property
    def mission(self) -> str:
        """The instruction text, e.g. ``"go to the red ball"``."""
        return f"go to {self.determiner} {self.colour} {self.object_type}"


#: The 36 goals (6 colours x 3 types x 2 determiners); a goal's id is its index here.
GOALS: tuple[Goal, ...] = tuple(
    Goal(determiner, colour, object_type)
    for colour in COLOURS
    for object_type in OBJECT_TYPES
    for determiner in DETERMINERS
)
_GOAL_IDS = {goal.mission: index for index, goal in enumerate(GOALS)}


def goal_id(mission: str) -> int:
    """
    :param mission: a GoToLocal mission text
    :return: its goal id (index in :data:`GOALS`)
    :raises BabyAIEnvError: if the text is not one of the 36 GoToLocal missions
    """
    try:
        return _GOAL_IDS[mission]
    except KeyError:
        raise BabyAIEnvError(
            f"{mission!r} is not a GoToLocal mission ('go to {{the|a}} {{colour}} {{key|ball|box}}'): "
            "use a BabyAI GoToLocal environment"
        ) from None


def decode_mission(word_ids: Sequence[int] | np.ndarray) -> str:
    """
    :param word_ids: word ids of :data:`GOTO_LOCAL_VOCABULARY` (padding is dropped)
    :return: the mission text
    """
    words = {index: word for word, index in GOTO_LOCAL_VOCABULARY.items()}
    pad = GOTO_LOCAL_VOCABULARY[PAD_TOKEN]
    return " ".join(words[int(index)] for index in word_ids if int(index) != pad)


def full_grid(env: MiniGridEnv) -> np.ndarray:
    """
    The whole grid, north-up, with the agent drawn in its cell.

    :param env: the unwrapped MiniGrid env
    :return: (height, width, 3) uint8 array indexed ``[y, x]`` with channels (object type, colour, state);
        the agent's cell holds (agent, red, type of the carried object or "empty")
    """
    cells = [EMPTY_CELL if obj is None else obj.encode() for obj in env.grid.grid]
    image = np.array(cells, dtype=np.uint8).reshape(env.height, env.width, 3)
    x, y = env.agent_pos
    carried = EMPTY_HANDED if env.carrying is None else OBJECT_TO_IDX[env.carrying.type]
    image[y, x] = (AGENT_TYPE, AGENT_COLOUR, carried)
    return image


def target_mask(env: RoomGridLevel, grid: np.ndarray) -> np.ndarray:
    """
    The cells holding an object that matches the mission (two or more for "go to a ..." missions).

    :param env: the unwrapped GoTo level
    :param grid: its :func:`full_grid`
    :return: (height, width) bool array indexed ``[y, x]``
    """
    description = _goto_instruction(env).desc
    mask = grid[..., 0] == OBJECT_TO_IDX[description.type]
    if description.color is not None:
        mask &= grid[..., 1] == COLOR_TO_IDX[description.color]
    return mask


def _goto_instruction(env: MiniGridEnv) -> GoToInstr:
    instruction = getattr(env, "instrs", None)
    if not isinstance(instruction, GoToInstr):
        raise BabyAIEnvError(
            f"{type(env).__name__} has instruction {instruction!r}, not a GoTo instruction: use a BabyAI "
            f"GoTo level such as {GOTO_LOCAL_ID}"
        )
    return instruction


class DoneGoToInstr(GoToInstr):
    """
    A GoTo instruction that succeeds only when the agent takes ``done`` facing a matching object (the paper's
    fork of BabyAI); ``done`` anywhere else, and every other action, continue the episode.

    :param obj_desc: The description of the objects to go to.
    """

    def verify(self, action: int) -> str:
        """
        :param action: the action just taken
        :return: ``"success"`` or ``"continue"``
        """
        if action == self.env.actions.done and self.verify_action(action) == "success":
            return "success"
        return "continue"


class GoToTaskRules(gym.Wrapper):
    """
    The task rules of the paper on a BabyAI GoTo level: success only on ``done`` facing a matching object
    (unless ``stock_success``), float rewards (minigrid returns the int 0 on failure, which breaks
    ``imitation``'s rollouts), and quiet resets (minigrid prints each rejected level sample).

    :param env: A BabyAI GoTo level (``BabyAI-GoToLocal-v0`` or a variant).
    :param stock_success: Keep minigrid's rule: any action that leaves the agent facing a match succeeds.
    """

    def __init__(self, env: gym.Env, stock_success: bool = False) -> None:
        super().__init__(env)
        level = env.unwrapped
        if not isinstance(level, RoomGridLevel):
            raise BabyAIEnvError(
                f"GoToTaskRules needs a BabyAI level, got {type(level).__name__}: use {GOTO_LOCAL_ID}"
            )
        self.level = level
        self.stock_success = stock_success

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        with contextlib.redirect_stdout(io.StringIO()):
            observation, info = self.env.reset(seed=seed, options=options)
        instruction = _goto_instruction(self.level)
        if not self.stock_success:
            gated = DoneGoToInstr(instruction.desc)
            gated.reset_verifier(self.level)
            self.level.instrs = gated  # type: ignore[attr-defined]
        return observation, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, float(reward), terminated, truncated, info


class FullGridObservation(gym.ObservationWrapper):
    """
    Replace MiniGrid's egocentric 7 x 7 view by the whole grid, north-up, with the agent drawn in its cell
    (see :func:`full_grid`); ``direction`` (0 east, 1 south, 2 west, 3 north) and ``mission`` pass through.

    The image space is a uint8 ``Box`` bounded by the largest code, 10 (not 0..255), so
    Stable-Baselines3 neither transposes it nor divides it by 255; still build policies with
    ``normalize_images=False``.

    MiniGrid computes the agent's egocentric view at every reset and step, about 40% of the time of a bot
    step on GoToLocal. This wrapper throws that view away, so it makes the level skip it: the level's
    ``gen_obs`` returns a blank view of the same shape (with the true direction and mission) from then on.

    :param env: A MiniGrid env with a Dict observation holding ``image``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        source = env.observation_space
        level = env.unwrapped
        if (
            not isinstance(source, spaces.Dict)
            or "image" not in source.spaces
            or not isinstance(level, MiniGridEnv)
        ):
            raise BabyAIEnvError(
                f"FullGridObservation needs a MiniGrid env with a Dict observation, got {source}"
            )
        self.level = level
        image_space = spaces.Box(0, GRID_CODE_MAX, (level.height, level.width, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict({**source.spaces, "image": image_space})
        self._view_shape: tuple[int, ...] = source["image"].shape or ()
        level.gen_obs = self._level_observation  # type: ignore[method-assign]

    def _level_observation(self) -> dict[str, Any]:
        """The level's observation without its egocentric view (which :meth:`observation` replaces)."""
        blank = np.zeros(self._view_shape, dtype=np.uint8)
        return {"image": blank, "direction": self.level.agent_dir, "mission": self.level.mission}

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, "image": full_grid(self.level)}


def goto_local_id(room_size: int) -> str:
    """
    :param room_size: side of the room
    :return: the registered id: ``structrl/GoToLocal-v0`` for 8, else ``structrl/GoToLocal-S{size}-v0``
    """
    return "structrl/GoToLocal-v0" if room_size == 8 else f"structrl/GoToLocal-S{room_size}-v0"


#: Room size of each registered id.
REGISTERED_ROOM_SIZES = {goto_local_id(room_size): room_size for room_size in ROOM_SIZES}


def make_goto_local_env(
    env_id: str = GOTO_LOCAL_ID,
    *,
    room_size: int | None = None,
    stock_success: bool = False,
    **make_kwargs: Any,
) -> gym.Env:
    """
    Make the paper's GoToLocal task: ``Dict(image, direction, mission)`` with the full north-up
    ``(room_size, room_size, 3)`` grid, the direction as ``Discrete(4)`` and the mission as 5 word ids of
    :data:`GOTO_LOCAL_VOCABULARY` (``Box(0, 14, (5,), int64)``).

    :param env_id: A BabyAI GoTo level id (default ``BabyAI-GoToLocal-v0``) or a ``structrl/GoToLocal*`` id
        (which sets the room size unless ``room_size`` is given).
    :param room_size: Side of the room including its walls (default the level's, 8); larger rooms keep the
        8 objects, and their time limit is ``room_size ** 2`` steps.
    :param stock_success: Keep minigrid's success rule (facing a match after any action) instead of the
        paper's (``done`` facing a match).
    :param make_kwargs: Passed to ``gymnasium.make`` (e.g. ``render_mode="rgb_array"``, ``num_dists=...``).
    :return: The wrapped env.
    """
    if env_id in REGISTERED_ROOM_SIZES:
        room_size = room_size or REGISTERED_ROOM_SIZES[env_id]
        env_id = GOTO_LOCAL_ID
    if room_size is not None:
        make_kwargs["room_size"] = room_size
    try:
        base = gym.make(env_id, **make_kwargs)
    except gym.error.Error as error:
        raise BabyAIEnvError(f"cannot make {env_id!r} ({error}): use a BabyAI GoTo level id") from error
    return MissionTokenWrapper(
        FullGridObservation(GoToTaskRules(base, stock_success=stock_success)),
        max_length=MISSION_LENGTH,
        vocabulary=GOTO_LOCAL_VOCABULARY,
        keep_direction=True,
    )


def register_goto_local_envs() -> None:
    """
    Register (idempotently) ``structrl/GoToLocal-v0`` (8 x 8) and ``structrl/GoToLocal-S{10,12,16}-v0``:
    :func:`make_goto_local_env` with that room size; ``gymnasium.make`` keyword arguments such as
    ``stock_success=True`` are passed on.
    """
    for env_id, room_size in REGISTERED_ROOM_SIZES.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point="structrl.envs.babyai:make_goto_local_env",
                kwargs={"room_size": room_size},
            )


class FullyObservedBot(BabyAIBot):
    """
    minigrid's BabyAI bot with the whole grid known from the start, as the paper's
    ``Bot(env, fully_observed=True)``: it never explores, so it walks straight to the nearest match.

    Its map of seen cells is all True, so the per-step update of that map from the agent's view (which only
    adds cells) is skipped; this halves the bot's cost per step.

    :param env: The env, just reset (any wrapper of a BabyAI level).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.vis_mask[:] = True

    def _process_obs(self) -> None:
        """Nothing to update: every cell is already known."""
