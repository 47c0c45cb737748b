"""``structrl cswm``: train a contrastive structured world model (C-SWM) and rank its predictions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch as th
from tqdm import tqdm

from structrl.agents.cswm_training import CSWMTrainConfig, EpochRecord, train_cswm
from structrl.world_models.cswm import NEGATIVE_ANCHORS, ContrastiveSWM, CSWMConfig
from structrl.world_models.encoders import ENCODERS
from structrl.world_models.errors import WorldModelError
from structrl.world_models.evaluation import EVALUATION_MODES, RankingResult, evaluate
from structrl.world_models.negatives import NEGATIVE_STRATEGIES
from structrl.world_models.ranking import RANKINGS


def _choices(values: Sequence[str]) -> str:
    return "{" + ",".join(values) + "}"


def add_cswm_parser(subparsers: Any) -> None:
    """
    Add the ``cswm`` command with its ``train`` and ``eval`` sub-commands.

    :param subparsers: the sub-parsers object of the ``structrl`` parser
    """
    parser = subparsers.add_parser(
        "cswm",
        help="train and evaluate contrastive structured world models (C-SWM)",
        description="Contrastive structured world models (Kipf et al., 2020) with the negative sampling "
        "strategies of Biza et al. (2021), trained on episode stores written by 'structrl collect'.",
    )
    commands = parser.add_subparsers(dest="cswm_command", required=True)
    _add_train_parser(commands)
    _add_eval_parser(commands)


def _add_train_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train a C-SWM on an episode store",
        description="Train a C-SWM. The last --validation-fraction of the episodes is held out; the model of "
        "lowest validation loss is kept as OUT/model.pt. OUT/checkpoint.pt is written after every epoch (and "
        "every 5 minutes), so --resume continues an interrupted run; tensorboard logs go to OUT/tensorboard.",
    )
    parser.add_argument(
        "--dataset", required=True, metavar="FILE.h5", help="episode store of training episodes"
    )
    parser.add_argument(
        "--encoder", default="small", metavar=_choices(ENCODERS), help="object extractor CNN (default small)"
    )
    parser.add_argument(
        "--negatives",
        default="batch",
        metavar=_choices(NEGATIVE_STRATEGIES),
        help="negative sampling: batch (the original's in-batch baseline), episodic (same episode, other "
        "step), time-aligned (other episode, same step), out-of-episode (other episode, any step), mixed "
        "(episodic with probability --beta, else out-of-episode), mixed-time-aligned (episodic with "
        "probability --beta, else time-aligned); default batch",
    )
    parser.add_argument("--beta", type=float, default=0.5, help="probability of episodic negatives (mixed)")
    parser.add_argument(
        "--embedding-dim", type=int, default=2, help="size of an object embedding (default 2)"
    )
    parser.add_argument("--hidden-dim", type=int, default=512, help="hidden units of the MLPs (default 512)")
    parser.add_argument("--num-objects", type=int, default=5, help="object slots (default 5)")
    parser.add_argument(
        "--action-dim",
        type=int,
        default=4,
        help="actions per object, or in all with --copy-action (default 4)",
    )
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument(
        "--copy-action", action="store_true", help="give every slot the whole action (e.g. Atari)"
    )
    actions.add_argument("--ignore-action", action="store_true", help="give the transition model no action")
    parser.add_argument("--sigma", type=float, default=0.5, help="energy scale (default 0.5)")
    parser.add_argument("--hinge", type=float, default=1.0, help="margin of the negative energy (default 1)")
    parser.add_argument(
        "--negative-weight", type=float, default=1.0, help="weight of the hinge term (default 1)"
    )
    parser.add_argument(
        "--negative-anchor",
        default="next",
        metavar=_choices(NEGATIVE_ANCHORS),
        help="compare negatives with the next state (the paper; default) or the current one (the original "
        "code)",
    )
    parser.add_argument("--epochs", type=int, default=100, help="passes over the training data (default 100)")
    parser.add_argument("--batch-size", type=int, default=1024, help="transitions per step (default 1024)")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4)")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="episodes held out for validation (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed (default 42)")
    parser.add_argument(
        "--out", metavar="DIR", help="run directory (default runs/cswm/<dataset>-<negatives>-s<seed>)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run of --out from its checkpoint")
    _add_runtime_arguments(parser)
    parser.set_defaults(run=run_train)


def _add_eval_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="rank a C-SWM's predictions (Hits@k, MRR)",
        description="Encode the first observation of every episode, predict STEPS steps ahead with the "
        "recorded actions and rank the prediction against the encoded observation STEPS steps later, among "
        "all episodes (all), consecutive batches of --batch-size episodes (batched) or the observations of "
        "the same episode (in-episode). Ties go to the correct candidate. Prints a Markdown table.",
    )
    parser.add_argument(
        "model", metavar="MODEL", help="model.pt written by 'structrl cswm train', or its run directory"
    )
    parser.add_argument(
        "--dataset", required=True, metavar="FILE.h5", help="episode store of evaluation episodes"
    )
    parser.add_argument("--steps", default="1", metavar="K1,K2", help="prediction horizons (default 1)")
    parser.add_argument(
        "--dedup",
        action="store_true",
        help="candidates of the correct true state do not count (needs state ids)",
    )
    parser.add_argument(
        "--mode",
        default="all",
        metavar="MODE1,MODE2",
        help=f"rankings among {_choices(EVALUATION_MODES)}, comma-separated (default all)",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="episodes per batch of the batched mode")
    parser.add_argument("--hits", default="1", metavar="K1,K2", help="cut-offs of Hits@k (default 1)")
    parser.add_argument(
        "--rank",
        default="targets",
        metavar=_choices(RANKINGS),
        help="each prediction ranks the targets (the paper; default) or each target ranks the predictions "
        "(the original code)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    _add_runtime_arguments(parser)
    parser.set_defaults(run=run_eval)


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: torch's; 1 is fastest on a busy CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise WorldModelError(f"--threads must be positive, got {args.threads}")
        th.set_num_threads(args.threads)


def parse_integers(text: str, option: str) -> list[int]:
    """
    :param text: comma-separated integers, e.g. ``"1,5,10"``
    :param option: the option they come from (for the message)
    :return: the integers
    :raises WorldModelError: if the text is not a list of positive integers
    """
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise WorldModelError(
            f"{option} takes comma-separated integers such as 1,5,10; got {text!r}"
        ) from None
    if min(values) < 1:
        raise WorldModelError(f"{option} takes positive integers; got {text!r}")
    return values


def run_train(args: argparse.Namespace) -> int:
    """
    Run ``structrl cswm train``.

    :param args: the parsed arguments
    :return: the exit code
    """
    _set_threads(args)
    action_encoding = "copy" if args.copy_action else "none" if args.ignore_action else "per-object"
    config = CSWMTrainConfig(
        dataset=args.dataset,
        model=CSWMConfig(
            encoder=args.encoder,
            num_objects=args.num_objects,
            embedding_dim=args.embedding_dim,
            hidden_dim=args.hidden_dim,
            action_dim=args.action_dim,
            action_encoding=action_encoding,
            sigma=args.sigma,
            hinge=args.hinge,
            negative_weight=args.negative_weight,
            negative_anchor=args.negative_anchor,
        ),
        negatives=args.negatives,
        beta=args.beta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    out = args.out or f"runs/cswm/{Path(args.dataset).stem}-{args.negatives}-s{args.seed}"
    with tqdm(unit="transition", disable=args.no_progress, desc="epoch 1") as bar:

        def on_batch(size: int, loss: float) -> None:
            bar.update(size)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        def on_epoch(record: EpochRecord) -> None:
            bar.set_description(f"epoch {record.epoch + 1}")
            bar.set_postfix(validation=f"{record.validation_loss:.4f}", refresh=False)

        result = train_cswm(
            config, out, resume=args.resume, device=args.device, on_batch=on_batch, on_epoch=on_epoch
        )
    print("| epoch | train loss | validation loss | samples/s |")
    print("|---|---|---|---|")
    for record in result.history:
        best = " (best)" if record.epoch == result.best_epoch else ""
        print(
            f"| {record.epoch}{best} | {record.train_loss:.4f} | {record.validation_loss:.4f} "
            f"| {record.samples_per_second:,.0f} |"
        )
    print(f"\nmodel: {result.run_dir / 'model.pt'} (epoch {result.best_epoch})")
    return 0


def results_table(results: Sequence[RankingResult]) -> str:
    """
    :param results: ranking results
    :return: a Markdown table of them
    """
    cutoffs = sorted({cutoff for result in results for cutoff in result.hits})
    lines = [
        "| mode | steps | episodes | " + " | ".join(f"Hits@{cutoff}" for cutoff in cutoffs) + " | MRR |",
        "|---|---|---|" + "---|" * len(cutoffs) + "---|",
    ]
    for result in results:
        hits = " | ".join(f"{result.hits[cutoff]:.4f}" for cutoff in cutoffs)
        lines.append(f"| {result.mode} | {result.steps} | {result.episodes} | {hits} | {result.mrr:.4f} |")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    """
    Run ``structrl cswm eval``.

    :param args: the parsed arguments
    :return: the exit code
    """
    _set_threads(args)
    steps = parse_integers(args.steps, "--steps")
    hits = parse_integers(args.hits, "--hits")
    modes = [mode.strip() for mode in args.mode.split(",")]
    model = ContrastiveSWM.load(args.model, device=args.device)
    started = time.perf_counter()
    with tqdm(unit="episode", disable=args.no_progress, desc="encoding") as bar:
        results = evaluate(
            model,
            args.dataset,
            steps=steps,
            modes=modes,
            dedup=args.dedup,
            batch_size=args.batch_size,
            hits=hits,
            rank=args.rank,
            progress=bar.update,
        )
    seconds = time.perf_counter() - started
    print(results_table(results))
    if args.json:
        report = {
            "model": str(args.model),
            "dataset": str(args.dataset),
            "dedup": args.dedup,
            "rank": args.rank,
            "batch_size": args.batch_size,
            "seconds": seconds,
            "results": [dataclasses.asdict(result) for result in results],
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
