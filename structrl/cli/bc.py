"""``structrl bc``: behaviour cloning of BabyAI GoToLocal demonstrations with ID/OOD validation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from structrl.agents.behavior_cloning import (
    BC_MODELS,
    BEST_MODEL_FILE,
    MODEL_FILE,
    RECURRENT_POLICIES,
    SUMMARY_FILE,
    BCConfig,
    BCError,
    train_bc,
)
from structrl.cli.demos import add_split_arguments
from structrl.cli.train import parse_params


def add_bc_parser(subparsers: Any) -> None:
    """
    Add the ``bc`` sub-command.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    parser = subparsers.add_parser(
        "bc",
        help="behaviour cloning of GoToLocal demonstrations",
        description="Clone the first --limit demonstrations of each in-distribution goal of a store "
        "(structrl demos) into a policy (imitation's BC; whole episodes for --recurrent), evaluating it "
        "greedily every --eval-every steps on the ID and OOD validation seeds. Writes config.yml, "
        f"{BEST_MODEL_FILE} (best ID success), {MODEL_FILE}, {SUMMARY_FILE} and tensorboard/ to --out.",
    )
    parser.add_argument("--dataset", required=True, metavar="FILE.h5", help="the demonstration store")
    parser.add_argument("--model", required=True, choices=list(BC_MODELS), help="the features extractor")
    parser.add_argument(
        "--extractor-kwargs",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="features extractor arguments, values in YAML syntax (e.g. head_channels=[64,64])",
    )
    add_split_arguments(parser, evaluation=False)
    parser.add_argument(
        "--sparsity-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="final weight of the attention model's L1 sparsity penalty (default 0: none)",
    )
    parser.add_argument(
        "--sparsity-start",
        type=int,
        default=1000,
        metavar="N",
        help="steps before the weight ramps up (1000)",
    )
    parser.add_argument(
        "--sparsity-ramp", type=int, default=5000, metavar="N", help="steps of the linear ramp to W (5000)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="passes over the demonstrations (default 10)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="transitions per step; episodes per step with --recurrent (default 32)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    parser.add_argument("--ent-weight", type=float, default=1e-2, help="entropy bonus weight (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and batches (default 0)")
    parser.add_argument(
        "--recurrent", choices=list(RECURRENT_POLICIES), help="clone a recurrent policy on whole episodes"
    )
    parser.add_argument(
        "--dagger", action="store_true", help="then run DAgger rounds with the BabyAI bot as the expert"
    )
    parser.add_argument(
        "--dagger-rounds", type=int, default=3, help="DAgger rounds after round 0 (default 3)"
    )
    parser.add_argument(
        "--dagger-episodes", type=int, default=48, help="episodes collected per DAgger round (default 48)"
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=500,
        metavar="N",
        help="steps between evaluations, 0: at the end only (default 500)",
    )
    parser.add_argument(
        "--eval-episodes",
        type=int,
        metavar="N",
        help="validation episodes per set and evaluation, goal by goal (default: all)",
    )
    parser.add_argument("--eval-envs", type=int, default=32, help="envs stepped together in evaluations (32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/bc-MODEL-...-seedSEED)")
    parser.set_defaults(run=run_bc)


def _default_run_dir(args: argparse.Namespace) -> Path:
    parts = ["bc", args.model]
    if args.sparsity_weight > 0:
        parts.append(f"l1-{args.sparsity_weight:g}")
    if args.recurrent:
        parts.append(args.recurrent)
    if args.dagger:
        parts.append("dagger")
    parts.append(f"limit{args.limit}" if args.limit else "all")
    return Path("runs") / f"{'-'.join(parts)}-seed{args.seed}"


def run_bc(args: argparse.Namespace) -> int:
    """
    Run ``structrl bc``.

    :param args: the parsed arguments
    :return: the exit code
    """
    config = BCConfig(
        dataset=args.dataset,
        model=args.model,
        limit=args.limit,
        goal_split=args.goal_split,
        id_valid_per_goal=args.id_valid_per_goal,
        ood_valid_per_goal=args.ood_valid_per_goal,
        sparsity_weight=args.sparsity_weight,
        sparsity_start=args.sparsity_start,
        sparsity_ramp=args.sparsity_ramp,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        ent_weight=args.ent_weight,
        seed=args.seed,
        recurrent=args.recurrent,
        dagger=args.dagger,
        dagger_rounds=args.dagger_rounds,
        dagger_episodes=args.dagger_episodes,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        eval_envs=args.eval_envs,
        extractor_kwargs=parse_params(args.extractor_kwargs),
    )
    config.check()
    if args.threads < 1:
        raise BCError(f"--threads must be at least 1, got {args.threads}")
    run_dir = Path(args.out) if args.out else _default_run_dir(args)

    def show(record: dict[str, Any]) -> None:
        best = " (best)" if record["best"] else ""
        print(
            f"step {record['step']}: ID success {record['id_success_rate']:.3f}, "
            f"OOD success {record['ood_success_rate']:.3f}{best}",
            flush=True,
        )

    summary = train_bc(config, run_dir, threads=args.threads, on_evaluation=show)
    best = summary["best"]
    print(
        f"cloned {summary['train_episodes']} episodes ({summary['train_transitions']} transitions, "
        f"{summary['steps']} steps) in {summary['seconds']:.0f} s; best ID success "
        f"{best['id_success_rate']:.3f} (OOD {best['ood_success_rate']:.3f}) at step {best['step']}, "
        f"saved to {run_dir / BEST_MODEL_FILE}; final model {run_dir / MODEL_FILE}"
    )
    return 0
