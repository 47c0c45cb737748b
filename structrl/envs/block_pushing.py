"""The C-SWM block-pushing worlds (Kipf et al., 2020) as a Gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from structrl.envs.block_rendering import GRID_SIZE, IMAGE_SIZE, MAX_OBJECTS, make_renderer

#: (row, column) displacement of the four directions: up, right, down, left.
DIRECTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
#: The objects that never move in the immovable variants.
IMMOVABLE_OBJECTS = (0, 1)


class BlockPushingEnv(gym.Env[np.ndarray, np.int64]):
    """
    Objects on a 5 x 5 grid, each moved one cell at a time, observed as a (3, 50, 50) uint8 image.

    Action ``a`` moves object ``a // 4`` one cell in direction ``a % 4`` (up, right, down, left). The move
    happens only if the target cell is inside the grid and free; there is no pushing, so a blocked move is a
    silent no-op, as is any action on objects 0 and 1 when ``immovable`` is set. The reward is always 0 and
    episodes never terminate: the registered ids end them with a time limit (100 steps for ``*Train-v0``,
    10 for ``*Eval-v0``).

    ``reset`` places the objects in distinct cells drawn uniformly with ``self.np_random``, so
    ``reset(seed=...)`` reproduces episodes, or at the cells given as ``options={"positions": ...}``.
    ``info["state_id"]`` holds the object cells ``[r0, c0, r1, c1, ...]`` (int64): equal state ids mean
    equal images.

    :param render_type: ``"shapes"`` (2D shapes on black) or ``"cubes"`` (isometric cubes on a grid floor).
    :param num_objects: Number of objects, 1 to 5.
    :param immovable: Whether objects 0 and 1 never move.
    :param render_mode: ``None`` or ``"rgb_array"`` (``render()`` then returns a (50, 50, 3) image).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        render_type: str = "shapes",
        num_objects: int = MAX_OBJECTS,
        immovable: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}: use None or 'rgb_array'")
        self.renderer = make_renderer(render_type, num_objects)
        self.num_objects = num_objects
        self.immovable = immovable
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        self.action_space = spaces.Discrete(num_objects * len(DIRECTIONS))
        self._first_movable = len(IMMOVABLE_OBJECTS) if immovable else 0
        self._positions = np.zeros((num_objects, 2), dtype=np.int64)
        # _occupant[row, col] is the index of the object in that cell, or -1.
        self._occupant = np.full((GRID_SIZE, GRID_SIZE), -1, dtype=np.int64)

    @property
    def positions(self) -> np.ndarray:
        """A copy of the (num_objects, 2) array of object cells (row, column)."""
        return self._positions.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """
        Place the objects in distinct random cells, or in ``options["positions"]``.

        :param seed: Seed of ``self.np_random``.
        :param options: ``{"positions": (num_objects, 2) cells}`` to start from a given state.
        :return: the first image and ``{"state_id": ...}``
        """
        super().reset(seed=seed)
        if options is not None and "positions" in options:
            positions = self._check_positions(options["positions"])
        else:
            cells = self.np_random.permutation(GRID_SIZE * GRID_SIZE)[: self.num_objects]
            positions = np.stack(np.divmod(cells, GRID_SIZE), axis=1)
        self._positions[:] = positions
        self._occupant.fill(-1)
        self._occupant[positions[:, 0], positions[:, 1]] = np.arange(self.num_objects)
        return self.renderer.render(self._positions), {"state_id": self._positions.reshape(-1).copy()}

    def step(self, action: np.int64 | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """
        Move one object one cell, if the move is allowed.

        :param action: ``4 * object + direction``
        :return: the image, reward 0, ``terminated=False``, ``truncated=False`` and ``{"state_id": ...}``
        """
        obj, direction = divmod(int(action), len(DIRECTIONS))
        if not 0 <= obj < self.num_objects:
            raise ValueError(f"action {action} is outside {self.action_space}")
        if obj >= self._first_movable:
            row, col = self._positions[obj]
            d_row, d_col = DIRECTIONS[direction]
            new_row, new_col = row + d_row, col + d_col
            if 0 <= new_row < GRID_SIZE and 0 <= new_col < GRID_SIZE and self._occupant[new_row, new_col] < 0:
                self._occupant[row, col] = -1
                self._occupant[new_row, new_col] = obj
                self._positions[obj] = new_row, new_col
        image = self.renderer.render(self._positions)
        return image, 0.0, False, False, {"state_id": self._positions.reshape(-1).copy()}

    def render(self) -> np.ndarray | None:
        """
        :return: the current image as (50, 50, 3) uint8 with ``render_mode="rgb_array"``, else ``None``
        """
        if self.render_mode is None:
            return None
        return self.renderer.render(self._positions).transpose(1, 2, 0)

    def _check_positions(self, positions: Any) -> np.ndarray:
        cells = np.asarray(positions, dtype=np.int64)
        if cells.shape != (self.num_objects, 2):
            raise ValueError(
                f"options['positions'] must have shape ({self.num_objects}, 2), got {cells.shape}"
            )
        if cells.min() < 0 or cells.max() >= GRID_SIZE:
            raise ValueError(
                f"options['positions'] must be cells of the {GRID_SIZE}x{GRID_SIZE} grid: {cells.tolist()}"
            )
        if len({(int(row), int(col)) for row, col in cells}) < self.num_objects:
            raise ValueError(f"options['positions'] puts two objects in one cell: {cells.tolist()}")
        return cells
