"""
Negative sampling on ShapesImmovable, CubesImmovable and random-policy Pong (Biza et al., 2021, sections 4.1
and 4.2): C-SWMs trained with the original in-batch negatives (baseline) against structured negatives
(episodic + out-of-episode with beta 0.5 on the block worlds, time-aligned on Pong), ranked on an evaluation
store with state ids (object positions; Pong's console RAM), 1 step ahead, with deduplication (the seed's
block-world evaluation) and without (its Pong evaluation): Hits@1 and MRR, mean and standard deviation over
the seeds.

The stores follow the original README: for the block worlds 1000 training episodes of 100 steps and 10000
evaluation episodes of 10; Shapes uses the small encoder, Cubes the large one, 100 epochs. Pong: 1000
training and 100 evaluation episodes of 10 random steps after C-SWM's 58-step warm-up, the medium encoder
with 3 objects, 4-dimensional embeddings and the action copied to every object, 200 epochs. Stores and runs
are kept under ``--data`` and ``--runs``, and runs resume, so an interrupted benchmark continues where it
stopped. A reduced budget:

    python benchmarks/cswm_results.py --worlds shapes --epochs 4 --seeds 1 2 3 \
        --json benchmarks/results/cswm_results_shapes.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch as th

from structrl.agents.cswm_training import MODEL_FILE, CSWMTrainConfig, EpochRecord, train_cswm
from structrl.data.collection import CollectionConfig, collect_if_missing
from structrl.envs.registration import register_envs
from structrl.world_models.cswm import ContrastiveSWM, CSWMConfig
from structrl.world_models.evaluation import EVALUATION_MODES, evaluate

#: Label, negative sampling and beta of a compared strategy.
Strategy = tuple[str, str, float]
BASELINE: Strategy = ("baseline (in-batch)", "batch", 0.5)


@dataclass(frozen=True)
class World:
    """
    One world of the benchmark.

    :param train_env: Gymnasium id of the training episodes.
    :param train_seed: Seed of the training store.
    :param eval_env: Gymnasium id of the evaluation episodes.
    :param eval_seed: Seed of the evaluation store.
    :param model: C-SWM settings besides the defaults (the encoder, for one).
    :param strategies: The compared negative samplings, the baseline first.
    :param train_episodes: Training episodes.
    :param eval_episodes: Evaluation episodes.
    :param epochs: Training epochs of the original.
    """

    train_env: str
    train_seed: int
    eval_env: str
    eval_seed: int
    model: dict[str, Any] = field(default_factory=dict)
    strategies: tuple[Strategy, ...] = (BASELINE, ("episodic + out-of-episode, beta 0.5", "mixed", 0.5))
    train_episodes: int = 1000
    eval_episodes: int = 10_000
    epochs: int = 100


WORLDS = {
    "shapes": World("ShapesImmovableTrain-v0", 1, "ShapesImmovableEval-v0", 2, {"encoder": "small"}),
    "cubes": World("CubesImmovableTrain-v0", 3, "CubesImmovableEval-v0", 4, {"encoder": "large"}),
    "pong": World(
        "PongCswm-v0",
        5,
        "PongCswm-v0",
        6,
        {
            "encoder": "medium",
            "num_objects": 3,
            "embedding_dim": 4,
            "action_dim": 6,
            "action_encoding": "copy",
        },
        strategies=(BASELINE, ("time-aligned", "time-aligned", 0.5)),
        eval_episodes=100,
        epochs=200,
    ),
}
#: Keys of the results with and without deduplication.
DEDUP_KEYS = {True: "dedup", False: "no-dedup"}
#: Worker processes that collect a missing dataset.
COLLECT_PROCS = min(2, os.cpu_count() or 1)


def run_world(name: str, world: World, args: argparse.Namespace) -> list[dict[str, Any]]:
    """
    Train and evaluate every strategy and seed on one world.

    :return: one record per strategy and seed
    """
    data, runs = Path(args.data), Path(args.runs)
    train_episodes = world.train_episodes if args.train_episodes is None else args.train_episodes
    eval_episodes = world.eval_episodes if args.eval_episodes is None else args.eval_episodes
    epochs = world.epochs if args.epochs is None else args.epochs
    train_store = collect_if_missing(
        CollectionConfig(world.train_env, train_episodes, seed=world.train_seed),
        data / f"{name}_train_{train_episodes}_s{world.train_seed}.h5",
        procs=COLLECT_PROCS,
    )
    eval_store = collect_if_missing(
        CollectionConfig(world.eval_env, eval_episodes, seed=world.eval_seed, save_state_ids=True),
        data / f"{name}_eval_{eval_episodes}_s{world.eval_seed}.h5",
        procs=COLLECT_PROCS,
    )
    model_settings = dict(world.model, negative_anchor=args.negative_anchor)
    if name == "cubes" and args.cubes_encoder:
        model_settings["encoder"] = args.cubes_encoder
    encoder = model_settings["encoder"]
    records = []
    for label, negatives, beta in world.strategies:
        for seed in args.seeds:
            config = CSWMTrainConfig(
                dataset=str(train_store),
                model=CSWMConfig(**model_settings),
                negatives=negatives,
                beta=beta,
                epochs=epochs,
                seed=seed,
            )
            run_dir = runs / (
                f"{name}-{train_episodes}-{encoder}-{negatives}-{args.negative_anchor}-e{epochs}-s{seed}"
            )

            def report(record: EpochRecord, run: str = run_dir.name) -> None:
                print(
                    f"{run}: epoch {record.epoch}, validation loss {record.validation_loss:.4f}",
                    file=sys.stderr,
                )

            started = time.perf_counter()
            training = train_cswm(config, run_dir, resume=True, on_epoch=report)
            model = ContrastiveSWM.load(run_dir / MODEL_FILE)
            results = {
                dedup: evaluate(model, eval_store, steps=(1,), modes=args.modes, dedup=dedup)
                for dedup in (True, False)
            }
            records.append(
                {
                    "world": name,
                    "strategy": label,
                    "negatives": negatives,
                    "seed": seed,
                    "encoder": encoder,
                    "train_episodes": train_episodes,
                    "eval_episodes": eval_episodes,
                    "epochs": epochs,
                    "best_epoch": training.best_epoch,
                    "best_validation_loss": training.best_validation_loss,
                    "seconds_this_call": time.perf_counter() - started,
                    "results": {
                        DEDUP_KEYS[dedup]: {
                            result.mode: {"hits_at_1": result.hits[1], "mrr": result.mrr} for result in ranked
                        }
                        for dedup, ranked in results.items()
                    },
                }
            )
    return records


def positive_int(text: str) -> int:
    """
    :param text: a command-line value
    :return: it as a positive integer
    :raises argparse.ArgumentTypeError: naming the value otherwise
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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
        "--epochs", type=positive_int, help="training epochs (default: the original's, 100; Pong 200)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (default 1 2 3)"
    )
    parser.add_argument("--train-episodes", type=positive_int, help="training episodes (default 1000)")
    parser.add_argument(
        "--eval-episodes", type=positive_int, help="evaluation episodes (default 10000; Pong 100)"
    )
    parser.add_argument("--cubes-encoder", help="encoder of the Cubes models (default large)")
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
    print(f"1-step ranking, seeds {seeds}, negatives compared with the {args.negative_anchor} state\n")
    print(
        "| world | train episodes | epochs | encoder | negatives | mode | Hits@1 (dedup) | MRR (dedup) "
        "| Hits@1 | MRR |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.worlds:
        for label, _, _ in WORLDS[name].strategies:
            group = [record for record in records if record["world"] == name and record["strategy"] == label]
            first = group[0]
            for mode in args.modes:
                cells = [
                    mean_std([record["results"][key][mode][metric] for record in group])
                    for key in DEDUP_KEYS.values()
                    for metric in ("hits_at_1", "mrr")
                ]
                print(
                    f"| {name} | {first['train_episodes']} | {first['epochs']} | {first['encoder']} "
                    f"| {label} | {mode} | {' | '.join(cells)} |"
                )
    if args.json:
        report = {
            "settings": {key: value for key, value in vars(args).items() if key != "json"},
            "runs": records,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
