"""
Speed of the RIM core against torch's LSTM at the same total hidden size (one CPU thread, train mode).

Times, per configuration and batch size: one RIMCell step forward + backward against ``nn.LSTMCell(I, N*H)``,
and a 32-step sequence forward + backward through ``RIM`` against a Python loop of ``nn.LSTMCell`` (and fused
``nn.LSTM`` for reference). Items are timed round-robin after a warm-up; medians are reported.

With ``--compile`` the RIM steps run through :func:`structrl.policies.compile_rim` (``torch.compile``; the
compilations happen during the untimed warm-up) and the results go to ``rim_speed_compiled.json``.

Usage: ``python benchmarks/rim_speed.py [--compile] [--json FILE] [--repeats 300]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from structrl.policies.rim import RIM, RIMCell, compile_rim

CONFIGS: dict[str, dict] = {
    "minigrid": {"num_units": 4, "hidden_size": 16, "k": 3, "cell_kwargs": {"input_value_size": 64}},
    "large": {"num_units": 6, "hidden_size": 64, "k": 4, "cell_kwargs": {}},
}
INPUT_SIZE = 64
SEQ_LEN = 32


def time_round_robin(
    items: dict[str, tuple[nn.Module, Callable[[], torch.Tensor]]], repeats: int, warmup: int
) -> dict[str, float]:
    """
    Median wall time in ms of forward + backward of each item, the items taking turns.

    :param items: Name -> (module, function returning the loss); the module's gradients are cleared (untimed)
        before each run, as an optimiser step would.
    :param repeats: Timed runs of each item.
    :param warmup: Untimed runs of each item first.
    """
    times: dict[str, list[float]] = {name: [] for name in items}
    for index in range(warmup + repeats):
        for name, (module, loss_fn) in items.items():
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss_fn().backward()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def bench_config(name: str, batch: int, repeats: int, seq_repeats: int, compiled: bool) -> dict:
    config = CONFIGS[name]
    units, size, k = config["num_units"], config["hidden_size"], config["k"]
    total = units * size
    torch.manual_seed(0)
    cell = RIMCell(INPUT_SIZE, size, units, k, "LSTM", **config["cell_kwargs"]).train()
    rim = RIM(INPUT_SIZE, size, units, k, "LSTM", **config["cell_kwargs"]).train()
    lstm_cell = nn.LSTMCell(INPUT_SIZE, total).train()
    lstm = nn.LSTM(INPUT_SIZE, total).train()
    if compiled:  # a fresh compiler per configuration, as in a training process of one model
        torch._dynamo.reset()
        compile_rim(cell)
        compile_rim(rim)

    x = torch.randn(batch, INPUT_SIZE)
    hs, cs = torch.randn(batch, units, size), torch.randn(batch, units, size)
    h_flat, c_flat = hs.reshape(batch, total), cs.reshape(batch, total)
    seq = torch.randn(SEQ_LEN, batch, INPUT_SIZE)

    def rim_step() -> torch.Tensor:
        h, c, _ = cell(x, hs, cs)
        assert c is not None
        return h.sum() + c.sum()

    def lstm_step() -> torch.Tensor:
        h, c = lstm_cell(x, (h_flat, c_flat))
        return h.sum() + c.sum()

    def rim_seq() -> torch.Tensor:
        return rim(seq)[0].sum()

    def lstm_loop() -> torch.Tensor:
        h, c = torch.zeros(batch, total), torch.zeros(batch, total)
        outputs = []
        for t in range(SEQ_LEN):
            h, c = lstm_cell(seq[t], (h, c))
            outputs.append(h)
        return torch.stack(outputs).sum()

    def lstm_fused() -> torch.Tensor:
        return lstm(seq)[0].sum()

    step = time_round_robin(
        {"rim": (cell, rim_step), "lstm_cell": (lstm_cell, lstm_step)}, repeats, warmup=30
    )
    sequence = time_round_robin(
        {"rim": (rim, rim_seq), "lstm_cell_loop": (lstm_cell, lstm_loop), "lstm_fused": (lstm, lstm_fused)},
        seq_repeats,
        warmup=3,
    )
    return {
        "config": name,
        "batch": batch,
        "num_units": units,
        "hidden_size": size,
        "k": k,
        "step_fwd_bwd_ms": {"rim_cell": step["rim"], "lstm_cell": step["lstm_cell"]},
        "step_ratio": step["rim"] / step["lstm_cell"],
        "seq32_fwd_bwd_ms": {
            "rim": sequence["rim"],
            "lstm_cell_loop": sequence["lstm_cell_loop"],
            "lstm_fused": sequence["lstm_fused"],
        },
        "seq32_ratio_vs_loop": sequence["rim"] / sequence["lstm_cell_loop"],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| config | B | RIMCell step fwd+bwd (ms) | LSTMCell step (ms) | ratio | RIM seq32 (ms) "
        "| LSTMCell loop seq32 (ms) | ratio | nn.LSTM seq32 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        step, seq = row["step_fwd_bwd_ms"], row["seq32_fwd_bwd_ms"]
        lines.append(
            f"| {row['config']} ({row['num_units']}x{row['hidden_size']}, Ka {row['k']}) | {row['batch']} "
            f"| {step['rim_cell']:.3f} | {step['lstm_cell']:.3f} | {row['step_ratio']:.2f}x "
            f"| {seq['rim']:.1f} | {seq['lstm_cell_loop']:.1f} | {row['seq32_ratio_vs_loop']:.2f}x "
            f"| {seq['lstm_fused']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compile", action="store_true", help="compile the RIM steps (compile_rim)")
    parser.add_argument(
        "--json", type=Path, help="output (default benchmarks/results/rim_speed[_compiled].json)"
    )
    parser.add_argument("--repeats", type=int, default=300, help="timed repeats of each single step")
    parser.add_argument("--seq-repeats", type=int, default=20, help="timed repeats of each 32-step sequence")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()

    torch.set_num_threads(1)
    rows = [
        bench_config(name, batch, args.repeats, args.seq_repeats, args.compile)
        for name in args.configs
        for batch in args.batches
    ]
    print(markdown(rows))
    suffix = "_compiled" if args.compile else ""
    output = args.json or Path(f"benchmarks/results/rim_speed{suffix}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "repeats": args.repeats,
        "seq_repeats": args.seq_repeats,
        "mode": "train (dropout 0.1 active), LSTM units",
        "compiled": args.compile,
    }
    output.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
