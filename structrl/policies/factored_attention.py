"""
Factored attention between mission words and grid cells (Spilsbury & Ilin, 2022), with its L1 sparsity
penalty, the non-factored "simple attention" variant, and Stable-Baselines3 features extractors built on them.

**Factored embedding.** A cell of the symbolic grid has one value per factor (object type, colour); each
value has a row in one attribute table ``A`` (11 + 6 = 17 rows of width 48) and the factors stay separate.
Words have rows in a word table ``U`` (15 rows). Both are initialised as the first rows of independent
random orthogonal matrices.

**Factored attention.** With ``a[p, c, l] = ReLU(cos(A[cell p, factor c], U[word l]))`` the score of cell
``p`` multiplies the factors and sums the words: ``s_p = exp(sum_c log(sum_l a[p, c, l] + 1e-4))``, and the
cell's goal logit is ``exp(alpha) * s_p + beta``. A cell therefore scores high only if every one of its
factors is named by some word.

**Sparsity.** The penalty is the mean ``|cos(A_i, U_j)|`` over all attribute rows and words; added to the
loss with a weight that ramps up (:class:`SparsitySchedule`), it pushes each word to align with few
attributes, which is what lets the model generalise to unseen colour-type combinations.

The extractors feed the goal map ``sigmoid(logits)``, the cells' factor embeddings and a direction embedding
to the paper's convolutional Q-head (the "Factored/CNN policy": 3x3 conv to 584 channels, ReLU, 1x1 conv to
292, ReLU, global average pooling); SB3's action head on the 292 features (``net_arch=[]``) is then the
paper's last 1x1 convolution. Value iteration (MVProp) is not part of these extractors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch as th
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from torch.nn import functional as F

#: Number of values of the two factors the attention models use: object type, colour.
FACTOR_SIZES = (len(OBJECT_TO_IDX), len(COLOR_TO_IDX))
#: Word id of padding (``MissionTokenWrapper``'s ``<pad>``).
PAD_ID = 0
#: Embedding width of the paper's attention models.
EMBEDDING_DIM = 48
#: Channels of the paper's convolutional Q-head.
HEAD_CHANNELS = (584, 292)
#: Added to each factor's word sum before the log (the reference writes it as ``10e-5``).
SCORE_EPS = 1e-4


class ObservationSpaceError(ValueError):
    """An observation space the language-conditioned extractors cannot read."""


@dataclass(frozen=True)
class GridLanguageSpace:
    """
    How to read a ``Dict(image, direction, mission)`` observation: the symbolic grid (``(H, W, 3)``, or
    ``(3, H, W)`` after SB3's ``VecTransposeImage``), the direction (an integer index, or a float one-hot
    vector as SB3 hands a ``Discrete(4)`` over) and the mission's word ids.

    :param channels_first: The image is ``(3, H, W)``.
    :param vocab_size: Number of word ids (the mission space's upper bound + 1).
    """

    channels_first: bool
    vocab_size: int

    @classmethod
    def from_space(cls, observation_space: spaces.Space) -> GridLanguageSpace:
        """
        :param observation_space: the environment's observation space
        :return: how to read it
        :raises ObservationSpaceError: unless it is a Dict with a 3-channel image, a direction and a 1-D
            integer mission
        """
        keys = ("image", "direction", "mission")
        if not isinstance(observation_space, spaces.Dict) or any(
            k not in observation_space.spaces for k in keys
        ):
            raise ObservationSpaceError(
                "language-conditioned extractors need Dict(image, direction, mission), got "
                f"{observation_space}: use structrl.envs.babyai.make_goto_local_env or structrl/GoToLocal*"
            )
        image, mission = observation_space["image"], observation_space["mission"]
        shape = image.shape or ()
        if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
            raise ObservationSpaceError(f"the image must be (H, W, 3) or (3, H, W), got shape {shape}")
        if not isinstance(mission, spaces.Box) or len(mission.shape) != 1:
            raise ObservationSpaceError(
                f"the mission must be a 1-D Box of word ids, got {mission}: use MissionTokenWrapper"
            )
        return cls(channels_first=shape[-1] != 3, vocab_size=int(mission.high.max()) + 1)

    def split(self, observations: dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        :param observations: a batch of (SB3-preprocessed or raw) observations
        :return: the grid ``(B, H, W, 3)``, the direction ``(B,)`` and the mission ``(B, L)``, as int64
        """
        image = observations["image"]
        if self.channels_first:
            image = image.permute(0, 2, 3, 1)
        mission = observations["mission"].long()
        direction = observations["direction"]
        if direction.is_floating_point():  # SB3's one-hot encoding of the Discrete(4) space
            direction = direction.reshape(mission.shape[0], -1).argmax(dim=1)
        return image.long(), direction.reshape(-1).long(), mission


def orthogonal_rows(rows: int, dim: int) -> th.Tensor:
    """
    :param rows: number of rows
    :param dim: row width
    :return: the first ``rows`` rows of a random ``max(rows, dim) x dim`` orthogonal matrix
    """
    weight = th.empty(max(rows, dim), dim)
    nn.init.orthogonal_(weight)
    return weight[:rows].clone()


def _cosine(first: th.Tensor, second: th.Tensor) -> th.Tensor:
    """Cosine similarities of the last axes: ``(..., N, E) x (..., M, E) -> (..., N, M)``."""
    return F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).transpose(-1, -2)


class _WordCellAttention(nn.Module):
    """The attribute and word tables, the goal-logit affine and the sparsity interface of both models."""

    offsets: th.Tensor

    def __init__(self, vocab_size: int, embedding_dim: int, factor_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.factor_sizes = factor_sizes
        self.register_buffer("offsets", th.tensor([0, *factor_sizes[:-1]]).cumsum(0), persistent=False)
        self.attributes = nn.Parameter(orthogonal_rows(sum(factor_sizes), embedding_dim))
        self.words = nn.Parameter(orthogonal_rows(vocab_size, embedding_dim))
        #: log of the goal logits' scale (alpha) and their bias (beta), both 0 at the start.
        self.log_scale = nn.Parameter(th.zeros(()))
        self.bias = nn.Parameter(th.zeros(()))

    def embed_cells(self, image: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= C)`` integer grid (the first C channels are the factors)
        :return: the factor embeddings ``(B, C, H, W, E)``
        """
        values = image[..., : len(self.factor_sizes)] + self.offsets
        return self.attributes[values].permute(0, 3, 1, 2, 4)

    def word_attention(self, cells: th.Tensor, mission: th.Tensor) -> th.Tensor:
        """
        :param cells: ``(B, K, N, E)`` vectors (K factors or 1, N cells)
        :param mission: ``(B, L)`` word ids
        :return: ``ReLU(cos)`` of every vector with every word, ``(B, K, N, L)``, zero for padding words
        """
        attention = F.relu(_cosine(cells, self.words[mission].unsqueeze(1)))
        return attention * (mission != PAD_ID)[:, None, None, :]

    def logits(self, scores: th.Tensor) -> th.Tensor:
        """
        :param scores: cell scores
        :return: the goal logits ``exp(alpha) * scores + beta``
        """
        return self.log_scale.exp() * scores + self.bias

    def similarity_matrix(self) -> th.Tensor:
        """
        :return: cosine similarity of every word (rows) with every attribute (columns), for plotting
        """
        return _cosine(self.words, self.attributes)

    def sparsity_penalty(self) -> th.Tensor:
        """
        :return: the L1 penalty, the mean absolute :meth:`similarity_matrix` (a scalar with gradient)
        """
        return self.similarity_matrix().abs().mean()


class FactoredAttention(_WordCellAttention):
    """
    The paper's factored attention (``IndependentAttentionModel``): per-factor word attention, multiplied
    over the factors (see the module documentation). 1 538 parameters with the paper's sizes.

    :param vocab_size: Number of word ids (15 for GoToLocal).
    :param embedding_dim: Width of the attribute and word embeddings.
    :param factor_sizes: Number of values of each factor, in image-channel order.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = EMBEDDING_DIM,
        factor_sizes: tuple[int, ...] = FACTOR_SIZES,
    ) -> None:
        super().__init__(vocab_size, embedding_dim, factor_sizes)

    def attention(self, image: th.Tensor, mission: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= C)`` integer grid
        :param mission: ``(B, L)`` word ids
        :return: the per-factor attention ``a``, ``(B, C, H * W, L)``
        """
        cells = self.embed_cells(image).flatten(2, 3)
        return self.word_attention(cells, mission)

    def cell_scores(self, attention: th.Tensor, height: int, width: int) -> th.Tensor:
        """
        :param attention: the per-factor attention, ``(B, C, H * W, L)``
        :param height: grid height
        :param width: grid width
        :return: ``s = exp(sum_c log(sum_l a + 1e-4))``, ``(B, H, W)``
        """
        return (attention.sum(dim=-1) + SCORE_EPS).log().sum(dim=1).exp().unflatten(1, (height, width))

    def forward(self, image: th.Tensor, mission: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= C)`` integer grid
        :param mission: ``(B, L)`` word ids
        :return: the goal logit of every cell, ``(B, H, W)``
        """
        return self.logits(self.cell_scores(self.attention(image, mission), image.shape[1], image.shape[2]))


class SimpleAttention(_WordCellAttention):
    """
    The non-factored ablation (``SimpleAttentionModel``): a cell's factor embeddings are concatenated and
    projected (Linear ``C * E -> E``) to one vector, whose word attentions are summed. Its sparsity penalty
    and similarity matrix cover the projections of all attribute combinations (11 x 6 = 66 for type x
    colour).

    :param vocab_size: Number of word ids.
    :param embedding_dim: Width of the attribute and word embeddings.
    :param factor_sizes: Number of values of each factor, in image-channel order.
    """

    combinations: th.Tensor

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = EMBEDDING_DIM,
        factor_sizes: tuple[int, ...] = FACTOR_SIZES,
    ) -> None:
        super().__init__(vocab_size, embedding_dim, factor_sizes)
        self.projection = nn.Linear(len(factor_sizes) * embedding_dim, embedding_dim)
        combinations = th.cartesian_prod(*(th.arange(size) for size in factor_sizes))
        self.register_buffer("combinations", combinations.reshape(-1, len(factor_sizes)), persistent=False)

    def project(self, factor_embeddings: th.Tensor) -> th.Tensor:
        """
        :param factor_embeddings: ``(..., C, E)``
        :return: the projected cell vectors ``(..., E)``
        """
        return self.projection(factor_embeddings.flatten(-2))

    def attention(self, image: th.Tensor, mission: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= C)`` integer grid
        :param mission: ``(B, L)`` word ids
        :return: the attention of the projected cells, ``(B, 1, H * W, L)``
        """
        cells = self.project(self.embed_cells(image).permute(0, 2, 3, 1, 4)).flatten(1, 2)
        return self.word_attention(cells.unsqueeze(1), mission)

    def forward(self, image: th.Tensor, mission: th.Tensor) -> th.Tensor:
        """
        :param image: ``(B, H, W, >= C)`` integer grid
        :param mission: ``(B, L)`` word ids
        :return: the goal logit of every cell, ``(B, H, W)``
        """
        scores = self.attention(image, mission).sum(dim=-1).squeeze(1)
        return self.logits(scores.unflatten(1, (image.shape[1], image.shape[2])))

    def similarity_matrix(self) -> th.Tensor:
        """
        :return: cosine similarity of every word (rows) with the projection of every attribute combination
            (columns, in ``combinations`` order: type-major for type x colour)
        """
        projected = self.project(self.attributes[self.combinations + self.offsets])
        return _cosine(self.words, projected)


@dataclass(frozen=True)
class SparsitySchedule:
    """
    Weight of the sparsity penalty at a global training step: 0 until ``start``, then a linear ramp over
    ``ramp`` steps to ``max_weight`` (the paper: 0 until step 1000, 1 from step 6000). Unlike the reference,
    which used the batch index within the epoch, it depends on the global step only, so it does not restart
    with each epoch of a finite dataset.

    :param start: Steps with weight 0.
    :param ramp: Steps of the linear ramp.
    :param max_weight: Final weight (0 gives the unregularised ``*_noreg`` models).
    """

    start: int = 1000
    ramp: int = 5000
    max_weight: float = 1.0

    def __call__(self, step: int) -> float:
        """
        :param step: the global training step
        :return: the penalty's weight
        """
        return self.max_weight * min(max(step - self.start, 0) / max(self.ramp, 1), 1.0)


def sparsity_penalty(module: nn.Module) -> th.Tensor | None:
    """
    The summed sparsity penalties of the attention models inside a module (for example an SB3 policy, whose
    actor and critic may have separate extractors).

    :param module: any module
    :return: the penalty, or ``None`` if the module holds no attention model
    """
    penalties = [
        attention.sparsity_penalty()
        for attention in module.modules()
        if isinstance(attention, _WordCellAttention)
    ]
    return th.stack(penalties).sum() if penalties else None


class _GoalMapExtractor(BaseFeaturesExtractor):
    """The paper's convolutional head on the goal map of an attention model (``attention_class``), for SB3."""

    attention_class: type[FactoredAttention] | type[SimpleAttention]

    def __init__(
        self,
        observation_space: spaces.Space,
        embedding_dim: int = EMBEDDING_DIM,
        head_channels: tuple[int, int] = HEAD_CHANNELS,
    ) -> None:
        super().__init__(observation_space, head_channels[1])
        self.inputs = GridLanguageSpace.from_space(observation_space)
        attention = self.attention_class(self.inputs.vocab_size, embedding_dim)
        self.attention = attention
        embedding_dim = attention.attributes.shape[1]
        factors = len(attention.factor_sizes)
        self.direction_embedding = nn.Embedding(4, embedding_dim)
        self.head = nn.Sequential(
            nn.Conv2d(embedding_dim * (factors + 1) + 1, head_channels[0], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_channels[0], head_channels[1], 1),
            nn.ReLU(),
        )

    def goal_logits(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """
        :param observations: a batch of observations
        :return: the attention model's goal logit of every cell, ``(B, H, W)``
        """
        image, _, mission = self.inputs.split(observations)
        return self.attention(image, mission)

    def similarity_matrix(self) -> th.Tensor:
        """
        :return: the attention model's word x attribute cosine similarities
        """
        return self.attention.similarity_matrix()

    def sparsity_penalty(self) -> th.Tensor:
        """
        :return: the attention model's L1 sparsity penalty, to add to the loss (see :class:`SparsitySchedule`)
        """
        return self.attention.sparsity_penalty()

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        image, direction, mission = self.inputs.split(observations)
        batch, height, width = image.shape[:3]
        goal_map = th.sigmoid(self.attention(image, mission)).unsqueeze(1)
        cells = self.attention.embed_cells(image)
        cells = cells.permute(0, 1, 4, 2, 3).reshape(batch, -1, height, width)
        heading = self.direction_embedding(direction)[:, :, None, None].expand(-1, -1, height, width)
        return self.head(th.cat([heading, cells, goal_map], dim=1)).mean(dim=(2, 3))


class FactoredAttentionExtractor(_GoalMapExtractor):
    """
    SB3 features extractor of the factored attention model with the paper's convolutional head (292
    features; use ``net_arch=[]`` to make SB3's action head the paper's last layer, and
    ``normalize_images=False``). Add ``sparsity_penalty()`` times a :class:`SparsitySchedule` weight to the
    training loss; the goal logits (:meth:`goal_logits`) and :meth:`similarity_matrix` are there for analysis.
    The grid size is not fixed: a policy trained on 8 x 8 runs on larger rooms.

    :param observation_space: ``Dict(image, direction, mission)`` (see :class:`GridLanguageSpace`).
    :param embedding_dim: Width of the attribute, word and direction embeddings.
    :param head_channels: Channels of the head's 3x3 and 1x1 convolutions.
    """

    attention_class = FactoredAttention


class SimpleAttentionExtractor(_GoalMapExtractor):
    """
    SB3 features extractor of the non-factored simple attention model with the same head as
    :class:`FactoredAttentionExtractor`.

    :param observation_space: ``Dict(image, direction, mission)`` (see :class:`GridLanguageSpace`).
    :param embedding_dim: Width of the attribute, word and direction embeddings.
    :param head_channels: Channels of the head's 3x3 and 1x1 convolutions.
    """

    attention_class = SimpleAttention
