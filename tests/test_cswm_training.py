"""C-SWM training: learning, validation split, checkpoint and resume, reproducibility, and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th

from structrl.agents.cswm_training import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    TENSORBOARD_DIR,
    CSWMTrainConfig,
    EpochRecord,
    TransitionSplit,
    split_episodes,
    train_cswm,
)
from structrl.cli.cswm import add_cswm_parser
from structrl.data.collection import CollectionConfig, collect
from structrl.world_models.cswm import ContrastiveSWM, CSWMConfig
from structrl.world_models.episode_frames import open_store, read_episodes
from structrl.world_models.errors import WorldModelError
from structrl.world_models.evaluation import evaluate
from structrl.world_models.negatives import make_negative_sampler


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """20 ShapesTrain episodes of 10 steps, and 30 ShapesEval episodes with state ids."""
    folder = tmp_path_factory.mktemp("cswm")
    train = folder / "train.h5"
    collect(CollectionConfig("ShapesTrain-v0", num_episodes=20, seed=1, steps_per_episode=10), train)
    evaluation = folder / "eval.h5"
    collect(CollectionConfig("ShapesEval-v0", num_episodes=30, seed=2, save_state_ids=True), evaluation)
    return train, evaluation


def tiny_config(dataset: Path, **changes: object) -> CSWMTrainConfig:
    config = CSWMTrainConfig(str(dataset), epochs=3, batch_size=32, validation_fraction=0.2)
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def test_training_lowers_the_loss_and_improves_hits(stores: tuple[Path, Path], tmp_path: Path) -> None:
    train, evaluation = stores
    config = tiny_config(train, epochs=12)
    th.manual_seed(config.seed)
    untrained = ContrastiveSWM(config.model).eval()  # the trained run's initial weights
    result = train_cswm(config, tmp_path)
    history = result.history
    assert [record.epoch for record in history] == list(range(1, 13))
    assert history[-1].train_loss < 0.5 * history[0].train_loss
    assert min(record.validation_loss for record in history) < 0.6 * history[0].validation_loss
    assert result.best_validation_loss == min(record.validation_loss for record in history)
    trained = ContrastiveSWM.load(tmp_path / MODEL_FILE)
    before = evaluate(untrained, evaluation, dedup=True)[0].hits[1]
    after = evaluate(trained, evaluation, dedup=True)[0].hits[1]
    assert before < 0.2 and after > 0.6
    assert any((tmp_path / TENSORBOARD_DIR).iterdir())


def test_validation_holds_out_the_last_episodes(stores: tuple[Path, Path]) -> None:
    train_episodes, validation_episodes = split_episodes(20, 0.2)
    assert train_episodes.tolist() == list(range(16)) and validation_episodes.tolist() == [16, 17, 18, 19]
    with pytest.raises(WorldModelError, match="collect more episodes"):
        split_episodes(1, 0.1)
    with open_store(stores[0]) as reader:
        frames = read_episodes(reader, 0, len(reader))
    split = TransitionSplit(frames, validation_episodes)
    assert len(split) == 40
    # negatives of the validation split come from its own episodes
    observations, actions, next_observations, negatives = split.batch(
        np.arange(40), make_negative_sampler("out-of-episode"), "next", np.random.default_rng(0)
    )
    validation_frames = np.concatenate(
        [frames.frames[frames.frame_starts[e] : frames.frame_starts[e] + 11] for e in validation_episodes]
    )
    as_bytes = {frame.tobytes() for frame in validation_frames}
    assert all(frame.numpy().tobytes() in as_bytes for frame in negatives)
    assert th.equal(observations[1], th.from_numpy(frames.frames[frames.frame_starts[16] + 1]))
    assert th.equal(next_observations[1], th.from_numpy(frames.frames[frames.frame_starts[16] + 2]))
    assert int(actions[1]) == frames.actions[16 * 10 + 1]


def test_interrupted_run_resumes_to_the_same_model(stores: tuple[Path, Path], tmp_path: Path) -> None:
    config = tiny_config(stores[0], negatives="mixed", checkpoint_seconds=0.0)
    straight = train_cswm(config, tmp_path / "straight")

    batches = 0

    def interrupt(size: int, loss: float) -> None:
        nonlocal batches
        batches += 1
        if batches == 7:  # 5 batches per epoch: the second batch of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cswm(config, tmp_path / "resumed", on_batch=interrupt)
    with pytest.raises(WorldModelError, match="--resume"):
        train_cswm(config, tmp_path / "resumed")
    with pytest.raises(WorldModelError, match="learning_rate differ"):
        train_cswm(dataclasses.replace(config, learning_rate=1e-3), tmp_path / "resumed", resume=True)
    resumed = train_cswm(config, tmp_path / "resumed", resume=True)

    def losses(history: list[EpochRecord]) -> list[tuple[float, float]]:
        return [(record.train_loss, record.validation_loss) for record in history]

    assert losses(resumed.history) == losses(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    for name in (CHECKPOINT_FILE, MODEL_FILE):
        first = th.load(tmp_path / "straight" / name, weights_only=True)
        second = th.load(tmp_path / "resumed" / name, weights_only=True)
        weights = "model" if name == CHECKPOINT_FILE else "state_dict"
        assert all(th.equal(first[weights][key], second[weights][key]) for key in first[weights])
    # more epochs continue the finished run
    longer = train_cswm(dataclasses.replace(config, epochs=4), tmp_path / "resumed", resume=True)
    assert losses(longer.history[:3]) == losses(straight.history) and len(longer.history) == 4
    # another seed trains another model
    other = train_cswm(dataclasses.replace(config, seed=7), tmp_path / "other")
    assert losses(other.history) != losses(straight.history)


def test_training_errors_name_the_fix(stores: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(WorldModelError, match="structrl collect"):
        train_cswm(tiny_config(tmp_path / "missing.h5"), tmp_path / "run")
    with pytest.raises(WorldModelError, match="num-objects"):
        train_cswm(tiny_config(stores[0], model=CSWMConfig(num_objects=3)), tmp_path / "run")
    with pytest.raises(WorldModelError, match="unknown negative sampling"):
        train_cswm(tiny_config(stores[0], negatives="hard"), tmp_path / "run")
    single = tmp_path / "single.h5"
    collect(CollectionConfig("ShapesEval-v0", num_episodes=4, seed=3), single)
    with pytest.raises(WorldModelError, match="at least two episodes"):
        train_cswm(tiny_config(single, negatives="time-aligned"), tmp_path / "run")


def run_cli(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="structrl")
    add_cswm_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(arguments)
    return int(args.run(args))


def test_cli_trains_and_evaluates(
    stores: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, evaluation = stores
    run = tmp_path / "run"
    common = ["--no-progress", "--threads", "1"]
    train_args = ["cswm", "train", "--dataset", str(train), "--negatives", "episodic", "--epochs", "2"]
    assert run_cli([*train_args, "--batch-size", "64", "--hidden-dim", "32", "--out", str(run), *common]) == 0
    output = capsys.readouterr().out
    assert (
        "| epoch | train loss | validation loss | samples/s |" in output and f"{run / MODEL_FILE}" in output
    )
    report = tmp_path / "eval.json"
    eval_args = ["cswm", "eval", str(run), "--dataset", str(evaluation), "--steps", "1,2", "--dedup"]
    assert (
        run_cli(
            [*eval_args, "--mode", "all,batched,in-episode", "--hits", "1,5", "--json", str(report), *common]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| mode | steps | episodes | Hits@1 | Hits@5 | MRR |"
    assert [line.split(" | ")[:3] for line in table[2:]] == [
        [f"| {mode}", str(steps), "30"] for mode in ("all", "batched", "in-episode") for steps in (1, 2)
    ]
    results = json.loads(report.read_text())["results"]
    model = ContrastiveSWM.load(run)
    expected = evaluate(model, evaluation, steps=(1, 2), dedup=True, hits=(1, 5))
    assert results[0]["hits"]["1"] == pytest.approx(expected[0].hits[1])
    assert results[1]["mrr"] == pytest.approx(expected[1].mrr)
    assert f"{results[0]['hits']['1']:.4f}" in table[2]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--dataset", "{missing}", "--out", "{tmp}/run"], "structrl collect"),
        (
            ["train", "--dataset", "{train}", "--encoder", "huge", "--out", "{tmp}/run"],
            "small, medium, large",
        ),
        (["eval", "{tmp}/none", "--dataset", "{eval}"], "no C-SWM model"),
        (["eval", "{model}", "--dataset", "{train}", "--dedup"], "--save-state-ids"),
        (["eval", "{model}", "--dataset", "{eval}", "--steps", "one"], "comma-separated integers"),
        (["eval", "{model}", "--dataset", "{eval}", "--mode", "local"], "unknown evaluation mode"),
    ],
)
def test_cli_errors_are_value_errors_naming_the_fix(
    stores: tuple[Path, Path], tmp_path: Path, arguments: list[str], message: str
) -> None:
    model = tmp_path / "model.pt"
    ContrastiveSWM(CSWMConfig(hidden_dim=32)).save(model)
    paths = {
        "missing": tmp_path / "missing.h5",
        "tmp": tmp_path,
        "train": stores[0],
        "eval": stores[1],
        "model": model,
    }
    with pytest.raises(ValueError, match=message):
        run_cli(["cswm", *[argument.format(**paths) for argument in arguments], "--no-progress"])
