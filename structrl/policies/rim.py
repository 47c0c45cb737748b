"""
Recurrent Independent Mechanisms (Goyal et al. 2019, arXiv:1909.10893).

:class:`RIMCell` advances ``num_units`` small LSTMs or GRUs by one step. Each unit attends to the input and to
a null input; the ``k`` units that attend least to the null input are updated and the others keep their state.
The updated units then read from all units through multi-head attention. :class:`RIM` runs cells over time,
layers and directions with the interface of ``nn.LSTM`` / ``nn.GRU``.

All units are computed together with batched matrix products on a unit-major ``(N, B, .)`` layout; there is
no Python loop over units.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_GATES = {"LSTM": 4, "GRU": 3}


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def _check_dropout(**rates: float) -> None:
    for name, value in rates.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_rnn_cell(rnn_cell: str) -> str:
    name = rnn_cell.upper()
    if name not in _GATES:
        raise ValueError(f"rnn_cell must be 'LSTM' or 'GRU' (case-insensitive), got {rnn_cell!r}")
    return name


class RIMCell(nn.Module):
    """
    One time step of ``num_units`` (Kt) LSTM or GRU units, ``k`` (Ka) of which are active.

    Input attention: the input ``x`` has the key ``x W_k + b_k`` and the value ``x W_v + b_v``; the null
    input's key and value are zero vectors, so its score is exactly 0. Unit ``n`` queries with
    ``h_n W_q^(n) + b_q^(n)``, a per-unit projection with a learned per-unit bias. That bias is drawn at
    random like the weights, so that at the all-zero initial state the scores still depend on the input
    (episode starts do not always activate the same units). Per head, the softmax over {input, null} is the
    sigmoid of the scaled input score. Heads are concatenated: a unit's RNN input is the concatenation over
    heads of ``p_input * value`` (width ``num_input_heads * input_value_size``), and the null probability used
    for selection is the mean over heads. The ``k`` units with the smallest null probability are active (hard
    top-k, no gradient through the choice). ``input_dropout`` acts on the input-attention probabilities.

    Unit update: each unit has its own LSTM (gate order i, f, g, o, as in torch) or GRU (``nn.GRUCell``'s
    equations, ``b_hn`` inside ``r * (.)``) with input and recurrent biases, all initialised
    U(-1/sqrt(H), 1/sqrt(H)) like ``nn.LSTMCell``; LSTM units add 1 to the forget-gate input bias. Inactive
    units keep ``h`` and ``c`` bit-exactly and get no gradient through their update.

    Communication (``communication=True``): multi-head attention across units with per-unit query, key and
    value projections (no biases). Keys and values come from the active units' new states and the inactive
    units' carried states. Active units add the per-unit output projection of their attention read-out to
    their RNN output (residual); ``comm_dropout`` acts on the attention probabilities; ``c`` is not changed.

    Parameters, unit ``n`` being slice ``[n]``, with ``Q = num_input_heads * input_query_size`` and ``G = 4``
    (LSTM) or ``3`` (GRU):

    * ``weight_kv`` ``(input_size, num_input_heads * (input_key_size + input_value_size))``, ``bias_kv``: the
      input's keys (head-major) then values (head-major).
    * ``weight_hh`` ``(N, H, Q + G * H)``, ``bias_hh`` ``(N, 1, Q + G * H)``: columns ``[:Q]`` are the query
      projection, the rest the RNN's recurrent weights (fused because both read ``h_{t-1}``).
    * ``weight_ih`` ``(N, num_input_heads * input_value_size, G * H)``, ``bias_ih`` ``(N, 1, G * H)``.
    * ``comm_qkv`` ``(N, H, num_comm_heads * (2 * comm_key_size + comm_value_size))``: for each head, its
      query, key and value columns.
    * ``comm_out`` ``(N, num_comm_heads * comm_value_size, H)``.

    :param input_size: Number of input features.
    :param hidden_size: Hidden size of each unit (H).
    :param num_units: Number of units (Kt).
    :param k: Number of active units per step (Ka), ``1 <= k <= num_units``.
    :param rnn_cell: ``"LSTM"`` or ``"GRU"`` (case-insensitive).
    :param input_key_size: Key width per input-attention head.
    :param input_value_size: Value width per input-attention head.
    :param input_query_size: Query width per input-attention head; must equal ``input_key_size``.
    :param num_input_heads: Number of input-attention heads.
    :param input_dropout: Dropout on the input-attention probabilities.
    :param comm_key_size: Key width per communication head.
    :param comm_value_size: Value width per communication head; ``None`` means ``hidden_size``.
    :param comm_query_size: Query width per communication head; must equal ``comm_key_size``.
    :param num_comm_heads: Number of communication heads.
    :param comm_dropout: Dropout on the communication-attention probabilities.
    :param communication: Whether the units communicate after their update.
    :param seed_attention: Compatibility flag reproducing the seed repository's input attention (the RIM
        MiniGrid code; ``rim.md`` bugs 15 and 16), to compare with its results only: the null input's key and
        value are the input projection's biases ``b_k`` and ``b_v`` instead of zero vectors, units are ranked
        by their raw score to the real input ``q_n . (x W_k + b_k)`` instead of by null attention, queries
        have no bias (at the zero state every score ties), an active unit's RNN input is
        ``p_input * (x W_v + b_v) + p_null * b_v`` with dropout on both probabilities, and the input
        attention starts as the seed's did (``b_k = b_v = 0``, query weights ``0.01 * N(0, 1)``). Heads stay
        concatenated; everything after the input attention is unchanged.
    :param seed_update: Compatibility flag reproducing the seed repository's unit update (``rim.md`` bugs 18
        and 20), to compare with its results only: the unit RNNs have no biases (so LSTM units have no
        forget-gate bias), every unit's RNN runs, inactive units' on a zero input, and communication reads
        the inactive units' zero-input-updated states (with no gradient through them) instead of their
        carried states; the communication weights start at ``0.01 * N(0, 1)``, as the seed's (so at first
        the units barely communicate). Inactive units still keep ``h`` and ``c`` unchanged.
    """

    _hh_bias_mask: Tensor  # with seed_update: 1 over the query columns of bias_hh, 0 over the RNN's

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_units: int,
        k: int,
        rnn_cell: str = "LSTM",
        input_key_size: int = 64,
        input_value_size: int = 400,
        input_query_size: int = 64,
        num_input_heads: int = 1,
        input_dropout: float = 0.1,
        comm_key_size: int = 32,
        comm_value_size: int | None = None,
        comm_query_size: int = 32,
        num_comm_heads: int = 4,
        comm_dropout: float = 0.1,
        communication: bool = True,
        seed_attention: bool = False,
        seed_update: bool = False,
    ) -> None:
        super().__init__()
        if comm_value_size is None:
            comm_value_size = hidden_size
        _check_positive(
            input_size=input_size,
            hidden_size=hidden_size,
            num_units=num_units,
            input_key_size=input_key_size,
            input_value_size=input_value_size,
            input_query_size=input_query_size,
            num_input_heads=num_input_heads,
            comm_key_size=comm_key_size,
            comm_value_size=comm_value_size,
            comm_query_size=comm_query_size,
            num_comm_heads=num_comm_heads,
        )
        if not 1 <= k <= num_units:
            raise ValueError(f"k must satisfy 1 <= k <= num_units = {num_units}, got k = {k}")
        _check_dropout(input_dropout=input_dropout, comm_dropout=comm_dropout)
        for kind, key_size, query_size in (
            ("input", input_key_size, input_query_size),
            ("comm", comm_key_size, comm_query_size),
        ):
            if key_size != query_size:
                raise ValueError(
                    f"{kind}_key_size ({key_size}) must equal {kind}_query_size ({query_size}): "
                    "attention scores are dot products of keys and queries"
                )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_units = num_units
        self.k = k
        self.rnn_cell = _check_rnn_cell(rnn_cell)
        self.input_key_size = input_key_size
        self.input_value_size = input_value_size
        self.num_input_heads = num_input_heads
        self.input_dropout = input_dropout
        self.comm_key_size = comm_key_size
        self.comm_value_size = comm_value_size
        self.num_comm_heads = num_comm_heads
        self.comm_dropout = comm_dropout
        self.communication = communication
        self.seed_attention = seed_attention
        self.seed_update = seed_update
        self.input_scale = 1.0 / math.sqrt(input_key_size)
        self.comm_scale = 1.0 / math.sqrt(comm_key_size)
        # Communication attention over few units is cheaper as broadcast products than as many tiny bmm calls;
        # both paths compute the same function.
        self._broadcast_comm = num_units * num_units * (comm_key_size + comm_value_size) <= 1024

        query_width = num_input_heads * input_key_size
        gate_width = _GATES[self.rnn_cell] * hidden_size
        self._kv_split = [num_input_heads * input_key_size, num_input_heads * input_value_size]
        self._hh_split = [query_width, gate_width]
        self._gru_split = [2 * hidden_size, hidden_size]
        self.weight_kv = nn.Parameter(torch.empty(input_size, sum(self._kv_split)))
        self.bias_kv = nn.Parameter(torch.empty(sum(self._kv_split)))
        self.weight_hh = nn.Parameter(torch.empty(num_units, hidden_size, query_width + gate_width))
        self.bias_hh = nn.Parameter(torch.empty(num_units, 1, query_width + gate_width))
        self.weight_ih = nn.Parameter(torch.empty(num_units, num_input_heads * input_value_size, gate_width))
        self.bias_ih = nn.Parameter(torch.empty(num_units, 1, gate_width))
        if seed_update:  # the unit RNNs' biases stay zero: drop them from every step
            gate_bias = torch.ones(1, 1, query_width + gate_width)
            gate_bias[..., query_width:] = 0.0
            self.register_buffer("_hh_bias_mask", gate_bias, persistent=False)
        if communication:
            qkv_width = num_comm_heads * (2 * comm_key_size + comm_value_size)
            self.comm_qkv = nn.Parameter(torch.empty(num_units, hidden_size, qkv_width))
            self.comm_out = nn.Parameter(
                torch.empty(num_units, num_comm_heads * comm_value_size, hidden_size)
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """
        Uniform init: the key/value projection U(+-1/sqrt(input_size)) like ``nn.Linear``; query, RNN and
        communication Q/K/V parameters U(+-1/sqrt(H)) like ``nn.LSTMCell``; the communication output
        U(+-1/sqrt(num_comm_heads * comm_value_size)). LSTM units then add 1 to the forget-gate input bias.
        With ``seed_attention``, the key/value biases and the (unused) query biases are zero and the query
        weights ``0.01 * N(0, 1)``, as in the seed; with ``seed_update``, the (unused) RNN biases are zero and
        the communication weights ``0.01 * N(0, 1)``.
        """
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.weight_kv, -bound, bound)
        nn.init.uniform_(self.bias_kv, -bound, bound)
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in (self.weight_hh, self.bias_hh, self.weight_ih, self.bias_ih):
            nn.init.uniform_(param, -bound, bound)
        if self.rnn_cell == "LSTM":
            with torch.no_grad():
                self.bias_ih[..., self.hidden_size : 2 * self.hidden_size] += 1.0
        if self.communication:
            nn.init.uniform_(self.comm_qkv, -bound, bound)
            bound = 1.0 / math.sqrt(self.num_comm_heads * self.comm_value_size)
            nn.init.uniform_(self.comm_out, -bound, bound)
        if self.seed_attention:
            query_width = self._hh_split[0]
            with torch.no_grad():
                self.bias_kv.zero_()
                self.bias_hh[..., :query_width] = 0.0
                self.weight_hh[..., :query_width].normal_(0.0, 0.01)
        if self.seed_update:
            with torch.no_grad():
                self.bias_ih.zero_()
                self.bias_hh[..., self._hh_split[0] :] = 0.0
                if self.communication:
                    self.comm_qkv.normal_(0.0, 0.01)
                    self.comm_out.normal_(0.0, 0.01)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_units={self.num_units}, k={self.k}, "
            f"rnn_cell={self.rnn_cell!r}, communication={self.communication}"
            + (", seed_attention=True" if self.seed_attention else "")
            + (", seed_update=True" if self.seed_update else "")
        )

    def forward(
        self, x: Tensor, hs: Tensor, cs: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """
        :param x: Input ``(B, input_size)`` or ``(B, 1, input_size)``.
        :param hs: Hidden states ``(B, num_units, hidden_size)``.
        :param cs: Cell states ``(B, num_units, hidden_size)`` of LSTM units (zeros if None); None for GRU.
        :return: The new hidden states, the new cell states (None for GRU units), both
            ``(B, num_units, hidden_size)``, and the mask of active units ``(B, num_units)`` (bool).
        """
        if x.dim() == 3 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 2 or x.shape[1] != self.input_size:
            size = self.input_size
            raise ValueError(f"expected x of shape (B, {size}) or (B, 1, {size}), got {tuple(x.shape)}")
        state_shape = (x.shape[0], self.num_units, self.hidden_size)
        if hs.shape != state_shape:
            raise ValueError(f"expected hs of shape {state_shape}, got {tuple(hs.shape)}")
        c = None
        if self.rnn_cell == "GRU":
            if cs is not None:
                raise ValueError("GRU units have no cell state: pass cs=None")
        elif cs is None:
            c = hs.new_zeros(self.num_units, x.shape[0], self.hidden_size)
        elif cs.shape != state_shape:
            raise ValueError(f"expected cs of shape {state_shape}, got {tuple(cs.shape)}")
        else:
            c = cs.transpose(0, 1)
        h_new, c_new, mask = self._step(x, hs.transpose(0, 1), c)
        return h_new.transpose(0, 1), None if c_new is None else c_new.transpose(0, 1), mask[..., 0].t()

    def _step(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """
        One step on the unit-major layout, without shape checks.

        :param x: Input ``(B, input_size)``.
        :param h: Hidden states ``(N, B, H)``.
        :param c: Cell states ``(N, B, H)`` of LSTM units, else None.
        :return: The new ``h`` and ``c`` ``(N, B, H)`` and the active-unit mask ``(N, B, 1)``.
        """
        units, batch = self.num_units, x.shape[0]
        heads, d_k, d_v = self.num_input_heads, self.input_key_size, self.input_value_size
        key, value = torch.addmm(self.bias_kv, x, self.weight_kv).split(self._kv_split, dim=-1)
        if self.seed_attention:
            return self._seed_step(h, c, key, value)
        bias_hh = self.bias_hh * self._hh_bias_mask if self.seed_update else self.bias_hh
        query, gh = torch.baddbmm(bias_hh, h, self.weight_hh).split(self._hh_split, dim=-1)

        # Softmax over {input, null} with a zero null score = sigmoid of the input score; shape (N, B, heads).
        if heads == 1:
            p_input = torch.sigmoid((query * key).sum(-1, keepdim=True) * self.input_scale)
        else:
            scores = (query.view(units, batch, heads, d_k) * key.view(batch, heads, d_k)).sum(-1)
            p_input = torch.sigmoid(scores * self.input_scale)
        # Rank by mean input attention over heads (= least mean null attention); ranking, mask (N, B, 1).
        ranking = p_input if heads == 1 else p_input.mean(-1, keepdim=True)
        mask = self._top_k_mask(ranking)

        if self.training and self.input_dropout > 0.0:
            p_input = F.dropout(p_input, self.input_dropout, training=True)
        if heads == 1:
            u = p_input * value
        else:
            u = (p_input.unsqueeze(-1) * value.view(batch, heads, d_v)).view(units, batch, heads * d_v)
        return self._update(u, h, c, gh, mask)

    def _top_k_mask(self, ranking: Tensor) -> Tensor:
        """:return: The mask ``(N, B, 1)`` of the ``k`` highest-ranked units of each batch row."""
        active = ranking.topk(self.k, dim=0).indices
        return torch.zeros_like(ranking, dtype=torch.bool).scatter_(0, active, True)

    def _seed_step(
        self, h: Tensor, c: Tensor | None, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """
        :meth:`_step` with the seed's input attention (``seed_attention``): the null key and value are the
        biases, units ranked by raw input score, queries without bias.

        :param key: The input's keys ``(B, num_input_heads * input_key_size)``, bias included.
        :param value: The input's values ``(B, num_input_heads * input_value_size)``, bias included.
        """
        units, batch = self.num_units, key.shape[0]
        heads, d_k, d_v = self.num_input_heads, self.input_key_size, self.input_value_size
        query_width = self._hh_split[0]
        query = torch.bmm(h, self.weight_hh[..., :query_width]).view(units, batch, heads, d_k)
        gate_weight = self.weight_hh[..., query_width:]
        gh = (
            torch.bmm(h, gate_weight)
            if self.seed_update
            else torch.baddbmm(self.bias_hh[..., query_width:], h, gate_weight)
        )
        key_bias, value_bias = self.bias_kv.split(self._kv_split)
        input_scores = (query * key.view(batch, heads, d_k)).sum(-1) * self.input_scale
        null_scores = (query * key_bias.view(heads, d_k)).sum(-1) * self.input_scale
        mask = self._top_k_mask(input_scores.mean(-1, keepdim=True))
        p_input = torch.sigmoid(input_scores - null_scores)
        p_null = 1.0 - p_input
        if self.training and self.input_dropout > 0.0:
            p_input = F.dropout(p_input, self.input_dropout, training=True)
            p_null = F.dropout(p_null, self.input_dropout, training=True)
        u = p_input.unsqueeze(-1) * value.view(batch, heads, d_v) + p_null.unsqueeze(-1) * value_bias.view(
            heads, d_v
        )
        return self._update(u.view(units, batch, heads * d_v), h, c, gh, mask)

    def _update(
        self, u: Tensor, h: Tensor, c: Tensor | None, gh: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """
        Update the active units and let them communicate.

        :param u: Every unit's RNN input ``(N, B, num_input_heads * input_value_size)``.
        :param h: Hidden states ``(N, B, H)``.
        :param c: Cell states ``(N, B, H)`` of LSTM units, else None.
        :param gh: The recurrent gate pre-activations ``(N, B, G * H)``.
        :param mask: The active units ``(N, B, 1)``.
        :return: The new ``h`` and ``c`` ``(N, B, H)`` and ``mask``.
        """
        if self.seed_update:
            gi = torch.bmm(u * mask, self.weight_ih)
        else:
            gi = torch.baddbmm(self.bias_ih, u, self.weight_ih)
        if c is None:
            h_rnn = self._gru(gi, gh, h)
        else:
            h_rnn, c_rnn = self._lstm(gi, gh, c)
            c = torch.where(mask, c_rnn, c)

        h_new = torch.where(mask, h_rnn, h)
        if self.communication:
            # Communication reads the inactive units' carried states, or with seed_update their zero-input
            # updates (without gradient).
            read = torch.where(mask, h_rnn, h_rnn.detach()) if self.seed_update else h_new
            h_new = torch.where(mask, self._communicate(read), h)
        return h_new, c, mask

    @staticmethod
    def _lstm(gi: Tensor, gh: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        gates = gi + gh
        i, f, _, o = gates.sigmoid().chunk(4, dim=-1)
        c_new = torch.addcmul(f * c, i, gates.chunk(4, dim=-1)[2].tanh())
        return o * c_new.tanh(), c_new

    def _gru(self, gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
        i_rz, i_n = gi.split(self._gru_split, dim=-1)
        h_rz, h_n = gh.split(self._gru_split, dim=-1)
        r, z = (i_rz + h_rz).sigmoid().chunk(2, dim=-1)
        n = torch.addcmul(i_n, r, h_n).tanh()
        return torch.addcmul(n, z, h - n)

    def _communicate(self, states: Tensor) -> Tensor:
        """
        Multi-head attention across units.

        :param states: Every unit's state after the step ``(N, B, H)``: new for active units, carried for
            inactive ones.
        :return: ``states`` plus the per-unit output projection of the attention read-out, ``(N, B, H)`` (only
            the active units' rows are used).
        """
        units, batch = states.shape[0], states.shape[1]
        heads, d_c, d_v = self.num_comm_heads, self.comm_key_size, self.comm_value_size
        broadcast = self._broadcast_comm
        qkv = torch.bmm(states, self.comm_qkv).view(units, batch, heads, 2 * d_c + d_v)
        if not broadcast:
            qkv = qkv.permute(1, 2, 0, 3).reshape(batch * heads, units, 2 * d_c + d_v)
        q, k, v = qkv.split([d_c, d_c, d_v], dim=-1)
        # Key unit m on dim 1: scores[n, m, b, a, 0] (broadcast) or scores[(b, a), m, n] (bmm), for query
        # unit n, batch row b and head a.
        scores = (q.unsqueeze(1) * k).sum(-1, keepdim=True) if broadcast else torch.bmm(k, q.transpose(1, 2))
        attention = torch.softmax(scores * self.comm_scale, dim=1)
        if self.training and self.comm_dropout > 0.0:
            attention = F.dropout(attention, self.comm_dropout, training=True)
        if broadcast:
            context = (attention * v).sum(1)
        else:
            context = (
                torch.bmm(attention.transpose(1, 2), v).view(batch, heads, units, d_v).permute(2, 0, 1, 3)
            )
        return torch.baddbmm(states, context.reshape(units, batch, heads * d_v), self.comm_out)


class RIM(nn.Module):
    """
    A multi-layer, optionally bidirectional RIM with the interface of ``nn.LSTM`` / ``nn.GRU``.

    The state of one layer and direction is its units' states concatenated, ``num_units * hidden_size`` wide.
    Layer 0 reads the input; a higher layer reads the outputs of both directions of the layer below,
    concatenated. The backward direction reads the sequence in reverse; its outputs are returned in
    chronological order and its final state is the one after the first time step. Initial states default to
    zeros.

    :param input_size: Number of input features.
    :param hidden_size: Hidden size of each unit (H).
    :param num_units: Number of units (Kt).
    :param k: Number of active units per step (Ka).
    :param rnn_cell: ``"LSTM"`` or ``"GRU"`` (case-insensitive).
    :param num_layers: Number of stacked layers.
    :param bidirectional: Whether each layer also runs backward in time.
    :param batch_first: Whether inputs and outputs are ``(B, T, .)`` instead of ``(T, B, .)``.
    :param carry_cell_state: LSTM units carry their cell state across steps (the default). ``False`` is a
        compatibility flag reproducing the seed's MiniGrid agent, whose glue rebuilt the cell state from the
        hidden state before every step (``c_{t-1} := h_{t-1}``), so the cell state never carried; use it only
        to compare with the seed's results.
    :param cell_kwargs: Further :class:`RIMCell` arguments, used for every cell.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_units: int,
        k: int,
        rnn_cell: str = "LSTM",
        num_layers: int = 1,
        bidirectional: bool = False,
        batch_first: bool = False,
        carry_cell_state: bool = True,
        **cell_kwargs,
    ) -> None:
        super().__init__()
        _check_positive(num_layers=num_layers)
        self.carry_cell_state = carry_cell_state
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_units = num_units
        self.k = k
        self.rnn_cell = _check_rnn_cell(rnn_cell)
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.batch_first = batch_first
        self.state_size = num_units * hidden_size
        self.num_directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList(
            RIMCell(
                input_size if layer == 0 else self.num_directions * self.state_size,
                hidden_size,
                num_units,
                k,
                self.rnn_cell,
                **cell_kwargs,
            )
            for layer in range(num_layers)
            for _ in range(self.num_directions)
        )
        self.last_masks: Tensor | None = None

    def forward(
        self,
        x: Tensor,
        hx: Tensor | tuple[Tensor, Tensor] | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """
        Run over a sequence. Sets ``self.last_masks``, the active units of every step, cell and batch row, a
        detached bool tensor ``(T, num_layers * D, B, num_units)``, time-major even if ``batch_first``.

        :param x: Input ``(T, B, input_size)``, or ``(B, T, input_size)`` if ``batch_first``.
        :param hx: Initial state ``(num_layers * D, B, num_units * hidden_size)`` (D = 2 if bidirectional,
            else 1), a tuple ``(h_0, c_0)`` for LSTM units; zeros if None.
        :param episode_starts: Optional ``(T, B)`` flags, time-major even if ``batch_first``: where set at
            step ``t``, that batch row's state is zeroed in all layers before step ``t``. Unidirectional only.
        :return: The outputs ``(T, B, D * num_units * hidden_size)`` (batch-first if ``batch_first``) and the
            final state, ``(h_n, c_n)`` for LSTM units and ``h_n`` for GRU units, shaped like ``hx``.
        """
        if self.batch_first:
            x = x.transpose(0, 1)
        if x.dim() != 3 or x.shape[2] != self.input_size or x.shape[0] == 0:
            layout = "(B, T, {})" if self.batch_first else "(T, B, {})"
            raise ValueError(
                f"expected x of shape {layout.format(self.input_size)} with T >= 1, got {tuple(x.shape)}"
            )
        steps, batch = x.shape[0], x.shape[1]
        h_0, c_0 = self._initial_state(hx, x)
        keep: list[Tensor] | None = None
        if episode_starts is not None:
            if self.bidirectional:
                raise ValueError("episode_starts is only supported for unidirectional RIMs")
            if episode_starts.shape != (steps, batch):
                raise ValueError(
                    f"expected episode_starts of shape (T, B) = {(steps, batch)}, "
                    f"got {tuple(episode_starts.shape)}"
                )
            keep = list((1.0 - episode_starts.to(x.dtype)).view(steps, 1, batch, 1).unbind(0))

        units, size = self.num_units, self.hidden_size
        layer_input = x
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        masks: list[Tensor] = []
        for layer in range(self.num_layers):
            inputs = layer_input.unbind(0)
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                cell = cast(RIMCell, self.cells[index])
                h = h_0[index].reshape(batch, units, size).transpose(0, 1)
                c = None if c_0 is None else c_0[index].reshape(batch, units, size).transpose(0, 1)
                hs: list[Tensor] = []
                step_masks: list[Tensor] = []
                for t in range(steps - 1, -1, -1) if direction == 1 else range(steps):
                    if keep is not None:
                        h = h * keep[t]
                        c = None if c is None else c * keep[t]
                    if c is not None and not self.carry_cell_state:
                        c = h
                    h, c, mask = cell._step(inputs[t], h, c)
                    hs.append(h)
                    step_masks.append(mask)
                if direction == 1:
                    hs.reverse()
                    step_masks.reverse()
                outputs.append(torch.stack(hs).permute(0, 2, 1, 3).reshape(steps, batch, units * size))
                masks.append(torch.stack(step_masks))
                h_n.append(h.transpose(0, 1).reshape(batch, units * size))
                if c is not None:
                    c_n.append(c.transpose(0, 1).reshape(batch, units * size))
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

        self.last_masks = torch.stack(masks, dim=1)[..., 0].transpose(2, 3).detach()
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        if self.rnn_cell == "GRU":
            return output, torch.stack(h_n)
        return output, (torch.stack(h_n), torch.stack(c_n))

    def _initial_state(
        self, hx: Tensor | tuple[Tensor, Tensor] | None, x: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        shape = (self.num_layers * self.num_directions, x.shape[1], self.state_size)
        lstm = self.rnn_cell == "LSTM"
        if hx is None:
            h_0 = x.new_zeros(shape)
            return h_0, torch.zeros_like(h_0) if lstm else None
        if lstm != isinstance(hx, tuple):
            expected = "a tuple (h_0, c_0)" if lstm else "a single tensor h_0"
            raise ValueError(f"an {self.rnn_cell} RIM expects hx to be {expected}, got {type(hx).__name__}")
        h_0, c_0 = hx if isinstance(hx, tuple) else (hx, None)
        for name, state in (("h_0", h_0), ("c_0", c_0)):
            if state is not None and state.shape != shape:
                raise ValueError(f"expected {name} of shape {shape}, got {tuple(state.shape)}")
        return h_0, c_0


def compile_rim(module: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """
    Compile the step of every :class:`RIMCell` in ``module`` (a cell, a :class:`RIM`, a policy) with
    ``torch.compile``, in place. Inductor fuses the step's many small element-wise kernels, which is where a
    small RIM spends its time on a CPU; the results equal the eager ones up to float rounding. Compiling
    takes tens of seconds at the first call, and again when the grad mode or the state's ``requires_grad``
    changes (a PPO run compiles about four graphs, then reuses them). Weights and ``state_dict`` are
    untouched, so a saved model loads uncompiled: call this again after loading.

    :param module: The module holding the cells.
    :param compile_kwargs: ``torch.compile`` arguments; default ``options={"cpp_wrapper": True}``, which
        also removes Python overhead per kernel.
    :return: ``module``
    :raises ValueError: if ``module`` holds no :class:`RIMCell`
    """
    cells = [cell for cell in module.modules() if isinstance(cell, RIMCell)]
    if not cells:
        raise ValueError(
            f"compile_rim found no RIMCell in the {type(module).__name__} it was given: pass a RIM, a "
            "RIMCell or a policy built with one (e.g. model.policy of a RecurrentPPO with RIMPolicy)"
        )
    settings = compile_kwargs or {"options": {"cpp_wrapper": True}}
    for cell in cells:
        cell._step = torch.compile(cell._step, **settings)  # type: ignore[method-assign]
    return module
