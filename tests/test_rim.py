"""Tests of the RIM core (structrl.policies.rim) against independent per-unit and torch references."""

from __future__ import annotations

import copy
import math
import shutil
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from structrl.policies.rim import RIM, RIMCell, compile_rim

torch.set_num_threads(1)

SMALL: dict[str, Any] = dict(
    input_key_size=8,
    input_query_size=8,
    input_value_size=6,
    comm_key_size=4,
    comm_query_size=4,
    num_comm_heads=2,
)


def make_cell(rnn_cell: str = "LSTM", seed: int = 0, **kwargs) -> RIMCell:
    torch.manual_seed(seed)
    config = {**SMALL, "input_dropout": 0.0, "comm_dropout": 0.0, **kwargs}
    units = config.pop("num_units", 4)
    k = config.pop("k", 2)
    return RIMCell(5, 3, units, k, rnn_cell, **config)


def cell_inputs(cell: RIMCell, batch: int, seed: int = 1) -> tuple[Tensor, Tensor, Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cell.input_size, generator=gen)
    hs = torch.randn(batch, cell.num_units, cell.hidden_size, generator=gen)
    cs = (
        torch.randn(batch, cell.num_units, cell.hidden_size, generator=gen)
        if cell.rnn_cell == "LSTM"
        else None
    )
    return x, hs, cs


def reference_input_attention(cell: RIMCell, x: Tensor, hs: Tensor) -> tuple[Tensor, Tensor]:
    """
    Per-unit, per-head loop: softmax over the scores of [input, null] with an explicit zero null key/value.

    :return: p_input ``(B, N, heads)`` and the attended inputs u ``(B, N, heads * value_size)``.
    """
    batch, heads = x.shape[0], cell.num_input_heads
    d_k, d_v = cell.input_key_size, cell.input_value_size
    kv = x @ cell.weight_kv + cell.bias_kv
    keys = torch.stack([kv[:, : heads * d_k], torch.zeros(batch, heads * d_k)], dim=1)  # (B, 2, heads * d_k)
    values = torch.stack([kv[:, heads * d_k :], torch.zeros(batch, heads * d_v)], dim=1)
    p_input = torch.empty(batch, cell.num_units, heads)
    u = torch.empty(batch, cell.num_units, heads * d_v)
    for n in range(cell.num_units):
        query = hs[:, n] @ cell.weight_hh[n, :, : heads * d_k] + cell.bias_hh[n, 0, : heads * d_k]
        for a in range(heads):
            head = slice(a * d_k, (a + 1) * d_k)
            scores = (keys[:, :, head] @ query[:, head, None]).squeeze(-1) / math.sqrt(d_k)  # (B, 2)
            probs = torch.softmax(scores, dim=-1)
            p_input[:, n, a] = probs[:, 0]
            u[:, n, a * d_v : (a + 1) * d_v] = (
                probs[:, :, None] * values[:, :, a * d_v : (a + 1) * d_v]
            ).sum(1)
    return p_input, u


def reference_seed_input_attention(cell: RIMCell, x: Tensor, hs: Tensor) -> tuple[Tensor, Tensor]:
    """
    The seed's input attention, per unit and head: the null key and value are the input projection's biases,
    queries have no bias, and units rank by their raw score to the real input.

    :return: the ranking scores ``(B, N)`` (mean raw input score over heads) and the attended inputs u
        ``(B, N, heads * value_size)``.
    """
    batch, heads = x.shape[0], cell.num_input_heads
    d_k, d_v = cell.input_key_size, cell.input_value_size
    kv = x @ cell.weight_kv + cell.bias_kv
    null = cell.bias_kv.expand(batch, -1)
    keys = torch.stack([kv[:, : heads * d_k], null[:, : heads * d_k]], dim=1)
    values = torch.stack([kv[:, heads * d_k :], null[:, heads * d_k :]], dim=1)
    ranking = torch.zeros(batch, cell.num_units)
    u = torch.empty(batch, cell.num_units, heads * d_v)
    for n in range(cell.num_units):
        query = hs[:, n] @ cell.weight_hh[n, :, : heads * d_k]
        for a in range(heads):
            head = slice(a * d_k, (a + 1) * d_k)
            scores = (keys[:, :, head] @ query[:, head, None]).squeeze(-1) / math.sqrt(d_k)  # (B, 2)
            ranking[:, n] += scores[:, 0] / heads
            probs = torch.softmax(scores, dim=-1)
            u[:, n, a * d_v : (a + 1) * d_v] = (
                probs[:, :, None] * values[:, :, a * d_v : (a + 1) * d_v]
            ).sum(1)
    return ranking, u


def reference_step(
    cell: RIMCell, x: Tensor, hs: Tensor, cs: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The cell's equations with a Python loop over units and heads, from slices of the cell's parameters."""
    size, queries = cell.hidden_size, cell.num_input_heads * cell.input_key_size
    if cell.seed_attention:
        ranking, u = reference_seed_input_attention(cell, x, hs)
    else:
        p_input, u = reference_input_attention(cell, x, hs)
        ranking = p_input.mean(-1)
    mask = torch.zeros_like(ranking, dtype=torch.bool)
    mask.scatter_(1, ranking.argsort(dim=1, descending=True)[:, : cell.k], True)
    h_rnn, c_rnn = torch.empty_like(hs), torch.empty_like(hs)
    for n in range(cell.num_units):
        if cell.seed_update:  # no biases; inactive units run on a zero input
            gi = torch.where(mask[:, n, None], u[:, n], 0.0) @ cell.weight_ih[n]
            gh = hs[:, n] @ cell.weight_hh[n, :, queries:]
        else:
            gi = u[:, n] @ cell.weight_ih[n] + cell.bias_ih[n, 0]
            gh = hs[:, n] @ cell.weight_hh[n, :, queries:] + cell.bias_hh[n, 0, queries:]
        if cs is None:
            r = torch.sigmoid(gi[:, :size] + gh[:, :size])
            z = torch.sigmoid(gi[:, size : 2 * size] + gh[:, size : 2 * size])
            cand = torch.tanh(gi[:, 2 * size :] + r * gh[:, 2 * size :])
            h_rnn[:, n] = (1 - z) * cand + z * hs[:, n]
        else:
            i, f, g, o = (gi + gh).split(size, dim=-1)
            c_rnn[:, n] = torch.sigmoid(f) * cs[:, n] + torch.sigmoid(i) * torch.tanh(g)
            h_rnn[:, n] = torch.sigmoid(o) * torch.tanh(c_rnn[:, n])
    # Communication reads the inactive units' carried states, or with seed_update their zero-input updates.
    states = h_rnn if cell.seed_update else torch.where(mask[..., None], h_rnn, hs)
    h_new = torch.where(mask[..., None], h_rnn, hs)
    if cell.communication:
        heads, d_c, d_v = cell.num_comm_heads, cell.comm_key_size, cell.comm_value_size
        width = 2 * d_c + d_v
        qkv = [states[:, m] @ cell.comm_qkv[m] for m in range(cell.num_units)]
        h_new = torch.empty_like(hs)
        for n in range(cell.num_units):
            heads_out = []
            for a in range(heads):
                q = qkv[n][:, a * width : a * width + d_c]
                k = torch.stack(
                    [qkv[m][:, a * width + d_c : a * width + 2 * d_c] for m in range(cell.num_units)], 1
                )
                v = torch.stack(
                    [qkv[m][:, a * width + 2 * d_c : (a + 1) * width] for m in range(cell.num_units)], 1
                )
                beta = torch.softmax((k @ q[:, :, None]).squeeze(-1) / math.sqrt(d_c), dim=-1)  # (B, M)
                heads_out.append((beta[:, :, None] * v).sum(1))
            h_new[:, n] = h_rnn[:, n] + torch.cat(heads_out, dim=-1) @ cell.comm_out[n]
        h_new = torch.where(mask[..., None], h_new, hs)
    c_new = None if cs is None else torch.where(mask[..., None], c_rnn, cs)
    return h_new, c_new, mask


LOOP_CONFIGS = [
    pytest.param({}, id="1head-broadcast"),
    pytest.param({"num_input_heads": 2, "comm_value_size": 5, "_broadcast_comm": False}, id="2heads-bmm"),
    pytest.param({"num_units": 6, "k": 4, "_broadcast_comm": True}, id="6units-broadcast"),
]


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("communication", [True, False])
@pytest.mark.parametrize("config", LOOP_CONFIGS)
def test_cell_matches_per_unit_loop(rnn_cell: str, communication: bool, config: dict) -> None:
    config = dict(config)
    broadcast = config.pop("_broadcast_comm", None)
    cell = make_cell(rnn_cell, communication=communication, **config)
    if broadcast is not None:
        cell._broadcast_comm = broadcast
    x, hs, cs = cell_inputs(cell, batch=7)
    with torch.no_grad():
        h_new, c_new, mask = cell(x, hs, cs)
        h_ref, c_ref, mask_ref = reference_step(cell, x, hs, cs)
    assert torch.equal(mask, mask_ref)
    assert (h_new - h_ref).abs().max() < 1e-5
    if rnn_cell == "LSTM":
        assert c_new is not None and c_ref is not None
        assert (c_new - c_ref).abs().max() < 1e-5
    else:
        assert c_new is None


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("heads", [1, 2])
def test_seed_attention_matches_per_unit_loop(rnn_cell: str, heads: int) -> None:
    cell = make_cell(rnn_cell, num_units=5, k=3, num_input_heads=heads, seed_attention=True)
    with torch.no_grad():  # non-zero biases and queries, so that the null token and the ranking matter
        cell.bias_kv.normal_()
        cell.weight_hh.normal_(0.0, 0.5)
    x, hs, cs = cell_inputs(cell, batch=16)
    with torch.no_grad():
        h_new, c_new, mask = cell(x, hs, cs)
        h_ref, c_ref, mask_ref = reference_step(cell, x, hs, cs)
        # The paper's ranking of the same attention: least null attention, i.e. the largest score difference
        # q . (x W_k + b_k) - q . b_k, summed over heads.
        queries = cell.num_input_heads * cell.input_key_size
        query = torch.einsum("bnh,nhq->bnq", hs, cell.weight_hh[..., :queries])
        difference = (query * (x @ cell.weight_kv[:, :queries])[:, None]).sum(-1)
    assert torch.equal(mask, mask_ref)
    assert (h_new - h_ref).abs().max() < 1e-5
    if rnn_cell == "LSTM":
        assert c_new is not None and c_ref is not None and (c_new - c_ref).abs().max() < 1e-5
    # The raw-score ranking picks other units than the least null attention would (rim.md bug 15).
    paper = torch.zeros_like(mask).scatter_(1, difference.argsort(1, descending=True)[:, :3], True)
    assert not torch.equal(mask, paper)


def test_seed_attention_initialisation_and_unused_query_bias() -> None:
    cell = RIMCell(64, 16, 4, 3, input_value_size=64, seed_attention=True)
    queries = cell.input_key_size
    assert torch.count_nonzero(cell.bias_kv) == 0 and torch.count_nonzero(cell.bias_hh[..., :queries]) == 0
    assert 0.005 < cell.weight_hh[..., :queries].std() < 0.02
    assert cell.weight_hh[..., queries:].abs().max() <= 0.25
    x = torch.randn(8, 64)
    hs, cs = torch.randn(8, 4, 16), torch.randn(8, 4, 16)
    h_new, c_new, _ = cell(x, hs, cs)
    (h_new.sum() + c_new.sum()).backward()
    assert cell.bias_hh.grad is not None and torch.count_nonzero(cell.bias_hh.grad[..., :queries]) == 0
    assert cell.bias_kv.grad is not None and cell.bias_kv.grad.abs().sum() > 0
    # At the zero state every query is 0, so every score ties and every row activates the same units.
    with torch.no_grad():
        masks = cell(x, torch.zeros_like(hs), torch.zeros_like(cs))[2]
    assert len({tuple(row.tolist()) for row in masks}) == 1
    assert "seed_attention=True" in repr(cell)


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("communication", [True, False])
@pytest.mark.parametrize("seed_attention", [False, True])
def test_seed_update_matches_per_unit_loop(rnn_cell: str, communication: bool, seed_attention: bool) -> None:
    cell = make_cell(
        rnn_cell,
        num_units=5,
        k=3,
        communication=communication,
        seed_attention=seed_attention,
        seed_update=True,
    )
    queries = cell.num_input_heads * cell.input_key_size
    assert torch.count_nonzero(cell.bias_ih) == 0 and torch.count_nonzero(cell.bias_hh[..., queries:]) == 0
    if communication:  # the seed's initialisation, then weights large enough for communication to matter
        assert 0.005 < cell.comm_qkv.std() < 0.02 and 0.005 < cell.comm_out.std() < 0.02
    with torch.no_grad():  # biases the update must ignore
        cell.bias_ih.normal_()
        cell.bias_hh.normal_()
        if communication:
            cell.comm_qkv.normal_(0.0, 0.5)
            cell.comm_out.normal_(0.0, 0.5)
    x, hs, cs = cell_inputs(cell, batch=16)
    with torch.no_grad():
        h_new, c_new, mask = cell(x, hs, cs)
        h_ref, c_ref, mask_ref = reference_step(cell, x, hs, cs)
        cell.seed_update = False
        cell.bias_ih.zero_()
        cell.bias_hh[..., queries:] = 0.0
        h_carried = cell(x, hs, cs)[0]
    assert torch.equal(mask, mask_ref)
    assert (h_new - h_ref).abs().max() < 1e-5
    if rnn_cell == "LSTM":
        assert c_new is not None and c_ref is not None and (c_new - c_ref).abs().max() < 1e-5
    # Without biases the two updates differ only in what communication reads from the inactive units.
    if communication:
        assert (h_new - h_carried).abs().max() > 1e-3
    else:
        assert (h_new - h_carried).abs().max() < 1e-6


def test_broadcast_and_bmm_communication_agree() -> None:
    cell = make_cell(num_units=5, k=3, num_comm_heads=3)
    x, hs, cs = cell_inputs(cell, batch=9)
    with torch.no_grad():
        cell._broadcast_comm = True
        h_broadcast, _, _ = cell(x, hs, cs)
        cell._broadcast_comm = False
        h_bmm, _, _ = cell(x, hs, cs)
    assert (h_broadcast - h_bmm).abs().max() < 1e-5


def torch_cells(cell: RIMCell) -> list[nn.Module]:
    """One nn.LSTMCell / nn.GRUCell per unit, with that unit's weights and biases copied in."""
    queries = cell.num_input_heads * cell.input_key_size
    rnn_input = cell.num_input_heads * cell.input_value_size
    cls = nn.LSTMCell if cell.rnn_cell == "LSTM" else nn.GRUCell
    cells: list[nn.Module] = []
    for n in range(cell.num_units):
        unit = cls(rnn_input, cell.hidden_size)
        with torch.no_grad():
            unit.weight_ih.copy_(cell.weight_ih[n].t())
            unit.weight_hh.copy_(cell.weight_hh[n, :, queries:].t())
            unit.bias_ih.copy_(cell.bias_ih[n, 0])
            unit.bias_hh.copy_(cell.bias_hh[n, 0, queries:])
        cells.append(unit)
    return cells


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("zero_queries", [True, False])
def test_all_active_cell_equals_torch_cells(rnn_cell: str, zero_queries: bool) -> None:
    cell = make_cell(rnn_cell, num_units=3, k=3, communication=False)
    x, hs, cs = cell_inputs(cell, batch=6)
    queries = cell.num_input_heads * cell.input_key_size
    with torch.no_grad():
        if zero_queries:
            # Zero queries: all scores are 0, so p_input = 1/2 exactly and u = value / 2 for every unit.
            cell.weight_hh[:, :, :queries] = 0.0
            cell.bias_hh[:, :, :queries] = 0.0
            value = x @ cell.weight_kv[:, queries:] + cell.bias_kv[queries:]
            u = 0.5 * value[:, None].expand(-1, cell.num_units, -1)
        else:
            u = reference_input_attention(cell, x, hs)[1]
        h_new, c_new, mask = cell(x, hs, cs)
        assert mask.all()
        for n, unit in enumerate(torch_cells(cell)):
            if rnn_cell == "LSTM":
                assert cs is not None and c_new is not None
                h_ref, c_ref = unit(u[:, n], (hs[:, n], cs[:, n]))
                assert (c_new[:, n] - c_ref).abs().max() < 1e-5
            else:
                h_ref = unit(u[:, n], hs[:, n])
            assert (h_new[:, n] - h_ref).abs().max() < 1e-5


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    "seed_attention, seed_update", [(False, False), (True, False), (False, True), (True, True)]
)
def test_inactive_units_keep_state_and_get_no_gradient(
    rnn_cell: str, seed_attention: bool, seed_update: bool
) -> None:
    cell = make_cell(
        rnn_cell,
        num_units=4,
        k=2,
        # no input dropout: it can zero an active unit's whole input, leaving its input weights no gradient
        input_dropout=0.0,
        comm_dropout=0.1,
        seed_attention=seed_attention,
        seed_update=seed_update,
    )
    cell.train()
    x, hs, cs = cell_inputs(cell, batch=1)
    h_new, c_new, mask = cell(x, hs, cs)
    inactive = (~mask[0]).nonzero().flatten().tolist()
    active = mask[0].nonzero().flatten().tolist()
    assert len(active) == 2 and len(inactive) == 2
    for n in inactive:
        assert torch.equal(h_new[0, n], hs[0, n])
        if cs is not None:
            assert c_new is not None and torch.equal(c_new[0, n], cs[0, n])

    loss = h_new.sum() + (c_new.sum() if c_new is not None else 0.0)
    loss.backward()
    grads = {
        "weight_ih": cell.weight_ih.grad,
        "bias_ih": cell.bias_ih.grad,
        "weight_hh": cell.weight_hh.grad,
        "bias_hh": cell.bias_hh.grad,
        "comm_out": cell.comm_out.grad,
    }
    if seed_update:  # the unit RNNs have no biases
        del grads["bias_ih"], grads["bias_hh"]
        assert cell.bias_ih.grad is None
    for name, grad in grads.items():
        assert grad is not None
        for n in inactive:
            assert torch.count_nonzero(grad[n]) == 0, f"inactive unit {n} got a gradient in {name}"
        for n in active:
            assert grad[n].abs().sum() > 0, f"active unit {n} got no gradient in {name}"


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
def test_initialisation(rnn_cell: str) -> None:
    cell = RIMCell(64, 16, 4, 3, rnn_cell, input_value_size=64)
    bound = 1 / math.sqrt(16)
    for name in ("weight_hh", "bias_hh", "weight_ih", "comm_qkv"):
        param = getattr(cell, name)
        assert param.abs().max() <= bound and param.std() > bound / 3, name
    assert cell.comm_out.abs().max() <= 1 / math.sqrt(4 * 16)
    assert cell.weight_kv.abs().max() <= 1 / math.sqrt(64) and cell.bias_kv.abs().max() <= 1 / math.sqrt(64)
    forget = cell.bias_ih[..., 16:32]
    others = torch.cat([cell.bias_ih[..., :16], cell.bias_ih[..., 32:]], dim=-1)
    assert others.abs().max() <= bound
    if rnn_cell == "LSTM":
        assert ((forget - 1).abs() <= bound).all() and abs(forget.mean().item() - 1) < 0.1
    else:
        assert forget.abs().max() <= bound


@pytest.mark.parametrize("heads", [1, 3])
def test_mask_selects_least_null_attention(heads: int) -> None:
    cell = make_cell(num_units=6, k=3, num_input_heads=heads)
    x, hs, cs = cell_inputs(cell, batch=32)
    with torch.no_grad():
        _, _, mask = cell(x, hs, cs)
        p_null = 1.0 - reference_input_attention(cell, x, hs)[0].mean(-1)
    assert (mask.sum(1) == 3).all()
    # Every active unit has a smaller null attention than every inactive unit of the same row.
    worst_active = p_null.masked_fill(~mask, -1.0).amax(1)
    best_inactive = p_null.masked_fill(mask, 2.0).amin(1)
    assert (worst_active < best_inactive).all()


def test_mask_depends_on_input_at_zero_state() -> None:
    cell = make_cell(num_units=4, k=2).eval()
    x = torch.randn(64, cell.input_size, generator=torch.Generator().manual_seed(3))
    zeros = torch.zeros(64, cell.num_units, cell.hidden_size)
    with torch.no_grad():
        masks = {tuple(row.tolist()) for row in cell(x, zeros, zeros)[2]}
        assert len(masks) > 1
        # Without the query bias every score ties at 0 and every row selects the same units (bug 6b).
        cell.bias_hh[:, :, : cell.input_key_size] = 0.0
        assert len({tuple(row.tolist()) for row in cell(x, zeros, zeros)[2]}) == 1


def test_cell_accepts_three_dim_input() -> None:
    cell = make_cell().eval()
    x, hs, cs = cell_inputs(cell, batch=4)
    with torch.no_grad():
        flat = cell(x, hs, cs)
        seq = cell(x[:, None], hs, cs)
    assert torch.equal(flat[0], seq[0]) and torch.equal(flat[2], seq[2])


RIM_KWARGS: dict[str, Any] = dict(SMALL, input_dropout=0.0, comm_dropout=0.0)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_rim_shapes_and_final_states(
    num_layers: int, bidirectional: bool, rnn_cell: str, batch_first: bool
) -> None:
    torch.manual_seed(0)
    steps, batch, units, size, k = 5, 3, 3, 4, 2
    rim = RIM(6, size, units, k, rnn_cell, num_layers, bidirectional, batch_first, **RIM_KWARGS)
    directions = 2 if bidirectional else 1
    assert len(rim.cells) == num_layers * directions
    assert rim.state_size == units * size
    x = torch.randn(batch, steps, 6) if batch_first else torch.randn(steps, batch, 6)
    output, state = rim(x)
    h_n, c_n = state if rnn_cell == "LSTM" else (state, None)
    assert isinstance(h_n, Tensor)
    assert output.shape == ((batch, steps) if batch_first else (steps, batch)) + (directions * units * size,)
    assert h_n.shape == (num_layers * directions, batch, units * size)
    if rnn_cell == "LSTM":
        assert c_n is not None and c_n.shape == h_n.shape
    time_major = output.transpose(0, 1) if batch_first else output
    last = (num_layers - 1) * directions
    assert torch.equal(h_n[last], time_major[-1, :, : units * size])
    if bidirectional:
        assert torch.equal(h_n[last + 1], time_major[0, :, units * size :])
    assert rim.last_masks is not None
    assert rim.last_masks.shape == (steps, num_layers * directions, batch, units)
    assert rim.last_masks.dtype == torch.bool and not rim.last_masks.requires_grad
    assert (rim.last_masks.sum(-1) == k).all()


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
def test_rim_equals_stepping_its_cells(rnn_cell: str) -> None:
    torch.manual_seed(0)
    steps, batch, units, size = 4, 2, 3, 4
    rim = RIM(6, size, units, 2, rnn_cell, bidirectional=True, **RIM_KWARGS).eval()
    x = torch.randn(steps, batch, 6)
    with torch.no_grad():
        output, _ = rim(x)
        for direction, times in ((0, range(steps)), (1, range(steps - 1, -1, -1))):
            hs = torch.zeros(batch, units, size)
            cs = torch.zeros(batch, units, size) if rnn_cell == "LSTM" else None
            for t in times:
                hs, cs, mask = rim.cells[direction](x[t], hs, cs)
                columns = slice(direction * units * size, (direction + 1) * units * size)
                assert torch.equal(output[t, :, columns], hs.reshape(batch, -1))
                assert rim.last_masks is not None and torch.equal(rim.last_masks[t, direction], mask)


def test_seed_compatible_cell_state_is_rebuilt_from_the_hidden_state() -> None:
    torch.manual_seed(0)
    steps, batch, units, size = 5, 2, 3, 4
    rim = RIM(6, size, units, 2, carry_cell_state=False, **RIM_KWARGS).eval()
    x = torch.randn(steps, batch, 6)
    h0 = torch.randn(1, batch, units * size)
    with torch.no_grad():
        output, (h_n, c_n) = rim(x, (h0, torch.randn(1, batch, units * size)))
        hs = h0.reshape(batch, units, size)
        for t in range(steps):  # the seed's glue: c_{t-1} := h_{t-1} before every step
            hs, cs, _ = rim.cells[0](x[t], hs, hs.clone())
            assert torch.equal(output[t], hs.reshape(batch, -1))
        assert torch.equal(h_n[0], hs.reshape(batch, -1)) and torch.equal(c_n[0], cs.reshape(batch, -1))
        rim.carry_cell_state = True
        carried, _ = rim(x, (h0, torch.zeros(1, batch, units * size)))
    assert not torch.allclose(carried[1:], output[1:])


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
def test_episode_starts_equal_separate_sequences(rnn_cell: str) -> None:
    torch.manual_seed(0)
    steps, reset, units, size = 6, 3, 3, 4
    rim = RIM(6, size, units, 2, rnn_cell, num_layers=2, **RIM_KWARGS).eval()
    x = torch.randn(steps, 2, 6)
    shape = (2, 2, units * size)
    hx = (torch.randn(shape), torch.randn(shape)) if rnn_cell == "LSTM" else torch.randn(shape)
    starts = torch.zeros(steps, 2)
    starts[reset, 0] = 1.0

    def row(state: Tensor | tuple[Tensor, Tensor], b: int) -> Tensor | tuple[Tensor, Tensor]:
        return (
            (state[0][:, b : b + 1], state[1][:, b : b + 1])
            if isinstance(state, tuple)
            else state[:, b : b + 1]
        )

    with torch.no_grad():
        output, _ = rim(x, hx, episode_starts=starts)
        first, _ = rim(x[:reset, :1], row(hx, 0))
        second, _ = rim(x[reset:, :1])
        untouched, _ = rim(x[:, 1:], row(hx, 1))
        assert torch.allclose(output[:reset, :1], first, atol=1e-6)
        assert torch.allclose(output[reset:, :1], second, atol=1e-6)
        assert torch.allclose(output[:, 1:], untouched, atol=1e-6)
        assert torch.allclose(rim(x, hx, episode_starts=starts.bool())[0], output)
        assert not torch.allclose(rim(x, hx)[0][reset:, :1], second, atol=1e-3)


def test_episode_starts_need_unidirectional_and_time_major_shape() -> None:
    rim = RIM(6, 4, 3, 2, bidirectional=True, **RIM_KWARGS)
    with pytest.raises(ValueError, match="unidirectional"):
        rim(torch.randn(5, 2, 6), episode_starts=torch.zeros(5, 2))
    rim = RIM(6, 4, 3, 2, batch_first=True, **RIM_KWARGS)
    with pytest.raises(ValueError, match=r"episode_starts of shape \(T, B\) = \(5, 2\), got \(2, 5\)"):
        rim(torch.randn(2, 5, 6), episode_starts=torch.zeros(2, 5))


def test_eval_is_deterministic_and_train_uses_dropout() -> None:
    torch.manual_seed(0)
    rim = RIM(6, 4, 3, 2, **SMALL)
    x = torch.randn(5, 4, 6)
    rim.eval()
    with torch.no_grad():
        assert torch.equal(rim(x)[0], rim(x)[0])
        rim.train()
        assert not torch.equal(rim(x)[0], rim(x)[0])


@pytest.mark.parametrize(
    ("input_dropout", "comm_dropout", "communication", "random"),
    [(0.5, 0.0, False, True), (0.0, 0.5, False, False), (0.0, 0.5, True, True)],
)
def test_dropout_arguments_act_where_named(
    input_dropout: float, comm_dropout: float, communication: bool, random: bool
) -> None:
    cell = make_cell(
        num_units=4, k=2, input_dropout=input_dropout, comm_dropout=comm_dropout, communication=communication
    )
    cell.train()
    x, hs, cs = cell_inputs(cell, batch=16)
    with torch.no_grad():
        outputs = [cell(x, hs, cs)[0] for _ in range(3)]
    assert any(not torch.equal(outputs[0], out) for out in outputs[1:]) == random


def test_comm_value_size_is_honoured() -> None:
    cell = make_cell(comm_value_size=7, num_comm_heads=2)
    assert cell.comm_out.shape == (cell.num_units, 2 * 7, cell.hidden_size)
    assert cell.comm_qkv.shape == (cell.num_units, cell.hidden_size, 2 * (2 * 4 + 7))
    assert make_cell().comm_value_size == make_cell().hidden_size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ({"num_input_heads": -1}, "num_input_heads must be a positive integer, got -1"),
        ({"k": 0}, r"k must satisfy 1 <= k <= num_units = 4, got k = 0"),
        ({"k": 5}, r"k must satisfy 1 <= k <= num_units = 4, got k = 5"),
        ({"rnn_cell": "RNN"}, "rnn_cell must be 'LSTM' or 'GRU'.*got 'RNN'"),
        ({"input_dropout": 1.0}, r"input_dropout must be in \[0, 1\), got 1.0"),
        ({"comm_dropout": -0.1}, r"comm_dropout must be in \[0, 1\), got -0.1"),
        ({"input_key_size": 16}, r"input_key_size \(16\) must equal input_query_size \(64\).*dot products"),
        ({"comm_query_size": 8}, r"comm_key_size \(32\) must equal comm_query_size \(8\)"),
    ],
)
def test_cell_argument_validation(kwargs: dict, message: str) -> None:
    args = {"input_size": 5, "hidden_size": 3, "num_units": 4, "k": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        RIMCell(**args)


def test_forward_argument_validation() -> None:
    assert RIMCell(5, 3, 4, 2, "gru").rnn_cell == "GRU"
    assert RIM(5, 3, 4, 2, "lstm").rnn_cell == "LSTM"
    cell = make_cell()
    x, hs, cs = cell_inputs(cell, batch=2)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 5\) or \(B, 1, 5\), got \(2, 6\)"):
        cell(torch.randn(2, 6), hs, cs)
    with pytest.raises(ValueError, match=r"expected hs of shape \(2, 4, 3\), got \(2, 3, 4\)"):
        cell(x, hs.transpose(1, 2), cs)
    with pytest.raises(ValueError, match="GRU units have no cell state"):
        make_cell("GRU")(x, hs, cs)
    rim = RIM(6, 4, 3, 2, num_layers=2, **RIM_KWARGS)
    with pytest.raises(ValueError, match="num_layers must be a positive integer, got 0"):
        RIM(6, 4, 3, 2, num_layers=0)
    with pytest.raises(ValueError, match=r"expected x of shape \(T, B, 6\) with T >= 1, got \(5, 2, 7\)"):
        rim(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match=r"LSTM RIM expects hx to be a tuple \(h_0, c_0\), got Tensor"):
        rim(torch.randn(5, 2, 6), torch.zeros(2, 2, 12))
    with pytest.raises(ValueError, match=r"expected c_0 of shape \(2, 2, 12\), got \(1, 2, 12\)"):
        rim(torch.randn(5, 2, 6), (torch.zeros(2, 2, 12), torch.zeros(1, 2, 12)))


@pytest.mark.parametrize("rnn_cell", ["LSTM", "GRU"])
def test_gradcheck(rnn_cell: str) -> None:
    cell = make_cell(rnn_cell, num_units=3, k=2, num_input_heads=2).double()
    x, hs, cs = (None if t is None else t.double().requires_grad_() for t in cell_inputs(cell, batch=2))
    names = [name for name, _ in cell.named_parameters()]
    params = tuple(getattr(cell, name).detach().clone().requires_grad_() for name in names)

    def step(x: Tensor, hs: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        cs, weights = (args[0], args[1:]) if rnn_cell == "LSTM" else (None, args)
        h, c, _ = torch.func.functional_call(cell, dict(zip(names, weights, strict=True)), (x, hs, cs))
        return (h,) if c is None else (h, c)

    inputs = (x, hs, *(() if cs is None else (cs,)), *params)
    assert torch.autograd.gradcheck(step, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.skipif(
    not any(shutil.which(compiler) for compiler in ("g++", "c++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_compiled_rim_matches_eager() -> None:
    torch.manual_seed(0)
    eager = RIM(5, 4, 3, 2, "LSTM", input_dropout=0.0, comm_dropout=0.0, **SMALL)
    compiled = compile_rim(copy.deepcopy(eager))
    assert all("_step" in vars(cell) for cell in compiled.modules() if isinstance(cell, RIMCell))
    assert not any("_step" in vars(cell) for cell in eager.modules() if isinstance(cell, RIMCell))
    x = torch.randn(3, 2, 5, requires_grad=True)
    results = []
    for model in (eager, compiled):
        output, (h_n, c_n) = model(x)
        (output.square().sum() + c_n.sum()).backward()
        grads = [parameter.grad.clone() for parameter in model.parameters() if parameter.grad is not None]
        assert x.grad is not None
        results.append((output.detach(), h_n.detach(), c_n.detach(), x.grad.clone(), grads))
        x.grad = None
    for eager_value, compiled_value in zip(results[0][:4], results[1][:4], strict=True):
        torch.testing.assert_close(compiled_value, eager_value, rtol=1e-5, atol=1e-6)
    for eager_grad, compiled_grad in zip(results[0][4], results[1][4], strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


def test_compile_rim_refuses_a_module_without_rim_cells() -> None:
    with pytest.raises(ValueError, match="found no RIMCell in the LSTM"):
        compile_rim(nn.LSTM(4, 4))
