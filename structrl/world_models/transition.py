"""
The C-SWM transition model: a graph network over the object slots, fully connected, that predicts the change
of every object embedding from the embeddings and the action.
"""

from __future__ import annotations

import torch as th
import torch.nn.functional as F
from torch import nn

from structrl.world_models.errors import WorldModelError

#: How the action reaches the object slots.
ACTION_ENCODINGS = ("per-object", "copy", "none")


def count_actions(action_encoding: str, action_dim: int, num_objects: int) -> int:
    """
    :param action_encoding: ``"per-object"``, ``"copy"`` or ``"none"``
    :param action_dim: actions per object (``per-object``) or in all
    :param num_objects: object slots
    :return: the number of discrete actions a transition model with these settings accepts
    """
    return action_dim * num_objects if action_encoding == "per-object" else action_dim


def _mlp_tail(hidden_dim: int, output_dim: int) -> nn.Sequential:
    """``ReLU -> Linear -> LayerNorm -> ReLU -> Linear``, the part of the C-SWM MLPs after the input layer."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.LayerNorm(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, output_dim),
    )


class TransitionGNN(nn.Module):
    """
    Predict ``Δz`` from object embeddings ``z`` (B, K, D) and discrete actions.

    Every ordered pair of distinct slots ``(i, j)`` is an edge with message ``e_ij = f_edge([z_i, z_j])``;
    slot ``i`` receives ``m_i = Σ_{j≠i} e_ij`` and outputs ``Δz_i = f_node([z_i, a_i, m_i])``, where
    ``a_i`` is the action seen by slot ``i``:

    * ``per-object``: action ``a`` is ``action_dim * k + d``; slot ``k`` gets ``one_hot(d)``, the other slots
      zeros (block pushing: slot ``k`` is object ``k``);
    * ``copy``: every slot gets ``one_hot(a)`` (``action_dim`` actions, e.g. Atari);
    * ``none``: no action input.

    Both MLPs are ``Linear -> ReLU -> Linear -> LayerNorm -> ReLU -> Linear``. The edge MLP's first layer is
    linear in ``[z_i, z_j]`` and its last layer commutes with the sum over ``j``, so both run on the ``K``
    slots instead of the ``K (K - 1)`` edges: only the hidden layer sees every edge. The result is the same
    function as evaluating the MLP on each edge.

    :param embedding_dim: size ``D`` of an object embedding
    :param num_objects: object slots ``K``
    :param action_dim: actions per object (``per-object``) or in all (``copy``)
    :param hidden_dim: hidden units of both MLPs
    :param action_encoding: ``"per-object"``, ``"copy"`` or ``"none"``
    """

    def __init__(
        self,
        embedding_dim: int,
        num_objects: int,
        action_dim: int,
        hidden_dim: int = 512,
        action_encoding: str = "per-object",
    ) -> None:
        super().__init__()
        if action_encoding not in ACTION_ENCODINGS:
            raise WorldModelError(
                f"unknown action encoding {action_encoding!r}: use one of {', '.join(ACTION_ENCODINGS)}"
            )
        self.num_objects = num_objects
        self.action_dim = action_dim
        self.action_encoding = action_encoding
        slot_action_dim = 0 if action_encoding == "none" else action_dim
        message_dim = hidden_dim if num_objects > 1 else 0
        if num_objects > 1:
            self.edge_input = nn.Linear(2 * embedding_dim, hidden_dim)
            self.edge_hidden = nn.Sequential(
                nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU()
            )
            self.edge_output = nn.Linear(hidden_dim, hidden_dim)
            # Edge (i, j) for every ordered pair of distinct slots, grouped by the receiving slot i.
            receivers, senders = (~th.eye(num_objects, dtype=th.bool)).nonzero(as_tuple=True)
            self.register_buffer("receivers", receivers, persistent=False)
            self.register_buffer("senders", senders, persistent=False)
        self.node_mlp = nn.Sequential(
            nn.Linear(embedding_dim + slot_action_dim + message_dim, hidden_dim),
            _mlp_tail(hidden_dim, embedding_dim),
        )

    receivers: th.Tensor
    senders: th.Tensor

    @property
    def num_actions(self) -> int:
        """The number of discrete actions the model accepts."""
        return count_actions(self.action_encoding, self.action_dim, self.num_objects)

    def encode_actions(self, actions: th.Tensor) -> th.Tensor:
        """
        :param actions: (B,) int64 actions
        :return: (B, K, A) action seen by each slot (A = 0 with ``none``)
        """
        batch = actions.shape[0]
        if self.action_encoding == "none":
            return actions.new_zeros((batch, self.num_objects, 0), dtype=th.float32)
        one_hot = F.one_hot(actions, self.num_actions).float()
        if self.action_encoding == "per-object":
            return one_hot.view(batch, self.num_objects, self.action_dim)
        return one_hot.unsqueeze(1).expand(batch, self.num_objects, self.action_dim)

    def messages(self, z: th.Tensor) -> th.Tensor:
        """
        :param z: (B, K, D) object embeddings (K > 1)
        :return: (B, K, hidden) sum of the edge messages received by each slot
        """
        embedding_dim = z.shape[-1]
        weight, bias = self.edge_input.weight, self.edge_input.bias
        as_receiver = F.linear(z, weight[:, :embedding_dim], bias)
        as_sender = F.linear(z, weight[:, embedding_dim:])
        edges = self.edge_hidden(as_receiver[:, self.receivers] + as_sender[:, self.senders])
        summed = edges.view(z.shape[0], self.num_objects, self.num_objects - 1, -1).sum(dim=2)
        return F.linear(summed, self.edge_output.weight) + (self.num_objects - 1) * self.edge_output.bias

    def forward(self, z: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """
        :param z: (B, K, D) object embeddings
        :param actions: (B,) int64 actions
        :return: (B, K, D) predicted change ``Δz``
        """
        inputs = [z, self.encode_actions(actions)]
        if self.num_objects > 1:
            inputs.append(self.messages(z))
        return self.node_mlp(th.cat(inputs, dim=-1))
