"""MVProp planner: value propagation, the Q-head, the SB3 policy, the imitation harness, runs and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import yaml
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from stable_baselines3 import PPO

from structrl.agents.behavior_cloning import BCError
from structrl.agents.evaluation import evaluate_seeds, load_model
from structrl.agents.goal_discriminator import (
    BEST_FILE,
    DiscriminatorError,
    GoalDiscriminator,
    read_demo_frames,
    save_discriminator,
)
from structrl.agents.mvprop_training import (
    BEST_MODEL_FILE,
    CHECKPOINT_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    MVPropConfig,
    MVPropError,
    build_mvprop_model,
    imitation_losses,
    load_planner,
    pad_trajectories,
    read_mvprop_checkpoint,
    resume_mvprop,
    train_mvprop,
)
from structrl.cli.compgen import add_compgen_parsers
from structrl.cli.main import ArgumentParser, main
from structrl.data.demos import DemoConfig, generate_demos
from structrl.data.splits import DemoSplit, split_demo_store
from structrl.envs.babyai import COLOURS, GOTO_LOCAL_VOCABULARY, OBJECT_TYPES
from structrl.policies.factored_attention import FactoredAttention
from structrl.policies.mvprop import FLOW_LOGITS, MVProp2D, MVPropPlanner, MVPropPolicy, QHead

ENV = "structrl/GoToLocal-v0"
#: 3 demonstrations per goal: 1 or 2 to train on, the last one of each ID goal for ID validation, the first 2
#: of each held-out goal for OOD validation.
SPLIT: dict[str, Any] = {"id_valid_per_goal": 1, "ood_valid_per_goal": 2}
#: A small end-to-end planner, for the run-directory tests.
SMALL: dict[str, Any] = {"embedding_dim": 8, "head_channels": [16, 16]}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


STEP = sigmoid(1.0) * sigmoid(10.0)  # gamma * f on a 4-neighbour


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mvprop") / "demos.h5"
    generate_demos(DemoConfig(per_goal=3, min_length=4, seed=5), path)
    return path


@pytest.fixture(scope="module")
def split(store: Path) -> DemoSplit:
    return split_demo_store(store, limit=1, **SPLIT)


def perfect_attention(dim: int = 24) -> FactoredAttention:
    """
    A factored attention whose words align with exactly the attributes they name (the other words with
    none): goal logit +5 on the cells matching the mission, -5 elsewhere.
    """
    model = FactoredAttention(len(GOTO_LOCAL_VOCABULARY), dim)
    with th.no_grad():
        model.attributes.zero_()
        model.words.zero_()
        for row in range(17):
            model.attributes[row, row] = 1
        spare = 17
        for word, index in GOTO_LOCAL_VOCABULARY.items():
            if word in COLOURS:
                model.words[index, 11 + COLOR_TO_IDX[word]] = 1
            elif word in OBJECT_TYPES:
                model.words[index, OBJECT_TO_IDX[word]] = 1
            else:
                model.words[index, spare] = 1
                spare += 1
        model.log_scale.fill_(math.log(10))
        model.bias.fill_(-5)
    return model


@pytest.fixture(scope="module")
def perfect_discriminator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A discriminator run directory holding the perfect interaction model."""
    run = tmp_path_factory.mktemp("discriminator")
    discriminator = GoalDiscriminator("factored-attention", len(GOTO_LOCAL_VOCABULARY), 24)
    discriminator.interaction.load_state_dict(perfect_attention().state_dict())
    save_discriminator(discriminator, run / BEST_FILE, step=0)
    return run


# ---------------------------------------------------------------------------------------------------------
# MVProp


def naive_propagation(reward: th.Tensor, gather: th.Tensor, gamma: float, k: int) -> th.Tensor:
    """The MVProp iteration cell by cell, with zero padding."""
    flow = th.sigmoid(th.tensor(FLOW_LOGITS))
    value = reward.clone()
    batch, height, width = reward.shape
    for _ in range(k):
        new = value.clone()
        for n in range(batch):
            for y in range(height):
                for x in range(width):
                    best = -math.inf
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            inside = 0 <= y + dy < height and 0 <= x + dx < width
                            neighbour = float(value[n, y + dy, x + dx]) if inside else 0.0
                            best = max(best, gamma * float(flow[dy + 1, dx + 1]) * neighbour)
                    new[n, y, x] = max(float(value[n, y, x]), float(gather[n, y, x]) * best)
        value = new
    return value


@pytest.mark.parametrize("shape, k", [((2, 5, 7), 4), ((1, 8, 8), 10), ((3, 3, 4), 1)])
def test_vectorised_propagation_matches_a_naive_reference(shape: tuple[int, int, int], k: int) -> None:
    generator = th.Generator().manual_seed(sum(shape) + k)
    reward = th.rand(shape, generator=generator)
    gather = th.rand(shape, generator=generator)
    mvprop = MVProp2D(feature_dim=4, k=k)
    with th.no_grad():
        mvprop.gamma_logit.fill_(0.3)
        fast = mvprop.propagate(reward, gather)
    slow = naive_propagation(reward, gather, float(th.sigmoid(th.tensor(0.3))), k)
    assert th.allclose(fast, slow, atol=1e-6)


def hand_built_grid() -> tuple[th.Tensor, th.Tensor]:
    """
    A 5 x 7 grid: the reward at (2, 1); a wall (g = 0) in column 3 except its last row; an open cell at
    (0, 6) whose 4-neighbours are walls, so that only a diagonal neighbour can reach it.

    :return: the per-cell feature (1 open, 0 wall) and the goal scores, with a batch axis
    """
    features = th.ones(1, 5, 7, 1)
    features[0, 0:4, 3] = 0
    features[0, 0, 5] = features[0, 1, 6] = 0
    goal = th.zeros(1, 5, 7)
    goal[0, 2, 1] = 1.0
    return features, goal


def bfs_distances(open_cells: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    distances = np.full(open_cells.shape, np.inf)
    distances[start] = 0
    frontier = [start]
    while frontier:
        following = []
        for y, x in frontier:
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                yy, xx = y + dy, x + dx
                inside = 0 <= yy < open_cells.shape[0] and 0 <= xx < open_cells.shape[1]
                if inside and open_cells[yy, xx] and distances[yy, xx] == np.inf:
                    distances[yy, xx] = distances[y, x] + 1
                    following.append((yy, xx))
        frontier = following
    return distances


def test_value_flows_through_open_cells_discounted_and_blocked_by_walls() -> None:
    features, goal = hand_built_grid()
    mvprop = MVProp2D(feature_dim=1, k=20)
    with th.no_grad():  # g = sigmoid(40 * open - 20): 1 on open cells, ~2e-9 on walls
        mvprop.gather.weight.fill_(40.0)
        mvprop.gather.bias.fill_(-20.0)
        output = mvprop(features, goal)
    reward = output.reward[0]
    scale = 1 / (1 + 1e-4)  # min-max normalisation of the 0/1 goal map
    assert reward[2, 1].item() == pytest.approx(scale) and reward.sum().item() == pytest.approx(scale)
    assert mvprop.gamma.item() == pytest.approx(sigmoid(1.0))
    open_cells = features[0, :, :, 0].numpy() > 0
    distances = bfs_distances(open_cells, (2, 1))
    value = output.value[0].numpy()
    assert value[2, 1] == 0.0, "V leaves the reward itself out"
    for y, x in zip(*np.nonzero(np.isfinite(distances) & (distances > 0)), strict=True):
        assert value[y, x] == pytest.approx(scale * STEP ** distances[y, x], rel=1e-5), (y, x)
    # one step to the right of the reward, three cells behind the wall by way of its gap in the last row
    assert value[2, 2] == pytest.approx(scale * STEP) and value[2, 4] == pytest.approx(scale * STEP**7)
    assert value[0:4, 3].max() < 1e-7, "walls do not take value"
    # (0, 6) is reachable only diagonally from (1, 5): the diagonal flow leaves it ~1e-5 of its neighbour
    assert 0 < value[0, 6] < 1e-4 * value[1, 5]
    # with fewer iterations than the distance, value has not arrived yet
    with th.no_grad():
        mvprop.k = 2
        short = mvprop(features, goal).value[0].numpy()
    assert short[2, 2] > 0 and short[4, 1] > 0 and short[2, 4] == 0
    assert short[4, 2] < 1e-4  # 3 steps away: only the diagonal flow from (3, 1) reached it


def test_reward_map_is_min_max_normalised_with_detached_extremes() -> None:
    mvprop = MVProp2D(feature_dim=3)
    scores = th.tensor([[[0.2, 0.9], [0.5, 0.4]]], requires_grad=True)
    reward = mvprop.reward_map(scores)
    assert reward.min().item() == 0.0 and reward.max().item() == pytest.approx(1.0, abs=2e-4)
    reward[0, 1, 0].backward()
    assert scores.grad is not None
    expected = th.zeros(1, 2, 2)
    expected[0, 1, 0] = 1 / (0.9 - 0.2 + 1e-4)  # min and max are constants: no gradient through them
    assert th.allclose(scores.grad, expected)


def test_k0_gives_a_zero_value_map_and_the_paper_sizes() -> None:
    mvprop = MVProp2D(feature_dim=96, k=0)
    output = mvprop(th.randn(2, 8, 8, 96), th.rand(2, 8, 8))
    assert th.equal(output.value, th.zeros(2, 8, 8))
    assert sum(parameter.numel() for parameter in mvprop.parameters()) == 99
    assert sum(parameter.numel() for parameter in QHead(96).parameters()) == 941_023
    with pytest.raises(ValueError, match="value iterations must be >= 0"):
        MVProp2D(feature_dim=96, k=-1)


# ---------------------------------------------------------------------------------------------------------
# The planner as an SB3 policy


def small_model(**settings: Any) -> PPO:
    config = MVPropConfig(dataset="", **{**SMALL, **settings})
    return build_mvprop_model(config, gym.make(ENV))


def env_observations(env_id: str, seeds: list[int]) -> dict[str, np.ndarray]:
    env = gym.make(env_id)
    observations = [env.reset(seed=seed)[0] for seed in seeds]
    return {key: np.stack([np.asarray(obs[key]) for obs in observations]) for key in observations[0]}


def raw_q_values(planner: MVPropPlanner, observations: dict[str, np.ndarray]) -> th.Tensor:
    with th.no_grad():
        return planner(
            th.as_tensor(observations["image"]),
            th.as_tensor(observations["direction"]),
            th.as_tensor(observations["mission"]),
        )


def test_the_policy_acts_greedily_on_the_q_values_on_any_room_size() -> None:
    model = small_model()
    policy = model.policy
    assert isinstance(policy, MVPropPolicy)
    for env_id in (ENV, "structrl/GoToLocal-S12-v0"):
        model.observation_space = policy.observation_space = gym.make(env_id).observation_space
        observations = env_observations(env_id, [1, 2, 3, 4])
        q_values = raw_q_values(policy.planner, observations)
        assert q_values.shape == (4, 7)
        actions, _ = model.predict(observations, deterministic=True)
        assert actions.tolist() == q_values.argmax(dim=1).tolist()
    result = evaluate_seeds(model, "structrl/GoToLocal-S12-v0", [1, 2], n_envs=2)
    assert result["episodes"] == 2  # the planner built for 8 x 8 plays 12 x 12 rooms


def test_save_and_load_give_identical_q_values(tmp_path: Path) -> None:
    model = small_model(interaction_model="simple-attention", k=3)
    observations = env_observations(ENV, [5, 6, 7])
    path = tmp_path / "planner.zip"
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, PPO) and isinstance(loaded.policy, MVPropPolicy)
    assert th.equal(
        raw_q_values(_planner(model), observations), raw_q_values(loaded.policy.planner, observations)
    )
    assert th.equal(
        raw_q_values(_planner(model), observations), raw_q_values(load_planner(path), observations)
    )


def _planner(model: PPO) -> MVPropPlanner:
    assert isinstance(model.policy, MVPropPolicy)
    return model.policy.planner


# ---------------------------------------------------------------------------------------------------------
# The imitation harness


def test_padded_batches_and_the_loss_terms(store: Path, split: DemoSplit) -> None:
    frames = read_demo_frames(store, split.train[:3])
    batch = pad_trajectories(frames, np.arange(3))
    lengths = frames.lengths
    assert batch.images.shape[:2] == batch.mask.shape == (3, lengths.max())
    assert batch.mask.sum(dim=1).tolist() == lengths.tolist()
    assert (batch.actions[~batch.mask] == -1).all() and (batch.returns[~batch.mask] == 0).all()
    for row, length in enumerate(lengths):
        expected = 0.9 ** (length - 1 - np.arange(length))
        assert np.allclose(batch.returns[row, :length].numpy(), expected)
        assert batch.actions[row, length - 1] == 6  # every demonstration ends with done
    th.manual_seed(0)
    planner = MVPropPlanner(FactoredAttention(15, 8), k=3, head_channels=(8, 8))
    with th.no_grad():
        losses = imitation_losses(planner, batch, regularisation_weight=0.5)
        mask = batch.mask
        missions = batch.missions[:, None].expand(-1, mask.shape[1], -1)[mask]
        output = planner.plan(batch.images[mask], batch.directions[mask], missions)
        q, actions = output.q_values, batch.actions[mask]
        taken = q[th.arange(len(q)), actions]
        q_mse = ((taken - batch.returns[mask]) ** 2).mean()
        q_reg = ((q**2).sum(dim=1) - taken**2).sum() / (len(q) * 6)
        v_reg = (output.value**2).mean()
        assert losses.q_mse.item() == pytest.approx(q_mse.item(), rel=1e-5)
        assert losses.q_reg.item() == pytest.approx(q_reg.item(), rel=1e-5)
        assert losses.v_reg.item() == pytest.approx(v_reg.item(), rel=1e-5)
        assert losses.loss.item() == pytest.approx((q_mse + 0.5 * (q_reg + v_reg)).item(), rel=1e-5)
        # padded frames do not count
        noisy = th.where(mask[..., None, None, None], batch.images, th.randint_like(batch.images, 0, 10))
        again = imitation_losses(planner, dataclasses.replace(batch, images=noisy), 0.5)
    assert again.loss.item() == pytest.approx(losses.loss.item())


def frozen_config(store: Path, discriminator: Path, **settings: Any) -> MVPropConfig:
    return MVPropConfig(
        dataset=str(store),
        limit=1,
        **SPLIT,
        discriminator=str(discriminator),
        head_channels=[32, 32],
        regularisation_weight=1.0,
        learning_rate=1e-2,
        batch_size=24,
        **settings,
    )


@pytest.fixture(scope="module")
def frozen_run(
    store: Path, perfect_discriminator: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """
    A planner on the frozen perfect interaction model: 250 full-batch epochs of the 24 training
    demonstrations. The regularisers have weight 1 instead of the paper's 0.01: with 0.01, the untaken
    actions' Q-values follow the taken ones' for thousands of steps (the greedy action stays arbitrary),
    which is beyond a unit test's budget.
    """
    run = tmp_path_factory.mktemp("mvprop") / "frozen"
    config = frozen_config(
        store, perfect_discriminator, epochs=250, eval_every=125, eval_episodes=4, eval_envs=4
    )
    return run, train_mvprop(config, run)


def test_imitation_lowers_the_loss_and_the_greedy_actions_follow_the_demonstrations(
    frozen_run: tuple[Path, dict[str, Any]], store: Path, split: DemoSplit, perfect_discriminator: Path
) -> None:
    run, summary = frozen_run
    frames = read_demo_frames(store, split.train)
    batch = pad_trajectories(frames, np.arange(len(frames)))
    untrained = small_model(interaction_model=None, embedding_dim=24, head_channels=[32, 32])
    _planner(untrained).interaction.load_state_dict(perfect_attention().state_dict())
    trained = load_planner(run / MODEL_FILE)
    with th.no_grad():
        before = imitation_losses(_planner(untrained), batch, regularisation_weight=1.0)
        after = imitation_losses(trained, batch, regularisation_weight=1.0)
    assert after.loss.item() < 0.3 * before.loss.item()
    chance = 1 / 7
    majority = np.bincount(frames.actions).max() / len(frames.actions)  # always "forward"
    assert after.accuracy.item() > max(2 * chance, majority + 0.1, before.accuracy.item() + 0.3)
    # the discriminator's interaction model stayed frozen
    perfect = perfect_attention().state_dict()
    assert all(th.equal(value, perfect[name]) for name, value in trained.interaction.state_dict().items())
    assert summary["frozen_interaction"] and summary["steps"] == 250
    assert summary["config"]["interaction_model"] == "factored-attention"
    assert summary["config"]["embedding_dim"] == 24


def test_run_directory_and_structrl_evaluate(
    frozen_run: tuple[Path, dict[str, Any]], store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, summary = frozen_run
    assert sorted(path.name for path in run.iterdir()) == sorted(
        [BEST_MODEL_FILE, CHECKPOINT_FILE, MODEL_FILE, SUMMARY_FILE, "config.yml", "tensorboard"]
    )
    assert [record["step"] for record in summary["evaluations"]] == [125, 250]
    assert json.loads((run / SUMMARY_FILE).read_text())["best"] == summary["best"]
    checkpoint = read_mvprop_checkpoint(run)
    assert checkpoint is not None and checkpoint["finished"] and checkpoint["epoch"] == 250
    out = run.parent / "eval.json"
    code = main(
        ["evaluate", str(run / BEST_MODEL_FILE), "--split", "id", "--demos", str(store),
         "--id-valid-per-goal", "1", "--ood-valid-per-goal", "2", "--deterministic", "--episodes", "4",
         "--n-envs", "4", "--json", str(out)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(f"{ENV} (ID seeds): 4 episodes")
    assert json.loads(out.read_text())["success_rate"] == summary["best"]["id_success_rate"]


# ---------------------------------------------------------------------------------------------------------
# Resuming, errors and the command line


def small_config(store: Path, **settings: Any) -> MVPropConfig:
    return MVPropConfig(
        dataset=str(store), limit=1, **SPLIT, **SMALL, batch_size=8, eval_episodes=1, eval_envs=1, **settings
    )


def weights(path: Path) -> dict[str, th.Tensor]:
    return load_model(path).policy.state_dict()


def test_an_interrupted_run_resumes_to_the_same_weights(store: Path, tmp_path: Path) -> None:
    full = train_mvprop(small_config(store, epochs=3, eval_every=2), tmp_path / "full")
    assert full["steps"] == 9

    def interrupt(record: dict[str, Any]) -> None:
        if record["step"] == 4:  # in the second epoch (3 steps per epoch)
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_mvprop(small_config(store, epochs=3, eval_every=2), run, on_evaluation=interrupt)
    checkpoint = read_mvprop_checkpoint(run)
    assert checkpoint is not None and (checkpoint["epoch"], checkpoint["steps"]) == (1, 3)
    assert (run / MODEL_FILE).is_file()  # Ctrl-C saved the current policy
    resumed = resume_mvprop(run)
    assert resumed["resumed_at_epochs"] == [1] and resumed["steps"] == 9
    assert resumed["evaluations"] == full["evaluations"]
    expected = weights(tmp_path / "full" / MODEL_FILE)
    assert all(th.equal(value, expected[name]) for name, value in weights(run / MODEL_FILE).items())
    with pytest.raises(MVPropError, match="has finished its 3 epochs: ask for more epochs"):
        resume_mvprop(run)


def compgen_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="structrl")
    add_compgen_parsers(parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser))
    return parser


def test_errors_name_the_problem(store: Path, perfect_discriminator: Path, tmp_path: Path) -> None:
    assert issubclass(MVPropError, BCError)  # structrl's main reports it with exit code 2
    with pytest.raises(MVPropError, match=r"value iterations \(--k\) must be >= 0"):
        small_config(store, k=-1).check()
    with pytest.raises(MVPropError, match="the discriminator's is frozen: drop --sparsity-weight"):
        frozen_config(store, perfect_discriminator, sparsity_weight=1.0).check()
    with pytest.raises(MVPropError, match="holds a factored-attention model, not simple-attention"):
        train_mvprop(
            frozen_config(store, perfect_discriminator, interaction_model="simple-attention"), tmp_path
        )
    with pytest.raises(DiscriminatorError, match="not found: give a discriminator run directory"):
        train_mvprop(frozen_config(store, tmp_path / "missing"), tmp_path)
    with pytest.raises(MVPropError, match="is not an MVProp run directory"):
        resume_mvprop(tmp_path)
    parser = compgen_parser()
    args = parser.parse_args(["mvprop", "--resume", str(tmp_path), "--seed", "1", "--k", "3"])
    with pytest.raises(MVPropError, match="drop --k, --seed"):
        args.run(args)
    args = parser.parse_args(["mvprop", "--k", "3"])
    with pytest.raises(MVPropError, match="mvprop needs --dataset"):
        args.run(args)


def test_mvprop_command(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = compgen_parser().parse_args(
        ["mvprop", "--dataset", str(store), "--limit", "1", "--id-valid-per-goal", "1",
         "--ood-valid-per-goal", "2", "--embedding-dim", "8", "--head-channels", "16", "16", "--k", "4",
         "--epochs", "1", "--batch-size", "12", "--eval-episodes", "1", "--eval-envs", "1", "--out", str(out)]
    )  # fmt: skip
    assert args.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 2: ID success")
    assert lines[-1].startswith("trained on 24 episodes (") and "interaction model end to end" in lines[-1]
    config = yaml.safe_load((out / "config.yml").read_text())
    assert config["k"] == 4 and config["head_channels"] == [16, 16] and config["env_id"] == ENV
    args = compgen_parser().parse_args(["mvprop", "--resume", str(out), "--epochs", "2"])
    assert args.run(args) == 0
    assert capsys.readouterr().out.startswith(f"resuming {out} after epoch 1 (step 2)")
