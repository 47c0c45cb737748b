"""``structrl bc``: behaviour cloning of BabyAI GoToLocal demonstrations with ID/OOD validation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from structrl.agents.behavior_cloning import (
    BC_MODELS,
    BEST_MODEL_FILE,
    CHECKPOINT_FILE,
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
from structrl.cli.offline_options import (
    NotResumable,
    OfflineCommand,
    add_dataset_argument,
    add_epochs_argument,
    add_learning_rate_argument,
    add_policy_evaluation_arguments,
    add_run_arguments,
    add_seed_argument,
    add_sparsity_arguments,
    check_threads,
    default_run_dir,
    given_settings,
    interruption_message,
    print_success_rates,
    require_options,
    resumed_run_dir,
    run_interruptible,
)
from structrl.cli.train import parse_params

_COMMAND = OfflineCommand(
    name="bc",
    error=BCError,
    resume_options=("epochs", "eval_envs", "threads"),
    load_config=load_bc_config,
    read_checkpoint=read_bc_checkpoint,
    unit="epoch",
    current_file=MODEL_FILE,
    current_is="the current policy is in",
    first_stop="in the first epoch",
)


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
    add_dataset_argument(parser)
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
    add_sparsity_arguments(
        parser,
        "final weight of the attention model's L1 sparsity penalty (default 0: none)",
        f"steps before the weight ramps up ({defaults.sparsity_start})",
        f"steps of the linear ramp to W ({defaults.sparsity_ramp})",
    )
    add_epochs_argument(parser, defaults)
    parser.add_argument(
        "--batch-size",
        type=int,
        help=f"transitions per step; episodes per step with --recurrent (default {defaults.batch_size})",
    )
    add_learning_rate_argument(parser, defaults)
    parser.add_argument(
        "--ent-weight", type=float, help=f"entropy bonus weight (default {defaults.ent_weight:g})"
    )
    add_seed_argument(parser, defaults)
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
    add_policy_evaluation_arguments(parser, defaults)
    add_run_arguments(
        parser,
        "runs/bc-MODEL-...-seedSEED",
        "continue the run in DIR from its last completed epoch, with its own settings (only --epochs, "
        "--eval-envs and --threads may be given)",
        run_bc,
        device=False,
    )


def _config(args: argparse.Namespace) -> BCConfig:
    """The settings of a new run: the options given, BCConfig's defaults for the others."""
    require_options(args, _COMMAND, ("dataset", "model"))
    settings = given_settings(args, exclude=("extractor_kwargs",))
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
    return default_run_dir(config, *parts)


def _interrupted(run_dir: Path) -> str:
    """What an interruption left in ``run_dir``, and how to continue."""

    def stopped() -> str | None:
        config = load_bc_config(run_dir)
        checkpoint = read_bc_checkpoint(run_dir)
        if config.dagger:
            raise NotResumable("DAgger runs cannot be resumed")
        if checkpoint is None:
            return None
        return (
            f"after epoch {checkpoint['epoch']} of {config.epochs} ({checkpoint['steps']} steps, saved to "
            f"{run_dir / CHECKPOINT_FILE})"
        )

    return interruption_message(run_dir, _COMMAND, stopped)


def run_bc(args: argparse.Namespace) -> int:
    """
    Run ``structrl bc``.

    :param args: the parsed arguments
    :return: the exit code
    """
    check_threads(args, _COMMAND)
    if args.resume:
        run_dir = resumed_run_dir(args, _COMMAND)

        def start() -> dict[str, Any]:
            return resume_bc(
                run_dir, args.epochs, args.threads, args.eval_envs, on_evaluation=print_success_rates
            )
    else:
        config = _config(args)
        run_dir = Path(args.out) if args.out else _default_run_dir(config)

        def start() -> dict[str, Any]:
            return train_bc(config, run_dir, threads=args.threads, on_evaluation=print_success_rates)

    def report(summary: dict[str, Any]) -> None:
        best = summary["best"]
        print(
            f"cloned {summary['train_episodes']} episodes ({summary['train_transitions']} transitions, "
            f"{summary['steps']} steps, {summary['epochs']} epochs) in {summary['seconds']:.0f} s; best ID "
            f"success {best['id_success_rate']:.3f} (OOD {best['ood_success_rate']:.3f}) at step "
            f"{best['step']}, saved to {run_dir / BEST_MODEL_FILE}; final model {run_dir / MODEL_FILE}"
        )

    return run_interruptible(start, lambda: _interrupted(run_dir), report)
