"""``structrl collect``: record episodes of an environment into an episode store (HDF5)."""

from __future__ import annotations

import argparse
from typing import Any

from tqdm import tqdm

from structrl.data.collection import CollectionConfig, CollectionError, collect
from structrl.data.episode_store import COMPRESSIONS


def add_collect_parser(subparsers: Any) -> None:
    """
    Add the ``collect`` sub-command.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    parser = subparsers.add_parser(
        "collect",
        help="record episodes into an episode store",
        description="Record episodes of an environment (random policy, or a trained SB3 model with "
        "epsilon-greedy and burn-in) into an HDF5 episode store. The same seed gives the same episodes, "
        "whatever --procs. An interrupted collection leaves no file.",
    )
    parser.add_argument(
        "--env", required=True, help="Gymnasium id, e.g. ShapesImmovableTrain-v0, PongCswm-v0"
    )
    parser.add_argument("--episodes", type=int, required=True, help="episodes to record")
    parser.add_argument("--seed", type=int, default=0, help="seed of the collection (default 0)")
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the episode store to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--save-state-ids", action="store_true", help="also store the true state id of every observation"
    )
    parser.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="transitions per episode; episodes ending earlier are drawn again (default: the time limit)",
    )
    parser.add_argument(
        "--policy", metavar="MODEL", help="a trained SB3 model (.zip) acting instead of random"
    )
    parser.add_argument(
        "--eps", type=float, default=0.0, help="probability of a random action (with --policy)"
    )
    parser.add_argument(
        "--deterministic", action="store_true", help="take the model's most probable action (with --policy)"
    )
    parser.add_argument(
        "--burn-in",
        metavar="MIN:MAX",
        default="0:0",
        help="unrecorded policy steps before recording, uniform in MIN..MAX per episode (default 0:0)",
    )
    parser.add_argument(
        "--random-after-burn-in",
        action="store_true",
        help="record random actions after the model's burn-in (C-SWM's A3C collector)",
    )
    parser.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="FILE",
        help="episode stores (with state ids) whose start states the new episodes must not start from",
    )
    parser.add_argument("--procs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--compression", choices=COMPRESSIONS, default="gzip", help="HDF5 filter (default gzip)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run_collect)


def parse_burn_in(text: str) -> tuple[int, int]:
    """
    :param text: ``"MIN:MAX"``
    :return: ``(MIN, MAX)``
    :raises CollectionError: if the text is not two integers separated by a colon
    """
    low, separator, high = text.partition(":")
    try:
        if not separator:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise CollectionError(f"--burn-in must be MIN:MAX with two integers, got {text!r}") from None


def run_collect(args: argparse.Namespace) -> int:
    """
    Run ``structrl collect``.

    :param args: the parsed arguments
    :return: the exit code
    """
    config = CollectionConfig(
        env_id=args.env,
        num_episodes=args.episodes,
        seed=args.seed,
        save_state_ids=args.save_state_ids,
        policy_path=args.policy,
        epsilon=args.eps,
        deterministic=args.deterministic,
        burn_in=parse_burn_in(args.burn_in),
        steps_per_episode=args.steps,
        random_after_burn_in=args.random_after_burn_in,
        exclude=tuple(args.exclude),
    )
    with tqdm(total=args.episodes, unit="episode", disable=args.no_progress, desc=args.env) as bar:
        summary = collect(
            config,
            args.out,
            procs=args.procs,
            overwrite=args.overwrite,
            compression=args.compression,
            progress=bar.update,
        )
    rejected = ""
    if summary.duplicate_starts or summary.short_episodes:
        rejected = (
            f"; redrawn: {summary.duplicate_starts} excluded start states, "
            f"{summary.short_episodes} short episodes"
        )
    print(
        f"wrote {summary.path}: {summary.episodes} episodes, {summary.transitions} transitions in "
        f"{summary.seconds:.1f} s ({summary.transitions / max(summary.seconds, 1e-9):.0f} steps/s){rejected}"
    )
    return 0
