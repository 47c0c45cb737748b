"""
C-SWM training and evaluation speed against the original code (``ns.scr.train`` and ``ns.scr.eval_ids``,
measured on a 2-core CPU; see ``shared/reference/cswm.md`` sections 9.3 and 9.4).

1. Training step (forward, backward, Adam) of the small-encoder model at batch 1024 on fixed random images,
   median of ``--steps`` steps, as the reference's micro-benchmark (original: 195.7 samples/s baseline,
   163.6 with custom negatives). Each row is also run with the edge MLP evaluated edge by edge, as the
   original formulates it (``original GNN``), to compare on the same machine under the same load.
2. End-to-end training (:func:`~structrl.agents.cswm_training.train_cswm`, one epoch) on a collected
   200-episode ShapesImmovableTrain-v0 store (original: 184 samples/s over the whole loop).
3. Evaluation (:func:`~structrl.world_models.evaluation.evaluate`, 1 step, dedup) of 10,000
   ShapesImmovableEval-v0 episodes in a fresh process: wall time including the store reads, peak RSS
   (``VmHWM`` of ``/proc/self/status``, else ``resource.getrusage``) and peak traced Python allocations
   (``tracemalloc``: numpy arrays included, torch tensors not). Original ``eval_ids --dedup``: 166 s and
   14.2 GB peak RSS.

    python benchmarks/cswm_speed.py --json benchmarks/results/cswm_speed.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch as th

from structrl.agents.cswm_training import CSWMTrainConfig, train_cswm
from structrl.data.collection import CollectionConfig, collect_if_missing
from structrl.envs.registration import register_envs
from structrl.world_models.cswm import ContrastiveSWM, CSWMConfig
from structrl.world_models.evaluation import evaluate
from structrl.world_models.transition import TransitionGNN

ORIGINAL_STEP_SAMPLES_PER_SECOND = {"baseline": 195.7, "custom negatives": 163.6}
ORIGINAL_END_TO_END_SAMPLES_PER_SECOND = 184.0
ORIGINAL_EVAL_SECONDS = 166.0
ORIGINAL_EVAL_PEAK_RSS_GB = 14.2
BATCH_SIZE = 1024
#: Worker processes that collect a missing dataset.
COLLECT_PROCS = min(2, os.cpu_count() or 1)


def per_edge_messages(gnn: TransitionGNN, z: th.Tensor) -> th.Tensor:
    """
    The original formulation of the GNN messages: the whole edge MLP on each of the ``K (K - 1)`` edges,
    then a scatter-add to the receiving slots.

    :param gnn: the transition model (its weights are used)
    :param z: (B, K, D) object embeddings
    :return: (B, K, hidden) summed messages
    """
    pairs = th.cat([z[:, gnn.receivers], z[:, gnn.senders]], dim=-1)
    edges = gnn.edge_output(gnn.edge_hidden(gnn.edge_input(pairs)))
    return th.zeros(z.shape[0], gnn.num_objects, edges.shape[-1]).index_add_(1, gnn.receivers, edges)


def measure_step(negatives: str, formulation: str, threads: int, steps: int) -> float:
    """
    :param negatives: ``"baseline"`` (in-batch) or ``"custom negatives"`` (a third batch of images)
    :param formulation: ``"structrl"`` or ``"original GNN"``
    :param threads: torch threads
    :param steps: timed steps (after one warm-up step)
    :return: median samples per second of one optimizer step at batch 1024
    """
    th.set_num_threads(threads)
    th.manual_seed(0)
    model = ContrastiveSWM(CSWMConfig(encoder="small"))
    if formulation == "original GNN":
        model.transition.messages = lambda z: per_edge_messages(model.transition, z)  # type: ignore[method-assign]
    optimizer = th.optim.Adam(model.parameters(), lr=5e-4)
    generator = th.Generator().manual_seed(0)
    images = th.randint(0, 256, (3, BATCH_SIZE, 3, 50, 50), dtype=th.uint8, generator=generator)
    actions = th.randint(0, 20, (BATCH_SIZE,), generator=generator)
    negative_input = images[2] if negatives == "custom negatives" else th.roll(th.arange(BATCH_SIZE), 1)
    durations = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = model.loss(images[0], actions, images[1], negative_input)
        optimizer.zero_grad()
        loss.loss.backward()
        optimizer.step()
        durations.append(time.perf_counter() - started)
    return BATCH_SIZE / statistics.median(durations[1:])


def memory_bytes(field: str) -> int:
    """
    :param field: ``"VmHWM"`` (peak resident set of this process) or ``"VmRSS"`` (current)
    :return: the value from ``/proc/self/status``; without it, ``resource.getrusage``'s ``ru_maxrss``, which
        Linux carries over from the parent at fork and exec, so it may overstate a child's own peak
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _evaluation_worker(model_path: str, dataset: str, modes: list[str], threads: int, queue: Any) -> None:
    """Evaluate in a fresh process; report times, peak RSS and traced allocations."""
    th.set_num_threads(threads)
    rss_after_imports = memory_bytes("VmRSS")
    model = ContrastiveSWM.load(model_path)
    rows = []
    for mode in modes:
        started = time.perf_counter()
        result = evaluate(model, dataset, steps=(1,), modes=(mode,), dedup=True)[0]
        seconds = time.perf_counter() - started
        rows.append({"mode": mode, "seconds": seconds, "hits_at_1": result.hits[1], "mrr": result.mrr})
    peak_rss = memory_bytes("VmHWM")
    tracemalloc.start()
    evaluate(model, dataset, steps=(1,), modes=modes, dedup=True)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    queue.put(
        {"rows": rows, "peak_rss": peak_rss, "rss_after_imports": rss_after_imports, "traced": traced_peak}
    )


def measure_evaluation(model_path: Path, dataset: Path, modes: list[str], threads: int) -> dict[str, Any]:
    """
    :return: per-mode wall times and results, and the memory peaks of the evaluating process
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_evaluation_worker, args=(str(model_path), str(dataset), modes, threads, queue)
    )
    process.start()
    report = queue.get()
    process.join()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads to measure")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per row (default 5)")
    parser.add_argument(
        "--data", metavar="DIR", help="keep the collected stores here (default: a temporary folder)"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=10_000, help="evaluation episodes (default 10000)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    register_envs()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(args.data or scratch)
        data.mkdir(parents=True, exist_ok=True)
        train_store = collect_if_missing(
            CollectionConfig("ShapesImmovableTrain-v0", 200, seed=1),
            data / "shapes_imm_train_200.h5",
            procs=COLLECT_PROCS,
        )
        eval_store = collect_if_missing(
            CollectionConfig("ShapesImmovableEval-v0", args.eval_episodes, seed=2, save_state_ids=True),
            data / f"shapes_imm_eval_{args.eval_episodes}.h5",
            procs=COLLECT_PROCS,
        )
        steps = []
        for threads in args.threads:
            for negatives in ORIGINAL_STEP_SAMPLES_PER_SECOND:
                for formulation in ("structrl", "original GNN"):
                    rate = measure_step(negatives, formulation, threads, args.steps)
                    steps.append(
                        {
                            "threads": threads,
                            "negatives": negatives,
                            "formulation": formulation,
                            "samples_per_second": rate,
                        }
                    )
        end_to_end = []
        run_dir = Path(scratch) / "run"
        for threads in args.threads:
            th.set_num_threads(threads)
            config = CSWMTrainConfig(str(train_store), epochs=1, validation_fraction=0.1, seed=1)
            started = time.perf_counter()
            result = train_cswm(config, run_dir / str(threads))
            end_to_end.append(
                {
                    "threads": threads,
                    "samples_per_second": result.history[0].samples_per_second,
                    "wall_seconds": time.perf_counter() - started,
                }
            )
        model_path = run_dir / str(args.threads[0]) / "model.pt"
        evaluation = measure_evaluation(
            model_path, eval_store, ["all", "batched", "in-episode"], args.threads[0]
        )

    print("Training step, small encoder, batch 1024 (median samples/s)\n")
    print("| threads | negatives | GNN formulation | samples/s | original samples/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in steps:
        original, rate = ORIGINAL_STEP_SAMPLES_PER_SECOND[row["negatives"]], row["samples_per_second"]
        print(
            f"| {row['threads']} | {row['negatives']} | {row['formulation']} | {rate:.0f} | {original} "
            f"| {rate / original:.1f}x |"
        )
    print("\nEnd-to-end training, one epoch of 200 ShapesImmovableTrain-v0 episodes (180 for training)\n")
    print("| threads | samples/s | wall s (with load and validation) | original samples/s | speed-up |")
    print("|---|---|---|---|---|")
    for row in end_to_end:
        rate, original = row["samples_per_second"], ORIGINAL_END_TO_END_SAMPLES_PER_SECOND
        print(
            f"| {row['threads']} | {rate:.0f} | {row['wall_seconds']:.1f} | {original:.0f} "
            f"| {rate / original:.1f}x |"
        )
    gib = 1024**3
    print(
        f"\nEvaluation of {args.eval_episodes} ShapesImmovableEval-v0 episodes, 1 step, dedup, "
        f"{args.threads[0]} thread(s); fresh process (original eval_ids: {ORIGINAL_EVAL_SECONDS:.0f} s, "
        f"{ORIGINAL_EVAL_PEAK_RSS_GB} GB)\n"
    )
    print("| mode | wall s | Hits@1 | MRR |")
    print("|---|---|---|---|")
    for row in evaluation["rows"]:
        print(f"| {row['mode']} | {row['seconds']:.1f} | {row['hits_at_1']:.4f} | {row['mrr']:.4f} |")
    peak, imports, traced = (evaluation[key] / gib for key in ("peak_rss", "rss_after_imports", "traced"))
    print(
        f"\npeak RSS {peak:.2f} GiB (after imports: {imports:.2f} GiB); peak traced Python allocations "
        f"{traced:.3f} GiB"
    )
    if args.json:
        report = {
            "machine": {"cpus": os.cpu_count(), "torch": th.__version__, "python": platform.python_version()},
            "training_step": steps,
            "end_to_end": end_to_end,
            "evaluation": {"episodes": args.eval_episodes, "threads": args.threads[0], **evaluation},
            "original": {
                "step_samples_per_second": ORIGINAL_STEP_SAMPLES_PER_SECOND,
                "end_to_end_samples_per_second": ORIGINAL_END_TO_END_SAMPLES_PER_SECOND,
                "eval_seconds": ORIGINAL_EVAL_SECONDS,
                "eval_peak_rss_gb": ORIGINAL_EVAL_PEAK_RSS_GB,
            },
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
