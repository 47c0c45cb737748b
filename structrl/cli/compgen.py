"""
``structrl discriminator`` and ``structrl mvprop``: the goal discriminator and the MVProp planner of
Spilsbury & Ilin (2022) on BabyAI GoToLocal demonstrations.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from structrl.agents.goal_discriminator import (
    BEST_FILE,
    FINAL_FILE,
    DiscriminatorConfig,
    DiscriminatorError,
    load_discriminator_config,
    read_discriminator_checkpoint,
    resume_discriminator,
    train_discriminator,
)
from structrl.agents.goal_discriminator import CHECKPOINT_FILE as DISCRIMINATOR_CHECKPOINT
from structrl.agents.mvprop_training import (
    BEST_MODEL_FILE,
    MODEL_FILE,
    MVPropConfig,
    MVPropError,
    load_mvprop_config,
    read_mvprop_checkpoint,
    resume_mvprop,
    train_mvprop,
)
from structrl.agents.mvprop_training import CHECKPOINT_FILE as MVPROP_CHECKPOINT
from structrl.cli.demos import add_split_arguments
from structrl.cli.offline_options import (
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
from structrl.policies.mvprop import INTERACTION_MODELS

_DISCRIMINATOR = OfflineCommand(
    name="discriminator",
    error=DiscriminatorError,
    resume_options=("steps", "threads", "device"),
    load_config=load_discriminator_config,
    read_checkpoint=read_discriminator_checkpoint,
    unit="step",
    current_file=FINAL_FILE,
    current_is="the current weights are in",
    first_stop="before the first checkpoint",
)
_MVPROP = OfflineCommand(
    name="mvprop",
    error=MVPropError,
    resume_options=("epochs", "eval_envs", "threads", "device"),
    load_config=load_mvprop_config,
    read_checkpoint=read_mvprop_checkpoint,
    unit="epoch",
    current_file=MODEL_FILE,
    current_is="the current policy is in",
    first_stop="in the first epoch",
)
#: ``--resume`` of both commands.
_RESUME_HELP = "continue the run in DIR from its checkpoint, with its own settings"
#: Steps between progress lines of the discriminator (besides its new bests).
_PRINT_EVERY = 1000


def add_discriminator_parser(subparsers: Any) -> None:
    """
    Add the ``discriminator`` sub-command.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    defaults = DiscriminatorConfig(dataset="")
    parser = subparsers.add_parser(
        "discriminator",
        help="train the goal discriminator (interaction model) on GoToLocal demonstrations",
        description="Train an interaction model (factored or simple attention) and a masking module as the "
        "goal discriminator of Spilsbury & Ilin (2022): pairs of final frames of demonstrations of the same "
        "ID goal against other goals' (or earlier) frames, with the L1 sparsity penalty ramped up from step "
        f"--sparsity-start. Validates every --eval-every steps on the first frames of the ID and OOD "
        f"validation episodes (soft precision/recall/F1 against their target masks). Writes config.yml, "
        f"{BEST_FILE} (best ID soft F1), {FINAL_FILE}, {DISCRIMINATOR_CHECKPOINT}, summary.json and "
        "tensorboard/ to --out; --resume DIR continues an interrupted run (or a finished one, with more "
        "--steps).",
    )
    add_dataset_argument(parser)
    parser.add_argument(
        "--model", choices=list(INTERACTION_MODELS), help="the interaction model (required for a new run)"
    )
    add_split_arguments(parser, evaluation=False)
    add_sparsity_arguments(
        parser,
        f"final weight of the L1 sparsity penalty, 0 for the unregularised model "
        f"(default {defaults.sparsity_weight:g})",
        f"steps before the weight ramps up ({defaults.sparsity_start})",
        f"steps of the linear ramp ({defaults.sparsity_ramp})",
    )
    parser.add_argument(
        "--steps", type=int, help=f"optimizer steps (default {defaults.steps}); with --resume: a new total"
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"examples per step, half positive (default {defaults.batch_size})"
    )
    add_learning_rate_argument(parser, defaults)
    parser.add_argument(
        "--embedding-dim", type=int, help=f"width of the embeddings (default {defaults.embedding_dim})"
    )
    add_seed_argument(parser, defaults)
    parser.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help=f"steps between validations (default {defaults.eval_every})",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help=f"steps between checkpoints (default {defaults.checkpoint_every})",
    )
    add_run_arguments(parser, "runs/discriminator-...-seedSEED", _RESUME_HELP, run_discriminator)


def add_mvprop_parser(subparsers: Any) -> None:
    """
    Add the ``mvprop`` sub-command.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    defaults = MVPropConfig(dataset="")
    parser = subparsers.add_parser(
        "mvprop",
        help="train the MVProp planner on GoToLocal demonstrations",
        description="Train the MVProp value-propagation planner of Spilsbury & Ilin (2022) with the "
        "CQL-like imitation loss on whole demonstrations (Q of the demonstrated action to the discounted "
        "return, the other actions' Q and the value map to 0), on top of the frozen interaction model of "
        "--discriminator (or end to end without it), evaluating the greedy policy every --eval-every steps "
        f"on the ID and OOD validation seeds. Writes config.yml, {BEST_MODEL_FILE} (best ID success), "
        f"{MODEL_FILE}, {MVPROP_CHECKPOINT} (the state after the last epoch), summary.json and tensorboard/ "
        "to --out; the models are SB3 PPO files for structrl evaluate. --resume DIR continues an "
        "interrupted run (or a finished one, with more --epochs).",
    )
    add_dataset_argument(parser)
    add_split_arguments(parser, evaluation=False)
    parser.add_argument(
        "--discriminator",
        metavar="DIR",
        help="a discriminator run directory (or its .pt file) whose interaction model is used, frozen "
        "(default: train the interaction model end to end)",
    )
    parser.add_argument(
        "--interaction-model",
        choices=list(INTERACTION_MODELS),
        help="the interaction model (default: the discriminator's, or factored-attention)",
    )
    parser.add_argument(
        "--embedding-dim", type=int, help="width of the embeddings (default: the discriminator's, or 48)"
    )
    parser.add_argument(
        "--k", type=int, help=f"value iterations, 0 for the CNN-policy ablation (default {defaults.k})"
    )
    parser.add_argument(
        "--head-channels",
        type=int,
        nargs=2,
        metavar=("C1", "C2"),
        help=f"channels of the Q-head (default {defaults.head_channels[0]} {defaults.head_channels[1]})",
    )
    add_epochs_argument(parser, defaults)
    parser.add_argument(
        "--batch-size", type=int, help=f"demonstrations per step (default {defaults.batch_size})"
    )
    add_learning_rate_argument(parser, defaults)
    parser.add_argument(
        "--reg-weight",
        type=float,
        help=f"weight of the untaken-action and value-map regularisers "
        f"(default {defaults.regularisation_weight:g})",
    )
    add_sparsity_arguments(
        parser,
        "end to end only: final weight of the L1 sparsity penalty (default 0: none)",
        f"steps before W ramps up ({defaults.sparsity_start})",
        f"steps of the ramp to W ({defaults.sparsity_ramp})",
    )
    add_seed_argument(parser, defaults)
    add_policy_evaluation_arguments(parser, defaults)
    add_run_arguments(parser, "runs/mvprop-...-seedSEED", _RESUME_HELP, run_mvprop)


def add_compgen_parsers(subparsers: Any) -> None:
    """
    Add the ``discriminator`` and ``mvprop`` sub-commands.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    add_discriminator_parser(subparsers)
    add_mvprop_parser(subparsers)


def _discriminator_run_dir(config: DiscriminatorConfig) -> Path:
    parts = ["discriminator", config.model]
    if config.sparsity_weight > 0:
        parts.append(f"l1-{config.sparsity_weight:g}")
    return default_run_dir(config, *parts)


def _discriminator_interrupted(run_dir: Path) -> str:
    def stopped() -> str | None:
        checkpoint = read_discriminator_checkpoint(run_dir)
        if checkpoint is None:
            return None
        return f"after step {checkpoint['step']} (saved to {run_dir / DISCRIMINATOR_CHECKPOINT})"

    return interruption_message(run_dir, _DISCRIMINATOR, stopped)


def run_discriminator(args: argparse.Namespace) -> int:
    """
    Run ``structrl discriminator``.

    :param args: the parsed arguments
    :return: the exit code
    """
    check_threads(args, _DISCRIMINATOR)
    last_printed = 0

    def show(record: dict[str, Any]) -> None:
        nonlocal last_printed
        if not record["best"] and record["step"] - last_printed < _PRINT_EVERY:
            return
        last_printed = record["step"]
        best = " (best)" if record["best"] else ""
        grounding = (
            f", grounding {record['grounding_accuracy']:.2f}" if "grounding_accuracy" in record else ""
        )
        print(
            f"step {record['step']}: ID soft F1 {record['id_soft_f1']:.3f}, "
            f"OOD soft F1 {record['ood_soft_f1']:.3f}{grounding}{best}",
            flush=True,
        )

    if args.resume:
        run_dir = resumed_run_dir(args, _DISCRIMINATOR)

        def start() -> dict[str, Any]:
            return resume_discriminator(run_dir, args.steps, args.threads, args.device, on_evaluation=show)
    else:
        require_options(args, _DISCRIMINATOR, ("dataset", "model"))
        config = DiscriminatorConfig(**given_settings(args))
        config.check()
        run_dir = Path(args.out) if args.out else _discriminator_run_dir(config)

        def start() -> dict[str, Any]:
            return train_discriminator(config, run_dir, args.threads, args.device, on_evaluation=show)

    def report(summary: dict[str, Any]) -> None:
        best = summary["best"]
        print(
            f"trained on {summary['train_episodes']} episodes for {summary['steps']} steps in "
            f"{summary['seconds']:.0f} s; best ID soft F1 {best['id_soft_f1']:.3f} "
            f"(OOD {best['ood_soft_f1']:.3f}) at step {best['step']}, saved to {run_dir / BEST_FILE}; "
            f"final weights {run_dir / FINAL_FILE}"
        )

    return run_interruptible(start, lambda: _discriminator_interrupted(run_dir), report)


def _mvprop_run_dir(config: MVPropConfig) -> Path:
    return default_run_dir(
        config, "mvprop", f"k{config.k}", "frozen" if config.discriminator else "end-to-end"
    )


def _mvprop_interrupted(run_dir: Path) -> str:
    def stopped() -> str | None:
        checkpoint = read_mvprop_checkpoint(run_dir)
        if checkpoint is None:
            return None
        return (
            f"after epoch {checkpoint['epoch']} ({checkpoint['steps']} steps, saved to "
            f"{run_dir / MVPROP_CHECKPOINT})"
        )

    return interruption_message(run_dir, _MVPROP, stopped)


def run_mvprop(args: argparse.Namespace) -> int:
    """
    Run ``structrl mvprop``.

    :param args: the parsed arguments
    :return: the exit code
    """
    check_threads(args, _MVPROP)
    if args.resume:
        run_dir = resumed_run_dir(args, _MVPROP)

        def start() -> dict[str, Any]:
            return resume_mvprop(
                run_dir,
                args.epochs,
                args.threads,
                args.eval_envs,
                args.device,
                on_evaluation=print_success_rates,
            )
    else:
        require_options(args, _MVPROP, ("dataset",))
        settings = given_settings(args)
        if "head_channels" in settings:
            settings["head_channels"] = list(settings["head_channels"])
        config = MVPropConfig(**settings)
        config.check()
        run_dir = Path(args.out) if args.out else _mvprop_run_dir(config)

        def start() -> dict[str, Any]:
            return train_mvprop(config, run_dir, args.threads, args.device, on_evaluation=print_success_rates)

    def report(summary: dict[str, Any]) -> None:
        best = summary["best"]
        interaction = "frozen discriminator" if summary["frozen_interaction"] else "end to end"
        print(
            f"trained on {summary['train_episodes']} episodes ({summary['train_transitions']} transitions, "
            f"{summary['steps']} steps, {summary['epochs']} epochs, interaction model {interaction}) in "
            f"{summary['seconds']:.0f} s; best ID success {best['id_success_rate']:.3f} "
            f"(OOD {best['ood_success_rate']:.3f}) at step {best['step']}, saved to "
            f"{run_dir / BEST_MODEL_FILE}; final model {run_dir / MODEL_FILE}"
        )

    return run_interruptible(start, lambda: _mvprop_interrupted(run_dir), report)
