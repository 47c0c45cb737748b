"""
The value-propagation planner of "Compositional Generalization in Grounded Language Learning via Induced
Model Sparsity" (Spilsbury & Ilin, 2022): an interaction model (:class:`~structrl.policies.FactoredAttention`
or :class:`~structrl.policies.SimpleAttention`, usually pre-trained by the goal discriminator and frozen) says
which cells are goals; MVProp propagates their value over the grid; a convolutional Q-head reads the values
and the cells and gives one Q-value per action.

**MVProp** (:class:`MVProp2D`). From the cells' concatenated factor embeddings ``phi_p`` (``C * E = 96``
wide) and the goal scores ``q_p = sigmoid(logit_p)``:

* gather (propagation) map ``g_p = sigmoid(w . phi_p + b)``, a ``Linear(96, 1)``;
* reward map ``r = MinMaxNorm(ReLU(q - b_r))`` per grid, ``(x - min) / (max - min + 1e-4)`` with ``min``
  and ``max`` detached, ``b_r`` a scalar starting at 0;
* discount ``gamma = sigmoid(w_gamma)``, ``w_gamma`` starting at 1.0 (``gamma ~ 0.731``);
* fixed flow kernel ``f = sigmoid([[-10, 10, -10], [10, 10, 10], [-10, 10, -10]])`` (~1 on the centre and
  the 4-neighbours, ~4.5e-5 on the diagonals);
* ``v^0 = r`` and ``k`` iterations (default 10) of
  ``v^{t+1}_p = max(v^t_p, g_p * max_{q in 3x3(p)} gamma * f_{q-p} * v^t_q)`` with zero padding, computed
  for all cells at once (``unfold`` of the 3x3 neighbourhoods, then a max over them);
* the value map ``V = ReLU(v^k - r)`` leaves the reward itself out. With ``k = 0`` (the "Factored/CNN
  policy" ablation) ``V = 0``.

It has 99 parameters with the paper's sizes.

**Q-head** (:class:`QHead`, ``BigConvolutionValueMapExtractor``). Per cell: a direction embedding
(``4 x 48``) broadcast to every cell, the factor embeddings, ``V`` and ``r`` (``48 + 96 + 1 + 1 = 146``
channels); 3x3 convolution to 584 channels, ReLU, 1x1 to 292, ReLU, 1x1 to 7, global average pooling. The
agent is seen only through its cell's "agent" embedding. 941 023 parameters with the paper's sizes.

**Acting.** :class:`MVPropPlanner` puts the three together on ``(image, direction, mission)``;
:class:`MVPropPolicy` is a Stable-Baselines3 ``ActorCriticPolicy`` whose features extractor
(:class:`MVPropExtractor`) is the planner and whose action logits are its Q-values, so the greedy action is
``argmax_a Q`` and a planner saved as an SB3 ``PPO`` file is loaded and evaluated like any structrl model
(``structrl evaluate MODEL --demos FILE.h5 --split ood``). Everything is convolutional, so a planner trained
on 8 x 8 rooms runs on the larger ``structrl/GoToLocal-S*`` rooms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from torch.nn import functional as F

from structrl.policies.factored_attention import (
    EMBEDDING_DIM,
    HEAD_CHANNELS,
    FactoredAttention,
    GridLanguageSpace,
    ObservationSpaceError,
    SimpleAttention,
)

#: Logits of the fixed 3x3 flow kernel: neighbours in the 4 directions (and the cell itself) pass value on.
FLOW_LOGITS = ((-10.0, 10.0, -10.0), (10.0, 10.0, 10.0), (-10.0, 10.0, -10.0))
#: Value iterations of the paper's runs.
DEFAULT_K = 10
#: Initial logit of the discount ``gamma = sigmoid(w_gamma)``.
GAMMA_LOGIT_INIT = 1.0
#: Added to ``max - min`` in the min-max normalisation of the reward map.
MINMAX_EPS = 1e-4
#: Actions of a MiniGrid agent.
N_ACTIONS = 7
#: The interaction models a planner can use, by name.
INTERACTION_MODELS: dict[str, type[FactoredAttention] | type[SimpleAttention]] = {
    "factored-attention": FactoredAttention,
    "simple-attention": SimpleAttention,
}

InteractionModel = FactoredAttention | SimpleAttention


def interaction_model_name(model: nn.Module) -> str:
    """
    :param model: an interaction model
    :return: its name in :data:`INTERACTION_MODELS`
    :raises ValueError: if it is not one of them
    """
    for name, cls in INTERACTION_MODELS.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"{type(model).__name__} is not an interaction model: use one of {list(INTERACTION_MODELS)}"
    )


def build_interaction_model(
    name: str, vocab_size: int, embedding_dim: int = EMBEDDING_DIM
) -> InteractionModel:
    """
    :param name: ``"factored-attention"`` or ``"simple-attention"``
    :param vocab_size: number of word ids
    :param embedding_dim: width of the attribute and word embeddings
    :return: a freshly initialised interaction model
    :raises ValueError: for an unknown name
    """
    if name not in INTERACTION_MODELS:
        raise ValueError(f"unknown interaction model {name!r}: use one of {', '.join(INTERACTION_MODELS)}")
    return INTERACTION_MODELS[name](vocab_size, embedding_dim)


def min_max_normalise(x: th.Tensor) -> th.Tensor:
    """
    :param x: maps ``(N, H, W)``
    :return: ``(x - min) / (max - min + 1e-4)`` per map, ``min`` and ``max`` detached
    """
    flat = x.flatten(1).detach()
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    return (x - low) / (high - low + MINMAX_EPS)


@dataclass(frozen=True)
class MVPropOutput:
    """
    What MVProp computes, every map ``(N, H, W)``.

    :param gather: The gather (propagation) map ``g``.
    :param value: The value map ``V = ReLU(v^k - r)``.
    :param reward: The reward map ``r``.
    """

    gather: th.Tensor
    value: th.Tensor
    reward: th.Tensor


class MVProp2D(nn.Module):
    """
    Max-propagation of goal rewards over a grid (see the module documentation).

    :param feature_dim: Width of the per-cell features (the concatenated factor embeddings, ``C * E``).
    :param k: Value iterations (0: no propagation, ``V = 0``).
    :param gamma_logit: Initial logit of the discount.
    """

    flow: th.Tensor

    def __init__(self, feature_dim: int, k: int = DEFAULT_K, gamma_logit: float = GAMMA_LOGIT_INIT) -> None:
        super().__init__()
        if k < 0:
            raise ValueError(f"the number of value iterations must be >= 0, got {k}")
        self.k = k
        self.gather = nn.Linear(feature_dim, 1)
        self.reward_bias = nn.Parameter(th.zeros(()))
        self.gamma_logit = nn.Parameter(th.tensor(float(gamma_logit)))
        self.register_buffer("flow", th.sigmoid(th.tensor(FLOW_LOGITS)), persistent=False)

    @property
    def gamma(self) -> th.Tensor:
        """The discount ``sigmoid(w_gamma)`` (a scalar with gradient)."""
        return th.sigmoid(self.gamma_logit)

    def gather_map(self, features: th.Tensor) -> th.Tensor:
        """
        :param features: per-cell features ``(N, H, W, F)``
        :return: ``g = sigmoid(Linear(features))``, ``(N, H, W)``
        """
        return th.sigmoid(self.gather(features)).squeeze(-1)

    def reward_map(self, goal_scores: th.Tensor) -> th.Tensor:
        """
        :param goal_scores: goal probabilities ``(N, H, W)``
        :return: ``r = MinMaxNorm(ReLU(q - b_r))``, ``(N, H, W)``
        """
        return min_max_normalise(th.relu(goal_scores - self.reward_bias))

    def propagate(self, reward: th.Tensor, gather: th.Tensor, k: int | None = None) -> th.Tensor:
        """
        ``k`` iterations of ``v_p <- max(v_p, g_p * max_{q in 3x3(p)} gamma * f_{q-p} * v_q)`` from
        ``v = reward``, zero-padded at the border, all cells at once.

        :param reward: the reward map ``(N, H, W)`` (non-negative)
        :param gather: the gather map ``(N, H, W)``
        :param k: iterations (default: the module's)
        :return: ``v^k``, ``(N, H, W)``
        """
        k = self.k if k is None else k
        batch, height, width = reward.shape
        weights = (self.gamma * self.flow).reshape(1, 9, 1)
        gate = gather.reshape(batch, 1, height * width)
        value = reward.reshape(batch, 1, height, width)
        for _ in range(k):
            neighbours = F.unfold(
                value, kernel_size=3, padding=1
            )  # (N, 9, H * W), kernel positions row-major
            best = (neighbours * weights).amax(dim=1, keepdim=True)
            value = th.maximum(value, (gate * best).view(batch, 1, height, width))
        return value.view(batch, height, width)

    def forward(self, features: th.Tensor, goal_scores: th.Tensor) -> MVPropOutput:
        """
        :param features: per-cell features ``(N, H, W, F)``
        :param goal_scores: goal probabilities ``(N, H, W)``
        :return: the gather map, the value map ``V = ReLU(v^k - r)`` and the reward map
        """
        gather = self.gather_map(features)
        reward = self.reward_map(goal_scores)
        value = th.relu(self.propagate(reward, gather) - reward)
        return MVPropOutput(gather=gather, value=value, reward=reward)


class QHead(nn.Module):
    """
    The paper's convolutional Q-head (see the module documentation).

    :param cell_dim: Width of the per-cell features (``C * E``).
    :param direction_dim: Width of the direction embedding.
    :param channels: Channels of the 3x3 and the first 1x1 convolution.
    :param n_actions: Q-values (actions).
    """

    def __init__(
        self,
        cell_dim: int,
        direction_dim: int = EMBEDDING_DIM,
        channels: tuple[int, int] = HEAD_CHANNELS,
        n_actions: int = N_ACTIONS,
    ) -> None:
        super().__init__()
        self.direction_embedding = nn.Embedding(4, direction_dim)
        self.trunk = nn.Sequential(
            nn.Conv2d(direction_dim + cell_dim + 2, channels[0], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 1),
            nn.ReLU(),
        )
        self.out = nn.Conv2d(channels[1], n_actions, 1)

    def forward(
        self, cells: th.Tensor, direction: th.Tensor, value: th.Tensor, reward: th.Tensor
    ) -> th.Tensor:
        """
        :param cells: per-cell features ``(N, H, W, F)``
        :param direction: agent directions ``(N,)``
        :param value: value map ``(N, H, W)``
        :param reward: reward map ``(N, H, W)``
        :return: Q-values ``(N, n_actions)``
        """
        batch, height, width = cells.shape[:3]
        heading = self.direction_embedding(direction.long())[:, None, None, :].expand(
            batch, height, width, -1
        )
        x = th.cat([heading, cells, value.unsqueeze(-1), reward.unsqueeze(-1)], dim=-1).permute(0, 3, 1, 2)
        return self.out(self.trunk(x)).mean(dim=(2, 3))


@dataclass(frozen=True)
class PlannerOutput:
    """
    Everything the planner computes for a batch of frames.

    :param q_values: ``(N, n_actions)``.
    :param goal_logits: The interaction model's goal logit per cell, ``(N, H, W)``.
    :param gather: MVProp's gather map ``(N, H, W)``.
    :param value: MVProp's value map ``(N, H, W)``.
    :param reward: MVProp's reward map ``(N, H, W)``.
    """

    q_values: th.Tensor
    goal_logits: th.Tensor
    gather: th.Tensor
    value: th.Tensor
    reward: th.Tensor


class MVPropPlanner(nn.Module):
    """
    Interaction model + MVProp + Q-head: symbolic grid, direction and mission to one Q-value per action.

    :param interaction: The interaction model (its factor embeddings are the cells' features, its goal
        logits give the reward map).
    :param k: MVProp's value iterations (0: the "Factored/CNN policy" ablation).
    :param head_channels: Channels of the Q-head's 3x3 and first 1x1 convolutions.
    :param n_actions: Q-values (actions).
    :param direction_dim: Width of the Q-head's direction embedding (default: the interaction model's
        embedding width).
    """

    def __init__(
        self,
        interaction: InteractionModel,
        k: int = DEFAULT_K,
        head_channels: tuple[int, int] = HEAD_CHANNELS,
        n_actions: int = N_ACTIONS,
        direction_dim: int | None = None,
    ) -> None:
        super().__init__()
        interaction_model_name(interaction)  # checks the type
        self.interaction = interaction
        embedding_dim = int(interaction.attributes.shape[1])
        cell_dim = embedding_dim * len(interaction.factor_sizes)
        self.mvprop = MVProp2D(cell_dim, k)
        channels = (int(head_channels[0]), int(head_channels[1]))
        self.q_head = QHead(cell_dim, direction_dim or embedding_dim, channels, n_actions)

    def cell_features(self, image: th.Tensor) -> th.Tensor:
        """
        :param image: ``(N, H, W, >= C)`` integer grid
        :return: the concatenated factor embeddings of every cell, ``(N, H, W, C * E)``
        """
        return self.interaction.embed_cells(image.long()).permute(0, 2, 3, 1, 4).flatten(3)

    def plan(self, image: th.Tensor, direction: th.Tensor, mission: th.Tensor) -> PlannerOutput:
        """
        :param image: ``(N, H, W, >= C)`` integer grid
        :param direction: ``(N,)`` agent directions
        :param mission: ``(N, L)`` word ids
        :return: the Q-values and the maps behind them
        """
        image, mission = image.long(), mission.long()
        goal_logits = self.interaction(image, mission)
        cells = self.cell_features(image)
        propagated = self.mvprop(cells, th.sigmoid(goal_logits))
        q_values = self.q_head(cells, direction, propagated.value, propagated.reward)
        return PlannerOutput(q_values, goal_logits, propagated.gather, propagated.value, propagated.reward)

    def forward(self, image: th.Tensor, direction: th.Tensor, mission: th.Tensor) -> th.Tensor:
        """
        :param image: ``(N, H, W, >= C)`` integer grid
        :param direction: ``(N,)`` agent directions
        :param mission: ``(N, L)`` word ids
        :return: the Q-values ``(N, n_actions)``
        """
        return self.plan(image, direction, mission).q_values

    def freeze_interaction(self) -> None:
        """Stop training the interaction model (a pre-trained discriminator's): no gradients for it."""
        self.interaction.requires_grad_(False)


class MVPropExtractor(BaseFeaturesExtractor):
    """
    SB3 features extractor that is an :class:`MVPropPlanner`: its features are the planner's Q-values
    (``n_actions`` of them), which :class:`MVPropPolicy` uses as the action logits. The grid size is free.

    :param observation_space: ``Dict(image, direction, mission)`` (see
        :class:`~structrl.policies.factored_attention.GridLanguageSpace`).
    :param interaction: ``"factored-attention"`` or ``"simple-attention"``.
    :param k: MVProp's value iterations.
    :param embedding_dim: Width of the interaction model's embeddings (and the Q-head's direction embedding).
    :param head_channels: Channels of the Q-head.
    :param n_actions: Q-values (set by :class:`MVPropPolicy` from the action space).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        interaction: str = "factored-attention",
        k: int = DEFAULT_K,
        embedding_dim: int = EMBEDDING_DIM,
        head_channels: tuple[int, int] | list[int] = HEAD_CHANNELS,
        n_actions: int = N_ACTIONS,
    ) -> None:
        inputs = GridLanguageSpace.from_space(observation_space)
        super().__init__(observation_space, n_actions)
        self.inputs = inputs
        model = build_interaction_model(interaction, inputs.vocab_size, embedding_dim)
        self.planner = MVPropPlanner(model, k, (int(head_channels[0]), int(head_channels[1])), n_actions)

    def plan(self, observations: dict[str, th.Tensor]) -> PlannerOutput:
        """
        :param observations: a batch of observations (raw or SB3-preprocessed)
        :return: the planner's Q-values and maps
        """
        return self.planner.plan(*self.inputs.split(observations))

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        return self.planner(*self.inputs.split(observations))


class MVPropPolicy(ActorCriticPolicy):
    """
    An SB3 ``ActorCriticPolicy`` acting with an :class:`MVPropPlanner`: the features extractor is
    :class:`MVPropExtractor`, ``net_arch=[]`` and the action head is the identity, so the action logits are
    the Q-values and the deterministic (greedy) action is ``argmax_a Q``. The value head (a ``Linear`` on the
    Q-values) is not trained by the imitation loss. Defaults: ``ortho_init=False`` (SB3's orthogonal
    re-initialisation would overwrite the interaction model), ``normalize_images=False``.

    :param observation_space: ``Dict(image, direction, mission)``.
    :param action_space: ``Discrete(n)``.
    :param lr_schedule: Learning-rate schedule of SB3's optimizer (not used by the imitation trainer).
    :param kwargs: Further ``ActorCriticPolicy`` arguments; ``features_extractor_kwargs`` go to
        :class:`MVPropExtractor`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ObservationSpaceError(
                f"the MVProp policy needs a Discrete action space, got {action_space}"
            )
        extractor_kwargs = dict(kwargs.pop("features_extractor_kwargs", None) or {})
        extractor_kwargs["n_actions"] = int(action_space.n)
        kwargs.setdefault("features_extractor_class", MVPropExtractor)
        kwargs.setdefault("net_arch", [])
        kwargs.setdefault("ortho_init", False)
        kwargs.setdefault("normalize_images", False)
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_kwargs=extractor_kwargs, **kwargs
        )

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()  # the Q-values are the logits
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    @property
    def planner(self) -> MVPropPlanner:
        """The planner inside the features extractor."""
        extractor = self.features_extractor
        assert isinstance(extractor, MVPropExtractor)
        return extractor.planner

    def q_values(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """
        :param observations: a batch of observations (tensors, raw or preprocessed)
        :return: the Q-values ``(N, n_actions)``
        """
        extractor = self.features_extractor
        assert isinstance(extractor, MVPropExtractor)
        return extractor(observations)
