"""The ``structrl`` command: train, evaluate, generalize, record, collect, cswm, demos, bc, discriminator and
mvprop.

Bad input (an unknown environment, algorithm or policy, a malformed hyperparameter file, a missing model)
ends with a one-line ``structrl: error: ...`` on stderr and exit code 2; Ctrl-C with exit code 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from structrl.agents.behavior_cloning import BCError
from structrl.agents.config import ConfigError
from structrl.agents.evaluation import ModelLoadError
from structrl.cli import evaluate, train
from structrl.cli.bc import add_bc_parser
from structrl.cli.collect import add_collect_parser
from structrl.cli.compgen import add_compgen_parsers
from structrl.cli.cswm import add_cswm_parser
from structrl.cli.demos import add_demos_parser
from structrl.cli.train import EXIT_INTERRUPTED
from structrl.data.collection import CollectionError
from structrl.data.demos import DemoError
from structrl.data.episode_store import EpisodeStoreError
from structrl.data.splits import SplitError
from structrl.envs.babyai import BabyAIEnvError
from structrl.world_models.errors import WorldModelError

#: Exit code of bad input, as argparse uses it.
EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        """
        Report a usage error and exit.

        :param message: the error message
        """
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> ArgumentParser:
    """
    :return: the parser of the ``structrl`` command
    """
    parser = ArgumentParser(
        prog="structrl", description="Train, evaluate and record structured RL agents; collect datasets."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    train.add_parser(commands)
    evaluate.add_parsers(commands)
    add_collect_parser(commands)
    add_cswm_parser(commands)
    add_demos_parser(commands)
    add_bc_parser(commands)
    add_compgen_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the ``structrl`` command.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :return: the exit code
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (
        ConfigError,
        ModelLoadError,
        CollectionError,
        EpisodeStoreError,
        DemoError,
        SplitError,
        BabyAIEnvError,
        WorldModelError,
        BCError,
    ) as error:
        print(f"structrl: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("structrl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
