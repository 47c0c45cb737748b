"""
Sample efficiency of behaviour cloning on BabyAI GoToLocal (Spilsbury & Ilin, 2022, Fig. 3 and 4b).

For every agent (factored attention without and with the L1 sparsity penalty, the FiLM/GRU and Transformer
baselines), number of demonstrations per ID goal (``--limits``) and seed, train ``structrl bc`` with periodic
greedy evaluation on the fixed ID and OOD validation seeds of the demonstration store. As in the paper, each
run contributes its ``--top-k`` evaluation points with the best ID success rate, and at those same points
its OOD success rate (so the OOD curve is selected by ID performance); per limit, the interquartile mean
(IQM) over seeds x points gets a stratified-bootstrap 95% confidence interval from ``rliable``.

Writes to ``--out``:

* ``runs/AGENT/limitL/seedS/`` (or under ``--runs-dir``): the ``structrl bc`` run directories (a run with
  a ``summary.json`` is finished and skipped, an interrupted one with the same settings goes on from its
  last checkpoint, so an interrupted benchmark resumes);
* ``sample_efficiency.json``: per agent and limit the IQM and CI of ID and OOD success, and every run's
  selected points;
* ``sample_efficiency_id.png``, ``sample_efficiency_ood.png``: the curves;
* ``similarity_matrices.png``: the learned word x attribute cosine similarities of the factored attention
  models (mean over seeds, at the largest limit), without and with the penalty (the paper's internal
  correlations).

The paper's budget is 10 seeds, limits 50 ... 9980, 70 000 steps of batch 32 per run on a GPU (``--steps``
fixes the steps whatever the limit, as the paper did). On a 2-core CPU the README's reduced run took about
3 h, its agents split over two processes that share the run directories::

    structrl demos --per-goal 70 --out demos70.h5
    python benchmarks/compgen_sample_efficiency.py --dataset demos70.h5 --agents factored transformer \
        --limits 10 50 --seeds 0 1 2 --steps 3500 --eval-every 250 --eval-episodes 48 --top-k 3 \
        --sparsity-start 1000 --sparsity-ramp 2000 --runs-dir runs/compgen --out runs/compgen/a &
    python benchmarks/compgen_sample_efficiency.py ... --agents factored-l1 film ... --out runs/compgen/b
    python benchmarks/compgen_sample_efficiency.py ... --agents factored factored-l1 film transformer \
        --plot-only --out benchmarks/results/compgen

The dataset needs ``max(limits) + 20`` demonstrations of every ID goal and 40 of every held-out goal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch as th
from matplotlib.ticker import NullFormatter
from rliable import metrics, plot_utils
from similarity_heatmaps import plot_word_attribute_matrices

from structrl.agents.behavior_cloning import (
    BEST_MODEL_FILE,
    SUMMARY_FILE,
    BCConfig,
    load_bc_config,
    read_bc_checkpoint,
    resume_bc,
    train_bc,
)
from structrl.agents.evaluation import load_model, write_json
from structrl.data.episode_store import EpisodeReader
from structrl.data.splits import split_demo_store
from structrl.policies.factored_attention import FactoredAttentionExtractor
from structrl.policies.grounding import grounding_accuracy

try:  # rliable's bootstrap needs arch < 8, which breaks on pandas >= 3
    from rliable import library as rly
except TypeError as error:
    sys.exit(f"rliable's bootstrap cannot be imported ({error}): install pandas<3 next to rliable")


@dataclass(frozen=True)
class Agent:
    """
    One curve of the figure.

    :param label: Legend label.
    :param model: ``structrl bc --model``.
    :param sparse: Train with the sparsity penalty (``--sparsity-weight``).
    """

    label: str
    model: str
    sparse: bool = False


AGENTS = {
    "factored": Agent("Factored attention", "factored-attention"),
    "factored-l1": Agent("Factored attention + L1", "factored-attention", sparse=True),
    "film": Agent("FiLM/GRU", "film"),
    "transformer": Agent("Transformer enc-dec", "transformer"),
}
VALIDATION_SETS = ("id", "ood")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="demonstration store (structrl demos)")
    parser.add_argument("--out", default="benchmarks/results/compgen", help="output folder")
    parser.add_argument("--runs-dir", help="folder of the run directories (default: OUT/runs)")
    parser.add_argument("--agents", nargs="+", choices=list(AGENTS), default=list(AGENTS))
    parser.add_argument("--limits", nargs="+", type=int, default=[10, 50, 100, 250, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=10, help="passes over the demonstrations per run")
    budget.add_argument(
        "--steps",
        type=int,
        help="optimizer steps per run whatever the limit, as in the paper (rounded up to whole epochs)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sparsity-weight", type=float, default=1.0, help="final L1 weight of factored-l1")
    parser.add_argument(
        "--sparsity-start", type=int, default=1000, help="steps before the L1 weight ramps up"
    )
    parser.add_argument("--sparsity-ramp", type=int, default=5000, help="steps of the ramp")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, help="validation episodes per set and evaluation")
    parser.add_argument("--top-k", type=int, default=10, help="best evaluation points per run (paper: 10)")
    parser.add_argument("--reps", type=int, default=50_000, help="bootstrap resamples (paper: 50 000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot-only", action="store_true", help="aggregate the finished runs, train nothing")
    args = parser.parse_args()
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive number of optimizer steps, got {args.steps}")
    return args


def run_dir(runs: Path, agent: str, limit: int, seed: int) -> Path:
    return runs / agent / f"limit{limit}" / f"seed{seed}"


def epochs_for_steps(args: argparse.Namespace, limit: int) -> int:
    """Passes over ``limit`` demonstrations per ID goal that make at least ``args.steps`` optimizer steps."""
    train = split_demo_store(args.dataset, limit=limit).train
    with EpisodeReader(args.dataset) as store:
        transitions = int(store.episode_lengths[train].sum())
    return max(1, math.ceil(args.steps * args.batch_size / transitions))


def train_missing_runs(args: argparse.Namespace, runs: Path) -> None:
    """Train every (agent, limit, seed) run that has no summary yet."""
    available = split_demo_store(args.dataset).limit
    if max(args.limits) > available:
        sys.exit(f"{args.dataset} has {available} training demonstrations of some ID goal; --limits asks for "
                 f"{max(args.limits)}: collect more (structrl demos --per-goal)")  # fmt: skip
    todo = [
        (agent, limit, seed)
        for limit in args.limits
        for seed in args.seeds
        for agent in args.agents
        if not (run_dir(runs, agent, limit, seed) / SUMMARY_FILE).is_file()
    ]
    print(f"{len(todo)} runs to train", flush=True)
    epochs = {
        limit: args.epochs if args.steps is None else epochs_for_steps(args, limit)
        for limit in {limit for _, limit, _ in todo}
    }
    for number, (agent, limit, seed) in enumerate(todo, 1):
        spec = AGENTS[agent]
        config = BCConfig(
            dataset=args.dataset,
            model=spec.model,
            limit=limit,
            sparsity_weight=args.sparsity_weight if spec.sparse else 0.0,
            sparsity_start=args.sparsity_start,
            sparsity_ramp=args.sparsity_ramp,
            epochs=epochs[limit],
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=seed,
            eval_every=args.eval_every,
            eval_episodes=args.eval_episodes,
        )
        started = time.perf_counter()
        directory = run_dir(runs, agent, limit, seed)
        saved = read_bc_checkpoint(directory)
        if saved is not None and not saved["finished"] and load_bc_config(directory) == config:
            summary = resume_bc(directory, threads=args.threads)  # interrupted: go on from its last epoch
        else:
            summary = train_bc(config, directory, threads=args.threads)
        best = summary["best"]
        print(
            f"[{number}/{len(todo)}] {agent} limit {limit} seed {seed}: {summary['steps']} steps in "
            f"{time.perf_counter() - started:.0f} s, best ID {best['id_success_rate']:.3f} "
            f"(OOD {best['ood_success_rate']:.3f})",
            flush=True,
        )


def read_summaries(args: argparse.Namespace, runs: Path) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """The summaries of the finished runs by agent and limit (limits that lack a seed are left out)."""
    summaries: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for agent in args.agents:
        for limit in args.limits:
            paths = [run_dir(runs, agent, limit, seed) / SUMMARY_FILE for seed in args.seeds]
            if all(path.is_file() for path in paths):
                summaries.setdefault(agent, {})[limit] = [read_json(path) for path in paths]
    return summaries


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def top_points(summary: dict[str, Any], k: int) -> dict[str, list[float]]:
    """The ID and OOD success rates at the run's ``k`` evaluation points with the best ID success."""
    evaluations = sorted(summary["evaluations"], key=lambda record: -record["id_success_rate"])[:k]
    return {which: [record[f"{which}_success_rate"] for record in evaluations] for which in VALIDATION_SETS}


def aggregate(
    args: argparse.Namespace, summaries: dict[str, dict[int, list[dict[str, Any]]]]
) -> tuple[list[int], dict[str, Any]]:
    """IQM and bootstrap CIs of ID and OOD success per agent and limit (the limits every agent finished)."""
    limits = [limit for limit in args.limits if all(limit in by_limit for by_limit in summaries.values())]
    runs = [summary for by_limit in summaries.values() for limit in limits for summary in by_limit[limit]]
    k = min([args.top_k] + [len(summary["evaluations"]) for summary in runs])
    results: dict[str, Any] = {}
    for which in VALIDATION_SETS:
        scores = {
            agent: np.stack(
                [
                    np.array([top_points(summary, k)[which] for summary in by_limit[limit]])
                    for limit in limits
                ],
                axis=-1,
            )  # (seeds, k, limits)
            for agent, by_limit in summaries.items()
        }

        def iqm_per_limit(values: np.ndarray) -> np.ndarray:
            return np.array([metrics.aggregate_iqm(values[..., index]) for index in range(values.shape[-1])])

        with warnings.catch_warnings():  # arch deprecates the random_state that rliable passes on
            warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
            points, intervals = rly.get_interval_estimates(
                scores, iqm_per_limit, reps=args.reps, random_state=np.random.RandomState(0)
            )
        for agent in scores:
            entry = results.setdefault(agent, {"label": AGENTS[agent].label, "runs": {}})
            entry[which] = {
                "iqm": points[agent].tolist(),
                "ci_low": intervals[agent][0].tolist(),
                "ci_high": intervals[agent][1].tolist(),
            }
            for index, limit in enumerate(limits):
                entry["runs"].setdefault(str(limit), {})[which] = scores[agent][:, :, index].tolist()
    return limits, {"top_k": k, "agents": results}


def plot_curves(limits: list[int], results: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    for which, title in (("id", "ID goals (held-back seeds)"), ("ood", "OOD goals (held-out instructions)")):
        labels = {agent: entry["label"] for agent, entry in results["agents"].items()}
        points = {labels[agent]: np.array(entry[which]["iqm"]) for agent, entry in results["agents"].items()}
        intervals = {
            labels[agent]: np.array([entry[which]["ci_low"], entry[which]["ci_high"]])
            for agent, entry in results["agents"].items()
        }
        ax = plot_utils.plot_sample_efficiency_curve(
            np.array(limits),
            points,
            intervals,
            algorithms=list(points),
            xlabel="Demonstrations per goal",
            ylabel="IQM success rate",
            labelsize="large",
            ticklabelsize="large",
        )
        ax.set_xscale("log")
        ax.set_xticks(limits, [str(limit) for limit in limits])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize="medium")
        path = out / f"sample_efficiency_{which}.png"
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
        plt.close(ax.figure)
        paths.append(path)
    return paths


def similarity_matrices(args: argparse.Namespace, runs: Path) -> dict[str, np.ndarray]:
    """
    The word x attribute cosine similarities of each factored attention agent at the largest limit, one
    matrix per seed, stacked ``(seeds, words, attributes)``.
    """
    agents = [agent for agent in ("factored", "factored-l1") if agent in args.agents]
    limit = max(args.limits)
    matrices = {}
    for agent in agents:
        paths = [run_dir(runs, agent, limit, seed) / BEST_MODEL_FILE for seed in args.seeds]
        if all(path.is_file() for path in paths):
            seeds = []
            for path in paths:
                extractor = load_model(path).policy.features_extractor
                assert isinstance(extractor, FactoredAttentionExtractor)
                with th.no_grad():
                    seeds.append(extractor.similarity_matrix().numpy())
            matrices[agent] = np.stack(seeds)
    return matrices


def similarity_summary(matrices: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """
    Per agent, the mean over seeds of each seed's mean |cos| (its L1 penalty), largest |cos| and grounding
    accuracy (the fraction of colour and type words most similar to the attribute they name).
    """
    return {
        agent: {
            "mean_abs_cos": float(np.abs(seeds).mean(axis=(1, 2)).mean()),
            "max_abs_cos": float(np.abs(seeds).max(axis=(1, 2)).mean()),
            "grounding_accuracy": float(np.mean([grounding_accuracy(matrix) for matrix in seeds])),
        }
        for agent, seeds in matrices.items()
    }


def plot_similarity_matrices(args: argparse.Namespace, matrices: dict[str, np.ndarray], out: Path) -> Path:
    """One heat map of the mean over seeds per factored attention agent."""
    limit = max(args.limits)
    panels = {
        f"{AGENTS[agent].label}, {limit} demos/goal, mean of {len(args.seeds)} seeds": seeds.mean(axis=0)
        for agent, seeds in matrices.items()
    }
    return plot_word_attribute_matrices(panels, out / "similarity_matrices.png")


def print_table(limits: list[int], results: dict[str, Any]) -> None:
    columns = [f"{which.upper()} @{limit}" for which in VALIDATION_SETS for limit in limits]
    print(f"| agent | {' | '.join(columns)} |")
    print("|---|" + "---:|" * len(columns))
    for entry in results["agents"].values():
        cells = [
            f"{iqm:.2f} [{low:.2f}, {high:.2f}]"
            for which in VALIDATION_SETS
            for iqm, low, high in zip(
                entry[which]["iqm"], entry[which]["ci_low"], entry[which]["ci_high"], strict=True
            )
        ]
        print(f"| {entry['label']} | {' | '.join(cells)} |")


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs_dir) if args.runs_dir else out / "runs"
    th.set_num_threads(args.threads)
    if not args.plot_only:
        train_missing_runs(args, runs)
    summaries = read_summaries(args, runs)
    if not summaries:
        sys.exit(f"no agent has finished all of its runs in {runs}")
    limits, results = aggregate(args, summaries)
    matrices = similarity_matrices(args, runs)
    settings = {key: value for key, value in vars(args).items() if key != "plot_only"}
    similarity = similarity_summary(matrices)
    write_json(
        out / "sample_efficiency.json",
        {"settings": settings, "limits": limits, **results, "similarity": similarity},
    )
    paths = plot_curves(limits, results, out)
    if matrices:
        paths.append(plot_similarity_matrices(args, matrices, out))
    print_table(limits, results)
    for agent, stats in similarity.items():
        print(
            f"{AGENTS[agent].label}: word x attribute |cos| mean {stats['mean_abs_cos']:.4f}, "
            f"max {stats['max_abs_cos']:.4f}, grounding accuracy {stats['grounding_accuracy']:.2f} "
            f"(per seed, mean over seeds; {max(args.limits)} demos per goal)"
        )
    print("wrote", out / "sample_efficiency.json", *paths)


if __name__ == "__main__":
    main()
