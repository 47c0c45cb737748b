"""
Does the goal discriminator's L1 penalty ground the words? (Spilsbury & Ilin, 2022, Fig. 4b.)

For every sparsity weight (``--sparsity-weights``; 0 is the paper's unregularised ``*_noreg`` model) and
seed, train ``structrl discriminator`` with factored attention, then read the word x attribute cosine
similarities of its interaction model and score them with
:func:`structrl.policies.grounding.grounding_accuracy`: the fraction of the 9 colour and object-type words
whose most similar attribute is the one they name (chance is about 1/17). The goal-map soft F1 on the ID
and OOD validation frames says how well the discriminator finds the goal.

Writes to ``--out``:

* ``runs/l1-W/seedS/`` (or under ``--runs-dir``): the ``structrl discriminator`` run directories (a run
  with a ``summary.json`` is finished and skipped; an interrupted one with the same settings goes on from
  its checkpoint);
* ``discriminator_grounding.json``: per weight and seed the best ID / OOD soft F1, the final matrix's
  grounding accuracy, mean |cos| and every content word's nearest attribute;
* ``discriminator_similarity.png``: the final matrices (mean over seeds), the named attributes boxed.

The paper trained 200 000 steps of batch 1024 on a GPU. What a 2-core CPU affords (0.6-1.4 s per step of
batch 128 with other runs beside it; the README's two seeds per weight took 30-68 min per run)::

    structrl demos --per-goal 70 --out demos70.h5
    python benchmarks/discriminator_grounding.py --dataset demos70.h5 --limit 50 --steps 3000 \
        --batch-size 128 --lr 1e-3 --sparsity-start 500 --sparsity-ramp 1500 --eval-every 250
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from similarity_heatmaps import plot_word_attribute_matrices

from structrl.agents.evaluation import write_json
from structrl.agents.goal_discriminator import (
    FINAL_FILE,
    SUMMARY_FILE,
    DiscriminatorConfig,
    load_discriminator_config,
    load_interaction_model,
    read_discriminator_checkpoint,
    resume_discriminator,
    train_discriminator,
)
from structrl.policies.grounding import ground_words, grounding_accuracy


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="demonstration store (structrl demos)")
    parser.add_argument("--out", default="benchmarks/results/discriminator", help="output folder")
    parser.add_argument("--runs-dir", help="folder of the run directories (default: OUT/runs)")
    parser.add_argument("--sparsity-weights", nargs="+", type=float, default=[0.0, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--limit", type=int, help="training episodes per ID goal (default: all)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sparsity-start", type=int, default=500, help="steps before the L1 weight ramps")
    parser.add_argument("--sparsity-ramp", type=int, default=1500, help="steps of the ramp")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between validations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot-only", action="store_true", help="report the finished runs, train nothing")
    return parser.parse_args()


def run_dir(runs: Path, weight: float, seed: int) -> Path:
    return runs / f"l1-{weight:g}" / f"seed{seed}"


def train_missing_runs(args: argparse.Namespace, runs: Path) -> None:
    """Train (or continue) every (weight, seed) run without a summary."""
    todo = [
        (weight, seed)
        for seed in args.seeds
        for weight in args.sparsity_weights
        if not (run_dir(runs, weight, seed) / SUMMARY_FILE).is_file()
    ]
    print(f"{len(todo)} runs to train", flush=True)
    for number, (weight, seed) in enumerate(todo, 1):
        config = DiscriminatorConfig(
            dataset=args.dataset,
            model="factored-attention",
            limit=args.limit,
            sparsity_weight=weight,
            sparsity_start=args.sparsity_start,
            sparsity_ramp=args.sparsity_ramp,
            steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=seed,
            eval_every=args.eval_every,
        )
        directory = run_dir(runs, weight, seed)
        started = time.perf_counter()
        resumable = read_discriminator_checkpoint(directory) is not None
        if resumable and load_discriminator_config(directory) == config:
            summary = resume_discriminator(directory, threads=args.threads)
        else:
            summary = train_discriminator(config, directory, threads=args.threads)
        best = summary["best"]
        print(
            f"[{number}/{len(todo)}] L1 weight {weight:g} seed {seed}: {summary['steps']} steps in "
            f"{time.perf_counter() - started:.0f} s, best ID soft F1 {best['id_soft_f1']:.3f} "
            f"(OOD {best['ood_soft_f1']:.3f}) at step {best['step']}",
            flush=True,
        )


def final_similarity(directory: Path) -> np.ndarray:
    """The word x attribute cosine similarities of a run's final interaction model."""
    interaction, _ = load_interaction_model(directory / FINAL_FILE)
    with th.no_grad():
        return interaction.similarity_matrix().numpy()


def report(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """Per weight, every finished seed's soft F1 and grounding, and their means."""
    results: dict[str, Any] = {}
    for weight in args.sparsity_weights:
        seeds = []
        for seed in args.seeds:
            directory = run_dir(runs, weight, seed)
            if not (directory / SUMMARY_FILE).is_file():
                continue
            best = json.loads((directory / SUMMARY_FILE).read_text())["best"]
            matrix = final_similarity(directory)
            seeds.append(
                {
                    "seed": seed,
                    "best_step": best["step"],
                    "id_soft_f1": best["id_soft_f1"],
                    "ood_soft_f1": best["ood_soft_f1"],
                    "grounding_accuracy": grounding_accuracy(matrix),
                    "mean_abs_cos": float(np.abs(matrix).mean()),
                    "nearest": {grounding.word: grounding.nearest for grounding in ground_words(matrix)},
                    "similarity": matrix.tolist(),
                }
            )
        if seeds:
            means = {
                key: float(np.mean([entry[key] for entry in seeds]))
                for key in ("id_soft_f1", "ood_soft_f1", "grounding_accuracy", "mean_abs_cos")
            }
            results[f"{weight:g}"] = {"weight": weight, "seeds": seeds, "mean": means}
    return results


def plot(results: dict[str, Any], out: Path) -> Path:
    """Heat maps of the mean final matrix per weight."""
    panels = {
        f"L1 weight {entry['weight']:g}: grounding {entry['mean']['grounding_accuracy']:.2f}, "
        f"ID soft F1 {entry['mean']['id_soft_f1']:.2f} ({len(entry['seeds'])} seed(s))": np.mean(
            [np.array(seed["similarity"]) for seed in entry["seeds"]], axis=0
        )
        for entry in results.values()
    }
    return plot_word_attribute_matrices(panels, out / "discriminator_similarity.png")


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs_dir) if args.runs_dir else out / "runs"
    th.set_num_threads(args.threads)
    if not args.plot_only:
        train_missing_runs(args, runs)
    results = report(args, runs)
    if not results:
        sys.exit(f"no discriminator run has finished in {runs}")
    settings = {key: value for key, value in vars(args).items() if key != "plot_only"}
    write_json(out / "discriminator_grounding.json", {"settings": settings, "weights": results})
    path = plot(results, out)
    print("| L1 weight | seeds | ID soft F1 | OOD soft F1 | grounding accuracy | mean abs cos |")
    print("|---:|---:|---:|---:|---:|---:|")
    for entry in results.values():
        mean = entry["mean"]
        print(
            f"| {entry['weight']:g} | {len(entry['seeds'])} | {mean['id_soft_f1']:.3f} | "
            f"{mean['ood_soft_f1']:.3f} | {mean['grounding_accuracy']:.2f} | {mean['mean_abs_cos']:.4f} |"
        )
    print("wrote", out / "discriminator_grounding.json", path)


if __name__ == "__main__":
    main()
