"""
The options and the run flow shared by the offline training commands, ``structrl bc``, ``structrl
discriminator`` and ``structrl mvprop``: the demonstration store, the training and evaluation options they
have in common, the run options (``--threads``, ``--device``, ``--out``, ``--resume``), the settings given on
the command line (unset options take the settings' defaults, so that ``--resume`` can refuse the others), and
the Ctrl-C handling (a message on what the run saved and how to continue, exit code 130).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structrl.agents.offline_runs import CONFIG_FILE, OfflineSettings
from structrl.cli.train import EXIT_INTERRUPTED

#: Parsed names that are not options of a run.
_NOT_OPTIONS = ("command", "run", "resume")
#: Options that only change how a run is executed, not its settings.
_RUNTIME_OPTIONS = ("threads", "device", "out")
#: Settings fields by option name, where they differ.
_SETTINGS_NAMES = {"lr": "learning_rate", "reg_weight": "regularisation_weight"}


@dataclass(frozen=True)
class OfflineCommand:
    """
    What the shared checks and messages need to know of an offline training command.

    :param name: The command: ``bc``, ``discriminator`` or ``mvprop``.
    :param error: The trainer's error, raised for unusable options and run directories.
    :param resume_options: The options that may be given with ``--resume``.
    :param load_config: Reads the settings of a run directory of the command (raises ``error`` otherwise).
    :param read_checkpoint: Reads the checkpoint of a run directory (``None`` without one).
    :param unit: What a checkpoint counts, ``"epoch"`` (with its ``steps``) or ``"step"``.
    :param current_file: The file the trainer saves on Ctrl-C.
    :param current_is: What that file is said to hold (``"the current policy is in"``).
    :param first_stop: Where a run without a checkpoint stopped (``"in the first epoch"``).
    """

    name: str
    error: type[Exception]
    resume_options: tuple[str, ...]
    load_config: Callable[[Path], object]
    read_checkpoint: Callable[[Path], dict[str, Any] | None]
    unit: str
    current_file: str
    current_is: str
    first_stop: str


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--dataset FILE.h5``, the demonstration store."""
    parser.add_argument(
        "--dataset", metavar="FILE.h5", help="the demonstration store (required for a new run)"
    )


def add_sparsity_arguments(
    parser: argparse.ArgumentParser, weight_help: str, start_help: str, ramp_help: str
) -> None:
    """Add ``--sparsity-weight W``, ``--sparsity-start N`` and ``--sparsity-ramp N`` with their helps."""
    parser.add_argument("--sparsity-weight", type=float, metavar="W", help=weight_help)
    parser.add_argument("--sparsity-start", type=int, metavar="N", help=start_help)
    parser.add_argument("--sparsity-ramp", type=int, metavar="N", help=ramp_help)


def add_epochs_argument(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """Add ``--epochs``; ``defaults`` are the settings with their default values."""
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"passes over the demonstrations (default {defaults.epochs}); with --resume: a new total",
    )


def add_learning_rate_argument(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """Add ``--lr``; ``defaults`` are the settings with their default values."""
    parser.add_argument("--lr", type=float, help=f"Adam's learning rate (default {defaults.learning_rate:g})")


def add_seed_argument(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """Add ``--seed``; ``defaults`` are the settings with their default values."""
    parser.add_argument("--seed", type=int, help=f"seed of the weights and batches (default {defaults.seed})")


def add_policy_evaluation_arguments(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """
    Add ``--eval-every``, ``--eval-episodes`` and ``--eval-envs``, the greedy evaluations of a policy on the
    validation seeds; ``defaults`` are the settings with their default values.
    """
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


def add_run_arguments(
    parser: argparse.ArgumentParser,
    out_default: str,
    resume_help: str,
    run: Callable[[argparse.Namespace], int],
    device: bool = True,
) -> None:
    """
    Add ``--threads``, ``--device`` (if ``device``), ``--out`` and ``--resume``, and set the command's ``run``
    function. The split options are left unset (``None``) so that the settings' defaults apply and the options
    given explicitly are known (see :func:`resumed_run_dir`).

    :param parser: the command's parser
    :param out_default: the default run directory, for the help
    :param resume_help: the help of ``--resume``
    :param run: runs the command
    :param device: whether the command has ``--device``
    """
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    if device:
        parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", metavar="DIR", help=f"run directory (default: {out_default})")
    parser.add_argument("--resume", metavar="DIR", help=resume_help)
    parser.set_defaults(run=run, goal_split=None, id_valid_per_goal=None, ood_valid_per_goal=None)


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """
    :param args: the parsed arguments
    :return: the options given on the command line (those left at None, [] or False were not)
    """
    return {
        name: value
        for name, value in vars(args).items()
        if name not in _NOT_OPTIONS and value is not None and value is not False and value != []
    }


def given_settings(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """
    :param args: the parsed arguments
    :param exclude: further options that are not settings (or need converting)
    :return: the run settings given on the command line, named as the settings' fields
    """
    options = _given_options(args)
    for name in (*_RUNTIME_OPTIONS, *exclude):
        options.pop(name, None)
    return {_SETTINGS_NAMES.get(name, name): value for name, value in options.items()}


def require_options(args: argparse.Namespace, command: OfflineCommand, names: tuple[str, ...]) -> None:
    """
    :raises Exception: the command's error, if a new run lacks one of the options ``names``
    """
    if any(getattr(args, name) is None for name in names):
        flags = " and ".join(f"--{name}" for name in names)
        raise command.error(f"{command.name} needs {flags} (or --resume DIR)")


def check_threads(args: argparse.Namespace, command: OfflineCommand) -> None:
    """
    :raises Exception: the command's error, if ``--threads`` is not positive
    """
    if args.threads < 1:
        raise command.error(f"--threads must be at least 1, got {args.threads}")


def resumed_run_dir(args: argparse.Namespace, command: OfflineCommand) -> Path:
    """
    The run directory of ``--resume DIR``, checked, and a line saying where the run continues from.

    :param args: the parsed arguments, with ``--resume``
    :param command: the command
    :return: the run directory
    :raises Exception: the command's error, naming the options given that ``--resume`` does not take, or if
        DIR holds no run of the command
    """
    given = [name for name in _given_options(args) if name not in command.resume_options]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise command.error(f"--resume continues a run with its own config.yml; drop {flags}")
    run_dir = Path(args.resume)
    command.load_config(run_dir)
    checkpoint = command.read_checkpoint(run_dir)
    unit = command.unit
    if checkpoint is None:
        print(f"no checkpoint in {run_dir}: training it again from {unit} 0", flush=True)
    elif unit == "epoch":
        steps = checkpoint["steps"]
        print(f"resuming {run_dir} after epoch {checkpoint['epoch']} (step {steps})", flush=True)
    else:
        print(f"resuming {run_dir} after step {checkpoint['step']}", flush=True)
    return run_dir


def default_run_dir(config: OfflineSettings, *parts: str) -> Path:
    """
    :param config: a new run's settings
    :param parts: what names the run, before its limit and seed
    :return: ``runs/PARTS-limitN-seedS`` (``all`` without a limit)
    """
    limit = f"limit{config.limit}" if config.limit else "all"
    return Path("runs") / f"{'-'.join([*parts, limit])}-seed{config.seed}"


def print_success_rates(record: dict[str, Any]) -> None:
    """Print the ID and OOD success rates of an evaluation record."""
    best = " (best)" if record["best"] else ""
    print(
        f"step {record['step']}: ID success {record['id_success_rate']:.3f}, "
        f"OOD success {record['ood_success_rate']:.3f}{best}",
        flush=True,
    )


class NotResumable(Exception):
    """Raised by the ``stopped`` function of :func:`interruption_message`: the run cannot be resumed."""


def interruption_message(run_dir: Path, command: OfflineCommand, stopped: Callable[[], str | None]) -> str:
    """
    What an interruption (Ctrl-C) left in a run directory, and how to continue.

    :param run_dir: the run directory
    :param command: the command
    :param stopped: reads the run's checkpoint and tells where the run stopped (``"after step 20 (...)"``),
        ``None`` without a checkpoint; raises the command's error or :class:`NotResumable`
    :return: the message
    """
    if not (run_dir / CONFIG_FILE).is_file():
        return "interrupted before training started; nothing saved"
    current = run_dir / command.current_file
    saved = f"; {command.current_is} {current}" if current.is_file() else ""
    try:
        where = stopped()
    except NotResumable as reason:
        return f"interrupted{saved}; {reason}"
    except command.error as reason:
        return f"interrupted{saved}; the run cannot be resumed: {reason}"
    resume = f"structrl {command.name} --resume {run_dir}"
    if where is None:
        return f"interrupted {command.first_stop}{saved}; start it again with: {resume}"
    return f"interrupted {where}{saved}; continue with: {resume}"


def run_interruptible(
    start: Callable[[], dict[str, Any]],
    interrupted: Callable[[], str],
    report: Callable[[dict[str, Any]], None],
) -> int:
    """
    Run a training; on Ctrl-C print what it left and how to continue.

    :param start: trains and returns the summary
    :param interrupted: the message after Ctrl-C (:func:`interruption_message`)
    :param report: prints the summary
    :return: the exit code: 0, or 130 after Ctrl-C
    """
    try:
        summary = start()
    except KeyboardInterrupt:
        print(f"\nstructrl: {interrupted()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    report(summary)
    return 0
