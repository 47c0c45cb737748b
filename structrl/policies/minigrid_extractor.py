"""Features extractor for MiniGrid's symbolic egocentric view (and an optional tokenised mission)."""

from __future__ import annotations

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


def _image_layout(shape: tuple[int, ...]) -> tuple[bool, int, int]:
    """Return (channels_first, height, width) of a 3-channel MiniGrid image shape, (3,H,W) or (H,W,3)."""
    assert len(shape) == 3 and 3 in (shape[0], shape[-1]), (
        f"MiniGridCNN expects a (H, W, 3) or (3, H, W) symbolic image, got shape {shape}; "
        "wrap the env with minigrid.wrappers.ImgObsWrapper or structrl.envs.make_minigrid_env"
    )
    if shape[0] == 3 and shape[-1] != 3:
        return True, shape[1], shape[2]
    if shape[-1] == 3 and shape[0] != 3:
        return False, shape[0], shape[1]
    # A 3x3x3 view is ambiguous; SB3's VecTransposeImage hands over channels-first.
    return True, shape[1], shape[2]


class MiniGridCNN(BaseFeaturesExtractor):
    """
    The RIM seed's small CNN over MiniGrid's 7x7x3 symbolic view, with an optional mission encoder.

    Conv(3->16, 2x2) -> ReLU -> MaxPool(2x2) -> Conv(16->32, 2x2) -> ReLU -> Conv(32->64, 2x2) -> ReLU,
    which gives 64 features for a 7x7 view. The object, colour and state codes are fed as unscaled floats,
    so the policy must use ``normalize_images=False`` (SB3's /255 would squash them to nearly zero);
    structrl's MiniGrid policies default to that. Accepts channels-last (H, W, 3) and channels-first
    (3, H, W) images. With a ``Dict`` observation holding ``image`` and ``mission`` (word ids from
    :class:`structrl.envs.MissionTokenWrapper`), the mission is embedded, run through a GRU and the GRU
    state after the last real word is concatenated to the image features.

    :param observation_space: A ``Box`` image space, or a ``Dict`` with ``image`` and optionally ``mission``.
    :param word_embedding_dim: Size of the word embeddings (mission only).
    :param mission_hidden_size: Size of the GRU state that encodes the mission (mission only).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        word_embedding_dim: int = 32,
        mission_hidden_size: int = 128,
    ) -> None:
        image_space = (
            observation_space["image"] if isinstance(observation_space, spaces.Dict) else observation_space
        )
        assert isinstance(image_space, spaces.Box), f"MiniGridCNN needs a Box image space, got {image_space}"
        channels_first, height, width = _image_layout(image_space.shape)
        assert height >= 4 and width >= 4, (
            f"MiniGridCNN needs a view of at least 4x4 cells, got {height}x{width}"
        )
        image_features = ((height - 1) // 2 - 2) * ((width - 1) // 2 - 2) * 64
        mission_space = (
            observation_space.spaces.get("mission") if isinstance(observation_space, spaces.Dict) else None
        )
        features_dim = image_features + (mission_hidden_size if mission_space is not None else 0)
        super().__init__(observation_space, features_dim)
        self.channels_first = channels_first
        self.image_conv = nn.Sequential(
            nn.Conv2d(3, 16, (2, 2)),
            nn.ReLU(),
            nn.MaxPool2d((2, 2)),
            nn.Conv2d(16, 32, (2, 2)),
            nn.ReLU(),
            nn.Conv2d(32, 64, (2, 2)),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.word_embedding: nn.Embedding | None = None
        self.mission_rnn: nn.GRU | None = None
        if mission_space is not None:
            assert isinstance(mission_space, spaces.Box) and len(mission_space.shape) == 1, (
                f"the 'mission' entry must be a 1-D Box of word ids, got {mission_space}; "
                "use structrl.envs.MissionTokenWrapper"
            )
            vocab_size = int(mission_space.high.max()) + 1
            self.word_embedding = nn.Embedding(vocab_size, word_embedding_dim, padding_idx=0)
            self.mission_rnn = nn.GRU(word_embedding_dim, mission_hidden_size, batch_first=True)

    def forward(self, observations: th.Tensor | dict[str, th.Tensor]) -> th.Tensor:
        image = observations["image"] if isinstance(observations, dict) else observations
        if not self.channels_first:
            image = image.permute(0, 3, 1, 2)
        features = self.image_conv(image.float())
        if self.word_embedding is None or self.mission_rnn is None:
            return features
        assert isinstance(observations, dict)
        words = observations["mission"].long()
        outputs, _ = self.mission_rnn(self.word_embedding(words))
        last_word = (words > 0).sum(dim=1).clamp(min=1) - 1
        mission = outputs[th.arange(words.shape[0], device=words.device), last_word]
        return th.cat([features, mission], dim=1)
