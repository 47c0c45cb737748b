"""
The masking module of the goal discriminator (``ImageComponentsToMask``; Spilsbury & Ilin, 2022): a spatial
softmax over the cells of a symbolic grid that learns where the "goal" cell of a frame is (in a rewarding
frame of GoToLocal, the cell the agent faces).

It has its own attribute table (one row per value of each factor: 11 object types + 6 colours, default
``nn.Embedding`` initialisation), separate from the interaction model's. Each cell's factor embeddings are
concatenated with a direction embedding broadcast to every cell (the reference's table is ``4 x 2E`` and only
its first ``E`` columns are read; that is kept so that the parameter count matches) and go through:

* a 3x3 convolution (``(C + 1) E -> (C + 1) E``, padding 1) and a ReLU;
* residual blocks (``layer_mults = (2, 1)``: ``144 -> 288 -> 144`` with the paper's sizes), each
  ``ReLU([1x1 conv, BN, ReLU, 1x1 conv, BN](x) + [1x1 conv, BN](x))``, convolutions without bias;
* a per-cell ``Linear((C + 1) E -> 1)``;
* a spatial softmax over the cells of ``exp(tau) * ReLU(z) + b`` (``tau = b = 0`` at the start).

With the paper's sizes (E = 48, two factors) it has 460 275 parameters. The grid size is free.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch as th
from torch import nn

from structrl.policies.factored_attention import EMBEDDING_DIM, FACTOR_SIZES

#: Channel multipliers of the residual blocks of the paper's masking module.
LAYER_MULTS = (2, 1)
#: Directions of a MiniGrid agent.
N_DIRECTIONS = 4


class ResidualBlock(nn.Module):
    """
    ``ReLU(main(x) + shortcut(x))`` with ``main = 1x1 conv, BN, ReLU, 1x1 conv, BN`` and
    ``shortcut = 1x1 conv, BN``; the convolutions have no bias.

    :param in_channels: Input channels.
    :param out_channels: Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: th.Tensor) -> th.Tensor:
        """
        :param x: ``(B, in_channels, H, W)``
        :return: ``(B, out_channels, H, W)``
        """
        return th.relu(self.main(x) + self.shortcut(x))


class SpatialSoftmax(nn.Module):
    """
    Softmax over the cells of ``exp(tau) * ReLU(z) + b``, with learnt scalars ``tau`` and ``b`` (0 at the
    start). ``b`` cancels in the softmax; it is kept for parity with the reference.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(th.zeros(()))
        self.bias = nn.Parameter(th.zeros(()))

    def forward(self, scores: th.Tensor) -> th.Tensor:
        """
        :param scores: cell scores ``(B, H, W)``
        :return: the mask ``(B, H, W)``, non-negative and summing to 1 over the cells of each grid
        """
        logits = self.log_temperature.exp() * th.relu(scores) + self.bias
        return th.softmax(logits.flatten(1), dim=1).view_as(scores)


class ImageComponentsToMask(nn.Module):
    """
    The paper's masking module (see the module documentation): a symbolic grid and the agent's direction to
    a distribution over the grid's cells.

    :param embedding_dim: Width ``E`` of the attribute embeddings (and of the direction embedding read).
    :param factor_sizes: Number of values of each factor (object type, colour), in image-channel order.
    :param layer_mults: Channel multipliers of the residual blocks, relative to ``(C + 1) E``.
    """

    offsets: th.Tensor

    def __init__(
        self,
        embedding_dim: int = EMBEDDING_DIM,
        factor_sizes: tuple[int, ...] = FACTOR_SIZES,
        layer_mults: Sequence[int] = LAYER_MULTS,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or not factor_sizes or not layer_mults or min(layer_mults) < 1:
            raise ValueError(
                "the masking module needs a positive embedding width, at least one factor and positive "
                f"layer multipliers, got {embedding_dim}, {factor_sizes} and {tuple(layer_mults)}"
            )
        self.factor_sizes = tuple(factor_sizes)
        self.embedding_dim = embedding_dim
        self.register_buffer("offsets", th.tensor([0, *factor_sizes[:-1]]).cumsum(0), persistent=False)
        self.attributes = nn.Embedding(sum(factor_sizes), embedding_dim)
        self.direction_embedding = nn.Embedding(N_DIRECTIONS, 2 * embedding_dim)
        channels = embedding_dim * (len(factor_sizes) + 1)
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        widths = [channels, *(channels * mult for mult in layer_mults)]
        self.blocks = nn.Sequential(*(ResidualBlock(a, b) for a, b in itertools.pairwise(widths)))
        self.to_score = nn.Linear(widths[-1], 1)
        self.softmax = SpatialSoftmax()

    def scores(self, image: th.Tensor, direction: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= C)`` integer grid (the first C channels are the factors)
        :param direction: ``(B,)`` agent directions (0 east, 1 south, 2 west, 3 north)
        :return: the cell scores before the spatial softmax, ``(B, H, W)``
        """
        batch, height, width = image.shape[:3]
        values = image[..., : len(self.factor_sizes)].long() + self.offsets
        cells = self.attributes(values).flatten(3)  # (B, H, W, C * E)
        heading = self.direction_embedding(direction.long())[:, : self.embedding_dim]
        heading = heading[:, None, None, :].expand(batch, height, width, -1)
        x = th.cat([heading, cells], dim=-1).permute(0, 3, 1, 2)
        x = self.blocks(self.conv(x))
        return self.to_score(x.permute(0, 2, 3, 1)).squeeze(-1)

    def forward(self, image: th.Tensor, direction: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= C)`` integer grid
        :param direction: ``(B,)`` agent directions
        :return: the mask ``(B, H, W)``, a distribution over the cells of each grid
        """
        return self.softmax(self.scores(image, direction))


def mask_entropy(mask: th.Tensor) -> th.Tensor:
    """
    :param mask: masks ``(B, H, W)`` (distributions over the cells)
    :return: their mean entropy in nats (a scalar)
    """
    flat = mask.flatten(1)
    return -(flat * th.log(flat.clamp_min(1e-12))).sum(dim=1).mean()
