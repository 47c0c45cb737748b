"""
``structrl demos``: BabyAI bot demonstrations of GoToLocal with per-goal quotas, and the goal-split options
shared by the commands that train or evaluate on them.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from structrl.data.demos import DemoConfig, DemoProgress, generate_demos, parts_folder
from structrl.data.splits import (
    GOAL_SPLITS,
    ID_VALID_PER_GOAL,
    OOD_VALID_PER_GOAL,
    VALIDATION_SETS,
    DemoSplit,
    SplitError,
    find_goal_seeds,
    goal_split,
    split_demo_store,
)
from structrl.envs.babyai import GOALS, GOTO_LOCAL_ID

#: Characters of the per-goal fill display, from empty to full.
FILL_LEVELS = " ▁▂▃▄▅▆▇█"
#: Longest time the progress bar goes without a redraw while no episode is kept.
REFRESH_SECONDS = 0.5


def add_demos_parser(subparsers: Any) -> None:
    """
    Add the ``demos`` sub-command.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    parser = subparsers.add_parser(
        "demos",
        help="record BabyAI bot demonstrations with per-goal quotas",
        description="Let minigrid's BabyAI bot (with the whole grid known) solve seeded GoToLocal episodes "
        "and keep, for each of the 36 goals, the first --per-goal solutions of at least --min-length "
        "actions. The same settings give the same file, whatever --procs. An interrupted run keeps its "
        "finished shards in FILE.h5.parts/; running the same command again resumes it.",
    )
    parser.add_argument(
        "--env",
        default=GOTO_LOCAL_ID,
        help=f"BabyAI GoTo level or structrl/GoToLocal* id (default {GOTO_LOCAL_ID})",
    )
    parser.add_argument("--per-goal", type=int, required=True, metavar="N", help="episodes per goal")
    parser.add_argument(
        "--min-length", type=int, default=7, metavar="T", help="fewest actions of a kept episode (default 7)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the collection (default 0)")
    parser.add_argument("--room-size", type=int, help="side of the room (default: the environment's)")
    parser.add_argument(
        "--stock-success",
        action="store_true",
        help="minigrid's success rule (facing a match) instead of done facing a match",
    )
    parser.add_argument(
        "--max-seeds", type=int, metavar="N", help="give up after N seeds (default: never); resumable"
    )
    parser.add_argument("--procs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the demonstration store to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--checkpoint-every", type=int, default=2000, metavar="N", help="episodes per shard (default 2000)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run_demos)


def goal_fill(progress: DemoProgress) -> str:
    """
    :param progress: the state of a collection
    :return: one character per goal showing how full it is (space: empty, full block: full)
    """
    levels = np.minimum(progress.counts * (len(FILL_LEVELS) - 1) // progress.per_goal, len(FILL_LEVELS) - 1)
    return "".join(FILL_LEVELS[level] for level in levels)


def run_demos(args: argparse.Namespace) -> int:
    """
    Run ``structrl demos``.

    :param args: the parsed arguments
    :return: the exit code
    """
    config = DemoConfig(
        per_goal=args.per_goal,
        min_length=args.min_length,
        seed=args.seed,
        env_id=args.env,
        room_size=args.room_size,
        stock_success=args.stock_success,
        max_candidates=args.max_seeds,
    )
    with tqdm(total=len(GOALS) * args.per_goal, unit="demo", disable=args.no_progress, desc="demos") as bar:
        last_refresh = time.monotonic()

        def show(progress: DemoProgress) -> None:
            nonlocal last_refresh
            full = len(progress.full_goals)
            bar.set_postfix_str(
                f"goals |{goal_fill(progress)}| {full}/{len(GOALS)} full, {progress.candidates} seeds",
                refresh=False,
            )
            if progress.kept > bar.n:
                bar.update(progress.kept - bar.n)
            elif time.monotonic() - last_refresh > REFRESH_SECONDS:
                bar.refresh()
                last_refresh = time.monotonic()

        summary = generate_demos(
            config,
            args.out,
            procs=args.procs,
            overwrite=args.overwrite,
            checkpoint_every=args.checkpoint_every,
            progress=show,
        )
    resumed = f", {summary.resumed} resumed from {parts_folder(args.out)}" if summary.resumed else ""
    print(
        f"wrote {summary.path}: {summary.episodes} episodes, {summary.transitions} transitions from "
        f"{summary.candidates} seeds in {summary.seconds:.1f} s{resumed}"
    )
    return 0


def add_split_arguments(parser: argparse.ArgumentParser, evaluation: bool) -> None:
    """
    Add the goal-split options of a command training on demonstrations (``--goal-split``, ``--limit``) or
    evaluating on their validation episodes (``--goal-split``, ``--split id|ood``, ``--episodes-per-goal``).

    :param parser: the command's parser (which has its own ``--demos FILE.h5`` and ``--seed`` options)
    :param evaluation: add the evaluation options instead of the training ones
    """
    parser.add_argument(
        "--goal-split", choices=sorted(GOAL_SPLITS), default="paper", help="held-out goals (default paper)"
    )
    parser.add_argument(
        "--id-valid-per-goal",
        type=int,
        default=ID_VALID_PER_GOAL,
        metavar="N",
        help=f"ID validation episodes per training goal: the last N of each (default {ID_VALID_PER_GOAL})",
    )
    parser.add_argument(
        "--ood-valid-per-goal",
        type=int,
        default=OOD_VALID_PER_GOAL,
        metavar="N",
        help=f"OOD validation episodes per held-out goal: the first N of each (default {OOD_VALID_PER_GOAL})",
    )
    if evaluation:
        parser.add_argument(
            "--split",
            choices=VALIDATION_SETS,
            help="evaluate on the ID or OOD validation seeds of --demos (or on --episodes-per-goal seeds "
            "per ID or OOD goal found in the evaluated environment)",
        )
        parser.add_argument(
            "--episodes-per-goal",
            type=int,
            metavar="N",
            help="with --split and no --demos: N seeds per goal, found by resetting the environment",
        )
    else:
        parser.add_argument(
            "--limit",
            type=int,
            metavar="N",
            help="training episodes per ID goal (default: all but validation)",
        )


def split_from_args(args: argparse.Namespace) -> DemoSplit:
    """
    :param args: parsed arguments with ``--demos`` and the options of :func:`add_split_arguments`
    :return: the training and validation episodes of the demonstration store
    """
    return split_demo_store(
        args.demos,
        args.goal_split,
        getattr(args, "limit", None),
        args.id_valid_per_goal,
        args.ood_valid_per_goal,
    )


def evaluation_seeds_from_args(args: argparse.Namespace, env_id: str) -> np.ndarray:
    """
    The fixed evaluation seeds selected by ``--split``: the validation seeds of ``--demos``, or without it
    ``--episodes-per-goal`` seeds per goal of the set found in ``env_id`` (seeded by ``--seed``).

    :param args: parsed arguments with the evaluation options of :func:`add_split_arguments`
    :param env_id: the evaluated environment
    :return: the reset seeds, one episode each
    """
    if getattr(args, "demos", None):
        return split_from_args(args).validation_seeds(args.split)
    if args.episodes_per_goal is None:
        raise SplitError("--split needs --demos FILE.h5 (its validation seeds) or --episodes-per-goal N")
    goals = goal_split(args.goal_split).goals(args.split)
    return find_goal_seeds(env_id, goals, args.episodes_per_goal, seed=args.seed)
