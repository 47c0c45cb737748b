"""torch_ac's layer initialisation: Gaussian weights with unit-norm output rows and zero biases."""

from __future__ import annotations

import torch as th
from torch import nn

from structrl.policies.rim import RIMCell


def _normalize_rows_(weight: th.Tensor, input_dim: int) -> None:
    weight.normal_(0.0, 1.0)
    weight.div_(weight.norm(dim=input_dim, keepdim=True))


@th.no_grad()
def row_normalized_init_(module: nn.Module) -> None:
    """
    Re-initialise every linear layer in ``module`` as the RIM seed's MiniGrid agent did (torch_ac's
    ``init_params``): weights drawn from N(0, 1) with each output unit's weights rescaled to unit L2 norm,
    and biases set to zero.

    The seed applied it to every ``nn.Linear``, which there included the RIM's input key and value
    projections; a :class:`structrl.policies.RIMCell` keeps those in ``weight_kv``/``bias_kv``, which get the
    same treatment. Its other parameters (queries, unit RNNs, communication) and convolutions keep their own
    init, as in the seed.

    :param module: The module whose ``nn.Linear`` layers and RIM key/value projections are re-initialised in
        place.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            _normalize_rows_(layer.weight, input_dim=1)
            if layer.bias is not None:
                layer.bias.zero_()
        elif isinstance(layer, RIMCell):
            _normalize_rows_(layer.weight_kv, input_dim=0)
            layer.bias_kv.zero_()
