"""
The imitation baselines of Spilsbury & Ilin (2022) as Stable-Baselines3 features extractors on the
``Dict(image, direction, mission)`` observation of BabyAI GoToLocal: the FiLM/GRU model (BabyAI's model
without memory) and the Transformer encoder-decoder. Both read any grid size, so a policy trained on 8 x 8
runs on larger rooms; :func:`language_policy_kwargs` gives the policy settings of every language model.
"""

from __future__ import annotations

import math
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from structrl.policies.factored_attention import (
    PAD_ID,
    FactoredAttentionExtractor,
    GridLanguageSpace,
    SimpleAttentionExtractor,
)

#: Rows of the FiLM model's value table per input channel (every grid code and direction is below 16).
VALUES_PER_CHANNEL = 16
#: Rows of the Transformer's shared value table per image channel.
TRANSFORMER_VALUES_PER_CHANNEL = 32


def init_normalized_rows(module: nn.Module) -> None:
    """
    BabyAI's initialisation of every ``nn.Linear`` in a module: Gaussian weights with each row scaled to unit
    norm, zero biases.

    :param module: the module
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight)
            with th.no_grad():
                layer.weight /= layer.weight.norm(dim=1, keepdim=True)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class FiLMBlock(nn.Module):
    """
    A residual FiLM block: 3x3 conv, BN, ReLU, 3x3 conv, then ``x * gamma(instr) + beta(instr)``, BN, ReLU.

    :param channels: Channels of the feature map.
    :param instruction_dim: Width of the instruction encoding.
    """

    def __init__(self, channels: int, instruction_dim: int) -> None:
        super().__init__()
        self.first = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.second = nn.Conv2d(channels, channels, 3, padding=1)
        self.gamma = nn.Linear(instruction_dim, channels)
        self.beta = nn.Linear(instruction_dim, channels)
        self.output = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())

    def forward(self, features: th.Tensor, instruction: th.Tensor) -> th.Tensor:
        """
        :param features: ``(B, channels, H, W)``
        :param instruction: ``(B, instruction_dim)``
        :return: ``features`` plus the block's output
        """
        modulated = self.second(self.first(features))
        modulated = (
            modulated * self.gamma(instruction)[:, :, None, None] + self.beta(instruction)[:, :, None, None]
        )
        return features + self.output(modulated)


class FiLMGRUExtractor(BaseFeaturesExtractor):
    """
    The FiLM/GRU baseline (the reference's ``film_lstm_policy``, which is a GRU; about 1.5 M parameters):

    * every value of the 3 grid channels and of the direction (as a 4th, constant channel) is embedded
      (128-d, one 16-row table per channel) and the 4 embeddings are concatenated (512 channels);
    * trunk: 3x3 conv 512 -> 128, BN, ReLU, 3x3 conv 128 -> 128, BN, ReLU;
    * instruction: word embedding (128) -> bidirectional GRU (64 per direction) over the real words, the
      two final states concatenated (128);
    * two residual :class:`FiLMBlock`;
    * global max pooling and ReLU: 128 features. The reference pooled with a 7x7 window of stride 2, which
      on 8 x 8 leaves out the last row and column (walls) and on larger grids is no longer global.

    The reference's actor and critic heads (128 -> 64, tanh) are SB3's ``net_arch={"pi": [64], "vf": [64]}``
    with tanh. Use ``normalize_images=False``.

    :param observation_space: ``Dict(image, direction, mission)``.
    :param channels: Channels of the trunk, the FiLM blocks and the features.
    :param value_dim: Width of each channel's value embedding.
    :param word_dim: Width of the word embeddings.
    """

    offsets: th.Tensor

    def __init__(
        self,
        observation_space: spaces.Space,
        channels: int = 128,
        value_dim: int = 128,
        word_dim: int = 128,
    ) -> None:
        super().__init__(observation_space, channels)
        self.inputs = GridLanguageSpace.from_space(observation_space)
        self.register_buffer("offsets", th.arange(4) * VALUES_PER_CHANNEL, persistent=False)
        self.values = nn.Embedding(4 * VALUES_PER_CHANNEL, value_dim)
        self.trunk = nn.Sequential(
            nn.Conv2d(4 * value_dim, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.words = nn.Embedding(self.inputs.vocab_size, word_dim)
        self.instruction_rnn = nn.GRU(word_dim, channels // 2, batch_first=True, bidirectional=True)
        self.film = nn.ModuleList([FiLMBlock(channels, channels) for _ in range(2)])
        init_normalized_rows(self)

    def encode_instruction(self, mission: th.Tensor) -> th.Tensor:
        """
        :param mission: ``(B, L)`` word ids (right-padded with 0)
        :return: the final forward and backward GRU states over the real words, concatenated
        """
        lengths = (mission != PAD_ID).sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            self.words(mission), lengths, batch_first=True, enforce_sorted=False
        )
        _, final = self.instruction_rnn(packed)
        return th.cat([final[0], final[1]], dim=1)

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        image, direction, mission = self.inputs.split(observations)
        heading = direction[:, None, None, None].expand(-1, image.shape[1], image.shape[2], 1)
        values = self.values(th.cat([image, heading], dim=-1) + self.offsets)
        features = self.trunk(values.flatten(-2).permute(0, 3, 1, 2))
        instruction = self.encode_instruction(mission)
        for block in self.film:
            features = block(features, instruction)
        return th.relu(features.amax(dim=(2, 3)))


def sinusoidal_encoding(positions: th.Tensor, dim: int) -> th.Tensor:
    """
    :param positions: ``(N,)`` positions
    :param dim: even encoding width
    :return: ``(N, dim)``: sines then cosines of the positions at ``dim / 2`` geometric frequencies
    """
    frequencies = th.exp(th.arange(0, dim, 2, dtype=th.float32) * (-math.log(10000.0) / dim))
    angles = positions.float()[:, None] * frequencies.to(positions.device)[None]
    return th.cat([angles.sin(), angles.cos()], dim=1)


def grid_encoding(height: int, width: int, dim: int, device: th.device) -> th.Tensor:
    """
    :param height: grid height
    :param width: grid width
    :param dim: encoding width, a multiple of 4
    :param device: the tensor's device
    :return: ``(height * width, dim)``: the row's sinusoidal encoding (first half) and the column's (second),
        cells in row-major order
    """
    rows = sinusoidal_encoding(th.arange(height, device=device), dim // 2)
    columns = sinusoidal_encoding(th.arange(width, device=device), dim // 2)
    return th.cat(
        [rows[:, None].expand(-1, width, -1), columns[None].expand(height, -1, -1)], dim=-1
    ).reshape(height * width, dim)


class TransformerEncoderDecoderExtractor(BaseFeaturesExtractor):
    """
    The Transformer encoder-decoder baseline (the reference's ``sentence_encoder_image_decoder``, logged as
    ``pure_transformer``; about 0.6 M parameters with its heads):

    * sentence: word embedding (96) plus a 1-D sinusoidal encoding, through 1 encoder layer;
    * image: the 3 channel values of a cell embedded by one shared table (32-d, offset 32 per channel) and
      concatenated (96), plus a 2-D sinusoidal encoding; a learned CLS token is appended to the cells;
    * 4 decoder layers over the cells and the CLS token, attending to the encoded words (d_model 96,
      4 heads, feed-forward 192, no dropout, post-norm, no final norms, no masks except the padding words);
    * the CLS output concatenated with the projected direction embedding (32 -> 96), then Linear 192 -> 96:
      96 features.

    The reference's actor head (96 -> 384 -> 7 with ReLU) is SB3's ``net_arch={"pi": [384], "vf": [384]}``
    with ``activation_fn=nn.ReLU``. Use ``normalize_images=False``.

    :param observation_space: ``Dict(image, direction, mission)``.
    :param d_model: Width of the tokens (a multiple of 12: 3 channels, and 4 for the 2-D encoding).
    :param heads: Attention heads.
    :param feedforward_dim: Width of the feed-forward layers.
    :param encoder_layers: Layers over the words.
    :param decoder_layers: Layers over the cells.
    :param direction_dim: Width of the direction embedding.
    """

    offsets: th.Tensor

    def __init__(
        self,
        observation_space: spaces.Space,
        d_model: int = 96,
        heads: int = 4,
        feedforward_dim: int = 192,
        encoder_layers: int = 1,
        decoder_layers: int = 4,
        direction_dim: int = 32,
    ) -> None:
        super().__init__(observation_space, d_model)
        self.inputs = GridLanguageSpace.from_space(observation_space)
        self.d_model = d_model
        self.words = nn.Embedding(self.inputs.vocab_size, d_model)
        self.register_buffer("offsets", th.arange(3) * TRANSFORMER_VALUES_PER_CHANNEL, persistent=False)
        self.values = nn.Embedding(3 * TRANSFORMER_VALUES_PER_CHANNEL, d_model // 3)
        self.cls_token = nn.Parameter(th.randn(d_model) / math.sqrt(d_model))
        self.direction = nn.Embedding(4, direction_dim)
        self.direction_projection = nn.Linear(direction_dim, d_model)
        self.fuse = nn.Linear(2 * d_model, d_model)
        layer_kwargs: dict[str, Any] = {
            "d_model": d_model,
            "nhead": heads,
            "dim_feedforward": feedforward_dim,
            "dropout": 0.0,
            "batch_first": True,
        }
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer_kwargs), encoder_layers, enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_kwargs), decoder_layers)

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        image, direction, mission = self.inputs.split(observations)
        batch, height, width = image.shape[:3]
        padding = mission == PAD_ID
        padding[:, 0] &= ~padding.all(dim=1)  # an all-padding mission keeps one token to attend to
        positions = sinusoidal_encoding(th.arange(mission.shape[1], device=mission.device), self.d_model)
        memory = self.encoder(self.words(mission) + positions, src_key_padding_mask=padding)
        cells = self.values(image + self.offsets).flatten(-2).reshape(batch, height * width, self.d_model)
        cells = cells + grid_encoding(height, width, self.d_model, image.device)
        tokens = th.cat([cells, self.cls_token.expand(batch, 1, -1)], dim=1)
        cls = self.decoder(tokens, memory, memory_key_padding_mask=padding)[:, -1]
        heading = self.direction_projection(self.direction(direction))
        return self.fuse(th.cat([cls, heading], dim=1))


#: The policy settings of each language model (SB3 ``policy_kwargs``), by name.
_LANGUAGE_POLICIES: dict[str, dict[str, Any]] = {
    "factored_attention": {"features_extractor_class": FactoredAttentionExtractor, "net_arch": []},
    "simple_attention": {"features_extractor_class": SimpleAttentionExtractor, "net_arch": []},
    "film_gru": {"features_extractor_class": FiLMGRUExtractor, "net_arch": {"pi": [64], "vf": [64]}},
    "transformer": {
        "features_extractor_class": TransformerEncoderDecoderExtractor,
        "net_arch": {"pi": [384], "vf": [384]},
        "activation_fn": nn.ReLU,
    },
}
#: Names of the language models.
LANGUAGE_MODELS = tuple(_LANGUAGE_POLICIES)


def language_policy_kwargs(model: str, **overrides: Any) -> dict[str, Any]:
    """
    The ``policy_kwargs`` of a ``MultiInputPolicy`` (or ``ActorCriticPolicy``) with one of the language
    models and the reference's heads, with ``normalize_images=False``.

    :param model: ``"factored_attention"``, ``"simple_attention"``, ``"film_gru"`` or ``"transformer"``
    :param overrides: Settings replacing the defaults (e.g. ``features_extractor_kwargs``).
    :return: the policy keyword arguments
    :raises ValueError: for an unknown model
    """
    if model not in _LANGUAGE_POLICIES:
        raise ValueError(f"unknown language model {model!r}: use one of {', '.join(LANGUAGE_MODELS)}")
    return {**_LANGUAGE_POLICIES[model], "normalize_images": False, **overrides}
