"""``structrl evaluate``, ``structrl generalize`` and ``structrl record``: use a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from structrl.agents.config import ConfigError, check_env_id
from structrl.agents.evaluation import (
    ModelLoadError,
    balanced_seeds,
    evaluate,
    evaluate_seeds,
    generalize,
    load_model,
    markdown_table,
    record,
    saved_config,
    saved_env_id,
    saved_env_kwargs,
    write_json,
)
from structrl.cli.demos import add_split_arguments, evaluation_seeds_from_args
from structrl.cli.train import parse_params
from structrl.data.episode_store import EpisodeReader
from structrl.data.splits import SplitError, goal_split
from structrl.envs.babyai import REGISTERED_ROOM_SIZES

#: Episodes of ``evaluate`` (without ``--split``) and ``generalize`` unless ``--episodes`` says otherwise.
DEFAULT_EPISODES = 100


def add_parsers(commands: Any) -> None:
    """
    Add the ``evaluate``, ``generalize`` and ``record`` sub-commands.

    :param commands: the sub-parsers object of the ``structrl`` parser
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", help="a model .zip (structrl, rl_zoo3 or SB3)")
    common.add_argument("--deterministic", action="store_true", help="take the most probable action")
    common.add_argument("--seed", type=int, default=0, help="seed of the evaluation environments (default 0)")
    common.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    common.add_argument(
        "--env-kwargs",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="environment keyword arguments, values in YAML syntax (e.g. stock_success=false); they override "
        "the env_kwargs the model was trained with (its run directory's config.yml), which apply by default",
    )

    parser = commands.add_parser(
        "evaluate",
        parents=[common],
        help="evaluate a model",
        description="Evaluate a model on one environment, built with the env_kwargs of its training run "
        "(config.yml beside the model; --env-kwargs overrides them). With --split id|ood, play one episode "
        "from each seed of the ID or OOD validation set of BabyAI GoToLocal: the seeds of --demos FILE.h5, "
        "or --episodes-per-goal seeds per goal found in --env (for the larger structrl/GoToLocal-S* rooms); "
        "--episodes N then takes the first N seeds goal by goal.",
    )
    parser.add_argument("--env", help="environment id (default: the model's training environment)")
    parser.add_argument(
        "--episodes",
        type=int,
        help=f"episodes (default {DEFAULT_EPISODES}; with --split: the first N validation seeds, taken goal "
        "by goal, default all of them)",
    )
    parser.add_argument("--n-envs", type=int, default=8, help="parallel environments (default 8)")
    parser.add_argument("--json", metavar="FILE", help="also write the results (with every episode) as JSON")
    parser.add_argument(
        "--demos", metavar="FILE.h5", help="with --split: the demonstration store of the seeds"
    )
    add_split_arguments(parser, evaluation=True)
    parser.set_defaults(run=run_evaluate)

    parser = commands.add_parser(
        "generalize",
        parents=[common],
        help="evaluate a model on several environments",
        description="Evaluate a model on several environments; print a Markdown table.",
    )
    parser.add_argument("--envs", required=True, metavar="ENV1,ENV2", help="comma-separated environment ids")
    _add_episode_arguments(parser, episodes=DEFAULT_EPISODES)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.set_defaults(run=run_generalize)

    parser = commands.add_parser(
        "record", parents=[common], help="record episodes to a GIF", description="Record episodes to a GIF."
    )
    parser.add_argument("--env", help="environment id (default: the model's training environment)")
    parser.add_argument("--out", required=True, metavar="FILE.gif", help="the GIF to write")
    parser.add_argument("--episodes", type=int, default=3, help="episodes to record (default 3)")
    parser.add_argument("--fps", type=int, default=8, help="frames per second (default 8)")
    parser.set_defaults(run=run_record)


def _add_episode_arguments(parser: argparse.ArgumentParser, episodes: int) -> None:
    parser.add_argument(
        "--episodes", type=int, default=episodes, help=f"episodes per environment ({episodes})"
    )
    parser.add_argument("--n-envs", type=int, default=8, help="parallel environments (default 8)")


def _prepare(args: argparse.Namespace, env_ids: list[str]) -> tuple[BaseAlgorithm, Any, dict[str, Any]]:
    """
    Check the common arguments and the environment ids, then load the model, its env wrapper and the env
    kwargs to evaluate it with: those of its training run, overridden by ``--env-kwargs``.
    """
    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    episodes = getattr(args, "episodes", None)
    if (episodes is not None and episodes < 1) or getattr(args, "n_envs", 1) < 1:
        raise ConfigError("--episodes and --n-envs must be positive")
    cli_env_kwargs = _cli_env_kwargs(args)
    for env_id in env_ids:
        check_env_id(env_id)
    th.set_num_threads(args.threads)
    model = load_model(args.model)
    config = saved_config(args.model)
    env_kwargs = {**saved_env_kwargs(args.model), **cli_env_kwargs}
    return model, None if config is None else config.env_wrapper, env_kwargs


def _cli_env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--env-kwargs KEY=VALUE`` overrides."""
    try:
        return parse_params(args.env_kwargs)
    except ConfigError as error:
        raise ConfigError(str(error).replace("--params", "--env-kwargs")) from error


def _env_id(args: argparse.Namespace) -> str:
    """The ``--env`` argument, or the training environment recorded beside the model."""
    if args.env:
        return str(args.env)
    if not Path(args.model).is_file():
        raise ModelLoadError(f"model file {args.model} not found")
    env_id = saved_env_id(args.model)
    if env_id is None:
        raise ConfigError(f"{args.model} has no config.yml beside it: give --env")
    return env_id


def _split_seeds(args: argparse.Namespace, env_id: str) -> np.ndarray:
    """
    The validation seeds selected by ``--split`` (checked against the room size of ``env_id``): all of them,
    or with ``--episodes N`` the first N taken goal by goal.
    """
    if args.episodes is not None and args.episodes < 1:
        raise ConfigError("--episodes and --n-envs must be positive")
    if args.demos:
        with EpisodeReader(args.demos) as reader:
            room_size = reader.attrs.get("room_size")
        if env_id in REGISTERED_ROOM_SIZES and room_size != REGISTERED_ROOM_SIZES[env_id]:
            size = REGISTERED_ROOM_SIZES[env_id]
            raise SplitError(
                f"the seeds of {args.demos} lay out {room_size}x{room_size} rooms, {env_id} has "
                f"{size}x{size}: evaluate larger rooms with --episodes-per-goal N instead of --demos"
            )
    seeds = evaluation_seeds_from_args(args, env_id)
    if args.episodes is None:
        return seeds
    if args.episodes > len(seeds):
        per_goal = f"{args.split}_valid_per_goal"
        source = (
            f"--demos {args.demos} (--{per_goal.replace('_', '-')} {getattr(args, per_goal)})"
            if args.demos
            else f"--episodes-per-goal {args.episodes_per_goal}"
        )
        raise SplitError(
            f"--episodes {args.episodes} is more than the {len(seeds)} {args.split.upper()} validation seeds "
            f"of {source}: use --episodes {len(seeds)} or fewer, or leave it out to play them all"
        )
    goals = goal_split(args.goal_split).goals(args.split)
    return balanced_seeds(seeds, len(goals), args.episodes)


def _summary(result: dict[str, Any]) -> str:
    notes = [f"{result['split'].upper()} seeds"] if "split" in result else []
    notes += [f"{key}={value!r}" for key, value in result.get("env_kwargs", {}).items()]
    details = f" ({', '.join(notes)})" if notes else ""
    return (
        f"{result['env_id']}{details}: {result['episodes']} episodes, "
        f"success rate {result['success_rate']:.2f}, "
        f"mean return {result['mean_return']:.3f} ± {result['std_return']:.3f}, "
        f"mean length {result['mean_length']:.1f} ± {result['std_length']:.1f}"
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """
    Run ``structrl evaluate``.

    :param args: the parsed arguments
    :return: the exit code
    """
    env_id = _env_id(args)
    if args.split is None:
        if args.demos or args.episodes_per_goal is not None:
            raise SplitError(
                "--demos and --episodes-per-goal choose the seeds of --split: add --split id|ood"
            )
        model, env_wrapper, env_kwargs = _prepare(args, [env_id])
        episodes = DEFAULT_EPISODES if args.episodes is None else args.episodes
        result = evaluate(
            model, env_id, episodes, args.deterministic, args.seed, args.n_envs, env_wrapper, env_kwargs
        )
    else:
        check_env_id(env_id)
        seeds = _split_seeds(args, env_id)
        model, env_wrapper, env_kwargs = _prepare(args, [env_id])
        result = {
            "split": args.split,
            **evaluate_seeds(model, env_id, seeds, args.deterministic, args.n_envs, env_wrapper, env_kwargs),
        }
    print(_summary(result))
    if args.json:
        write_json(args.json, {"model": str(args.model), **result})
    return 0


def run_generalize(args: argparse.Namespace) -> int:
    """
    Run ``structrl generalize``.

    :param args: the parsed arguments
    :return: the exit code
    """
    env_ids = [env_id.strip() for env_id in args.envs.split(",") if env_id.strip()]
    if not env_ids:
        raise ConfigError("--envs needs at least one environment id")
    model, env_wrapper, env_kwargs = _prepare(args, env_ids)
    results = generalize(
        model, env_ids, args.episodes, args.deterministic, args.seed, args.n_envs, env_wrapper, env_kwargs
    )
    print(markdown_table(results))
    if args.json:
        write_json(
            args.json,
            {
                "model": str(args.model),
                "episodes": args.episodes,
                "deterministic": args.deterministic,
                "seed": args.seed,
                "env_kwargs": env_kwargs,
                "results": results,
            },
        )
    return 0


def run_record(args: argparse.Namespace) -> int:
    """
    Run ``structrl record``.

    :param args: the parsed arguments
    :return: the exit code
    """
    env_id = _env_id(args)
    if args.fps < 1:
        raise ConfigError("--fps must be positive")
    model, env_wrapper, env_kwargs = _prepare(args, [env_id])
    result = record(
        model,
        env_id,
        args.out,
        args.episodes,
        args.deterministic,
        args.seed,
        args.fps,
        env_wrapper,
        env_kwargs,
    )
    returns = ", ".join(f"{value:.3f}" for value in result["episode_returns"])
    print(f"wrote {args.out}: {result['frames']} frames, {args.episodes} episodes (returns {returns})")
    return 0
