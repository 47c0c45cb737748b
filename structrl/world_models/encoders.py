"""
The C-SWM object encoder: a CNN object extractor turning an image into ``K`` object maps, followed by an MLP
shared by the objects that turns each map into a ``D``-dimensional object embedding (Kipf et al., 2020).
"""

from __future__ import annotations

import torch as th
from torch import nn

from structrl.world_models.errors import WorldModelError

#: Names of the object extractors, from the cheapest to the most detailed.
ENCODERS = ("small", "medium", "large")


def _init_conv(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for the convolutions (the other layers keep torch defaults)."""
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def object_extractor(
    name: str, in_channels: int, num_objects: int, hidden_dim: int = 512
) -> tuple[nn.Sequential, int]:
    """
    Build an object extractor CNN, ``(B, C, H, W)`` images in [0, 1] to ``(B, K, h, w)`` object maps in
    (0, 1):

    * ``small``: conv 10x10 stride 10, so one map cell per 10 x 10 pixel block (5 x 5 maps for 50 x 50
      images);
    * ``medium``: conv 9x9, then conv 5x5 stride 5 (10 x 10 maps);
    * ``large``: four 3x3 convs at full resolution (50 x 50 maps).

    Every hidden convolution has ``hidden_dim // 16`` channels and is followed by batch normalisation.

    :param name: ``"small"``, ``"medium"`` or ``"large"``
    :param in_channels: channels of the images
    :param num_objects: object maps ``K``
    :param hidden_dim: hidden size of the world model (the CNN uses ``hidden_dim // 16`` channels)
    :return: the CNN and the downsampling factor of its maps (10, 5 or 1)
    """
    channels = hidden_dim // 16
    if name == "small":
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=10, stride=10),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_objects, kernel_size=1),
        ]
        stride = 10
    elif name == "medium":
        layers = [
            nn.Conv2d(in_channels, channels, kernel_size=9, padding=4),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.01),
            nn.Conv2d(channels, num_objects, kernel_size=5, stride=5),
        ]
        stride = 5
    elif name == "large":
        layers = []
        for inputs in (in_channels, channels, channels):
            layers += [
                nn.Conv2d(inputs, channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
        layers.append(nn.Conv2d(channels, num_objects, kernel_size=3, padding=1))
        stride = 1
    else:
        raise WorldModelError(f"unknown encoder {name!r}: use one of {', '.join(ENCODERS)}")
    cnn = nn.Sequential(*layers, nn.Sigmoid())
    cnn.apply(_init_conv)
    return cnn, stride


class ObjectMLP(nn.Module):
    """
    The MLP shared by all object slots: a flattened object map to an object embedding,
    ``Linear -> ReLU -> Linear -> LayerNorm -> ReLU -> Linear``.

    :param map_size: values per object map (``h * w``)
    :param hidden_dim: hidden units
    :param embedding_dim: size ``D`` of an object embedding
    """

    def __init__(self, map_size: int, hidden_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(map_size, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, embedding_dim),
        )

    def forward(self, maps: th.Tensor) -> th.Tensor:
        """
        :param maps: (B, K, h, w) object maps
        :return: (B, K, D) object embeddings
        """
        return self.net(maps.flatten(2))


class ObjectEncoder(nn.Module):
    """
    Images to object embeddings: an :func:`object_extractor` CNN and an :class:`ObjectMLP`.

    :param encoder: ``"small"``, ``"medium"`` or ``"large"``
    :param observation_shape: (C, H, W) of the images
    :param num_objects: object slots ``K``
    :param embedding_dim: size ``D`` of an object embedding
    :param hidden_dim: hidden size
    """

    def __init__(
        self,
        encoder: str,
        observation_shape: tuple[int, int, int],
        num_objects: int,
        embedding_dim: int,
        hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        channels, height, width = observation_shape
        self.extractor, stride = object_extractor(encoder, channels, num_objects, hidden_dim)
        self.mlp = ObjectMLP((height // stride) * (width // stride), hidden_dim, embedding_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """
        :param observations: (B, C, H, W) images, uint8 in [0, 255] or float in [0, 1]
        :return: (B, K, D) object embeddings
        """
        if observations.dtype == th.uint8:
            observations = observations.float().div_(255.0)
        return self.mlp(self.extractor(observations))
