"""C-SWM parts: encoders, transition GNN, hinge loss, negative samplers and ranking metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

from structrl.data.collection import CollectionConfig, collect
from structrl.data.episode_store import EpisodeReader
from structrl.world_models import evaluation
from structrl.world_models.cswm import ContrastiveSWM, CSWMConfig, energy, hinge_loss
from structrl.world_models.encoders import ObjectEncoder
from structrl.world_models.errors import WorldModelError
from structrl.world_models.evaluation import RankingResult, encode_frames, evaluate
from structrl.world_models.negatives import (
    EpisodeLayout,
    EpisodicNegatives,
    InBatchNegatives,
    OutOfEpisodeNegatives,
    TimeAlignedNegatives,
    make_negative_sampler,
)
from structrl.world_models.ranking import (
    batched_ranks,
    global_ranks,
    hits_at,
    in_episode_ranks,
    mean_reciprocal_rank,
)
from structrl.world_models.transition import TransitionGNN

# --------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize(
    ("encoder", "map_side"), [("small", 5), ("medium", 10), ("large", 50)], ids=["small", "medium", "large"]
)
def test_encoder_output_shapes(encoder: str, map_side: int) -> None:
    th.manual_seed(0)
    model = ObjectEncoder(encoder, (3, 50, 50), num_objects=5, embedding_dim=2)
    images = th.randint(0, 256, (3, 3, 50, 50), dtype=th.uint8)
    with th.no_grad():
        maps = model.extractor(images.float() / 255)
    assert maps.shape == (3, 5, map_side, map_side)
    assert float(maps.min()) > 0 and float(maps.max()) < 1  # sigmoid object masks
    assert model.mlp.net[0].in_features == map_side * map_side
    assert model(images).shape == (3, 5, 2)
    # uint8 images are scaled to [0, 1]: the same embedding as the float image
    assert th.allclose(model.eval()(images), model(images.float() / 255))


def test_unknown_encoder_names_the_choices() -> None:
    with pytest.raises(WorldModelError, match="small, medium, large"):
        CSWMConfig(encoder="huge").check()


def naive_transition(gnn: TransitionGNN, z: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """The GNN evaluated edge by edge, as the definition reads: e_ij = MLP([z_i, z_j]), m_i = sum over j."""
    edge_mlp = th.nn.Sequential(gnn.edge_input, *gnn.edge_hidden, gnn.edge_output)
    num_objects = z.shape[1]
    messages = []
    for i in range(num_objects):
        edges = [edge_mlp(th.cat([z[:, i], z[:, j]], dim=-1)) for j in range(num_objects) if j != i]
        messages.append(th.stack(edges).sum(dim=0))
    return gnn.node_mlp(th.cat([z, gnn.encode_actions(actions), th.stack(messages, dim=1)], dim=-1))


@pytest.mark.parametrize("action_encoding", ["per-object", "copy"])
def test_transition_matches_the_per_edge_definition(action_encoding: str) -> None:
    th.manual_seed(0)
    gnn = TransitionGNN(
        embedding_dim=3, num_objects=4, action_dim=4, hidden_dim=32, action_encoding=action_encoding
    )
    z = th.randn(6, 4, 3)
    actions = th.randint(0, gnn.num_actions, (6,))
    assert th.allclose(gnn(z, actions), naive_transition(gnn, z, actions), atol=1e-5)


def test_transition_is_equivariant_to_object_permutations() -> None:
    th.manual_seed(0)
    num_objects, action_dim = 5, 4
    permutation = th.tensor([3, 0, 4, 1, 2])  # new slot s holds old object permutation[s]
    z = th.randn(8, num_objects, 2)
    actions = th.randint(0, num_objects * action_dim, (8,))
    copy_gnn = TransitionGNN(2, num_objects, action_dim, hidden_dim=32, action_encoding="copy")
    copied = actions % action_dim
    assert th.allclose(copy_gnn(z[:, permutation], copied), copy_gnn(z, copied)[:, permutation], atol=1e-5)
    # With per-object actions the action follows its object to its new slot.
    gnn = TransitionGNN(2, num_objects, action_dim, hidden_dim=32)
    new_slot = th.argsort(permutation)
    permuted_actions = new_slot[actions // action_dim] * action_dim + actions % action_dim
    assert th.allclose(gnn(z[:, permutation], permuted_actions), gnn(z, actions)[:, permutation], atol=1e-5)
    # ... and only the acted-on object's slot sees the action
    encoded = gnn.encode_actions(th.tensor([4 * 3 + 2]))
    assert encoded[0, 3].tolist() == [0, 0, 1, 0] and float(encoded.sum()) == 1


def test_single_object_transition_has_no_edges() -> None:
    gnn = TransitionGNN(2, num_objects=1, action_dim=4, hidden_dim=32)
    assert gnn(th.randn(3, 1, 2), th.tensor([0, 1, 3])).shape == (3, 1, 2)
    assert gnn.node_mlp[0].in_features == 2 + 4


def test_hinge_loss_matches_a_hand_computation() -> None:
    # Two samples, K = 2 objects of D = 1; sigma 0.5 gives d(x, y) = 2 * mean_k (x_k - y_k)^2.
    predicted = th.tensor([[[1.0], [0.0]], [[0.0], [2.0]]])
    next_z = th.zeros(2, 2, 1)
    negative = th.tensor([[[0.5], [0.0]], [[1.0], [1.0]]])
    anchor = th.zeros(2, 2, 1)
    # positive energies: 2 * (1 + 0) / 2 = 1 and 2 * (0 + 4) / 2 = 4, mean 2.5
    # negative energies: 2 * 0.25 / 2 = 0.25 and 2 * (1 + 1) / 2 = 2; hinges 0.75 and 0, mean 0.375
    loss = hinge_loss(predicted, next_z, negative, anchor, sigma=0.5, margin=1.0, negative_weight=2.0)
    assert float(loss.positive) == pytest.approx(2.5)
    assert float(loss.hinge) == pytest.approx(0.375)
    assert float(loss.loss) == pytest.approx(2.5 + 2 * 0.375)
    assert energy(predicted, next_z, sigma=1.0).tolist() == pytest.approx([0.25, 1.0])


@pytest.mark.parametrize("anchor", ["next", "current"])
def test_model_loss_compares_negatives_with_its_anchor(anchor: str) -> None:
    th.manual_seed(0)
    model = ContrastiveSWM(CSWMConfig(hidden_dim=32, negative_anchor=anchor)).eval()
    observations = th.randint(0, 256, (4, 3, 50, 50), dtype=th.uint8)
    next_observations = th.randint(0, 256, (4, 3, 50, 50), dtype=th.uint8)
    actions = th.tensor([0, 5, 10, 19])
    positions = th.tensor([1, 2, 3, 0])
    with th.no_grad():
        loss = model.loss(observations, actions, next_observations, positions)
        z, next_z = model.encode(observations), model.encode(next_observations)
        anchor_z = next_z if anchor == "next" else z
        expected_hinge = F.relu(1.0 - energy(anchor_z[positions], anchor_z, 0.5)).mean()
        expected_positive = energy(z + model.transition(z, actions), next_z, 0.5).mean()
        # Negative images give the same loss as the in-batch positions they show.
        anchor_images = next_observations if anchor == "next" else observations
        image_loss = model.loss(observations, actions, next_observations, anchor_images[positions])
    assert float(loss.hinge) == pytest.approx(float(expected_hinge), abs=1e-6)
    assert float(loss.positive) == pytest.approx(float(expected_positive), abs=1e-6)
    assert float(image_loss.loss) == pytest.approx(float(loss.loss), abs=1e-6)


def test_model_save_load_round_trip(tmp_path: Path) -> None:
    th.manual_seed(0)
    model = ContrastiveSWM(CSWMConfig(hidden_dim=32, encoder="medium", embedding_dim=3)).eval()
    model.save(tmp_path / "run" / "model.pt", epoch=3)
    loaded = ContrastiveSWM.load(tmp_path / "run")
    assert loaded.config == model.config and not loaded.training
    images = th.randint(0, 256, (2, 3, 50, 50), dtype=th.uint8)
    assert th.equal(loaded.encode(images), model.encode(images))
    with pytest.raises(WorldModelError, match="no C-SWM model"):
        ContrastiveSWM.load(tmp_path / "missing.pt")
    th.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(WorldModelError, match="not a C-SWM model"):
        ContrastiveSWM.load(tmp_path / "other.pt")


# ----------------------------------------------------------------------------------- negative sampling

# Episodes of 10, 10, 10, 2, 5 and 10 steps (11, 11, 11, 3, 6, 11 observations).
LAYOUT = EpisodeLayout(np.array([11, 11, 11, 3, 6, 11]))


def anchors(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Random valid anchors (episode, observation step) of LAYOUT, drawn independently of the samplers."""
    rng = np.random.default_rng(2024)
    episodes = rng.integers(0, len(LAYOUT), count)
    return episodes, rng.integers(0, LAYOUT.num_observations[episodes])


def distinct_anchors() -> tuple[np.ndarray, np.ndarray]:
    """Every (episode, step) of LAYOUT once, as in a batch of distinct transitions."""
    episodes = np.repeat(np.arange(len(LAYOUT)), LAYOUT.num_observations)
    steps = np.concatenate([np.arange(count) for count in LAYOUT.num_observations])
    return episodes, steps


def sampler_rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize(
    "name", ["batch", "episodic", "time-aligned", "out-of-episode", "mixed", "mixed-time-aligned"]
)
def test_no_sampler_returns_the_anchor(name: str) -> None:
    episodes, steps = distinct_anchors()
    if name != "batch":  # in-batch negatives assume distinct transitions; the others hold for any anchors
        episodes, steps = np.tile(episodes, 80), np.tile(steps, 80)
    negatives = make_negative_sampler(name).sample(LAYOUT, episodes, steps, sampler_rng())
    assert negatives.episodes.shape == negatives.steps.shape == episodes.shape
    assert not np.any((negatives.episodes == episodes) & (negatives.steps == steps))
    assert np.all((negatives.steps >= 0) & (negatives.steps < LAYOUT.num_observations[negatives.episodes]))


def test_in_batch_negatives_are_other_samples_of_the_batch() -> None:
    episodes, steps = anchors(64)
    negatives = InBatchNegatives().sample(LAYOUT, episodes, steps, sampler_rng())
    positions = negatives.batch_positions
    assert positions is not None
    assert sorted(positions) == list(range(64)) and not np.any(positions == np.arange(64))
    assert np.array_equal(negatives.episodes, episodes[positions])
    assert np.array_equal(negatives.steps, steps[positions])
    with pytest.raises(WorldModelError, match="at least two"):
        InBatchNegatives().sample(LAYOUT, episodes[:1], steps[:1], sampler_rng())


def test_episodic_negatives_are_other_steps_of_the_same_episode() -> None:
    episodes, steps = anchors(4000)
    negatives = EpisodicNegatives().sample(LAYOUT, episodes, steps, sampler_rng())
    assert np.array_equal(negatives.episodes, episodes)
    assert np.all(negatives.steps != steps)
    # every other step of an episode is drawn
    chosen = negatives.steps[(episodes == 4) & (steps == 2)]
    assert set(chosen.tolist()) == {0, 1, 3, 4, 5}


def test_time_aligned_negatives_are_the_same_step_of_other_episodes() -> None:
    episodes, steps = anchors(4000)
    negatives = TimeAlignedNegatives().sample(LAYOUT, episodes, steps, sampler_rng())
    assert np.array_equal(negatives.steps, steps)
    assert np.all(negatives.episodes != episodes)
    # only episodes reaching that step qualify: step 8 exists in episodes 0, 1, 2 and 5 only
    late = steps == 8
    assert set(negatives.episodes[late & (episodes == 0)].tolist()) == {1, 2, 5}
    with pytest.raises(WorldModelError, match="at least two episodes"):
        TimeAlignedNegatives().sample(
            EpisodeLayout(np.array([11])), episodes[:3] * 0, steps[:3], np.random.default_rng(0)
        )


def test_out_of_episode_negatives_come_from_every_other_episode() -> None:
    episodes, steps = anchors(4000)
    negatives = OutOfEpisodeNegatives().sample(LAYOUT, episodes, steps, sampler_rng())
    assert np.all(negatives.episodes != episodes)
    assert set(negatives.episodes[episodes == 3].tolist()) == {0, 1, 2, 4, 5}
    # the episode is uniform among the others: each of the 5 gets about a fifth
    shares = np.bincount(negatives.episodes[episodes == 0], minlength=6)[1:] / np.sum(episodes == 0)
    assert np.allclose(shares, 0.2, atol=0.06)


def test_mixed_negatives_are_episodic_with_probability_beta() -> None:
    episodes, steps = anchors(20000)
    for beta in (0.0, 0.3, 1.0):
        negatives = make_negative_sampler("mixed", beta).sample(
            LAYOUT, episodes, steps, np.random.default_rng(0)
        )
        same_episode = negatives.episodes == episodes
        assert np.mean(same_episode) == pytest.approx(beta, abs=0.015)
        assert np.all(negatives.steps[same_episode] != steps[same_episode])
    with pytest.raises(WorldModelError, match="beta"):
        make_negative_sampler("mixed", 1.5)
    with pytest.raises(WorldModelError, match="unknown negative sampling"):
        make_negative_sampler("hard")


# ------------------------------------------------------------------------------------------- rankings


def brute_force_ranks(
    queries: np.ndarray, candidates: np.ndarray, labels: np.ndarray | None = None
) -> np.ndarray:
    """rank_i = 1 + #{j : d(q_i, c_j) < d(q_i, c_i)} (skipping candidates of label_i), one query at a time."""
    ranks = []
    for i, query in enumerate(queries):
        distances = ((candidates - query) ** 2).sum(axis=1)
        closer = distances < distances[i]
        if labels is not None:
            closer &= labels != labels[i]
        ranks.append(1 + int(closer.sum()))
    return np.array(ranks)


def random_embeddings(count: int, seed: int = 0) -> tuple[th.Tensor, th.Tensor]:
    generator = th.Generator().manual_seed(seed)
    targets = th.randn(count, 10, generator=generator)
    return targets + 0.9 * th.randn(count, 10, generator=generator), targets


def test_global_ranks_match_brute_force_in_both_directions() -> None:
    predictions, targets = random_embeddings(60)
    for rank, (queries, candidates) in (
        ("targets", (predictions, targets)),
        ("predictions", (targets, predictions)),
    ):
        expected = brute_force_ranks(queries.numpy(), candidates.numpy())
        assert 0.1 < np.mean(expected == 1) < 0.9  # a non-trivial ranking
        for block_size in (None, 1, 7, 60):
            ranks = global_ranks(predictions, targets, rank=rank, block_size=block_size)
            assert np.array_equal(ranks, expected)
        assert hits_at(ranks, 1) == pytest.approx(np.mean(expected == 1))
        assert hits_at(ranks, 5) == pytest.approx(np.mean(expected <= 5))
        assert mean_reciprocal_rank(ranks) == pytest.approx(np.mean(1 / expected))


def test_ties_go_to_the_correct_candidate() -> None:
    targets = th.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
    predictions = th.tensor([[0.1, 0.0], [0.2, 0.0], [3.0, 0.0]])
    # targets 0 and 1 are equal, so predictions 0 and 1 are exactly as close to both: ties count as hits
    assert global_ranks(predictions, targets).tolist() == [1, 1, 1]


def test_dedup_removes_duplicate_states_from_the_whole_ranking() -> None:
    predictions, targets = random_embeddings(60, seed=1)
    labels = np.arange(60) % 20  # every state three times
    ids = th.from_numpy(np.stack([labels, labels * 7], axis=1))
    for rank, (queries, candidates) in (
        ("targets", (predictions, targets)),
        ("predictions", (targets, predictions)),
    ):
        expected = brute_force_ranks(queries.numpy(), candidates.numpy(), labels)
        ranks = global_ranks(predictions, targets, ids, rank=rank, block_size=9)
        assert np.array_equal(ranks, expected)
        assert np.all(ranks <= global_ranks(predictions, targets, rank=rank))
    # Prediction 0 is closest to target 1, a duplicate of its state 7, then to target 2 (state 8): dedup
    # discounts the duplicate only, giving rank 2 (the original's top-1 correction gave rank 1).
    targets = th.tensor([[0.0], [1.0], [0.5], [2.0]])
    predictions = th.tensor([[0.9], [1.0], [0.5], [2.0]])
    duplicates = th.tensor([[7], [7], [8], [7]])
    assert global_ranks(predictions, targets).tolist()[0] == 3
    assert global_ranks(predictions, targets, duplicates).tolist()[0] == 2  # only state 8 (0.5) beats it


def test_batched_ranking_weighs_every_episode_equally() -> None:
    predictions, targets = random_embeddings(23, seed=2)
    ranks = batched_ranks(predictions, targets, batch_size=10)
    parts = [global_ranks(predictions[s : s + 10], targets[s : s + 10]) for s in (0, 10, 20)]
    assert np.array_equal(ranks, np.concatenate(parts))  # the last batch of 3 is kept
    # 8 perfect episodes, then 2 whose predictions are swapped: Hits@1 = 8 / 10 episodes, not the mean of
    # the per-batch rates (1, 1, 0) / 3 = 0.67, nor the original's mean of running averages.
    targets = th.arange(10, dtype=th.float32)[:, None] * 10
    predictions = targets.clone()
    predictions[[8, 9]] = targets[[9, 8]]
    assert hits_at(batched_ranks(predictions, targets, batch_size=4), 1) == pytest.approx(0.8)


def test_in_episode_ranks_match_brute_force() -> None:
    generator = th.Generator().manual_seed(3)
    counts = np.array([11, 11, 6, 11])
    observations = th.randn(int(counts.sum()), 4, generator=generator)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    correct = observations[starts + 2]
    predictions = correct + 0.8 * th.randn(4, 4, generator=generator)
    labels = np.arange(counts.sum()) % 3
    expected, expected_dedup = [], []
    for episode, (start, count) in enumerate(zip(starts, counts, strict=True)):
        candidates = observations[start : start + count].numpy()
        query = np.repeat(predictions[episode : episode + 1].numpy(), count, axis=0)
        # brute force: rank of candidate 2 for this one prediction
        distances = ((candidates - query) ** 2).sum(axis=1)
        closer = distances < distances[2]
        expected.append(1 + int(closer.sum()))
        own = labels[start : start + count]
        expected_dedup.append(1 + int((closer & (own != own[2])).sum()))
    assert in_episode_ranks(predictions, observations, counts, 2).tolist() == expected
    ids = th.from_numpy(labels[:, None])
    assert in_episode_ranks(predictions, observations, counts, 2, ids).tolist() == expected_dedup
    with pytest.raises(ValueError, match="more than 6"):
        in_episode_ranks(predictions, observations, counts, 6)


# ----------------------------------------------------------------------------------- store evaluation


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cswm") / "eval.h5"
    collect(CollectionConfig("ShapesImmovableEval-v0", num_episodes=30, seed=2, save_state_ids=True), path)
    return path


def test_store_evaluation_equals_rankings_of_the_encoded_episodes(
    eval_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    th.manual_seed(0)
    model = ContrastiveSWM(CSWMConfig(hidden_dim=32)).eval()
    modes = ("all", "batched", "in-episode")

    def run() -> list[RankingResult]:
        return evaluate(model, eval_store, steps=(1, 3), modes=modes, dedup=True, batch_size=8, hits=(1, 5))

    at_once = run()
    monkeypatch.setattr(evaluation, "READ_BLOCK_EPISODES", 7)
    monkeypatch.setattr(evaluation, "FORWARD_BATCH", 5)
    assert run() == at_once
    with EpisodeReader(eval_store) as reader:
        episodes = list(reader)
    frames = np.stack([episode.frames for episode in episodes])
    ids = np.stack([episode.observations["state_ids"] for episode in episodes])
    actions = th.from_numpy(np.stack([episode.actions for episode in episodes]))
    with th.no_grad():
        z = encode_frames(model, frames.reshape(-1, 3, 50, 50)).view(30, 11, 5, 2)
        predicted = model.predict(z[:, 0], actions[:, :3])
    labels = np.unique(ids[:, 3], axis=0, return_inverse=True)[1].reshape(-1)
    expected = brute_force_ranks(predicted.flatten(1).numpy(), z[:, 3].flatten(1).numpy(), labels)
    result = next(r for r in at_once if r.mode == "all" and r.steps == 3)
    assert result.episodes == 30
    assert result.hits[1] == pytest.approx(np.mean(expected == 1))
    assert result.hits[5] == pytest.approx(np.mean(expected <= 5))
    assert result.mrr == pytest.approx(np.mean(1 / expected))
    assert [(r.mode, r.steps) for r in at_once] == [(mode, k) for mode in modes for k in (1, 3)]


def test_dedup_needs_state_ids_and_long_enough_episodes(tmp_path: Path, eval_store: Path) -> None:
    path = tmp_path / "no_ids.h5"
    collect(CollectionConfig("ShapesImmovableEval-v0", num_episodes=3, seed=2), path)
    model = ContrastiveSWM(CSWMConfig(hidden_dim=32))
    with pytest.raises(WorldModelError, match="--save-state-ids"):
        evaluate(model, path, dedup=True)
    with pytest.raises(WorldModelError, match="fewer than the 11"):
        evaluate(model, eval_store, steps=(11,))
    with pytest.raises(WorldModelError, match="structrl collect"):
        evaluate(model, tmp_path / "missing.h5")
    with pytest.raises(WorldModelError, match="unknown evaluation mode"):
        evaluate(model, eval_store, modes=("local",))
