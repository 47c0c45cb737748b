"""Block-pushing worlds (dynamics, rendering, seeding, registration) and the C-SWM Atari wrapper."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from structrl.envs.atari import CswmAtariWrapper, preprocess_frame
from structrl.envs.block_pushing import BlockPushingEnv
from structrl.envs.block_rendering import CUBES_COLORS, SHAPES_COLORS, cube_screen_point
from structrl.envs.registration import register_envs

register_envs()

BLOCK_IDS = {
    "ShapesTrain-v0": 100,
    "ShapesEval-v0": 10,
    "CubesTrain-v0": 100,
    "CubesEval-v0": 10,
    "ShapesImmovableTrain-v0": 100,
    "ShapesImmovableEval-v0": 10,
    "CubesImmovableTrain-v0": 100,
    "CubesImmovableEval-v0": 10,
}
# Object i at cell (i, i), except object 4 at (0, 4).
LAYOUT = [[0, 0], [1, 1], [2, 2], [3, 3], [0, 4]]
UP, RIGHT, DOWN, LEFT = range(4)


def make(render_type: str = "shapes", immovable: bool = False) -> BlockPushingEnv:
    env = BlockPushingEnv(render_type=render_type, immovable=immovable, render_mode="rgb_array")
    env.reset(options={"positions": LAYOUT})
    return env


def image(env: BlockPushingEnv) -> np.ndarray:
    """The current image as (y, x, rgb) ints."""
    rendered = env.render()
    assert rendered is not None
    return rendered.astype(int)


def test_registered_ids_episode_lengths() -> None:
    for env_id, steps in BLOCK_IDS.items():
        env = gym.make(env_id)
        assert env.spec is not None and env.spec.max_episode_steps == steps
        env.reset(seed=0)
        count, truncated = 0, False
        while not truncated:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            assert reward == 0.0 and not terminated
            count += 1
        assert count == steps, env_id
    assert gym.spec("ShapesImmovableTrain-v0").kwargs == {"render_type": "shapes", "immovable": True}
    assert gym.spec("CubesEval-v0").kwargs == {"render_type": "cubes"}


def test_register_envs_is_idempotent() -> None:
    register_envs()
    register_envs()
    assert "CubesImmovableEval-v0" in gym.registry


def test_module_prefixed_id_registers_on_import() -> None:
    # A fresh interpreter: gymnasium imports ``structrl`` for the "structrl:" prefix, which registers the ids.
    code = "import gymnasium as gym; print(gym.make('structrl:ShapesTrain-v0').reset(seed=0)[0].shape)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 50, 50)"


def test_moves_walls_and_blocking() -> None:
    env = make()
    _, _, _, _, info = env.step(4 * 2 + RIGHT)  # object 2: (2, 2) -> (2, 3)
    assert env.positions[2].tolist() == [2, 3]
    assert info["state_id"].tolist() == [0, 0, 1, 1, 2, 3, 3, 3, 0, 4]
    env.step(4 * 0 + UP)  # object 0 at the top wall
    env.step(4 * 0 + LEFT)  # and the left wall
    assert env.positions[0].tolist() == [0, 0]
    env.step(4 * 4 + RIGHT)  # object 4 at the right wall
    assert env.positions[4].tolist() == [0, 4]
    env.step(4 * 3 + UP)  # object 3: (3, 3) -> (2, 3) is taken by object 2: no move, no pushing
    assert env.positions[[2, 3]].tolist() == [[2, 3], [3, 3]]
    env.step(4 * 1 + DOWN)  # object 1: (1, 1) -> (2, 1)
    assert env.positions[1].tolist() == [2, 1]
    env.step(4 * 3 + DOWN)
    env.step(4 * 3 + DOWN)
    env.step(4 * 3 + DOWN)  # (3, 3) -> (4, 3), then the bottom wall
    assert env.positions[3].tolist() == [4, 3]


def test_immovable_objects_never_move() -> None:
    env = make(immovable=True)
    for direction in range(4):
        for obj in (0, 1):
            env.step(4 * obj + direction)
    assert env.positions[:2].tolist() == [[0, 0], [1, 1]]
    env.step(4 * 2 + UP)  # object 2 moves to (1, 2); then left into object 1's cell is blocked
    env.step(4 * 2 + LEFT)
    assert env.positions[2].tolist() == [1, 2]
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    start = env.positions[:2]
    for action in rng.integers(20, size=500):
        env.step(action)
    assert np.array_equal(env.positions[:2], start)
    assert not np.array_equal(env.positions[2:], make(immovable=True).positions[2:])
    movable = make(immovable=False)
    movable.step(4 * 0 + DOWN)
    assert movable.positions[0].tolist() == [1, 0]


def test_invalid_actions_and_positions() -> None:
    env = make()
    with pytest.raises(ValueError, match="outside"):
        env.step(20)
    with pytest.raises(ValueError, match="two objects in one cell"):
        env.reset(options={"positions": [[0, 0]] * 5})
    with pytest.raises(ValueError, match="cells of the 5x5 grid"):
        env.reset(options={"positions": [[0, 5], [1, 1], [2, 2], [3, 3], [4, 4]]})


@pytest.mark.parametrize("render_type", ["shapes", "cubes"])
def test_observation_matches_space(render_type: str) -> None:
    env = BlockPushingEnv(render_type=render_type, render_mode="rgb_array")
    observation, info = env.reset(seed=1)
    assert observation.shape == env.observation_space.shape == (3, 50, 50)
    assert observation.dtype == env.observation_space.dtype == np.uint8
    assert env.observation_space.contains(observation)
    assert info["state_id"].dtype == np.int64 and info["state_id"].shape == (10,)
    rendered = env.render()
    assert rendered is not None and np.array_equal(rendered, observation.transpose(1, 2, 0))
    next_observation, *_ = env.step(0)
    assert next_observation is not observation


def test_shapes_colours_at_cells() -> None:
    pixel = image(make())
    for obj, (row, col) in enumerate(LAYOUT):
        # The centre pixel of each cell has the object's colour, whatever its shape.
        assert pixel[10 * row + 5, 10 * col + 5].tolist() == list(SHAPES_COLORS[obj]), obj
    assert pixel[10 * 4 + 5, 10 * 0 + 5].tolist() == [0, 0, 0]  # empty cell: black
    assert pixel[0, 0].tolist() == [0, 0, 0]  # disk (object 0) corner stays black
    assert pixel[10 * 1, 10 * 1 + 5].tolist() == list(SHAPES_COLORS[1])  # triangle apex
    assert pixel[10 * 1, 10 * 1].tolist() == [0, 0, 0]  # beside the apex
    assert (pixel[20:30, 20:30] == SHAPES_COLORS[2]).all()  # square fills its cell
    assert (pixel[30, 20:30] == 0).all() and (pixel[20:30, 30] == 0).all()  # and stays inside it


def test_cubes_colours_and_occlusion() -> None:
    env = make("cubes")
    pixel = image(env)
    for obj, (row, col) in enumerate(LAYOUT):
        x, y = cube_screen_point(row + 0.5, col + 0.5, 1.0)  # middle of the top face
        assert np.abs(pixel[int(y), int(x)] - CUBES_COLORS[obj]).max() <= 2, obj
        # The +row side face, below the top face's front-left edge, is a darker shade of the same colour.
        x, y = cube_screen_point(row + 1.0, col + 0.5, 0.5)
        side = pixel[int(y), int(x)]
        assert (
            side.sum() < sum(CUBES_COLORS[obj])
            and np.abs(side - 0.78 * np.array(CUBES_COLORS[obj])).max() <= 12
        )
    x, y = cube_screen_point(4.5, 0.5, 0.0)  # the floor of the empty cell (4, 0) is grey
    assert np.all(np.abs(pixel[int(y), int(x)] - 128) <= 30)
    assert pixel[1, 1].tolist() == [255, 255, 255]  # the background is white
    # Object 2 at (2, 2) and object 1 right behind it at (1, 2): the nearer cube hides the farther one.
    env.reset(options={"positions": [[0, 0], [1, 2], [2, 2], [3, 3], [0, 4]]})
    pixel = image(env)
    x, y = cube_screen_point(2.25, 2.5, 1.0)  # on object 2's top, inside object 1's outline
    assert np.abs(pixel[int(y), int(x)] - CUBES_COLORS[2]).max() <= 2


def test_seeding_reproduces_episodes() -> None:
    actions = np.random.default_rng(0).integers(20, size=30)

    def run(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        env = gym.make("ShapesTrain-v0")
        observation, info = env.reset(seed=seed)
        observations, ids = [observation], [info["state_id"]]
        for action in actions:
            observation, _, _, _, info = env.step(action)
            observations.append(observation)
            ids.append(info["state_id"])
        return observations, ids

    first, second, other = run(7), run(7), run(8)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0], strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    assert not np.array_equal(first[1][0], other[1][0])
    # The state id determines the image.
    env = BlockPushingEnv()
    observation, _ = env.reset(options={"positions": first[1][-1].reshape(5, 2)})
    assert np.array_equal(observation, first[0][-1])


@pytest.mark.parametrize("env_id", ["ShapesTrain-v0", "CubesImmovableEval-v0"])
def test_check_env(env_id: str) -> None:
    check_env(gym.make(env_id, render_mode="rgb_array").unwrapped)


def test_atari_wrapper_on_pong() -> None:
    import ale_py

    gym.register_envs(ale_py)
    env = CswmAtariWrapper(
        gym.make("ALE/Pong-v5", frameskip=4, repeat_action_probability=0.0),
        crop_rows=(35, 190),
        warmup_steps=58,
    )
    observation, info = env.reset(seed=0)
    assert observation.shape == env.observation_space.shape == (6, 50, 50) and observation.dtype == np.uint8
    assert info["state_id"].shape == (128,) and info["state_id"].dtype == np.uint8
    assert info["episode_frame_number"] == 4 * 59  # 58 warm-up steps and a NOOP, frame skip 4
    next_observation, _, _, _, next_info = env.step(2)
    assert np.array_equal(next_observation[:3], observation[3:])  # previous frame first, then current
    assert not np.array_equal(next_info["state_id"], info["state_id"])
    again, _ = env.reset(seed=0)
    assert np.array_equal(again, observation)
    frame = np.zeros((210, 160, 3), dtype=np.uint8)
    frame[35:190] = 200
    assert np.all(preprocess_frame(frame, (35, 190)) == 200)


def test_registered_atari_ids_have_ten_steps() -> None:
    env = gym.make("SpaceInvadersCswm-v0")
    observation, _ = env.reset(seed=1)
    assert observation.shape == (6, 50, 50)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        steps += 1
    assert steps == 10
