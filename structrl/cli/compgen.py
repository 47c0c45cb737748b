"""
``structrl discriminator`` and ``structrl mvprop``: the goal discriminator and the MVProp planner of
Spilsbury & Ilin (2022) on BabyAI GoToLocal demonstrations.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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
from structrl.agents.goal_discriminator import CONFIG_FILE as DISCRIMINATOR_CONFIG
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
from structrl.agents.mvprop_training import CONFIG_FILE as MVPROP_CONFIG
from structrl.cli.demos import add_split_arguments
from structrl.cli.train import EXIT_INTERRUPTED
from structrl.policies.mvprop import INTERACTION_MODELS

#: Parsed names that are not options of a run.
_NOT_OPTIONS = ("command", "run", "resume")
#: Options that only change how a run is executed, not its settings.
_RUNTIME_OPTIONS = ("threads", "device", "out")
#: Options that may be given with ``--resume``.
_DISCRIMINATOR_RESUME_OPTIONS = ("steps", "threads", "device")
_MVPROP_RESUME_OPTIONS = ("epochs", "eval_envs", "threads", "device")
#: Config fields by option name, where they differ.
_CONFIG_NAMES = {"lr": "learning_rate", "reg_weight": "regularisation_weight"}
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
    parser.add_argument(
        "--dataset", metavar="FILE.h5", help="the demonstration store (required for a new run)"
    )
    parser.add_argument(
        "--model", choices=list(INTERACTION_MODELS), help="the interaction model (required for a new run)"
    )
    add_split_arguments(parser, evaluation=False)
    parser.add_argument(
        "--sparsity-weight",
        type=float,
        metavar="W",
        help=f"final weight of the L1 sparsity penalty, 0 for the unregularised model "
        f"(default {defaults.sparsity_weight:g})",
    )
    parser.add_argument(
        "--sparsity-start",
        type=int,
        metavar="N",
        help=f"steps before the weight ramps up ({defaults.sparsity_start})",
    )
    parser.add_argument(
        "--sparsity-ramp", type=int, metavar="N", help=f"steps of the linear ramp ({defaults.sparsity_ramp})"
    )
    parser.add_argument(
        "--steps", type=int, help=f"optimizer steps (default {defaults.steps}); with --resume: a new total"
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"examples per step, half positive (default {defaults.batch_size})"
    )
    parser.add_argument("--lr", type=float, help=f"Adam's learning rate (default {defaults.learning_rate:g})")
    parser.add_argument(
        "--embedding-dim", type=int, help=f"width of the embeddings (default {defaults.embedding_dim})"
    )
    parser.add_argument("--seed", type=int, help=f"seed of the weights and batches (default {defaults.seed})")
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
    _add_runtime_arguments(parser, "discriminator")
    parser.set_defaults(
        run=run_discriminator, goal_split=None, id_valid_per_goal=None, ood_valid_per_goal=None
    )


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
    parser.add_argument(
        "--dataset", metavar="FILE.h5", help="the demonstration store (required for a new run)"
    )
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
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"passes over the demonstrations (default {defaults.epochs}); with --resume: a new total",
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"demonstrations per step (default {defaults.batch_size})"
    )
    parser.add_argument("--lr", type=float, help=f"Adam's learning rate (default {defaults.learning_rate:g})")
    parser.add_argument(
        "--reg-weight",
        type=float,
        help=f"weight of the untaken-action and value-map regularisers "
        f"(default {defaults.regularisation_weight:g})",
    )
    parser.add_argument(
        "--sparsity-weight",
        type=float,
        metavar="W",
        help="end to end only: final weight of the L1 sparsity penalty (default 0: none)",
    )
    parser.add_argument(
        "--sparsity-start", type=int, metavar="N", help=f"steps before W ramps up ({defaults.sparsity_start})"
    )
    parser.add_argument(
        "--sparsity-ramp", type=int, metavar="N", help=f"steps of the ramp to W ({defaults.sparsity_ramp})"
    )
    parser.add_argument("--seed", type=int, help=f"seed of the weights and batches (default {defaults.seed})")
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
    _add_runtime_arguments(parser, "mvprop")
    parser.set_defaults(run=run_mvprop, goal_split=None, id_valid_per_goal=None, ood_valid_per_goal=None)


def add_compgen_parsers(subparsers: Any) -> None:
    """
    Add the ``discriminator`` and ``mvprop`` sub-commands.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    add_discriminator_parser(subparsers)
    add_mvprop_parser(subparsers)


def _add_runtime_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", metavar="DIR", help=f"run directory (default: runs/{command}-...-seedSEED)")
    parser.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its checkpoint, with its own settings"
    )


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (those left at None or False were not)."""
    return {
        name: value
        for name, value in vars(args).items()
        if name not in _NOT_OPTIONS and value is not None and value is not False
    }


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings given on the command line, named as the config fields."""
    options = _given_options(args)
    for name in _RUNTIME_OPTIONS:
        options.pop(name, None)
    return {_CONFIG_NAMES.get(name, name): value for name, value in options.items()}


def _check_resume(args: argparse.Namespace, allowed: tuple[str, ...], error: type[Exception]) -> None:
    given = [name for name in _given_options(args) if name not in allowed]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise error(f"--resume continues a run with its own config.yml; drop {flags}")


def _check_threads(args: argparse.Namespace, error: type[Exception]) -> None:
    if args.threads < 1:
        raise error(f"--threads must be at least 1, got {args.threads}")


def _run_interruptible(
    start: Callable[[], dict[str, Any]], interrupted: Callable[[], str]
) -> dict[str, Any] | None:
    try:
        return start()
    except KeyboardInterrupt:
        print(f"\nstructrl: {interrupted()}", file=sys.stderr)
        return None


def _discriminator_run_dir(config: DiscriminatorConfig) -> Path:
    parts = ["discriminator", config.model]
    if config.sparsity_weight > 0:
        parts.append(f"l1-{config.sparsity_weight:g}")
    parts.append(f"limit{config.limit}" if config.limit else "all")
    return Path("runs") / f"{'-'.join(parts)}-seed{config.seed}"


def _discriminator_interrupted(run_dir: Path) -> str:
    if not (run_dir / DISCRIMINATOR_CONFIG).is_file():
        return "interrupted before training started; nothing saved"
    current = (
        f"; the current weights are in {run_dir / FINAL_FILE}" if (run_dir / FINAL_FILE).is_file() else ""
    )
    try:
        checkpoint = read_discriminator_checkpoint(run_dir)
    except DiscriminatorError as error:
        return f"interrupted{current}; the run cannot be resumed: {error}"
    if checkpoint is None:
        return (
            f"interrupted before the first checkpoint{current}; start it again with: "
            f"structrl discriminator --resume {run_dir}"
        )
    return (
        f"interrupted after step {checkpoint['step']} (saved to {run_dir / DISCRIMINATOR_CHECKPOINT})"
        f"{current}; continue with: structrl discriminator --resume {run_dir}"
    )


def run_discriminator(args: argparse.Namespace) -> int:
    """
    Run ``structrl discriminator``.

    :param args: the parsed arguments
    :return: the exit code
    """
    _check_threads(args, DiscriminatorError)
    last_printed = 0

    def show(record: dict[str, Any]) -> None:
        nonlocal last_printed
        if not record["best"] and record["step"] - last_printed < _PRINT_EVERY:
            return
        last_printed = record["step"]
        best = " (best)" if record["best"] else ""
        print(
            f"step {record['step']}: ID soft F1 {record['id_soft_f1']:.3f}, "
            f"OOD soft F1 {record['ood_soft_f1']:.3f}{best}",
            flush=True,
        )

    if args.resume:
        _check_resume(args, _DISCRIMINATOR_RESUME_OPTIONS, DiscriminatorError)
        run_dir = Path(args.resume)
        load_discriminator_config(run_dir)
        checkpoint = read_discriminator_checkpoint(run_dir)
        if checkpoint is None:
            print(f"no checkpoint in {run_dir}: training it again from step 0", flush=True)
        else:
            print(f"resuming {run_dir} after step {checkpoint['step']}", flush=True)

        def start() -> dict[str, Any]:
            return resume_discriminator(run_dir, args.steps, args.threads, args.device, on_evaluation=show)
    else:
        if args.dataset is None or args.model is None:
            raise DiscriminatorError("discriminator needs --dataset and --model (or --resume DIR)")
        config = DiscriminatorConfig(**_settings(args))
        config.check()
        run_dir = Path(args.out) if args.out else _discriminator_run_dir(config)

        def start() -> dict[str, Any]:
            return train_discriminator(config, run_dir, args.threads, args.device, on_evaluation=show)

    summary = _run_interruptible(start, lambda: _discriminator_interrupted(run_dir))
    if summary is None:
        return EXIT_INTERRUPTED
    best = summary["best"]
    print(
        f"trained on {summary['train_episodes']} episodes for {summary['steps']} steps in "
        f"{summary['seconds']:.0f} s; best ID soft F1 {best['id_soft_f1']:.3f} "
        f"(OOD {best['ood_soft_f1']:.3f}) at step {best['step']}, saved to {run_dir / BEST_FILE}; "
        f"final weights {run_dir / FINAL_FILE}"
    )
    return 0


def _mvprop_run_dir(config: MVPropConfig) -> Path:
    parts = ["mvprop", f"k{config.k}", "frozen" if config.discriminator else "end-to-end"]
    parts.append(f"limit{config.limit}" if config.limit else "all")
    return Path("runs") / f"{'-'.join(parts)}-seed{config.seed}"


def _mvprop_interrupted(run_dir: Path) -> str:
    if not (run_dir / MVPROP_CONFIG).is_file():
        return "interrupted before training started; nothing saved"
    current = f"; the current policy is in {run_dir / MODEL_FILE}" if (run_dir / MODEL_FILE).is_file() else ""
    try:
        checkpoint = read_mvprop_checkpoint(run_dir)
    except MVPropError as error:
        return f"interrupted{current}; the run cannot be resumed: {error}"
    if checkpoint is None:
        return (
            f"interrupted in the first epoch{current}; "
            f"start it again with: structrl mvprop --resume {run_dir}"
        )
    return (
        f"interrupted after epoch {checkpoint['epoch']} ({checkpoint['steps']} steps, saved to "
        f"{run_dir / MVPROP_CHECKPOINT}){current}; continue with: structrl mvprop --resume {run_dir}"
    )


def run_mvprop(args: argparse.Namespace) -> int:
    """
    Run ``structrl mvprop``.

    :param args: the parsed arguments
    :return: the exit code
    """
    _check_threads(args, MVPropError)

    def show(record: dict[str, Any]) -> None:
        best = " (best)" if record["best"] else ""
        print(
            f"step {record['step']}: ID success {record['id_success_rate']:.3f}, "
            f"OOD success {record['ood_success_rate']:.3f}{best}",
            flush=True,
        )

    if args.resume:
        _check_resume(args, _MVPROP_RESUME_OPTIONS, MVPropError)
        run_dir = Path(args.resume)
        load_mvprop_config(run_dir)
        checkpoint = read_mvprop_checkpoint(run_dir)
        if checkpoint is None:
            print(f"no checkpoint in {run_dir}: training it again from epoch 0", flush=True)
        else:
            print(
                f"resuming {run_dir} after epoch {checkpoint['epoch']} (step {checkpoint['steps']})",
                flush=True,
            )

        def start() -> dict[str, Any]:
            return resume_mvprop(
                run_dir, args.epochs, args.threads, args.eval_envs, args.device, on_evaluation=show
            )
    else:
        if args.dataset is None:
            raise MVPropError("mvprop needs --dataset (or --resume DIR)")
        settings = _settings(args)
        if "head_channels" in settings:
            settings["head_channels"] = list(settings["head_channels"])
        config = MVPropConfig(**settings)
        config.check()
        run_dir = Path(args.out) if args.out else _mvprop_run_dir(config)

        def start() -> dict[str, Any]:
            return train_mvprop(config, run_dir, args.threads, args.device, on_evaluation=show)

    summary = _run_interruptible(start, lambda: _mvprop_interrupted(run_dir))
    if summary is None:
        return EXIT_INTERRUPTED
    best = summary["best"]
    interaction = "frozen discriminator" if summary["frozen_interaction"] else "end to end"
    print(
        f"trained on {summary['train_episodes']} episodes ({summary['train_transitions']} transitions, "
        f"{summary['steps']} steps, {summary['epochs']} epochs, interaction model {interaction}) in "
        f"{summary['seconds']:.0f} s; best ID success {best['id_success_rate']:.3f} "
        f"(OOD {best['ood_success_rate']:.3f}) at step {best['step']}, saved to {run_dir / BEST_MODEL_FILE}; "
        f"final model {run_dir / MODEL_FILE}"
    )
    return 0
