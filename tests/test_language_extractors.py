"""Factored/simple attention, FiLM/GRU and Transformer extractors on the GoToLocal Dict observation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs

from structrl.envs.babyai import GOTO_LOCAL_VOCABULARY, FullyObservedBot, make_goto_local_env, target_mask
from structrl.policies.factored_attention import (
    SCORE_EPS,
    FactoredAttention,
    FactoredAttentionExtractor,
    ObservationSpaceError,
    SimpleAttention,
    SparsitySchedule,
    sparsity_penalty,
)
from structrl.policies.language_baselines import (
    LANGUAGE_MODELS,
    FiLMGRUExtractor,
    TransformerEncoderDecoderExtractor,
    language_policy_kwargs,
)

FEATURES = {"factored_attention": 292, "simple_attention": 292, "film_gru": 128, "transformer": 96}
# Small heads keep the PPO runs fast; the architecture is otherwise the reference's.
SMALL: dict[str, dict[str, Any]] = {
    "factored_attention": {"head_channels": (16, 8)},
    "simple_attention": {"head_channels": (16, 8)},
    "film_gru": {"channels": 16, "value_dim": 8, "word_dim": 8},
    "transformer": {"d_model": 24, "feedforward_dim": 24, "decoder_layers": 2},
}


def observations(room_size: int = 8, count: int = 3) -> tuple[spaces.Dict, dict[str, th.Tensor]]:
    """A batch of SB3-preprocessed observations of GoToLocal and its space."""
    env = make_goto_local_env(room_size=room_size)
    raw = [env.reset(seed=seed)[0] for seed in range(count)]
    batch = {key: th.as_tensor(np.stack([obs[key] for obs in raw])) for key in raw[0]}
    space = env.observation_space
    assert isinstance(space, spaces.Dict)
    return space, preprocess_obs(batch, space, normalize_images=False)  # type: ignore[return-value]


@pytest.mark.parametrize("model", LANGUAGE_MODELS)
def test_extractor_output_shape_on_any_room_size(model: str) -> None:
    space, batch = observations()
    kwargs = language_policy_kwargs(model)
    extractor = kwargs["features_extractor_class"](space)
    assert extractor.features_dim == FEATURES[model]
    extractor.eval()
    features = extractor(batch)
    assert features.shape == (3, FEATURES[model]) and th.isfinite(features).all()
    assert not th.allclose(features[0], features[1]), "different layouts must give different features"
    _, larger = observations(room_size=12, count=2)
    assert extractor(larger).shape == (2, FEATURES[model])


@pytest.mark.parametrize("model", LANGUAGE_MODELS)
def test_extractor_trains_in_ppo(model: str) -> None:
    env = make_goto_local_env()
    kwargs = language_policy_kwargs(model, features_extractor_kwargs=SMALL[model])
    agent = PPO("MultiInputPolicy", env, n_steps=16, batch_size=8, n_epochs=1, policy_kwargs=kwargs, seed=0)
    before = [parameter.detach().clone() for parameter in agent.policy.features_extractor.parameters()]
    agent.learn(16)
    assert agent.policy.normalize_images is False
    after = list(agent.policy.features_extractor.parameters())
    assert any(not th.equal(old, new) for old, new in zip(before, after, strict=True))
    action, _ = agent.predict(env.reset(seed=0)[0], deterministic=True)
    assert 0 <= int(action) < 7


def test_channels_first_images_give_the_same_features() -> None:
    space, batch = observations()
    first = spaces.Dict({**space.spaces, "image": spaces.Box(0, 10, (3, 8, 8), np.uint8)})
    last_extractor = FactoredAttentionExtractor(space, head_channels=(8, 4))
    first_extractor = FactoredAttentionExtractor(first, head_channels=(8, 4))
    first_extractor.load_state_dict(last_extractor.state_dict())
    transposed = {**batch, "image": batch["image"].permute(0, 3, 1, 2)}
    th.testing.assert_close(last_extractor(batch), first_extractor(transposed))


def test_rejects_observations_without_a_mission() -> None:
    with pytest.raises(ObservationSpaceError, match="Dict\\(image, direction, mission\\)"):
        FiLMGRUExtractor(spaces.Box(0, 10, (8, 8, 3), np.uint8))
    with pytest.raises(ObservationSpaceError, match="1-D Box of word ids"):
        TransformerEncoderDecoderExtractor(
            spaces.Dict(
                {
                    "image": spaces.Box(0, 10, (8, 8, 3), np.uint8),
                    "direction": spaces.Discrete(4),
                    "mission": spaces.Discrete(15),
                }
            )
        )


def test_factored_attention_is_the_product_of_per_factor_attentions() -> None:
    th.manual_seed(0)
    model = FactoredAttention(vocab_size=15)
    with th.no_grad():
        model.log_scale.fill_(0.3)
        model.bias.fill_(-0.2)
    _, batch = observations(count=2)
    image, mission = batch["image"].long(), batch["mission"].long()
    logits = model(image, mission)
    assert logits.shape == (2, 8, 8)
    # Per factor, by hand: ReLU(cos(attribute of the cell's value, word)), summed over words.
    attributes = th.nn.functional.normalize(model.attributes, dim=-1)
    words = th.nn.functional.normalize(model.words, dim=-1)
    per_factor = []
    for factor, offset in enumerate((0, 11)):
        cells = attributes[image[..., factor] + offset]  # (B, H, W, E)
        cosines = th.einsum("bhwe,ble->bhwl", cells, words[mission])
        per_factor.append(th.relu(cosines).sum(dim=-1) + SCORE_EPS)
    exp_sum_log = th.exp(th.log(per_factor[0]) + th.log(per_factor[1]))
    th.testing.assert_close(exp_sum_log, per_factor[0] * per_factor[1])
    th.testing.assert_close(logits, np.exp(0.3) * exp_sum_log - 0.2)
    attention = model.attention(image, mission)
    assert attention.shape == (2, 2, 64, 5)
    th.testing.assert_close(model.cell_scores(attention, 8, 8), exp_sum_log)


def test_aligned_embeddings_find_exactly_the_targets() -> None:
    """With each colour and type word equal to its attribute, only cells matching both factors score ~1."""
    model = FactoredAttention(vocab_size=15)
    identity = th.eye(48)
    with th.no_grad():
        model.attributes.copy_(identity[:17])
        for word, index in GOTO_LOCAL_VOCABULARY.items():
            if word in OBJECT_TO_IDX:
                model.words[index] = identity[OBJECT_TO_IDX[word]]
            elif word in COLOR_TO_IDX:
                model.words[index] = identity[11 + COLOR_TO_IDX[word]]
            else:
                model.words[index] = identity[17 + index]
    env = make_goto_local_env()
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        image = th.as_tensor(obs["image"])[None].long()
        logits = model(image, th.as_tensor(obs["mission"])[None])[0]
        expected = target_mask(env.unwrapped, obs["image"])  # type: ignore[arg-type]
        np.testing.assert_array_equal((logits > 0.5).numpy(), expected)
        assert logits[th.as_tensor(~expected)].max() < 1e-3


def test_padding_words_get_no_attention() -> None:
    model = FactoredAttention(vocab_size=15)
    _, batch = observations(count=1)
    image, mission = batch["image"].long(), batch["mission"].long()
    padded = th.cat([mission, th.zeros(1, 3, dtype=th.long)], dim=1)
    th.testing.assert_close(model(image, padded), model(image, mission))


def test_sparsity_penalty_zero_for_orthogonal_embeddings_positive_otherwise() -> None:
    for model, columns in ((FactoredAttention(15), 17), (SimpleAttention(15), 66)):
        assert model.similarity_matrix().shape == (15, columns)
        penalty = model.sparsity_penalty()
        assert penalty.item() > 0.01
        penalty.backward()
        assert model.words.grad is not None and model.words.grad.abs().sum() > 0
    factored = FactoredAttention(15)
    identity = th.eye(48)
    with th.no_grad():
        factored.attributes.copy_(identity[:17])
        factored.words.copy_(identity[17:32])
    assert factored.sparsity_penalty().item() == pytest.approx(0.0, abs=1e-7)
    with th.no_grad():
        factored.words[3] += factored.attributes[5]
    assert factored.sparsity_penalty().item() == pytest.approx(np.sqrt(0.5) / (15 * 17), rel=1e-5)


def test_sparsity_schedule_and_policy_penalty() -> None:
    schedule = SparsitySchedule()
    assert [schedule(step) for step in (0, 1000, 3500, 6000, 10_000)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert SparsitySchedule(max_weight=0.0)(8000) == 0.0
    env = make_goto_local_env()
    policy = ActorCriticPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        **language_policy_kwargs("factored_attention", share_features_extractor=False),
    )
    penalty = sparsity_penalty(policy)
    assert penalty is not None
    expected = th.zeros(())
    for extractor in (policy.pi_features_extractor, policy.vf_features_extractor):
        assert isinstance(extractor, FactoredAttentionExtractor)
        expected = expected + extractor.sparsity_penalty()
    th.testing.assert_close(penalty, expected)
    film = ActorCriticPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, **language_policy_kwargs("film_gru")
    )
    assert sparsity_penalty(film) is None


def test_behaviour_cloning_step_with_sparsity() -> None:
    """One BC update of an ActorCriticPolicy on bot transitions, with the scheduled sparsity penalty."""
    env = make_goto_local_env()
    raw, actions = [], []
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        bot = FullyObservedBot(env)
        terminated = False
        while not terminated:
            action = bot.replan()
            raw.append(obs)
            actions.append(action)
            obs, _, terminated, _, _ = env.step(action)
    batch = {key: th.as_tensor(np.stack([obs[key] for obs in raw])) for key in raw[0]}
    policy = ActorCriticPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-2,
        **language_policy_kwargs("factored_attention", features_extractor_kwargs={"head_channels": (16, 8)}),
    )
    target = th.as_tensor(actions)
    losses = []
    for step in range(3):
        _, log_prob, _ = policy.evaluate_actions(batch, target)
        penalty = sparsity_penalty(policy)
        assert penalty is not None
        loss = -log_prob.mean() + SparsitySchedule(start=0, ramp=2)(step) * penalty
        policy.optimizer.zero_grad()
        loss.backward()
        policy.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("model", ["film_gru", "transformer"])
def test_baselines_ignore_padding_words(model: str) -> None:
    space, batch = observations(count=2)
    extractor = language_policy_kwargs(model)["features_extractor_class"](space, **SMALL[model]).eval()
    padded = {**batch, "mission": th.cat([batch["mission"], th.zeros(2, 4)], dim=1)}
    th.testing.assert_close(extractor(padded), extractor(batch))


def test_policy_trained_on_8x8_acts_in_a_larger_room() -> None:
    env = make_goto_local_env()
    kwargs = language_policy_kwargs(
        "factored_attention", features_extractor_kwargs=SMALL["factored_attention"]
    )
    agent = PPO("MultiInputPolicy", env, n_steps=16, batch_size=8, n_epochs=1, policy_kwargs=kwargs, seed=0)
    large = make_goto_local_env(room_size=16)
    agent.policy.observation_space = large.observation_space  # SB3 checks shapes against it in predict
    obs, _ = large.reset(seed=0)
    for _ in range(3):
        action, _ = agent.predict(obs, deterministic=True)
        assert 0 <= int(action) < 7
        obs, _, _, _, _ = large.step(int(action))
