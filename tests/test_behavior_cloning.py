"""Behaviour cloning of GoToLocal demonstrations: imitation's BC with the sparsity term, sequence cloning of
recurrent policies, checkpoints, split and larger-room evaluation, and the ``bc`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from imitation.algorithms import bc
from imitation.data import serialize
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from structrl.agents.behavior_cloning import (
    BEST_MODEL_FILE,
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
    read_demonstrations,
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
        [BEST_MODEL_FILE, MODEL_FILE, SUMMARY_FILE, "config.yml", "tensorboard"]
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
    assert type(model) is RecurrentPPO and isinstance(model.policy.lstm_actor, th.nn.LSTM)


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
