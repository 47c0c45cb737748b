"""
Negative sampling on ShapesImmovable and CubesImmovable (Biza et al., 2021, section 4.1): C-SWMs trained with
the original in-batch negatives (baseline) against episodic + out-of-episode negatives (beta 0.5), ranked on
an evaluation store with state ids and deduplication, 1 step ahead (Hits@1, MRR; mean and standard deviation
over the seeds).

The stores follow the original README: 1000 training episodes (seeds 1 and 3) and 10000 evaluation episodes
with state ids (seeds 2 and 4); Shapes uses the small encoder, Cubes the large one, other settings are the
defaults (100 epochs). Stores and runs are kept under ``--data`` and ``--runs``, and runs resume, so an
interrupted benchmark continues where it stopped. A reduced budget:

    python benchmarks/cswm_results.py --epochs 1 --seeds 1 --json benchmarks/results/cswm_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch as th

from structrl.agents.cswm_training import MODEL_FILE, CSWMTrainConfig, EpochRecord, train_cswm
from structrl.data.collection import CollectionConfig, collect_if_missing
from structrl.envs.registration import register_envs
from structrl.world_models.cswm import ContrastiveSWM, CSWMConfig
from structrl.world_models.evaluation import EVALUATION_MODES, evaluate


@dataclass(frozen=True)
class World:
    """
    One block-pushing world of the benchmark.

    :param train_env: Gymnasium id of the training episodes.
    :param train_seed: Seed of the training store.
    :param eval_env: Gymnasium id of the evaluation episodes.
    :param eval_seed: Seed of the evaluation store.
    :param encoder: Object extractor.
    """

    train_env: str
    train_seed: int
    eval_env: str
    eval_seed: int
    encoder: str


WORLDS = {
    "shapes": World("ShapesImmovableTrain-v0", 1, "ShapesImmovableEval-v0", 2, "small"),
    "cubes": World("CubesImmovableTrain-v0", 3, "CubesImmovableEval-v0", 4, "large"),
}
#: Label, negative sampling and beta of the compared strategies.
STRATEGIES = (("baseline (in-batch)", "batch", 0.5), ("episodic + out-of-episode, beta 0.5", "mixed", 0.5))
#: Worker processes that collect a missing dataset.
COLLECT_PROCS = min(2, os.cpu_count() or 1)


def run_world(name: str, world: World, args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Train and evaluate every strategy and seed on one world.

    :return: one record per strategy and seed
    """
    data, runs = Path(args.data), Path(args.runs)
    train_store = collect_if_missing(
        CollectionConfig(world.train_env, args.train_episodes, seed=world.train_seed),
        data / f"{name}_train_{args.train_episodes}_s{world.train_seed}.h5",
        procs=COLLECT_PROCS,
    )
    eval_store = collect_if_missing(
        CollectionConfig(world.eval_env, args.eval_episodes, seed=world.eval_seed, save_state_ids=True),
        data / f"{name}_eval_{args.eval_episodes}_s{world.eval_seed}.h5",
        procs=COLLECT_PROCS,
    )
    encoder = args.cubes_encoder if name == "cubes" else world.encoder
    records = []
    for label, negatives, beta in STRATEGIES:
        for seed in args.seeds:
            config = CSWMTrainConfig(
                dataset=str(train_store),
                model=CSWMConfig(encoder=encoder, negative_anchor=args.negative_anchor),
                negatives=negatives,
                beta=beta,
                epochs=args.epochs,
                seed=seed,
            )
            run_dir = runs / (
                f"{name}-{args.train_episodes}-{encoder}-{negatives}-{args.negative_anchor}-e{args.epochs}-s{seed}"
            )

            def report(record: EpochRecord, run: str = run_dir.name) -> None:
                print(
                    f"{run}: epoch {record.epoch}, validation loss {record.validation_loss:.4f}",
                    file=sys.stderr,
                )

            training = train_cswm(config, run_dir, resume=True, on_epoch=report)
            model = ContrastiveSWM.load(run_dir / MODEL_FILE)
            results = evaluate(model, eval_store, steps=(1,), modes=args.modes, dedup=True)
            records.append(
                {
                    "world": name,
                    "strategy": label,
                    "negatives": negatives,
                    "seed": seed,
                    "encoder": encoder,
                    "epochs": args.epochs,
                    "best_epoch": training.best_epoch,
                    "best_validation_loss": training.best_validation_loss,
                    "results": {
                        result.mode: {"hits_at_1": result.hits[1], "mrr": result.mrr} for result in results
                    },
                }
            )
    return records


def mean_std(values: list[float]) -> str:
    """
    :param values: one value per seed
    :return: ``"mean ± std"`` (``"mean"`` for a single seed)
    """
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", nargs="+", choices=sorted(WORLDS), default=["shapes", "cubes"])
    parser.add_argument(
        "--epochs", type=int, default=100, help="training epochs (default 100, the original's)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (default 1 2 3)"
    )
    parser.add_argument("--train-episodes", type=int, default=1000, help="training episodes (default 1000)")
    parser.add_argument(
        "--eval-episodes", type=int, default=10_000, help="evaluation episodes (default 10000)"
    )
    parser.add_argument(
        "--cubes-encoder", default="large", help="encoder of the Cubes models (default large)"
    )
    parser.add_argument(
        "--negative-anchor",
        default="next",
        choices=("next", "current"),
        help="compare negatives with the next state (default) or the current one, as the original code did",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=EVALUATION_MODES, default=["all"], help="rankings (default all)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--data", default="runs/cswm_data", help="folder of the episode stores")
    parser.add_argument("--runs", default="runs/cswm_results", help="folder of the training runs")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    register_envs()
    if args.threads is not None:
        th.set_num_threads(args.threads)
    records = [record for name in args.worlds for record in run_world(name, WORLDS[name], args)]

    seeds = " ".join(map(str, args.seeds))
    print(
        f"1-step ranking with dedup: {args.train_episodes} training episodes, {args.eval_episodes} "
        f"evaluation episodes, {args.epochs} epochs, seeds {seeds}, negatives compared with the "
        f"{args.negative_anchor} state\n"
    )
    print("| world | encoder | negatives | mode | Hits@1 | MRR |")
    print("|---|---|---|---|---|---|")
    for name in args.worlds:
        for label, _, _ in STRATEGIES:
            group = [record for record in records if record["world"] == name and record["strategy"] == label]
            for mode in args.modes:
                hits = [record["results"][mode]["hits_at_1"] for record in group]
                mrr = [record["results"][mode]["mrr"] for record in group]
                encoder = group[0]["encoder"]
                print(f"| {name} | {encoder} | {label} | {mode} | {mean_std(hits)} | {mean_std(mrr)} |")
    if args.json:
        report = {
            "settings": {key: value for key, value in vars(args).items() if key != "json"},
            "runs": records,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
