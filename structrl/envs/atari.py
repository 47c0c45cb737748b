"""C-SWM's Atari preprocessing of Pong and Space Invaders: cropped 50 x 50 frames, two stacked, warm-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from PIL import Image

#: Side of the preprocessed frames, in pixels.
FRAME_SIZE = 50
#: The NOOP action of the minimal Pong and Space Invaders action sets.
NOOP = 0


@dataclass(frozen=True)
class CswmAtariSettings:
    """
    C-SWM's per-game preprocessing.

    :param ale_game: ALE ROM name.
    :param crop_rows: First and last (excluded) rows of the 210 x 160 screen kept before resizing.
    :param warmup_steps: Random actions taken at reset before the first observation.
    """

    ale_game: str
    crop_rows: tuple[int, int]
    warmup_steps: int


#: The two games C-SWM preprocesses, by the name used in the registered ids.
CSWM_ATARI_GAMES: dict[str, CswmAtariSettings] = {
    "Pong": CswmAtariSettings("pong", (35, 190), 58),
    "SpaceInvaders": CswmAtariSettings("space_invaders", (30, 200), 50),
}


def preprocess_frame(frame: np.ndarray, crop_rows: tuple[int, int]) -> np.ndarray:
    """
    Crop an RGB screen to ``crop_rows`` (full width) and resize it to 50 x 50 with Lanczos filtering.

    :param frame: (210, 160, 3) uint8 screen
    :param crop_rows: first and last (excluded) rows to keep
    :return: (3, 50, 50) uint8 frame (C-SWM's float frames are this divided by 255)
    """
    cropped = Image.fromarray(frame[crop_rows[0] : crop_rows[1]])
    resized = cropped.resize((FRAME_SIZE, FRAME_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(resized).transpose(2, 0, 1)


class CswmAtariWrapper(gym.Wrapper[np.ndarray, int, np.ndarray, int]):
    """
    C-SWM's Atari observations: the previous and the current preprocessed frame stacked along the channels
    (6, 50, 50), oldest first (the original scripts disagree on the order; this is the order of its A3C
    collector and of SB3's frame stacking).

    ``reset`` takes ``warmup_steps`` uniformly random actions (drawn from a generator seeded by
    ``reset(seed=...)``) and one NOOP; the first observation stacks the last warm-up frame and the NOOP frame.
    The same seed gives the same episode: without sticky actions the game itself is deterministic.
    ``info["state_id"]`` is the 128-byte console RAM (uint8) after each reset and step.

    :param env: An ALE environment with RGB observations.
    :param crop_rows: First and last (excluded) screen rows kept before resizing.
    :param warmup_steps: Random actions taken at reset.
    """

    def __init__(self, env: gym.Env, crop_rows: tuple[int, int], warmup_steps: int) -> None:
        super().__init__(env)
        assert hasattr(env.unwrapped, "ale"), f"CswmAtariWrapper needs an ALE environment, got {env}"
        self._ale: Any = env.unwrapped.ale
        assert warmup_steps >= 0, f"warmup_steps must be non-negative, got {warmup_steps}"
        assert isinstance(env.action_space, spaces.Discrete), (
            f"expected a Discrete action space, got {env.action_space}"
        )
        self.crop_rows = crop_rows
        self.warmup_steps = warmup_steps
        self.observation_space = spaces.Box(0, 255, (6, FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
        self._num_actions = int(env.action_space.n)
        self._warmup_rng, _ = seeding.np_random()
        # Without sticky actions the emulator is deterministic, so the game is seeded at the first reset only:
        # seeding ALE reloads the ROM (about 0.1 s) and would not change the episodes.
        self._reseed_game = self._ale.getFloat("repeat_action_probability") > 0
        self._game_seeded = False
        self._previous = np.zeros((3, FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Reset the game, take the warm-up actions and a NOOP.

        :param seed: Seed of the game and of the warm-up actions.
        :param options: Passed to the game's ``reset``.
        :return: the first stacked observation and the game's info with ``state_id``
        """
        if seed is not None:
            self._warmup_rng, _ = seeding.np_random(seed)
        game_seed = seed if self._reseed_game or not self._game_seeded else None
        frame, info = self.env.reset(seed=game_seed, options=options)
        self._game_seeded = True
        for _ in range(self.warmup_steps):
            frame, _, terminated, truncated, info = self.env.step(
                int(self._warmup_rng.integers(self._num_actions))
            )
            if terminated or truncated:
                raise RuntimeError(f"the game ended during the {self.warmup_steps} warm-up steps")
        self._previous = preprocess_frame(frame, self.crop_rows)
        observation, _, _, _, info = self.step(NOOP)
        return observation, info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """
        Step the game.

        :param action: the game action
        :return: the stacked (previous, current) frames, reward, terminated, truncated and info with
            ``state_id``
        """
        frame, reward, terminated, truncated, info = self.env.step(action)
        current = preprocess_frame(frame, self.crop_rows)
        observation = np.concatenate([self._previous, current])
        self._previous = current
        return (
            observation,
            float(reward),
            terminated,
            truncated,
            {**info, "state_id": self._ale.getRAM().copy()},
        )


def make_cswm_atari_env(game: str, render_mode: str | None = None) -> CswmAtariWrapper:
    """
    C-SWM's Atari environment: the game with a deterministic frame skip of 4 (no sticky actions, minimal
    action set, like ``PongDeterministic-v4``) and :class:`CswmAtariWrapper`.

    :param game: ``"Pong"`` or ``"SpaceInvaders"``
    :param render_mode: ALE render mode
    :return: the wrapped environment
    """
    if game not in CSWM_ATARI_GAMES:
        raise ValueError(f"unknown game {game!r}: C-SWM preprocesses {', '.join(CSWM_ATARI_GAMES)}")
    from ale_py import AtariEnv  # imported here: registering the ids must not load the emulator

    settings = CSWM_ATARI_GAMES[game]
    env = AtariEnv(
        game=settings.ale_game, frameskip=4, repeat_action_probability=0.0, render_mode=render_mode
    )
    return CswmAtariWrapper(env, settings.crop_rows, settings.warmup_steps)
