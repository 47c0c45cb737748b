"""BabyAI GoToLocal wrappers: full north-up grid, mission ids, the done-gated success rule, larger rooms."""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from minigrid.core.constants import DIR_TO_VEC, OBJECT_TO_IDX
from stable_baselines3.common.env_checker import check_env

from structrl.envs.babyai import (
    COLOURS,
    GOALS,
    GOTO_LOCAL_VOCABULARY,
    MISSION_LENGTH,
    OBJECT_TYPES,
    BabyAIEnvError,
    FullyObservedBot,
    decode_mission,
    goal_id,
    goto_local_id,
    make_goto_local_env,
    register_goto_local_envs,
)

register_goto_local_envs()

DONE = 6
LEFT = 0
FORWARD = 2
AGENT_CELL = [OBJECT_TO_IDX["agent"], 0, OBJECT_TO_IDX["empty"]]


def unwrapped(env: gym.Env) -> Any:
    """The minigrid level under the wrappers (untyped: its attributes are not in gymnasium's Env)."""
    return env.unwrapped


def expected_grid(env: gym.Env) -> np.ndarray:
    """The grid built cell by cell from minigrid's objects, [y, x], with the agent drawn."""
    level = unwrapped(env)
    grid = np.zeros((level.height, level.width, 3), dtype=np.uint8)
    for y in range(level.height):
        for x in range(level.width):
            cell = level.grid.get(x, y)
            grid[y, x] = cell.encode() if cell is not None else (OBJECT_TO_IDX["empty"], 0, 0)
    x, y = level.agent_pos
    grid[y, x] = AGENT_CELL
    return grid


def test_grid_is_full_north_up_with_the_agent_drawn() -> None:
    env = make_goto_local_env()
    obs, _ = env.reset(seed=7)
    image = obs["image"]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, expected_grid(env))
    x, y = unwrapped(env).agent_pos
    assert np.argwhere(image[..., 0] == OBJECT_TO_IDX["agent"]).tolist() == [[y, x]]
    assert (image[0, :, 0] == OBJECT_TO_IDX["wall"]).all() and (
        image[:, -1, 0] == OBJECT_TO_IDX["wall"]
    ).all()
    assert np.isin(
        image[1:-1, 1:-1, 0], [OBJECT_TO_IDX[name] for name in ("empty", "key", "ball", "box", "agent")]
    ).all()
    assert (np.isin(image[..., 0], [OBJECT_TO_IDX[name] for name in OBJECT_TYPES])).sum() == 8
    # Turning changes the direction but not the (north-up) image; an egocentric view would rotate.
    turned, _, _, _, _ = env.step(LEFT)
    np.testing.assert_array_equal(turned["image"], image)
    assert turned["direction"] == (obs["direction"] - 1) % 4


def test_skipping_the_egocentric_view_changes_nothing_else() -> None:
    # The wrapped level no longer computes minigrid's 7x7 view; a stock level given the same seed and
    # actions must still agree on everything the wrappers pass on.
    ours = make_goto_local_env(stock_success=True)
    stock = gym.make("BabyAI-GoToLocal-v0")
    rng = np.random.default_rng(0)
    for seed in range(5):
        obs, _ = ours.reset(seed=seed)
        stock_obs, _ = stock.reset(seed=seed)
        assert not unwrapped(ours).gen_obs()["image"].any()
        assert stock_obs["image"].any()
        for action in rng.integers(0, 7, size=40):
            obs, reward, terminated, truncated, _ = ours.step(int(action))
            stock_obs, stock_reward, stock_terminated, stock_truncated, _ = stock.step(int(action))
            assert (reward, terminated, truncated) == (stock_reward, stock_terminated, stock_truncated)
            assert obs["direction"] == stock_obs["direction"]
            assert decode_mission(obs["mission"]) == stock_obs["mission"]
            assert tuple(unwrapped(ours).agent_pos) == tuple(unwrapped(stock).agent_pos)
            encoded = unwrapped(stock).grid.encode().transpose(1, 0, 2)
            x, y = unwrapped(stock).agent_pos
            encoded[y, x] = obs["image"][y, x]
            np.testing.assert_array_equal(obs["image"], encoded)
            if terminated or truncated:
                break


def test_agent_moves_in_row_column_layout() -> None:
    env = make_goto_local_env()
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        level = unwrapped(env)
        if level.grid.get(*level.front_pos) is not None:
            continue
        before = np.argwhere(obs["image"][..., 0] == OBJECT_TO_IDX["agent"])[0]
        moved, _, _, _, _ = env.step(FORWARD)
        after = np.argwhere(moved["image"][..., 0] == OBJECT_TO_IDX["agent"])[0]
        dx, dy = DIR_TO_VEC[obs["direction"]]
        assert (after - before).tolist() == [dy, dx]
        np.testing.assert_array_equal(moved["image"], expected_grid(env))
        return
    pytest.fail("no seed with a free cell in front of the agent")


def test_mission_ids_round_trip_to_the_words() -> None:
    assert len(GOTO_LOCAL_VOCABULARY) == 15
    assert len(GOALS) == 36 and len({goal.mission for goal in GOALS}) == 36
    env = make_goto_local_env()
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    assert space["mission"] == gym.spaces.Box(0, 14, (MISSION_LENGTH,), np.int64)
    seen = set()
    for seed in range(60):
        obs, _ = env.reset(seed=seed)
        mission = unwrapped(env).mission
        assert obs["mission"].shape == (5,) and (obs["mission"] >= 2).all(), "no padding or unknown words"
        assert decode_mission(obs["mission"]) == mission
        assert GOALS[goal_id(mission)].mission == mission
        seen.add(mission.split()[2])
    assert seen == {"a", "the"}
    with pytest.raises(BabyAIEnvError, match="not a GoToLocal mission"):
        goal_id("go to the blue door")


def _walk_to_goal(env: gym.Env, seed: int) -> tuple[list[float], list[bool], dict[str, Any]]:
    """Follow the bot until it would press done; return the rewards and terminations on the way."""
    obs, _ = env.reset(seed=seed)
    bot = FullyObservedBot(env)
    rewards, terminations = [], []
    while (action := bot.replan()) != DONE:
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        terminations.append(terminated)
        if terminated or truncated:
            break
    return rewards, terminations, obs


def test_success_needs_done_facing_a_match() -> None:
    env = make_goto_local_env()
    rewards, terminations, _ = _walk_to_goal(env, seed=3)
    assert len(rewards) >= 1 and not any(terminations) and rewards == [0.0] * len(rewards)
    level = unwrapped(env)
    assert tuple(level.front_pos) in {tuple(pos) for pos in level.instrs.desc.obj_poss}
    _, reward, terminated, truncated, _ = env.step(DONE)
    assert isinstance(reward, float) and terminated and not truncated
    assert reward == pytest.approx(1 - 0.9 * (len(rewards) + 1) / 64)


def test_done_elsewhere_continues_with_zero_reward() -> None:
    env = make_goto_local_env()
    for seed in range(20):
        env.reset(seed=seed)
        level = unwrapped(env)
        if tuple(level.front_pos) in {tuple(pos) for pos in level.instrs.desc.obj_poss}:
            continue
        _, reward, terminated, truncated, _ = env.step(DONE)
        assert reward == 0.0 and isinstance(reward, float) and not terminated and not truncated
        return
    pytest.fail("no seed where the agent starts away from the goal")


def test_stock_rule_succeeds_on_facing_a_match() -> None:
    env = make_goto_local_env(stock_success=True)
    rewards, terminations, _ = _walk_to_goal(env, seed=3)
    assert terminations[-1] and not any(terminations[:-1])
    assert rewards[-1] == pytest.approx(1 - 0.9 * len(rewards) / 64) and rewards[-1] > 0
    env.reset(seed=3)
    _, reward, terminated, _, _ = env.step(DONE)
    assert reward == 0.0 and not terminated


@pytest.mark.parametrize("room_size", [10, 12, 16])
def test_larger_rooms_keep_the_observation_layout(room_size: int) -> None:
    small = make_goto_local_env()
    env = gym.make(goto_local_id(room_size))
    obs, _ = env.reset(seed=1)
    assert set(obs) == {"image", "direction", "mission"}
    assert obs["image"].shape == (room_size, room_size, 3)
    space, small_space = env.observation_space, small.observation_space
    assert isinstance(space, gym.spaces.Dict) and isinstance(small_space, gym.spaces.Dict)
    assert space["image"] == gym.spaces.Box(0, 10, (room_size, room_size, 3), np.uint8)
    assert small_space["image"] == gym.spaces.Box(0, 10, (8, 8, 3), np.uint8)
    assert space["mission"] == small_space["mission"] and space["direction"] == small_space["direction"]
    np.testing.assert_array_equal(obs["image"], expected_grid(env))
    assert np.isin(obs["image"][..., 0], [OBJECT_TO_IDX[name] for name in OBJECT_TYPES]).sum() == 8
    assert unwrapped(env).max_steps == room_size**2
    assert decode_mission(obs["mission"]) == unwrapped(env).mission


@pytest.mark.parametrize("env_id", ["structrl/GoToLocal-v0", "structrl/GoToLocal-S12-v0"])
def test_check_env(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 warns that the 8x8 image is not a 36x36 0..255 picture
        check_env(gym.make(env_id))


def test_quiet_resets_and_bad_envs(capsys: pytest.CaptureFixture[str]) -> None:
    env = make_goto_local_env()
    for seed in range(200):
        env.reset(seed=seed)
    assert capsys.readouterr().out == "", "minigrid's 'Sampling rejected' lines must not reach stdout"
    with pytest.raises(BabyAIEnvError, match="needs a BabyAI level"):
        make_goto_local_env("MiniGrid-Empty-5x5-v0")
    with pytest.raises(BabyAIEnvError, match="BabyAI GoTo level id"):
        make_goto_local_env("BabyAI-NoSuchLevel-v0")
    assert {goal.colour for goal in GOALS} == set(COLOURS)


def test_bot_solves_with_done_at_the_end() -> None:
    env = make_goto_local_env()
    for seed in range(40):
        env.reset(seed=seed)
        bot = FullyObservedBot(env)
        terminated = truncated = False
        while not (terminated or truncated):
            action = bot.replan()
            _, reward, terminated, truncated, _ = env.step(action)
        assert terminated and action == DONE and float(reward) > 0
