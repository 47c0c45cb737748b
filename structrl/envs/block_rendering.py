"""
Vectorised renderers of the block-pushing worlds: 2D shapes and isometric cubes, as 3 x 50 x 50 uint8 images.

Every sprite is drawn once, when a renderer is first built, so that drawing a state is a handful of numpy
slice operations (a few microseconds) instead of a matplotlib figure (about 100 ms per cubes frame in the
original code).
"""

from __future__ import annotations

from functools import cache
from typing import Protocol

import numpy as np

#: Side of the square grid, in cells.
GRID_SIZE = 5
#: Side of the rendered images, in pixels.
IMAGE_SIZE = 50
#: Pixels per grid cell in the shapes images.
CELL_PIXELS = IMAGE_SIZE // GRID_SIZE
#: The most objects a renderer can draw (one colour each).
MAX_OBJECTS = 5

#: Shapes colours: matplotlib's ``Set1`` palette at i / 9 (red, blue, green, purple, orange), as in C-SWM.
SHAPES_COLORS: tuple[tuple[int, int, int], ...] = (
    (228, 26, 28),
    (55, 126, 184),
    (77, 175, 74),
    (152, 78, 163),
    (255, 127, 0),
)
#: Cubes colours: matplotlib's named colours purple, green, orange, blue and brown, as in C-SWM.
CUBES_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 0, 128),
    (0, 128, 0),
    (255, 165, 0),
    (0, 0, 255),
    (165, 42, 42),
)

# Isometric camera of the cubes images: screen (x right, y down) displacement, in pixels, of one cell step
# along the grid rows, one along the columns and one cube height up, and the screen point of the grid corner
# (row 0, column 0). The view looks at the +row and +column faces, as matplotlib's default 3D view does.
_ROW_STEP = np.array([-4.6, 4.2])
_COL_STEP = np.array([4.9, 3.0])
_UP_STEP = np.array([0.0, -5.5])
_GRID_ORIGIN = np.array([23.5, 9.0])
# Brightness of the top, +row and +column cube faces, and of the cube edges (relative to the cube colour).
_FACE_SHADES = (1.0, 0.78, 0.58)
_EDGE_SHADE = 0.3
_EDGE_HALF_WIDTH = 0.3
_BACKGROUND = np.array([255.0, 255.0, 255.0])
_FLOOR = np.array([128.0, 128.0, 128.0])
_FLOOR_LINES = np.array([100.0, 100.0, 100.0])
_FLOOR_LINE_HALF_WIDTH = 0.3
# Sub-pixels per pixel side used to anti-alias the cubes sprites.
_SUPERSAMPLING = 8


class BlockRenderer(Protocol):
    """Draws a block-pushing state as a (3, 50, 50) uint8 image."""

    def render(self, positions: np.ndarray) -> np.ndarray:
        """
        :param positions: (num_objects, 2) integer array of (row, column) cells, one object per cell
        :return: a new (3, 50, 50) uint8 image
        """
        ...


class ShapesRenderer:
    """
    C-SWM's "shapes" images: object ``i`` fills the 10 x 10 pixel block of its cell on a black background,
    as a disk (``i % 3 == 0``), an upward triangle (``i % 3 == 1``) or a square (``i % 3 == 2``) in colour
    :data:`SHAPES_COLORS` ``[i]``. Unlike the original rasteriser, the square stays inside its cell.

    :param num_objects: Number of objects (at most :data:`MAX_OBJECTS`).
    """

    def __init__(self, num_objects: int = MAX_OBJECTS) -> None:
        self.sprites = _shapes_sprites()[:num_objects]

    def render(self, positions: np.ndarray) -> np.ndarray:
        """
        :param positions: (num_objects, 2) integer array of (row, column) cells, one object per cell
        :return: a new (3, 50, 50) uint8 image
        """
        canvas = np.zeros((3, GRID_SIZE, CELL_PIXELS, GRID_SIZE, CELL_PIXELS), dtype=np.uint8)
        # Advanced indices around a slice put the object axis first: (num_objects, 3, 10, 10), the sprites.
        canvas[:, positions[:, 0], :, positions[:, 1], :] = self.sprites
        return canvas.reshape(3, IMAGE_SIZE, IMAGE_SIZE)


class CubesRenderer:
    """
    C-SWM's "cubes" images: one isometric cube per object on a grey grid floor over a white background,
    with lit top faces, darker side faces and dark edges, in colour :data:`CUBES_COLORS` ``[i]``. Cubes are
    drawn back to front, so nearer cubes hide farther ones.
    """

    def __init__(self) -> None:
        self.background, self.sprites = _cubes_sprites()

    def render(self, positions: np.ndarray) -> np.ndarray:
        """
        :param positions: (num_objects, 2) integer array of (row, column) cells, one object per cell
        :return: a new (3, 50, 50) uint8 image
        """
        canvas = self.background.copy()
        cells = positions[:, 0] * GRID_SIZE + positions[:, 1]
        # Cells nearer the viewer have a larger row + column; cubes on the same diagonal never overlap.
        for obj in np.argsort(positions.sum(axis=1), kind="stable"):
            top, left, transparency, premultiplied = self.sprites[cells[obj]][obj]
            patch = canvas[:, top : top + transparency.shape[0], left : left + transparency.shape[1]]
            patch *= transparency
            patch += premultiplied
        return (canvas + 0.5).astype(np.uint8)


def make_renderer(render_type: str, num_objects: int = MAX_OBJECTS) -> BlockRenderer:
    """
    Build the renderer of a block-pushing render type.

    :param render_type: ``"shapes"`` or ``"cubes"``
    :param num_objects: Number of objects (at most :data:`MAX_OBJECTS`).
    :return: the renderer
    """
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be between 1 and {MAX_OBJECTS}, got {num_objects}")
    if render_type == "shapes":
        return ShapesRenderer(num_objects)
    if render_type == "cubes":
        return CubesRenderer()
    raise ValueError(f"unknown render_type {render_type!r}: use 'shapes' or 'cubes'")


def cube_screen_point(row: float, col: float, height: float) -> np.ndarray:
    """
    Where a point of the cubes world appears in the cubes images.

    :param row: grid row coordinate (cell ``r`` spans ``r .. r + 1``)
    :param col: grid column coordinate
    :param height: height in cube sides (the floor is at 0, the cube tops at 1)
    :return: the (x, y) pixel coordinates (x to the right, y down)
    """
    return _GRID_ORIGIN + row * _ROW_STEP + col * _COL_STEP + height * _UP_STEP


@cache
def _shapes_sprites() -> np.ndarray:
    """The (MAX_OBJECTS, 3, 10, 10) uint8 sprites of the shapes images, black outside the shape."""
    row, col = np.mgrid[0:CELL_PIXELS, 0:CELL_PIXELS]
    half = CELL_PIXELS // 2
    masks = (
        (row - half) ** 2 + (col - half) ** 2 < half**2,  # disk of radius 5 centred on the cell
        np.abs(col - half) <= row / 2,  # triangle with its apex at the top middle
        np.ones_like(row, dtype=bool),  # square
    )
    sprites = np.zeros((MAX_OBJECTS, 3, CELL_PIXELS, CELL_PIXELS), dtype=np.uint8)
    for obj in range(MAX_OBJECTS):
        color = np.array(SHAPES_COLORS[obj], dtype=np.uint8)
        sprites[obj] = masks[obj % 3] * color[:, None, None]
    return sprites


def _parallelogram_coordinates(
    points: np.ndarray, corner: np.ndarray, first: np.ndarray, second: np.ndarray
) -> np.ndarray:
    """Coordinates (s, t) of screen points (..., 2) in the frame ``corner + s * first + t * second``."""
    basis = np.stack([first, second], axis=1)
    return (points - corner) @ np.linalg.inv(basis).T


def _subpixel_centres(top: int, left: int, height: int, width: int) -> np.ndarray:
    """Screen (x, y) of the sub-pixel centres of a pixel box, shape (height * S, width * S, 2)."""
    offsets = (np.arange(_SUPERSAMPLING) + 0.5) / _SUPERSAMPLING
    ys = (top + np.arange(height)[:, None] + offsets[None, :]).reshape(-1)
    xs = (left + np.arange(width)[:, None] + offsets[None, :]).reshape(-1)
    return np.stack(np.meshgrid(xs, ys), axis=-1)


def _average_subpixels(values: np.ndarray) -> np.ndarray:
    """Average (H * S, W * S, ...) sub-pixel values into (H, W, ...) pixels."""
    height, width = values.shape[0] // _SUPERSAMPLING, values.shape[1] // _SUPERSAMPLING
    blocks = values.reshape(height, _SUPERSAMPLING, width, _SUPERSAMPLING, *values.shape[2:])
    return blocks.mean(axis=(1, 3))


def _on_parallelogram_edge(coordinates: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Whether points of a parallelogram (given by their (s, t) coordinates) lie on one of its edges."""
    area = abs(first[0] * second[1] - first[1] * second[0])
    s, t = coordinates[..., 0], coordinates[..., 1]
    s_width, t_width = area / np.linalg.norm(second), area / np.linalg.norm(first)
    return (np.minimum(s, 1 - s) * s_width < _EDGE_HALF_WIDTH) | (
        np.minimum(t, 1 - t) * t_width < _EDGE_HALF_WIDTH
    )


def _cubes_floor() -> np.ndarray:
    """The (3, 50, 50) float32 background: the grey grid floor over white."""
    points = _subpixel_centres(0, 0, IMAGE_SIZE, IMAGE_SIZE)
    grid = _parallelogram_coordinates(points, _GRID_ORIGIN, _ROW_STEP, _COL_STEP)
    on_floor = np.all((grid >= 0) & (grid <= GRID_SIZE), axis=-1)
    cell_offsets = np.abs(grid - np.round(grid))
    line_widths = _FLOOR_LINE_HALF_WIDTH / np.array(
        [_edge_step_width(_COL_STEP, _ROW_STEP), _edge_step_width(_ROW_STEP, _COL_STEP)]
    )
    on_line = np.any(cell_offsets < line_widths, axis=-1)
    colors = np.where(on_floor[..., None], np.where(on_line[..., None], _FLOOR_LINES, _FLOOR), _BACKGROUND)
    return _average_subpixels(colors).transpose(2, 0, 1).astype(np.float32)


def _edge_step_width(along: np.ndarray, across: np.ndarray) -> float:
    """Screen distance between neighbouring grid lines parallel to ``along``, one ``across`` step apart."""
    return float(abs(along[0] * across[1] - along[1] * across[0]) / np.linalg.norm(along))


_Sprite = tuple[int, int, np.ndarray, np.ndarray]


@cache
def _cubes_sprites() -> tuple[np.ndarray, list[list[_Sprite]]]:
    """
    The floor and, for every cell and colour, a cube sprite ``(top, left, transparency, premultiplied)``:
    drawing it replaces a (3, h, w) patch by ``patch * transparency + premultiplied`` (float32).
    """
    sprites: list[list[_Sprite]] = []
    for cell in range(GRID_SIZE * GRID_SIZE):
        row, col = divmod(cell, GRID_SIZE)
        # Visible faces as (corner, first side, second side): top, +row side, +column side.
        faces = (
            (cube_screen_point(row, col, 1), _ROW_STEP, _COL_STEP),
            (cube_screen_point(row + 1, col, 0), _COL_STEP, _UP_STEP),
            (cube_screen_point(row, col + 1, 0), _ROW_STEP, _UP_STEP),
        )
        corners = np.array(
            [
                corner + s * first + t * second
                for corner, first, second in faces
                for s in (0, 1)
                for t in (0, 1)
            ]
        )
        top, left = np.floor(corners.min(axis=0)).astype(int)[::-1]
        bottom, right = np.ceil(corners.max(axis=0)).astype(int)[::-1]
        assert top >= 0 and left >= 0 and bottom <= IMAGE_SIZE and right <= IMAGE_SIZE, (
            "cube outside the image"
        )
        points = _subpixel_centres(top, left, bottom - top, right - left)
        # Sub-pixel shade: 0 outside the cube, else the brightness of the face (or edge) it falls on.
        shade = np.zeros(points.shape[:2])
        for (corner, first, second), face_shade in zip(faces, _FACE_SHADES, strict=True):
            coordinates = _parallelogram_coordinates(points, corner, first, second)
            inside = np.all((coordinates >= 0) & (coordinates <= 1), axis=-1)
            on_edge = _on_parallelogram_edge(coordinates, first, second)
            shade = np.where(inside, np.where(on_edge, _EDGE_SHADE, face_shade), shade)
        coverage = _average_subpixels((shade > 0).astype(np.float64))
        brightness = _average_subpixels(shade)
        transparency = (1 - coverage).astype(np.float32)
        sprites.append(
            [
                (
                    int(top),
                    int(left),
                    transparency,
                    (brightness * np.array(color)[:, None, None]).astype(np.float32),
                )
                for color in CUBES_COLORS
            ]
        )
    return _cubes_floor(), sprites
