"""Behaviour cloning of GoToLocal demonstrations: imitation's BC with the sparsity term, sequence cloning of
recurrent policies, checkpoints, split and larger-room evaluation, and the ``bc`` command."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import yaml
from imitation.algorithms import bc
from imitation.data import serialize
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from structrl.agents import behavior_cloning, evaluation
from structrl.agents.behavior_cloning import (
    BEST_MODEL_FILE,
    CHECKPOINT_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    BCConfig,
    BCError,
    PackedObservation,
    PackedObservationExtractor,
    SparseBCLossCalculator,
    TrainingGoals,
    balanced_seeds,
    build_model,
    pack_observations,
    read_bc_checkpoint,
    read_demonstrations,
    resume_bc,
    train_bc,
    unpacked_state_dict,
)
from structrl.agents.evaluation import evaluate_seeds, load_model
from structrl.agents.sequence_cloning import Demonstration, SequenceCloningTrainer, pad_episodes
from structrl.cli.main import main
from structrl.data.demos import DemoConfig, generate_demos
from structrl.data.splits import DemoSplit, goal_split, split_demo_store
from structrl.envs.babyai import decode_mission, goal_id
from structrl.policies import FactoredAttentionExtractor, RIMPolicy, SparsitySchedule, sparsity_penalty

ENV = "structrl/GoToLocal-v0"
#: 3 demonstrations per goal: 2 to train on, the last one of each ID goal for ID validation (24 seeds), the
#: first 2 of each held-out goal for OOD validation (24 seeds).
SPLIT: dict[str, Any] = {"limit": 2, "id_valid_per_goal": 1, "ood_valid_per_goal": 2}
SMALL_FILM = {"channels": 16, "value_dim": 8, "word_dim": 16}
SMALL_ATTENTION = {"head_channels": [16, 16]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bc") / "demos.h5"
    generate_demos(DemoConfig(per_goal=3, min_length=4, seed=5), path)
    return path


@pytest.fixture(scope="module")
def split(store: Path) -> DemoSplit:
    return split_demo_store(store, **SPLIT)


def film_config(store: Path, **settings: Any) -> BCConfig:
    return BCConfig(
        dataset=str(store),
        model="film",
        extractor_kwargs=SMALL_FILM,
        learning_rate=3e-3,
        **{**SPLIT, **settings},
    )


@pytest.fixture(scope="module")
def film_run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A small FiLM policy cloned from 2 demonstrations of each ID goal, evaluated every 90 steps on 12 ID
    and 12 OOD validation seeds."""
    run = tmp_path_factory.mktemp("bc") / "film"
    summary = train_bc(film_config(store, epochs=30, eval_every=90, eval_episodes=12, eval_envs=12), run)
    return run, summary


def neglogp(model: BaseAlgorithm, demonstrations: list[Demonstration]) -> float:
    """Mean negative log-likelihood of the demonstrated actions under a feed-forward model."""
    observations = {
        key: th.as_tensor(np.concatenate([demo.observations[key][:-1] for demo in demonstrations]))
        for key in demonstrations[0].observations
    }
    actions = th.as_tensor(np.concatenate([demo.actions for demo in demonstrations]))
    model.policy.set_training_mode(False)
    with th.no_grad():
        _, log_prob, _ = model.policy.evaluate_actions(observations, actions)  # type: ignore[operator]
    return float(-log_prob.mean())


def test_bc_lowers_the_loss_and_beats_a_random_policy(
    film_run: tuple[Path, dict[str, Any]], store: Path, split: DemoSplit
) -> None:
    """
    The cloned policy's loss on its demonstrations falls well below the initial one, and its greedy policy
    replays the demonstrated layouts (the ID training seeds: the budget of a unit test is too small to
    generalise to the held-back ID seeds) far better than the untrained policy acting at random.
    """
    run, summary = film_run
    demonstrations = read_demonstrations(store, split.train)
    untrained = build_model(film_config(store), gym.make(ENV))
    trained = load_model(run / MODEL_FILE)
    assert neglogp(trained, demonstrations) < 0.5 * neglogp(untrained, demonstrations)
    seeds = split.seeds[split.train]
    cloned = evaluate_seeds(trained, ENV, seeds, deterministic=True, n_envs=48)
    random = evaluate_seeds(untrained, ENV, seeds, deterministic=False, n_envs=48)
    assert cloned["episodes"] == random["episodes"] == 48
    assert cloned["success_rate"] >= 0.5
    assert cloned["success_rate"] >= random["success_rate"] + 0.3
    assert summary["train_episodes"] == 48 and summary["limit"] == 2
    assert summary["train_transitions"] == sum(len(demo) for demo in demonstrations)


def test_best_checkpoint_is_written_and_loadable(
    film_run: tuple[Path, dict[str, Any]], split: DemoSplit
) -> None:
    run, summary = film_run
    history = summary["evaluations"]
    assert [record["step"] for record in history] == [90, 180, 270]
    assert summary["validation_episodes"] == {"id": 12, "ood": 12}
    best_rate = max(record["id_success_rate"] for record in history)
    first_best = next(record for record in history if record["id_success_rate"] == best_rate)
    assert summary["best"] == first_best and summary["final"] == history[-1]
    assert sorted(path.name for path in run.iterdir()) == sorted(
        [BEST_MODEL_FILE, CHECKPOINT_FILE, MODEL_FILE, SUMMARY_FILE, "config.yml", "tensorboard"]
    )  # no partial file left
    best = load_model(run / BEST_MODEL_FILE)
    assert type(best) is PPO
    again = evaluate_seeds(best, ENV, balanced_seeds(split.validation_seeds("id"), 24, 12), n_envs=12)
    assert again["success_rate"] == summary["best"]["id_success_rate"]
    assert json.loads((run / SUMMARY_FILE).read_text())["best"] == summary["best"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"bc/neglogp", "bc/loss", "eval/id_success_rate", "eval/ood_success_rate"} <= set(
        events.Tags()["scalars"]
    )
    assert [event.step for event in events.Scalars("eval/id_success_rate")] == [90, 180, 270]


def test_balanced_seeds_go_goal_by_goal() -> None:
    seeds = np.arange(12)  # 3 goals x 4 seeds
    assert balanced_seeds(seeds, 3, 5).tolist() == [0, 4, 8, 1, 5]
    assert sorted(balanced_seeds(seeds, 3, None).tolist()) == list(range(12))


def attention_batch(store: Path, split: DemoSplit) -> tuple[BaseAlgorithm, dict[str, th.Tensor], th.Tensor]:
    config = BCConfig(dataset=str(store), model="factored-attention", extractor_kwargs=SMALL_ATTENTION)
    model = build_model(config, gym.make(ENV))
    demos = read_demonstrations(store, split.train[:8])
    observations = {
        key: th.as_tensor(np.concatenate([demo.observations[key][:-1] for demo in demos]))
        for key in demos[0].observations
    }
    return model, observations, th.as_tensor(np.concatenate([demo.actions for demo in demos]))


@pytest.mark.filterwarnings("ignore:trying to unwrap object")
def test_sparsity_term_is_added_by_schedule(store: Path, split: DemoSplit) -> None:
    model, observations, actions = attention_batch(store, split)
    base = bc.BehaviorCloningLossCalculator(ent_weight=0.01, l2_weight=0.0)
    sparse = SparseBCLossCalculator(base, SparsitySchedule(start=0, ramp=1, max_weight=3.0))
    plain = base(model.policy, observations, actions)  # type: ignore[arg-type]
    penalty = sparsity_penalty(model.policy)
    assert penalty is not None and penalty.item() > 0
    at_start = sparse(model.policy, observations, actions)  # type: ignore[arg-type]
    ramped = sparse(model.policy, observations, actions)  # type: ignore[arg-type]
    assert at_start.sparsity_weight == 0.0 and at_start.loss.item() == pytest.approx(plain.loss.item())
    assert ramped.sparsity_weight == 3.0
    assert ramped.loss.item() == pytest.approx(plain.loss.item() + 3.0 * penalty.item(), rel=1e-5)
    assert ramped.neglogp.item() == pytest.approx(plain.neglogp.item())
    ramped.loss.backward()
    extractor = model.policy.features_extractor
    assert isinstance(extractor, FactoredAttentionExtractor)
    assert extractor.attention.words.grad is not None and extractor.attention.words.grad.abs().sum() > 0


def test_training_with_a_large_sparsity_weight_lowers_the_penalty(store: Path, tmp_path: Path) -> None:
    def run(weight: float) -> dict[str, Any]:
        config = BCConfig(
            dataset=str(store),
            model="factored-attention",
            extractor_kwargs=SMALL_ATTENTION,
            sparsity_weight=weight,
            sparsity_start=0,
            sparsity_ramp=1,
            epochs=3,
            eval_every=0,
            eval_episodes=2,
            **SPLIT,
        )
        return train_bc(config, tmp_path / f"w{weight}")

    untrained = build_model(
        BCConfig(dataset=str(store), model="factored-attention", extractor_kwargs=SMALL_ATTENTION),
        gym.make(ENV),
    )
    penalty = sparsity_penalty(untrained.policy)
    assert penalty is not None
    initial = penalty.item()
    free, penalised = run(0.0), run(10.0)
    assert penalised["sparsity_penalty"] < 0.7 * initial
    assert penalised["sparsity_penalty"] < free["sparsity_penalty"] - 0.2 * initial
    events = EventAccumulator(str(tmp_path / "w10.0" / "tensorboard"))
    events.Reload()
    weights = [event.value for event in events.Scalars("bc/sparsity_weight")]
    assert weights[0] == 0.0 and weights[-1] == 10.0


def test_sparsity_needs_an_attention_model(store: Path, tmp_path: Path) -> None:
    with pytest.raises(BCError, match="needs an attention model"):
        train_bc(film_config(store, sparsity_weight=1.0), tmp_path)
    with pytest.raises(BCError, match="feed-forward"):
        train_bc(film_config(store, dagger=True, recurrent="rim"), tmp_path)


def fake_demonstration(length: int, first_action: int) -> Demonstration:
    return Demonstration(
        observations={"step": np.arange(length + 1, dtype=np.float32)[:, None]},
        actions=np.full(length, first_action, dtype=np.int64),
    )


def test_pad_episodes_repeats_the_last_step_and_masks_it() -> None:
    batch = pad_episodes([fake_demonstration(2, 5), fake_demonstration(4, 3)])
    assert batch.n_episodes == 2
    assert batch.observations["step"][:, 0].tolist() == [0, 1, 1, 1, 0, 1, 2, 3]
    assert batch.mask.tolist() == [True, True, False, False, True, True, True, True]
    assert batch.actions.tolist() == [5, 5, 0, 0, 3, 3, 3, 3]


@pytest.fixture(scope="module")
def rim_model(store: Path) -> BaseAlgorithm:
    config = BCConfig(dataset=str(store), model="film", recurrent="rim", extractor_kwargs=SMALL_FILM)
    return build_model(config, gym.make(ENV))


def test_sequence_cloning_of_a_rim_policy_lowers_the_masked_nll(
    rim_model: BaseAlgorithm, store: Path, split: DemoSplit
) -> None:
    policy = rim_model.policy
    assert isinstance(policy, RIMPolicy)
    demonstrations = read_demonstrations(store, split.train)
    trainer = SequenceCloningTrainer(
        policy, demonstrations, batch_size=12, learning_rate=3e-3, rng=np.random.default_rng(0)
    )
    batch = pad_episodes(demonstrations[:16])
    assert not bool(batch.mask.all())  # the episodes have different lengths
    with th.no_grad():
        before = float(trainer.metrics(batch).neglogp)
        # padded steps do not count: changing their actions leaves the masked NLL as it is
        shifted = batch.actions.clone()
        shifted[~batch.mask] = 6
        same = float(trainer.metrics(type(batch)(batch.observations, shifted, batch.mask, 16)).neglogp)
    assert same == pytest.approx(before)
    steps: list[int] = []
    trainer.train(6, on_batch_end=lambda: steps.append(trainer.step))
    assert steps == list(range(1, 25))  # 48 episodes in batches of 12, 6 epochs
    with th.no_grad():
        after = float(trainer.metrics(batch).neglogp)
    assert after < before - 0.5


def test_recurrent_bc_run_saves_a_recurrent_model(store: Path, tmp_path: Path) -> None:
    config = BCConfig(
        dataset=str(store),
        model="film",
        recurrent="lstm",
        extractor_kwargs=SMALL_FILM,
        epochs=1,
        batch_size=16,
        eval_episodes=2,
        **SPLIT,
    )
    summary = train_bc(config, tmp_path)
    assert summary["steps"] == 3 and summary["validation_episodes"] == {"id": 2, "ood": 2}
    model = load_model(tmp_path / BEST_MODEL_FILE)
    assert isinstance(model, RecurrentPPO) and isinstance(model.policy.lstm_actor, th.nn.LSTM)


def structrl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SPLIT_FLAGS = ["--id-valid-per-goal", "1", "--ood-valid-per-goal", "2"]


@pytest.mark.parametrize("which, count", [("id", 24), ("ood", 24)])
def test_evaluate_split_plays_one_episode_per_seed(
    capsys: pytest.CaptureFixture[str],
    film_run: tuple[Path, dict[str, Any]],
    store: Path,
    tmp_path: Path,
    which: str,
    count: int,
) -> None:
    run, _ = film_run
    out = tmp_path / "eval.json"
    code, stdout, err = structrl(
        capsys, "evaluate", str(run / MODEL_FILE), "--split", which, "--demos", str(store), *SPLIT_FLAGS,
        "--deterministic", "--n-envs", "24", "--json", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert stdout.startswith(f"{ENV} ({which.upper()} seeds): {count} episodes")
    data = json.loads(out.read_text())
    assert data["split"] == which and data["episodes"] == count == len(data["episode_returns"])
    assert data["seeds"] == split_demo_store(store, **SPLIT).validation_seeds(which).tolist()
    env = gym.make(ENV)
    goals = set()
    for seed in data["seeds"]:  # the seeds lay out the split's goals
        env.reset(seed=seed)
        goals.add(goal_id(env.unwrapped.mission))  # type: ignore[attr-defined]
    assert goals == set(goal_split("paper").goals(which))


def test_evaluate_larger_rooms(
    capsys: pytest.CaptureFixture[str], film_run: tuple[Path, dict[str, Any]], store: Path
) -> None:
    run, _ = film_run
    model = str(run / MODEL_FILE)
    code, stdout, err = structrl(
        capsys, "evaluate", model, "--env", "structrl/GoToLocal-S12-v0", "--split", "ood",
        "--episodes-per-goal", "1", "--n-envs", "12",
    )  # fmt: skip
    assert code == 0, err
    assert stdout.startswith("structrl/GoToLocal-S12-v0 (OOD seeds): 12 episodes")
    code, _, err = structrl(
        capsys,
        "evaluate",
        model,
        "--env",
        "structrl/GoToLocal-S12-v0",
        "--split",
        "id",
        "--demos",
        str(store),
    )
    assert code == 2 and "lay out 8x8 rooms" in err and "--episodes-per-goal" in err
    code, _, err = structrl(capsys, "evaluate", model, "--demos", str(store))
    assert code == 2 and "add --split" in err


def test_bc_command_end_to_end(capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, err = structrl(
        capsys, "bc", "--dataset", str(store), "--model", "factored-attention", "--extractor-kwargs",
        "head_channels=[16,16]", "--limit", "1", *SPLIT_FLAGS, "--sparsity-weight", "1", "--epochs", "2",
        "--batch-size", "64", "--eval-every", "2", "--eval-episodes", "2", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("step 2: ID success") and lines[0].endswith("(best)")
    assert lines[-1].startswith("cloned 24 episodes") and str(out / BEST_MODEL_FILE) in lines[-1]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["config"]["sparsity_weight"] == 1.0 and summary["steps"] == len(summary["evaluations"]) * 2
    code, stdout, err = structrl(
        capsys, "evaluate", str(out / BEST_MODEL_FILE), "--split", "ood", "--demos", str(store), *SPLIT_FLAGS
    )
    assert code == 0 and "24 episodes" in stdout, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "MISSING", "--model", "film"], "does not exist"),
        (["--dataset", "STORE", "--model", "cnn"], "argument --model: invalid choice: 'cnn'"),
        (["--dataset", "STORE", "--model", "film", "--sparsity-weight", "1"], "needs an attention model"),
        (["--dataset", "STORE", "--model", "film", "--extractor-kwargs", "depth=3"], "rejects the arguments"),
        (
            ["--dataset", "STORE", "--model", "film", "--limit", "1", "--batch-size", "4096"],
            "fewer than a batch",
        ),
        (["--dataset", "STORE", "--model", "film", "--epochs", "0"], "epochs must be positive"),
    ],
)
def test_bc_bad_input_exits_with_2(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    paths = {"MISSING": str(tmp_path / "missing.h5"), "STORE": str(store)}
    args = [paths.get(arg, arg) for arg in args]
    code, stdout, err = structrl(capsys, "bc", *args, *SPLIT_FLAGS, "--out", str(tmp_path / "run"))
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("structrl")
    assert message in err


def test_packed_policy_predicts_as_the_dict_policy(store: Path, split: DemoSplit) -> None:
    """DAgger's twin policy on packed observations, once its weights are copied, is the Dict policy."""
    config = film_config(store)
    env = gym.make(ENV)
    model = build_model(config, env)
    packed_env = PackedObservation(env)
    policy_kwargs = dict(model.policy_kwargs)
    packed = ActorCriticPolicy(
        packed_env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        features_extractor_class=PackedObservationExtractor,
        features_extractor_kwargs={
            "dict_space": env.observation_space,
            "extractor_class": policy_kwargs.pop("features_extractor_class"),
            "extractor_kwargs": policy_kwargs.pop("features_extractor_kwargs"),
        },
        **policy_kwargs,
    )
    model.policy.load_state_dict(unpacked_state_dict(packed))  # strict: every parameter has its twin
    demo = read_demonstrations(store, split.train[:1])[0]
    packed_observations = pack_observations(demo.observations)
    assert packed_observations.shape == (len(demo) + 1, 8 * 8 * 3 + 1 + 5)
    assert packed_env.observation_space.contains(packed_observations[0])
    packed.set_training_mode(False)
    model.policy.set_training_mode(False)
    dict_observations = {key: th.as_tensor(value) for key, value in demo.observations.items()}
    with th.no_grad():
        from_packed = packed.get_distribution(th.as_tensor(packed_observations)).distribution
        from_dict = model.policy.get_distribution(dict_observations).distribution  # type: ignore[operator]
    assert isinstance(from_packed, th.distributions.Categorical)
    assert isinstance(from_dict, th.distributions.Categorical)
    assert th.allclose(from_packed.logits, from_dict.logits)


def test_training_goals_skip_the_held_out_goals() -> None:
    allowed = goal_split("paper").train_goals
    env = TrainingGoals(gym.make(ENV), allowed)
    env.reset(seed=0)
    missions = [env.reset()[0]["mission"] for _ in range(30)]
    goals = {goal_id(decode_mission(mission)) for mission in missions}
    assert goals <= set(allowed) and len(goals) > 5


def test_dagger_labels_the_visited_states_with_the_bot(store: Path, tmp_path: Path) -> None:
    config = film_config(
        store, limit=1, dagger=True, dagger_rounds=1, dagger_episodes=4, epochs=1, eval_episodes=1
    )
    summary = train_bc(config, tmp_path)
    rounds = sorted(path.name for path in (tmp_path / "dagger" / "demos").iterdir())
    assert rounds == ["round-000", "round-001"]
    assert len(list((tmp_path / "dagger" / "demos" / "round-000").iterdir())) == 24  # the demonstrations
    collected = serialize.load(next((tmp_path / "dagger" / "demos" / "round-001").iterdir()))[0]
    assert np.asarray(collected.obs).shape[1] == 8 * 8 * 3 + 1 + 5 and len(collected.acts) >= 1
    assert summary["steps"] > summary["train_transitions"] // 32  # round 1 trained on more than the demos
    assert type(load_model(tmp_path / BEST_MODEL_FILE)) is PPO


# --- evaluation with the run's environment settings, and --episodes with --split --------------------------


def copy_run(source: Path, target: Path, env_kwargs: dict[str, Any]) -> Path:
    """The model and config.yml of a run, as if it had been trained with other ``env_kwargs``."""
    target.mkdir(parents=True)
    shutil.copy(source / MODEL_FILE, target / MODEL_FILE)
    config = yaml.safe_load((source / "config.yml").read_text())
    (target / "config.yml").write_text(yaml.safe_dump({**config, "env_kwargs": env_kwargs}))
    return target / MODEL_FILE


def evaluate_json(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> tuple[str, dict[str, Any]]:
    code, stdout, err = structrl(capsys, "evaluate", *args, "--deterministic", "--json", str(out))
    assert code == 0, err
    return stdout, json.loads(out.read_text())


def test_evaluate_builds_the_env_with_the_runs_env_kwargs(
    capsys: pytest.CaptureFixture[str], film_run: tuple[Path, dict[str, Any]], store: Path, tmp_path: Path
) -> None:
    """
    The same greedy policy, recorded as trained under minigrid's success rule (``stock_success``), is
    evaluated under that rule: each of its episodes is a prefix of the episode under the paper's rule, and
    every episode the paper's rule counts a success (``done`` facing a match) ends earlier, when the agent
    first faces the match. ``--env-kwargs`` overrides the recorded rule.
    """
    run, _ = film_run
    paper_model = run / MODEL_FILE
    stock_model = copy_run(run, tmp_path / "stock", {"stock_success": True})
    # 2 ID validation episodes per goal: the second training episode of each goal and the held-back one
    split = ["--split", "id", "--demos", str(store), "--id-valid-per-goal", "2", "--ood-valid-per-goal", "2",
             "--n-envs", "24"]  # fmt: skip
    _, paper = evaluate_json(capsys, tmp_path / "paper.json", str(paper_model), *split)
    stdout, stock = evaluate_json(capsys, tmp_path / "stock.json", str(stock_model), *split)
    assert paper["env_kwargs"] == {} and stock["env_kwargs"] == {"stock_success": True}
    assert stdout.startswith(f"{ENV} (ID seeds, stock_success=True): 48 episodes")
    assert paper["seeds"] == stock["seeds"] and len(paper["seeds"]) == 48
    paper_lengths, stock_lengths = np.array(paper["episode_lengths"]), np.array(stock["episode_lengths"])
    paper_success = np.array(paper["episode_returns"]) > 0
    assert paper_success.sum() >= 12  # the policy replays the training layouts
    assert (stock_lengths <= paper_lengths).all()
    assert (stock_lengths[paper_success] < paper_lengths[paper_success]).all()
    assert stock["mean_length"] < paper["mean_length"] and stock["success_rate"] >= paper["success_rate"]
    _, overridden = evaluate_json(
        capsys, tmp_path / "overridden.json", str(stock_model), *split, "--env-kwargs", "stock_success=false"
    )
    assert overridden["env_kwargs"] == {"stock_success": False}
    assert overridden["episode_lengths"] == paper["episode_lengths"]
    assert overridden["episode_returns"] == paper["episode_returns"]


def test_a_model_cloned_under_the_stock_rule_is_evaluated_under_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cloned from demonstrations recorded under minigrid's rule records it; evaluate builds with it."""
    stock_store = tmp_path / "stock.h5"
    generate_demos(DemoConfig(per_goal=3, min_length=4, seed=5, stock_success=True), stock_store)
    run = tmp_path / "run"
    config = BCConfig(
        dataset=str(stock_store),
        model="film",
        extractor_kwargs=SMALL_FILM,
        epochs=1,
        eval_episodes=1,
        **SPLIT,
    )
    summary = train_bc(config, run)
    assert summary["env_kwargs"] == {"stock_success": True}
    built: list[gym.Env] = []
    factory = evaluation.env_factory

    def spy(*args: Any) -> Callable[..., gym.Env]:
        make = factory(*args)

        def make_and_record(env_id: str, **kwargs: Any) -> gym.Env:
            built.append(make(env_id, **kwargs))
            return built[-1]

        return make_and_record

    monkeypatch.setattr(evaluation, "env_factory", spy)
    _, result = evaluate_json(
        capsys, tmp_path / "eval.json", str(run / BEST_MODEL_FILE), "--split", "ood", "--demos",
        str(stock_store), *SPLIT_FLAGS, "--episodes", "3",
    )  # fmt: skip
    assert result["env_kwargs"] == {"stock_success": True} and result["episodes"] == 3
    assert len(built) == 3 and all(env.get_wrapper_attr("stock_success") is True for env in built)


def test_evaluate_split_episodes_takes_the_first_seeds_goal_by_goal(
    capsys: pytest.CaptureFixture[str], film_run: tuple[Path, dict[str, Any]], store: Path, tmp_path: Path
) -> None:
    run, summary = film_run
    split = split_demo_store(store, **SPLIT)
    common = ["--demos", str(store), *SPLIT_FLAGS]
    stdout, data = evaluate_json(
        capsys, tmp_path / "ood.json", str(run / MODEL_FILE), "--split", "ood", "--episodes", "3", *common
    )
    assert stdout.startswith(f"{ENV} (OOD seeds): 3 episodes")
    assert data["episodes"] == 3 == len(data["episode_returns"]) == len(data["episode_lengths"])
    ood_seeds = split.validation_seeds("ood")  # 12 goals x 2 seeds, grouped by goal
    assert data["seeds"] == [ood_seeds[0], ood_seeds[2], ood_seeds[4]]  # the first seed of 3 goals
    env = gym.make(ENV)
    goals = []
    for seed in data["seeds"]:
        env.reset(seed=seed)
        goals.append(goal_id(env.unwrapped.mission))  # type: ignore[attr-defined]
    assert goals == list(goal_split("paper").goals("ood")[:3])
    # the seeds bc evaluates with --eval-episodes 12: the best model's ID success is reproduced
    _, data = evaluate_json(
        capsys, tmp_path / "id.json", str(run / BEST_MODEL_FILE), "--split", "id", "--episodes", "12", *common
    )
    assert data["episodes"] == 12 and data["success_rate"] == summary["best"]["id_success_rate"]
    code, stdout, err = structrl(
        capsys, "evaluate", str(run / MODEL_FILE), "--split", "ood", "--episodes", "25", *common
    )
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "--episodes 25 is more than the 24 OOD validation seeds" in err and "--episodes 24 or fewer" in err
    code, _, err = structrl(
        capsys, "evaluate", str(run / MODEL_FILE), "--split", "ood", "--episodes", "0", *common
    )
    assert code == 2 and "must be positive" in err


# --- resuming behaviour cloning ---------------------------------------------------------------------------

#: A feed-forward run (imitation's BC, whose data loader draws the batch order from torch's generator, 9 steps
#: per epoch, with a sparsity weight ramping over the steps) and a recurrent one (sequence cloning of a RIM
#: policy, the episode order drawn by the trainer's numpy generator, 3 steps per epoch), each of 3 epochs and
#: evaluated mid-epoch.
RESUMABLE: dict[str, dict[str, Any]] = {
    "feed-forward": {
        "model": "factored-attention",
        "extractor_kwargs": SMALL_ATTENTION,
        "sparsity_weight": 1.0,
        "sparsity_start": 5,
        "sparsity_ramp": 20,
        "eval_every": 4,
        "steps_per_epoch": 9,
    },
    "recurrent": {
        "model": "film",
        "extractor_kwargs": SMALL_FILM,
        "recurrent": "rim",
        "batch_size": 16,
        "eval_every": 2,
        "steps_per_epoch": 3,
    },
}


def resumable_config(store: Path, kind: str, epochs: int = 3) -> BCConfig:
    settings = {key: value for key, value in RESUMABLE[kind].items() if key != "steps_per_epoch"}
    return BCConfig(
        dataset=str(store),
        learning_rate=3e-3,
        epochs=epochs,
        eval_episodes=2,
        eval_envs=2,
        **SPLIT,
        **settings,
    )


@pytest.fixture(scope="module", params=list(RESUMABLE))
def uninterrupted(
    request: pytest.FixtureRequest, store: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, dict[str, Any]]:
    kind = request.param
    run = tmp_path_factory.mktemp("bc") / kind
    return kind, run, train_bc(resumable_config(store, kind), run)


def weights(path: Path) -> dict[str, th.Tensor]:
    return load_model(path).policy.state_dict()


def assert_same_weights(first: dict[str, th.Tensor], second: dict[str, th.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [name for name in first if not th.equal(first[name], second[name])]
    assert not different, f"{len(different)} of {len(first)} tensors differ, e.g. {different[0]}"


class InterruptAt:
    """An ``on_evaluation`` callback that raises KeyboardInterrupt (as Ctrl-C does) at some step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.steps: list[int] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.steps.append(record["step"])
        if record["step"] == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_bc_run_resumes_from_its_last_epoch(
    uninterrupted: tuple[str, Path, dict[str, Any]], store: Path, tmp_path: Path
) -> None:
    """
    A run interrupted in its third epoch resumes after the second one and ends exactly as the uninterrupted
    run: the same weights (bit for bit), evaluations, best model and step count.
    """
    kind, full_run, full = uninterrupted
    per_epoch = RESUMABLE[kind]["steps_per_epoch"]
    interrupt = InterruptAt(2 * per_epoch + 2)  # an evaluation in the third epoch
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_bc(resumable_config(store, kind), run, on_evaluation=interrupt)
    checkpoint = read_bc_checkpoint(run)
    assert checkpoint is not None
    assert (checkpoint["epoch"], checkpoint["steps"], checkpoint["finished"]) == (2, 2 * per_epoch, False)
    assert [record["step"] for record in checkpoint["history"]] == [
        step for step in interrupt.steps if step <= 2 * per_epoch
    ]
    # Ctrl-C saved the policy as it was (2 steps after the checkpoint); the best model is on disk
    interrupted = weights(run / MODEL_FILE)
    assert any(not th.equal(interrupted[name], checkpoint["policy"][name]) for name in interrupted)
    assert (run / BEST_MODEL_FILE).is_file() and not (run / SUMMARY_FILE).exists()

    resumed_steps: list[int] = []
    summary = resume_bc(run, on_evaluation=lambda record: resumed_steps.append(record["step"]))
    assert summary["resumed_at_epochs"] == [2]
    # the evaluations after the checkpoint are made again, none before it
    assert resumed_steps == [
        record["step"] for record in full["evaluations"] if record["step"] > 2 * per_epoch
    ]
    assert summary["steps"] == full["steps"] == 3 * per_epoch
    assert summary["evaluations"] == full["evaluations"] and summary["best"] == full["best"]
    assert_same_weights(weights(run / MODEL_FILE), weights(full_run / MODEL_FILE))
    assert_same_weights(weights(run / BEST_MODEL_FILE), weights(full_run / BEST_MODEL_FILE))
    assert summary["sparsity_penalty"] == full["sparsity_penalty"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    # the loss is logged at every step, numbered on from the checkpoint's after the resumption
    assert {event.step for event in events.Scalars("bc/loss")} == set(range(3 * per_epoch))


def test_a_finished_bc_run_continues_for_more_epochs(
    uninterrupted: tuple[str, Path, dict[str, Any]], store: Path, tmp_path: Path
) -> None:
    """One epoch, then two more with ``resume_bc(epochs=3)``: the weights of three epochs in one go."""
    kind, full_run, full = uninterrupted
    per_epoch = RESUMABLE[kind]["steps_per_epoch"]
    run = tmp_path / "run"
    first = train_bc(resumable_config(store, kind, epochs=1), run)
    assert first["steps"] == per_epoch and first["final"]["step"] == per_epoch
    with pytest.raises(BCError, match="has finished its 1 epochs: ask for more epochs"):
        resume_bc(run)
    summary = resume_bc(run, epochs=3)
    assert summary["resumed_at_epochs"] == [1] and summary["steps"] == full["steps"]
    assert_same_weights(weights(run / MODEL_FILE), weights(full_run / MODEL_FILE))
    # the evaluations of the uninterrupted run, and the one that ended the first session
    assert [record for record in summary["evaluations"] if record["step"] != per_epoch] == [
        record for record in full["evaluations"] if record["step"] != per_epoch
    ]
    assert yaml.safe_load((run / "config.yml").read_text())["epochs"] == 3
    with pytest.raises(BCError, match="has trained 3 epochs already: ask for at least 3"):
        resume_bc(run, epochs=2)


def test_resume_refuses_changed_settings_and_dagger_runs(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_bc(film_config(store, limit=1, epochs=1, eval_episodes=1), run)
    config = yaml.safe_load((run / "config.yml").read_text())
    (run / "config.yml").write_text(yaml.safe_dump({**config, "learning_rate": 0.5, "seed": 4}))
    with pytest.raises(BCError, match=r"disagrees with its checkpoint on learning_rate, seed: restore"):
        resume_bc(run, epochs=2)
    (run / "config.yml").write_text(yaml.safe_dump({**config, "dagger": True}))
    with pytest.raises(BCError, match="DAgger runs cannot be resumed"):
        resume_bc(run, epochs=2)
    with pytest.raises(BCError, match="not a behaviour-cloning run directory"):
        resume_bc(tmp_path / "elsewhere")


def test_bc_command_ctrl_c_then_resume(
    capsys: pytest.CaptureFixture[str], store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (in the third evaluation, step 6 of epoch 2) exits with 130 and says how to resume."""
    out = tmp_path / "run"
    calls: list[int] = []
    evaluate = behavior_cloning.evaluate_seeds

    def interrupted_evaluation(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 5:  # two evaluations (ID and OOD) per step
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(behavior_cloning, "evaluate_seeds", interrupted_evaluation)
    new_run = ["--dataset", str(store), "--model", "film", "--extractor-kwargs", "channels=16", "value_dim=8",
               "word_dim=16", "--limit", "1", *SPLIT_FLAGS, "--epochs", "3", "--eval-every", "2",
               "--eval-episodes", "1", "--out", str(out)]  # fmt: skip
    code, stdout, err = structrl(capsys, "bc", *new_run)
    assert code == 130, err
    assert stdout.splitlines() == [
        "step 2: ID success 0.000, OOD success 0.000 (best)",
        *stdout.splitlines()[1:],
    ]
    assert f"interrupted after epoch 1 of 3 (4 steps, saved to {out / CHECKPOINT_FILE})" in err
    assert f"the current policy is in {out / MODEL_FILE}" in err
    assert err.rstrip().endswith(f"continue with: structrl bc --resume {out}")
    monkeypatch.undo()

    code, stdout, err = structrl(capsys, "bc", "--resume", str(out), "--seed", "1")
    assert code == 2 and "--resume continues a run with its own config.yml; drop --seed" in err
    code, stdout, err = structrl(capsys, "bc", "--resume", str(out))
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"resuming {out} after epoch 1 (step 4)"
    assert [line.split(":")[0] for line in lines[1:-1]] == ["step 6", "step 8", "step 10", "step 12"]
    assert lines[-1].startswith("cloned 24 episodes (146 transitions, 12 steps, 3 epochs)")
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["resumed_at_epochs"] == [1] and [record["step"] for record in summary["evaluations"]] == [
        2, 4, 6, 8, 10, 12
    ]  # fmt: skip
    code, _, err = structrl(capsys, "bc", "--resume", str(out))
    assert code == 2 and "has finished its 3 epochs: ask for more epochs" in err
    code, stdout, err = structrl(capsys, "bc", "--resume", str(out), "--epochs", "4", "--eval-envs", "2")
    assert code == 0, err
    assert stdout.splitlines()[-1].startswith("cloned 24 episodes (146 transitions, 16 steps, 4 epochs)")
