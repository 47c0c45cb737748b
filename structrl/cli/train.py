"""``structrl train``: train an agent, or resume a run."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from structrl.agents import training
from structrl.agents.config import ALGOS, POLICIES, ConfigError, build_config, check_env_id
from structrl.callbacks import GeneralizationCallback

#: Exit code after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

# Flags that define a new run, and so cannot be combined with --resume.
_NEW_RUN_FLAGS = ("algo", "policy", "env", "hyperparams", "variant", "n_envs", "seed", "params", "out")


def add_parser(commands: Any) -> None:
    """
    Add the ``train`` sub-command.

    :param commands: the sub-parsers object of the ``structrl`` parser
    """
    parser = commands.add_parser(
        "train",
        help="train an agent",
        description="Train an agent (or continue a run with --resume). Explicit flags override the "
        "hyperparameter file; without a file the seed's torch_ac settings apply "
        "(structrl.agents.config.DEFAULT_HYPERPARAMS).",
    )
    parser.add_argument("--algo", choices=ALGOS, help="learning algorithm (required for a new run)")
    parser.add_argument(
        "--policy",
        choices=list(POLICIES),
        help="memory of the agent: RIM, LSTM or none (mlp); default: the file entry's policy, else rim",
    )
    parser.add_argument("--env", help="Gymnasium environment id, e.g. MiniGrid-Empty-5x5-v0 (required)")
    parser.add_argument("--timesteps", type=int, help="training budget in environment steps")
    parser.add_argument("--n-envs", type=int, help="number of environments")
    parser.add_argument("--seed", type=int, help="random seed (default 1)")
    parser.add_argument("--hyperparams", metavar="FILE", help="zoo-style YAML file, e.g. zoo/ppo_lstm.yml")
    parser.add_argument("--variant", help="entry ENV:VARIANT of the file instead of ENV, e.g. lstm, rim-ka2")
    parser.add_argument(
        "--params",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override entries of the configuration, values in YAML syntax (e.g. n_steps=16)",
    )
    parser.add_argument("--out", help="run directory (default: runs/ENV-ALGO-POLICY[-VARIANT]-seedSEED)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR up to its budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--checkpoint-freq",
        type=int,
        default=training.DEFAULT_CHECKPOINT_FREQ,
        help=f"steps between checkpoints, 0 for none (default {training.DEFAULT_CHECKPOINT_FREQ})",
    )
    parser.add_argument(
        "--eval-envs", metavar="ENV1,ENV2", help="evaluate periodically on these environments (tensorboard)"
    )
    parser.add_argument("--eval-freq", type=int, default=10_000, help="steps between those evaluations")
    parser.add_argument(
        "--eval-episodes", type=int, default=20, help="episodes per environment and evaluation"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="print SB3's training logs")
    parser.set_defaults(run=run)


def parse_params(items: list[str]) -> dict[str, Any]:
    """
    Parse ``KEY=VALUE`` overrides; values are read as YAML (``16`` is an int, ``lin_1e-3`` a string).

    :param items: the ``KEY=VALUE`` strings
    :return: the overrides
    """
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--params expects KEY=VALUE, got {item!r}")
        try:
            params[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--params {key}: cannot parse {value!r}") from error
    return params


def _callbacks(args: argparse.Namespace) -> list[BaseCallback]:
    if not args.eval_envs:
        return []
    env_ids = [env_id.strip() for env_id in args.eval_envs.split(",") if env_id.strip()]
    for env_id in env_ids:
        check_env_id(env_id)
    if args.eval_freq < 1 or args.eval_episodes < 1:
        raise ConfigError("--eval-freq and --eval-episodes must be positive")
    return [GeneralizationCallback(env_ids, eval_freq=args.eval_freq, n_eval_episodes=args.eval_episodes)]


def run(args: argparse.Namespace) -> int:
    """
    Run ``structrl train``.

    :param args: the parsed arguments
    :return: the exit code
    """
    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    options = {
        "threads": args.threads,
        "progress_bar": not args.no_progress,
        "checkpoint_freq": args.checkpoint_freq,
        "callbacks": _callbacks(args),
        "verbose": args.verbose,
    }
    if args.resume:
        given = [flag for flag in _NEW_RUN_FLAGS if getattr(args, flag) not in (None, [])]
        if given:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
            raise ConfigError(f"--resume continues a run with its own config.yml; drop {flags}")
        run_dir = Path(args.resume)
        training.load_config(run_dir)
        return _train(run_dir, lambda: training.resume(run_dir, n_timesteps=args.timesteps, **options))
    if args.algo is None or args.env is None:
        raise ConfigError("train needs --algo and --env (or --resume DIR)")
    config = build_config(
        args.algo,
        args.env,
        policy=args.policy,
        hyperparams_file=args.hyperparams,
        variant=args.variant,
        n_timesteps=args.timesteps,
        n_envs=args.n_envs,
        seed=1 if args.seed is None else args.seed,
        params=parse_params(args.params),
    )
    name = "-".join(dict.fromkeys(filter(None, (config.env_id, config.algo, config.policy, config.variant))))
    run_dir = Path(args.out or f"runs/{name}-seed{config.seed}")
    return _train(run_dir, lambda: training.train(config, run_dir, **options))


def _train(run_dir: Path, start: Callable[[], BaseAlgorithm]) -> int:
    begin = time.perf_counter()
    try:
        model = start()
    except KeyboardInterrupt:
        progress = training.read_progress(run_dir)
        if progress.get("status") == "interrupted":
            message = (
                f"interrupted after {progress['timesteps_done']} timesteps; model saved to "
                f"{run_dir / training.MODEL_FILE}; continue with: structrl train --resume {run_dir}"
            )
        else:
            message = "interrupted before training started; nothing saved"
        print(f"\nstructrl: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(
        f"trained {model.num_timesteps} timesteps in {time.perf_counter() - begin:.0f} s; "
        f"model saved to {run_dir / training.MODEL_FILE}"
    )
    return 0
