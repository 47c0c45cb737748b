"""``structrl bc``: behaviour cloning of BabyAI GoToLocal demonstrations with ID/OOD validation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from structrl.agents.behavior_cloning import (
    BC_MODELS,
    BEST_MODEL_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    RECURRENT_POLICIES,
    SUMMARY_FILE,
    BCConfig,
    BCError,
    load_bc_config,
    read_bc_checkpoint,
    resume_bc,
    train_bc,
)
from structrl.cli.demos import add_split_arguments
from structrl.cli.train import EXIT_INTERRUPTED, parse_params

#: Options that may be given with ``--resume`` (the others define a new run).
_RESUME_OPTIONS = ("epochs", "eval_envs", "threads")
#: Parsed names that are not options of the run.
_NOT_OPTIONS = ("command", "run", "resume")
#: ``BCConfig`` fields by option name, where they differ.
_CONFIG_NAMES = {"lr": "learning_rate"}


def add_bc_parser(subparsers: Any) -> None:
    """
    Add the ``bc`` sub-command.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    defaults = BCConfig(dataset="")
    parser = subparsers.add_parser(
        "bc",
        help="behaviour cloning of GoToLocal demonstrations",
        description="Clone the first --limit demonstrations of each in-distribution goal of a store "
        "(structrl demos) into a policy (imitation's BC; whole episodes for --recurrent), evaluating it "
        "greedily every --eval-every steps on the ID and OOD validation seeds. Writes config.yml, "
        f"{BEST_MODEL_FILE} (best ID success), {MODEL_FILE}, {CHECKPOINT_FILE} (the state after the last "
        f"epoch), {SUMMARY_FILE} and tensorboard/ to --out. Ctrl-C saves the current policy to {MODEL_FILE}; "
        "--resume DIR continues an interrupted run from its last epoch (or a finished one, with more "
        "--epochs).",
    )
    parser.add_argument(
        "--dataset", metavar="FILE.h5", help="the demonstration store (required for a new run)"
    )
    parser.add_argument(
        "--model", choices=list(BC_MODELS), help="the features extractor (required for a new run)"
    )
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
        metavar="W",
        help="final weight of the attention model's L1 sparsity penalty (default 0: none)",
    )
    parser.add_argument(
        "--sparsity-start",
        type=int,
        metavar="N",
        help=f"steps before the weight ramps up ({defaults.sparsity_start})",
    )
    parser.add_argument(
        "--sparsity-ramp",
        type=int,
        metavar="N",
        help=f"steps of the linear ramp to W ({defaults.sparsity_ramp})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"passes over the demonstrations (default {defaults.epochs}); with --resume: a new total",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"transitions per step; episodes per step with --recurrent (default {defaults.batch_size})",
    )
    parser.add_argument("--lr", type=float, help=f"Adam's learning rate (default {defaults.learning_rate:g})")
    parser.add_argument(
        "--ent-weight", type=float, help=f"entropy bonus weight (default {defaults.ent_weight:g})"
    )
    parser.add_argument("--seed", type=int, help=f"seed of the weights and batches (default {defaults.seed})")
    parser.add_argument(
        "--recurrent", choices=list(RECURRENT_POLICIES), help="clone a recurrent policy on whole episodes"
    )
    parser.add_argument(
        "--dagger", action="store_true", help="then run DAgger rounds with the BabyAI bot as the expert"
    )
    parser.add_argument(
        "--dagger-rounds", type=int, help=f"DAgger rounds after round 0 (default {defaults.dagger_rounds})"
    )
    parser.add_argument(
        "--dagger-episodes",
        type=int,
        help=f"episodes collected per DAgger round (default {defaults.dagger_episodes})",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help=f"steps between evaluations, 0: at the end only (default {defaults.eval_every})",
    )
    parser.add_argument(
        "--eval-episodes",
        type=int,
        metavar="N",
        help="validation episodes per set and evaluation, goal by goal (default: all)",
    )
    parser.add_argument(
        "--eval-envs", type=int, help=f"envs stepped together in evaluations ({defaults.eval_envs})"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/bc-MODEL-...-seedSEED)")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last completed epoch, with its own settings (only --epochs, "
        "--eval-envs and --threads may be given)",
    )
    # unset options take BCConfig's defaults, so that those given explicitly are known (see --resume)
    parser.set_defaults(run=run_bc, goal_split=None, id_valid_per_goal=None, ood_valid_per_goal=None)


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (those left at None, [] or False were not)."""
    return {
        name: value
        for name, value in vars(args).items()
        if name not in _NOT_OPTIONS and value is not None and value is not False and value != []
    }


def _config(args: argparse.Namespace) -> BCConfig:
    """The settings of a new run: the options given, BCConfig's defaults for the others."""
    if args.dataset is None or args.model is None:
        raise BCError("bc needs --dataset and --model (or --resume DIR)")
    options = _given_options(args)
    for name in ("threads", "out", "extractor_kwargs"):
        options.pop(name, None)
    settings = {_CONFIG_NAMES.get(name, name): value for name, value in options.items()}
    config = BCConfig(**settings, extractor_kwargs=parse_params(args.extractor_kwargs))
    config.check()
    return config


def _default_run_dir(config: BCConfig) -> Path:
    parts = ["bc", config.model]
    if config.sparsity_weight > 0:
        parts.append(f"l1-{config.sparsity_weight:g}")
    if config.recurrent:
        parts.append(config.recurrent)
    if config.dagger:
        parts.append("dagger")
    parts.append(f"limit{config.limit}" if config.limit else "all")
    return Path("runs") / f"{'-'.join(parts)}-seed{config.seed}"


def _interrupted(run_dir: Path) -> str:
    """What an interruption left in ``run_dir``, and how to continue."""
    if not (run_dir / CONFIG_FILE).is_file():
        return "interrupted before training started; nothing saved"
    model = f"; the current policy is in {run_dir / MODEL_FILE}" if (run_dir / MODEL_FILE).is_file() else ""
    try:
        config = load_bc_config(run_dir)
        checkpoint = read_bc_checkpoint(run_dir)
    except BCError as error:
        return f"interrupted{model}; the run cannot be resumed: {error}"
    if config.dagger:
        return f"interrupted{model}; DAgger runs cannot be resumed"
    if checkpoint is None:
        return f"interrupted in the first epoch{model}; start it again with: structrl bc --resume {run_dir}"
    return (
        f"interrupted after epoch {checkpoint['epoch']} of {config.epochs} ({checkpoint['steps']} steps, "
        f"saved to {run_dir / CHECKPOINT_FILE}){model}; continue with: structrl bc --resume {run_dir}"
    )


def run_bc(args: argparse.Namespace) -> int:
    """
    Run ``structrl bc``.

    :param args: the parsed arguments
    :return: the exit code
    """
    if args.threads < 1:
        raise BCError(f"--threads must be at least 1, got {args.threads}")

    def show(record: dict[str, Any]) -> None:
        best = " (best)" if record["best"] else ""
        print(
            f"step {record['step']}: ID success {record['id_success_rate']:.3f}, "
            f"OOD success {record['ood_success_rate']:.3f}{best}",
            flush=True,
        )

    if args.resume:
        given = [name for name in _given_options(args) if name not in _RESUME_OPTIONS]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise BCError(f"--resume continues a run with its own config.yml; drop {flags}")
        run_dir = Path(args.resume)
        load_bc_config(run_dir)  # a bc run directory?
        checkpoint = read_bc_checkpoint(run_dir)
        if checkpoint is None:
            print(f"no checkpoint in {run_dir}: training it again from epoch 0", flush=True)
        else:
            print(
                f"resuming {run_dir} after epoch {checkpoint['epoch']} (step {checkpoint['steps']})",
                flush=True,
            )

        def start() -> dict[str, Any]:
            return resume_bc(run_dir, args.epochs, args.threads, args.eval_envs, on_evaluation=show)
    else:
        config = _config(args)
        run_dir = Path(args.out) if args.out else _default_run_dir(config)

        def start() -> dict[str, Any]:
            return train_bc(config, run_dir, threads=args.threads, on_evaluation=show)

    try:
        summary = start()
    except KeyboardInterrupt:
        print(f"\nstructrl: {_interrupted(run_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    best = summary["best"]
    print(
        f"cloned {summary['train_episodes']} episodes ({summary['train_transitions']} transitions, "
        f"{summary['steps']} steps, {summary['epochs']} epochs) in {summary['seconds']:.0f} s; best ID "
        f"success {best['id_success_rate']:.3f} (OOD {best['ood_success_rate']:.3f}) at step {best['step']}, "
        f"saved to {run_dir / BEST_MODEL_FILE}; final model {run_dir / MODEL_FILE}"
    )
    return 0
