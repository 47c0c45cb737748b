"""
The contrastive structured world model (C-SWM, Kipf et al., 2020): object encoder, graph-network transition
model and the hinge energy loss.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch as th
import torch.nn.functional as F
from torch import nn

from structrl.data.atomic_files import atomic_open
from structrl.world_models.encoders import ENCODERS, ObjectEncoder
from structrl.world_models.errors import WorldModelError
from structrl.world_models.transition import ACTION_ENCODINGS, TransitionGNN, count_actions

#: What the energy of a negative compares it with: the next state (the C-SWM paper) or the current state
#: (the original code, kept for comparison).
NEGATIVE_ANCHORS = ("next", "current")
#: Format tag of a saved model file.
MODEL_FORMAT = "structrl-cswm"


@dataclass(frozen=True)
class CSWMConfig:
    """
    Architecture and loss of a C-SWM. The defaults are those of the original code (Shapes: small encoder,
    5 objects of 2 dimensions, 4 actions per object).

    :param observation_shape: (C, H, W) of the images.
    :param encoder: Object extractor: ``"small"``, ``"medium"`` or ``"large"``.
    :param num_objects: Object slots ``K``.
    :param embedding_dim: Size ``D`` of an object embedding.
    :param hidden_dim: Hidden units of the MLPs (the CNNs use ``hidden_dim // 16`` channels).
    :param action_dim: Actions per object (``per-object``) or in all (``copy``).
    :param action_encoding: ``"per-object"``, ``"copy"`` (``--copy-action``) or ``"none"``.
    :param sigma: Energy scale: ``d(x, y) = 0.5 / sigma^2 * mean_k ||x_k - y_k||^2``.
    :param hinge: Margin of the negative energy.
    :param negative_weight: Weight of the hinge term (``--gamma`` of the original).
    :param negative_anchor: ``"next"``: the hinge keeps a negative ``z~`` away from ``z_{t+1}``, as the paper
        writes it; ``"current"``: away from ``z_t``, as the original code does.
    """

    observation_shape: tuple[int, int, int] = (3, 50, 50)
    encoder: str = "small"
    num_objects: int = 5
    embedding_dim: int = 2
    hidden_dim: int = 512
    action_dim: int = 4
    action_encoding: str = "per-object"
    sigma: float = 0.5
    hinge: float = 1.0
    negative_weight: float = 1.0
    negative_anchor: str = "next"

    def check(self) -> None:
        """
        :raises WorldModelError: naming the first invalid setting and its valid values
        """
        choices = (
            ("encoder", self.encoder, ENCODERS),
            ("action_encoding", self.action_encoding, ACTION_ENCODINGS),
            ("negative_anchor", self.negative_anchor, NEGATIVE_ANCHORS),
        )
        for name, value, valid in choices:
            if value not in valid:
                raise WorldModelError(f"unknown {name} {value!r}: use one of {', '.join(valid)}")
        positive = ("num_objects", "embedding_dim", "hidden_dim", "action_dim")
        for name in positive:
            if getattr(self, name) < 1:
                raise WorldModelError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_dim < 16:
            raise WorldModelError("hidden_dim must be at least 16 (the CNNs use hidden_dim // 16 channels)")
        if self.sigma <= 0 or self.hinge < 0 or self.negative_weight < 0:
            raise WorldModelError(
                f"sigma must be positive and hinge, negative_weight non-negative; got sigma={self.sigma}, "
                f"hinge={self.hinge}, negative_weight={self.negative_weight}"
            )
        channels, height, width = self.observation_shape
        stride = {"small": 10, "medium": 5, "large": 1}[self.encoder]
        if height < stride or width < stride or channels < 1:
            raise WorldModelError(
                f"observations of shape {self.observation_shape} are too small for the {self.encoder} "
                f"encoder (it needs at least {stride} x {stride} pixels)"
            )

    @property
    def num_actions(self) -> int:
        """The number of discrete actions the model accepts."""
        return count_actions(self.action_encoding, self.action_dim, self.num_objects)

    def to_dict(self) -> dict[str, Any]:
        """
        :return: the settings as JSON-compatible values
        """
        return {**dataclasses.asdict(self), "observation_shape": list(self.observation_shape)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CSWMConfig:
        """
        :param values: settings as written by :meth:`to_dict`
        :return: the configuration
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise WorldModelError(
                f"unknown C-SWM settings {sorted(unknown)}: expected some of {sorted(known)}"
            )
        values = dict(values)
        if "observation_shape" in values:
            values["observation_shape"] = tuple(values["observation_shape"])
        return cls(**values)


class ContrastiveLoss(NamedTuple):
    """
    The C-SWM loss of a batch and its two terms.

    :param loss: ``positive + negative_weight * hinge`` (differentiable)
    :param positive: mean energy of the predicted against the encoded next states
    :param hinge: mean of ``max(0, margin - energy of the negatives)``
    """

    loss: th.Tensor
    positive: th.Tensor
    hinge: th.Tensor


def energy(first: th.Tensor, second: th.Tensor, sigma: float) -> th.Tensor:
    """
    The C-SWM energy ``0.5 / sigma^2 * (1 / K) * Σ_k ||first_k - second_k||^2``.

    :param first: (..., K, D) object embeddings
    :param second: (..., K, D) object embeddings
    :param sigma: energy scale
    :return: (...) energies
    """
    return (0.5 / sigma**2) * (first - second).pow(2).sum(dim=-1).mean(dim=-1)


def hinge_loss(
    predicted: th.Tensor,
    next_z: th.Tensor,
    negative_z: th.Tensor,
    anchor_z: th.Tensor,
    sigma: float,
    margin: float,
    negative_weight: float,
) -> ContrastiveLoss:
    """
    ``mean_b d(ẑ_{t+1}, z_{t+1}) + negative_weight * mean_b max(0, margin - d(z~, anchor))``.

    :param predicted: (B, K, D) predicted next embeddings ``z_t + T(z_t, a_t)``
    :param next_z: (B, K, D) encoded next observations
    :param negative_z: (B, K, D) encoded negatives
    :param anchor_z: (B, K, D) what the negatives are compared with (``z_{t+1}`` or ``z_t``)
    :param sigma: energy scale
    :param margin: hinge margin
    :param negative_weight: weight of the hinge term
    :return: the loss and its terms
    """
    positive = energy(predicted, next_z, sigma).mean()
    hinge = F.relu(margin - energy(negative_z, anchor_z, sigma)).mean()
    return ContrastiveLoss(positive + negative_weight * hinge, positive, hinge)


class ContrastiveSWM(nn.Module):
    """
    A C-SWM: :class:`~structrl.world_models.encoders.ObjectEncoder` and
    :class:`~structrl.world_models.transition.TransitionGNN`.

    :param config: architecture and loss settings
    """

    def __init__(self, config: CSWMConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.encoder = ObjectEncoder(
            config.encoder,
            config.observation_shape,
            config.num_objects,
            config.embedding_dim,
            config.hidden_dim,
        )
        self.transition = TransitionGNN(
            config.embedding_dim,
            config.num_objects,
            config.action_dim,
            config.hidden_dim,
            config.action_encoding,
        )

    def encode(self, observations: th.Tensor) -> th.Tensor:
        """
        :param observations: (B, C, H, W) images, uint8 or float in [0, 1]
        :return: (B, K, D) object embeddings
        """
        return self.encoder(observations)

    def predict(self, z: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """
        Roll the transition model out.

        :param z: (B, K, D) object embeddings
        :param actions: (B,) int64 actions of one step, or (B, S) of ``S`` steps
        :return: (B, K, D) predicted embeddings after the steps
        """
        for step_actions in actions.view(actions.shape[0], -1).unbind(dim=1):
            z = z + self.transition(z, step_actions)
        return z

    def loss(
        self,
        observations: th.Tensor,
        actions: th.Tensor,
        next_observations: th.Tensor,
        negatives: th.Tensor,
    ) -> ContrastiveLoss:
        """
        The contrastive loss of a batch of transitions. Each image batch goes through the encoder separately,
        so in training mode each has its own batch-norm statistics, as in the original.

        :param observations: (B, C, H, W) images ``o_t``
        :param actions: (B,) actions ``a_t``
        :param next_observations: (B, C, H, W) images ``o_{t+1}``
        :param negatives: (B, C, H, W) negative images, or (B,) int64 indices: the negative of sample ``b`` is
            the anchor image (``o_{t+1}`` or ``o_t``, see :attr:`CSWMConfig.negative_anchor`) of sample
            ``negatives[b]`` of the batch, reusing its encoding
        :return: the loss and its terms
        """
        z = self.encode(observations)
        next_z = self.encode(next_observations)
        anchor_z = next_z if self.config.negative_anchor == "next" else z
        negative_z = anchor_z[negatives] if negatives.dim() == 1 else self.encode(negatives)
        config = self.config
        return hinge_loss(
            self.predict(z, actions),
            next_z,
            negative_z,
            anchor_z,
            config.sigma,
            config.hinge,
            config.negative_weight,
        )

    def save(self, path: str | os.PathLike[str], **metadata: Any) -> Path:
        """
        Save the configuration and weights, atomically (temporary file, then ``os.replace``).

        :param path: the model file (``.pt``)
        :param metadata: JSON-compatible values stored with the model (e.g. epoch, validation loss)
        :return: the path
        """
        payload = {"format": MODEL_FORMAT, "config": self.config.to_dict(), "state_dict": self.state_dict()}
        return save_atomically({**payload, "metadata": metadata}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | th.device = "cpu") -> ContrastiveSWM:
        """
        :param path: a file written by :meth:`save`, or a training run directory holding ``model.pt``
        :param device: where to put the weights
        :return: the model, in evaluation mode
        :raises WorldModelError: if the file is missing or not a C-SWM model
        """
        path = Path(path)
        if path.is_dir():
            path = path / "model.pt"
        if not path.is_file():
            raise WorldModelError(
                f"no C-SWM model at {path}: give a model.pt written by 'structrl cswm train' or its run "
                "directory"
            )
        try:
            payload = th.load(path, map_location=device, weights_only=True)
        except Exception as error:
            raise WorldModelError(
                f"{path} cannot be read as a C-SWM model ({error}): train it again"
            ) from error
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise WorldModelError(
                f"{path} is not a C-SWM model file (written by 'structrl cswm train'); a training checkpoint "
                "is checkpoint.pt, the model is model.pt"
            )
        model = cls(CSWMConfig.from_dict(payload["config"])).to(device)
        model.load_state_dict(payload["state_dict"])
        return model.eval()


def save_atomically(payload: Any, path: str | os.PathLike[str]) -> Path:
    """
    ``torch.save`` to a temporary file in the target's folder, then rename it over the target, so an
    interruption leaves either the old or the new file.

    :param payload: what to save
    :param path: the target file
    :return: the path
    """
    path = Path(path)
    with atomic_open(path, "wb") as file:
        th.save(payload, file)
    return path
