"""Goal discriminator: masking module, sampler, harness losses, metrics, runs, resume and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from torch.nn import functional as F

from structrl.agents import goal_discriminator
from structrl.agents.behavior_cloning import BCError
from structrl.agents.goal_discriminator import (
    BEST_FILE,
    CHECKPOINT_FILE,
    FINAL_FILE,
    SUMMARY_FILE,
    DemoFrames,
    DiscriminatorConfig,
    DiscriminatorError,
    DiscriminatorSampler,
    GoalDiscriminator,
    discriminator_losses,
    evaluate_goal_maps,
    goal_map_metrics,
    load_discriminator,
    load_interaction_model,
    read_demo_frames,
    read_discriminator_checkpoint,
    read_first_frames,
    resume_discriminator,
    save_discriminator,
    train_discriminator,
)
from structrl.cli.compgen import add_compgen_parsers
from structrl.cli.main import ArgumentParser
from structrl.data.demos import DemoConfig, generate_demos
from structrl.data.episode_store import EpisodeReader
from structrl.data.splits import DemoSplit, split_demo_store
from structrl.policies.goal_mask import ImageComponentsToMask
from structrl.policies.grounding import grounding_accuracy

#: 3 demonstrations per goal: 2 to train on, the last one of each ID goal for ID validation (24 frames), the
#: first 2 of each held-out goal for OOD validation (24 frames).
SPLIT: dict[str, Any] = {"limit": 2, "id_valid_per_goal": 1, "ood_valid_per_goal": 2}
DONE = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("discriminator") / "demos.h5"
    generate_demos(DemoConfig(per_goal=3, min_length=4, seed=5), path)
    return path


@pytest.fixture(scope="module")
def split(store: Path) -> DemoSplit:
    return split_demo_store(store, **SPLIT)


@pytest.fixture(scope="module")
def frames(store: Path, split: DemoSplit) -> DemoFrames:
    return read_demo_frames(store, split.train)


def small_config(store: Path, **settings: Any) -> DiscriminatorConfig:
    return DiscriminatorConfig(
        dataset=str(store), **{**SPLIT, "embedding_dim": 8, "batch_size": 16, **settings}
    )


# ---------------------------------------------------------------------------------------------------------
# Masking module and data


def test_mask_module_is_a_distribution_over_cells_with_the_paper_size() -> None:
    mask = ImageComponentsToMask()
    assert sum(parameter.numel() for parameter in mask.parameters()) == 460_275
    for size in (8, 12):
        image = th.randint(0, 6, (3, size, size, 3))
        output = mask(image, th.tensor([0, 1, 3]))
        assert output.shape == (3, size, size) and (output >= 0).all()
        assert th.allclose(output.sum(dim=(1, 2)), th.ones(3))
    # only the first E columns of the 4 x 2E direction table are read
    image = th.randint(0, 6, (2, 8, 8, 3))
    before = mask(image, th.tensor([1, 2]))
    with th.no_grad():
        mask.direction_embedding.weight[:, 48:] += 5.0
    assert th.equal(mask(image, th.tensor([1, 2])), before)


def test_demo_frames_are_the_frames_before_each_action(
    store: Path, split: DemoSplit, frames: DemoFrames
) -> None:
    assert len(frames) == 48 and frames.goals.tolist()[:24] == list(split.split.train_goals)
    with EpisodeReader(store) as reader:
        for item in (0, 17, 47):
            episode = reader[int(split.train[item])]
            rows = slice(frames.starts[item], frames.starts[item + 1])
            assert np.array_equal(frames.images[rows], episode.observations["image"][:-1])
            assert np.array_equal(frames.directions[rows], episode.observations["direction"][:-1])
            assert np.array_equal(frames.actions[rows], episode.actions)
            assert np.array_equal(frames.missions[item], episode.info["mission"])
    assert (frames.actions[frames.final_rows] == DONE).all()
    first = read_first_frames(store, split.id_valid)
    assert len(first) == 24 and first.targets.shape == (24, 8, 8)
    assert (first.targets.sum(axis=(1, 2)) >= 1).all()


# ---------------------------------------------------------------------------------------------------------
# Sampling


def test_the_sampler_alternates_positive_and_negative_pairs(frames: DemoFrames) -> None:
    sampler = DiscriminatorSampler(frames)
    assert (sampler.n_goals, sampler.limit) == (24, 2)
    goal_of = dict(zip(frames.episodes.tolist(), frames.goals.tolist(), strict=True))
    item_of = {episode: item for item, episode in enumerate(frames.episodes.tolist())}
    stream = sampler.iterate(np.random.default_rng(0))
    examples = [next(stream) for _ in range(600)]
    assert [example["label"] for example in examples] == [1.0, 0.0] * 300
    nulls = 0
    for positive, negative in zip(examples[::2], examples[1::2], strict=True):
        source = positive["source_episode"]
        item = item_of[source]
        final = frames.final_rows[item]
        for example in (positive, negative):  # the mission and the source are the final frame of i1
            assert example["source_episode"] == source
            assert np.array_equal(example["mission"], frames.missions[item])
            assert np.array_equal(example["source_image"], frames.images[final])
            assert example["source_direction"] == frames.directions[final]
        target = positive["target_episode"]
        assert target != source and goal_of[target] == goal_of[source], "two trajectories of the same goal"
        assert positive["target_frame"] == frames.lengths[item_of[target]] - 1
        row = frames.starts[item_of[target]] + positive["target_frame"]
        assert np.array_equal(positive["target_image"], frames.images[row])
        if negative["target_episode"] == source:  # a null negative: an earlier frame of i1
            nulls += 1
            assert 0 <= negative["target_frame"] < frames.lengths[item] - 1
        else:
            assert goal_of[negative["target_episode"]] != goal_of[source]
            assert negative["target_frame"] == frames.lengths[item_of[negative["target_episode"]]] - 1
        row = frames.starts[item_of[negative["target_episode"]]] + negative["target_frame"]
        assert np.array_equal(negative["target_image"], frames.images[row])
        assert negative["target_direction"] == frames.directions[row]
    assert 3 <= nulls <= 30  # expected 300 / 24 = 12.5
    first = sampler.sample_pairs(np.random.default_rng(7), 32)
    again = sampler.sample_pairs(np.random.default_rng(7), 32)
    assert len(first) == 64 and all(
        np.array_equal(a, b) for a, b in zip(vars(first).values(), vars(again).values(), strict=True)
    )


def test_a_limit_below_two_is_refused(store: Path, split: DemoSplit) -> None:
    with pytest.raises(
        DiscriminatorError, match="two different trajectories of one goal: --limit must be at least 2"
    ):
        small_config(store, limit=1).check()
    one_each = read_demo_frames(
        store, split_demo_store(store, limit=1, id_valid_per_goal=1, ood_valid_per_goal=2).train
    )
    with pytest.raises(DiscriminatorError, match="some goal has 1 training episode"):
        DiscriminatorSampler(one_each)
    args = compgen_parser().parse_args(
        ["discriminator", "--dataset", str(store), "--model", "factored-attention", "--limit", "1"]
    )
    with pytest.raises(DiscriminatorError, match="--limit must be at least 2, got 1"):
        args.run(args)
    assert issubclass(DiscriminatorError, BCError)  # structrl's main reports it with exit code 2


# ---------------------------------------------------------------------------------------------------------
# Losses and metrics


def test_the_losses_follow_the_reference_harness(frames: DemoFrames) -> None:
    th.manual_seed(0)
    discriminator = GoalDiscriminator("simple-attention", 15, 8)
    batch = DiscriminatorSampler(frames).sample_pairs(np.random.default_rng(1), 8).tensors()
    losses = discriminator_losses(discriminator, batch, sparsity_weight=0.5)
    with th.no_grad():
        interaction, mask = discriminator.interaction, discriminator.mask
        logits = interaction(batch["target_image"], batch["mission"]).flatten(1)
        target_mask = mask(batch["target_image"], batch["target_direction"]).flatten(1)
        source_mask = mask(batch["source_image"], batch["source_direction"]).flatten(1)
        pooled = th.log((target_mask + 1e-6) * logits.exp()).logsumexp(dim=1)
        expected_int = F.binary_cross_entropy_with_logits(pooled, batch["label"])
        cells = {
            key: interaction.embed_cells(batch[f"{key}_image"]).flatten(2, 3) for key in ("source", "target")
        }
        source_vector = (source_mask[:, None, :, None] * cells["source"]).sum(dim=2)
        target_vector = (target_mask[:, None, :, None] * cells["target"]).sum(dim=2)
        match = th.ones(16)
        for factor in range(2):
            match *= F.cosine_similarity(source_vector[:, factor], target_vector[:, factor], dim=-1).relu()
        expected_img = ((match.clamp(0, 1) - batch["label"]) ** 2).mean()
    assert losses.interaction.item() == pytest.approx(expected_int.item(), rel=1e-5)
    assert losses.image.item() == pytest.approx(expected_img.item(), rel=1e-5)
    assert losses.loss.item() == pytest.approx(
        (expected_int + expected_img + 0.5 * interaction.sparsity_penalty()).item(), rel=1e-5
    )
    # L_int trains only the interaction model (mask detached), L_img only the mask (embeddings detached)
    losses.interaction.backward(retain_graph=True)
    assert all(parameter.grad is None for parameter in mask.parameters())
    assert interaction.words.grad is not None and interaction.words.grad.abs().sum() > 0
    discriminator.zero_grad(set_to_none=True)
    losses.image.backward()
    assert all(parameter.grad is None for parameter in interaction.parameters())
    assert mask.attributes.weight.grad is not None and mask.attributes.weight.grad.abs().sum() > 0


def test_soft_goal_map_metrics() -> None:
    targets = th.zeros(2, 2, 2, dtype=th.bool)
    targets[0, 0, 0] = targets[1, 1, 1] = targets[1, 0, 1] = True
    logits = th.full((2, 2, 2), -50.0)
    logits[0, 0, 0] = logits[1, 1, 1] = 50.0  # finds 1 of the 2 targets of the second grid
    metrics = goal_map_metrics(logits, targets)
    assert metrics["soft_precision"] == pytest.approx(1.0) and metrics["soft_recall"] == pytest.approx(0.75)
    assert metrics["soft_f1"] == pytest.approx(2 * 0.75 / 1.75)
    uniform = goal_map_metrics(th.zeros(2, 2, 2), targets)  # q = 0.5 everywhere
    assert uniform["soft_precision"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert uniform["soft_recall"] == pytest.approx(0.5)
    expected = F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=th.tensor(4.0))
    assert metrics["vtarget"] == pytest.approx(expected.item())


# ---------------------------------------------------------------------------------------------------------
# Training runs


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A small factored-attention discriminator: 100 steps of 64 examples, validated every 25 steps."""
    run = tmp_path_factory.mktemp("discriminator") / "run"
    config = small_config(
        store, embedding_dim=16, batch_size=64, steps=100, learning_rate=3e-3, eval_every=25,
        checkpoint_every=50, sparsity_start=0, sparsity_ramp=50, sparsity_weight=0.1,
    )  # fmt: skip
    return run, train_discriminator(config, run)


def test_training_lowers_the_loss_and_beats_an_untrained_soft_f1(
    trained: tuple[Path, dict[str, Any]], store: Path, split: DemoSplit, frames: DemoFrames
) -> None:
    run, summary = trained
    th.manual_seed(0)  # the run's seed: the run started from these weights
    untrained = GoalDiscriminator("factored-attention", 15, 16)
    model, info = load_discriminator(run / FINAL_FILE)
    batch = DiscriminatorSampler(frames).sample_pairs(np.random.default_rng(99), 128).tensors()
    with th.no_grad():
        untrained.train()
        model.train()  # batch statistics in the mask, as in training
        before = discriminator_losses(untrained, batch)
        after = discriminator_losses(model, batch)
    assert after.interaction.item() < before.interaction.item() - 0.05
    assert after.image.item() < 0.5 * before.image.item()
    id_frames = read_first_frames(store, split.id_valid)
    untrained_f1 = evaluate_goal_maps(untrained.interaction, id_frames)["soft_f1"]
    assert summary["best"]["id_soft_f1"] > untrained_f1 + 0.01
    assert evaluate_goal_maps(model.interaction, id_frames)["soft_f1"] == pytest.approx(
        summary["final"]["id_soft_f1"]
    )
    assert info["step"] == 100 and summary["steps"] == 100 and summary["train_episodes"] == 48


def test_the_best_weights_and_the_run_directory(
    trained: tuple[Path, dict[str, Any]], store: Path, split: DemoSplit
) -> None:
    run, summary = trained
    assert sorted(path.name for path in run.iterdir()) == sorted(
        [BEST_FILE, FINAL_FILE, CHECKPOINT_FILE, SUMMARY_FILE, "config.yml", "tensorboard"]
    )
    history = summary["evaluations"]
    assert [record["step"] for record in history] == [25, 50, 75, 100]
    best = max(history, key=lambda record: (record["id_soft_f1"], -record["step"]))
    assert summary["best"] == best and json.loads((run / SUMMARY_FILE).read_text())["best"] == best
    model, info = load_discriminator(run)  # the run directory reads best_discriminator.pt
    assert info["step"] == best["step"] and info["metrics"] == best
    for which, indices in (("id", split.id_valid), ("ood", split.ood_valid)):
        metrics = evaluate_goal_maps(model.interaction, read_first_frames(store, indices))
        assert metrics["soft_f1"] == pytest.approx(best[f"{which}_soft_f1"])
    interaction, name = load_interaction_model(run)
    assert name == "factored-attention" and th.equal(interaction.words, model.interaction.words)
    with th.no_grad():
        similarity = interaction.similarity_matrix().numpy()
    assert best["grounding_accuracy"] == grounding_accuracy(similarity)
    assert all(0.0 <= record["grounding_accuracy"] <= 1.0 for record in history)
    checkpoint = read_discriminator_checkpoint(run)
    assert checkpoint is not None and checkpoint["finished"] and checkpoint["step"] == 100


def test_save_and_load_give_identical_outputs(frames: DemoFrames, tmp_path: Path) -> None:
    th.manual_seed(3)
    discriminator = GoalDiscriminator("simple-attention", 15, 8)
    discriminator.eval()
    batch = DiscriminatorSampler(frames).sample_pairs(np.random.default_rng(2), 4).tensors()
    save_discriminator(discriminator, tmp_path / "weights.pt", step=7)
    loaded, info = load_discriminator(tmp_path / "weights.pt")
    assert info["step"] == 7 and loaded.model_name == "simple-attention"
    with th.no_grad():
        for module in (discriminator, loaded):
            module.eval()
        assert th.equal(
            discriminator.goal_logits(batch["target_image"], batch["mission"]),
            loaded.goal_logits(batch["target_image"], batch["mission"]),
        )
        assert th.equal(
            discriminator.mask(batch["source_image"], batch["source_direction"]),
            loaded.mask(batch["source_image"], batch["source_direction"]),
        )
    with pytest.raises(DiscriminatorError, match="not found: give a discriminator run directory"):
        load_discriminator(tmp_path / "nothing")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DiscriminatorError, match="not a discriminator weights file"):
        load_discriminator(tmp_path / "junk.pt")


def final_state(run: Path) -> dict[str, th.Tensor]:
    return th.load(run / FINAL_FILE, weights_only=True)["state_dict"]


def test_an_interrupted_run_resumes_to_the_same_weights(store: Path, tmp_path: Path) -> None:
    settings = {
        "steps": 40,
        "eval_every": 10,
        "checkpoint_every": 10,
        "sparsity_start": 5,
        "sparsity_ramp": 20,
    }
    full = train_discriminator(small_config(store, **settings), tmp_path / "full")

    def interrupt(record: dict[str, Any]) -> None:
        if record["step"] == 30:  # after the step-30 validation, before its checkpoint
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_discriminator(small_config(store, **settings), run, on_evaluation=interrupt)
    checkpoint = read_discriminator_checkpoint(run)
    assert checkpoint is not None and checkpoint["step"] == 20 and not checkpoint["finished"]
    assert (run / FINAL_FILE).is_file()  # Ctrl-C saved the current weights
    resumed = resume_discriminator(run)
    assert resumed["resumed_at_steps"] == [20] and resumed["evaluations"] == full["evaluations"]
    expected = final_state(tmp_path / "full")
    assert all(th.equal(value, expected[name]) for name, value in final_state(run).items())
    with pytest.raises(DiscriminatorError, match="has finished its 40 steps: ask for more steps"):
        resume_discriminator(run)
    # a finished run continued for more steps ends where a longer run does
    short = tmp_path / "short"
    train_discriminator(small_config(store, **{**settings, "steps": 20}), short)
    extended = resume_discriminator(short, steps=40)
    assert extended["evaluations"] == full["evaluations"]
    assert all(th.equal(value, expected[name]) for name, value in final_state(short).items())


def compgen_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="structrl")
    add_compgen_parsers(parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser))
    return parser


def test_discriminator_command(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = compgen_parser().parse_args(
        ["discriminator", "--dataset", str(store), "--model", "simple-attention", "--limit", "2",
         "--id-valid-per-goal", "1", "--ood-valid-per-goal", "2", "--embedding-dim", "8", "--batch-size", "8",
         "--steps", "6", "--eval-every", "3", "--sparsity-weight", "0", "--out", str(out)]
    )  # fmt: skip
    assert args.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 3: ID soft F1") and lines[0].endswith("(best)")
    assert "grounding" not in lines[0]  # only factored attention has a word x attribute matrix
    assert lines[-1].startswith("trained on 48 episodes for 6 steps")
    args = compgen_parser().parse_args(["discriminator", "--resume", str(out), "--seed", "2"])
    with pytest.raises(
        DiscriminatorError, match=r"--resume continues a run with its own config\.yml; drop --seed"
    ):
        args.run(args)
    args = compgen_parser().parse_args(["discriminator", "--resume", str(out), "--steps", "9"])
    assert args.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resuming {out} after step 6" and lines[-1].startswith(
        "trained on 48 episodes for 9 steps"
    )
    args = compgen_parser().parse_args(["discriminator", "--model", "factored-attention"])
    with pytest.raises(DiscriminatorError, match="needs --dataset and --model"):
        args.run(args)


def test_ctrl_c_in_the_discriminator_command_says_how_to_resume(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    evaluate = goal_discriminator.evaluate_goal_maps

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 3:  # the ID validation of step 4
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(goal_discriminator, "evaluate_goal_maps", interrupted)
    out = tmp_path / "run"
    args = compgen_parser().parse_args(
        ["discriminator", "--dataset", str(store), "--model", "factored-attention", "--limit", "2",
         "--id-valid-per-goal", "1", "--ood-valid-per-goal", "2", "--embedding-dim", "8", "--batch-size", "8",
         "--steps", "6", "--eval-every", "2", "--checkpoint-every", "2", "--out", str(out)]
    )  # fmt: skip
    assert args.run(args) == 130
    err = capsys.readouterr().err
    assert f"interrupted after step 2 (saved to {out / CHECKPOINT_FILE})" in err
    assert f"the current weights are in {out / FINAL_FILE}" in err
    assert err.rstrip().endswith(f"continue with: structrl discriminator --resume {out}")
