"""Generalisation benchmark of the RIM paper's MiniGrid experiments (README tables of the seed repository).

Each variant (RIM Kt=4 Ka=3, RIM Kt=4 Ka=2, LSTM) is trained on the starred environment of a task with the
zoo hyperparameters, for several seeds, then evaluated on the larger environments of the task; the table
gives the mean ± std over seeds of the success rate and of the mean return.

    python benchmarks/generalization.py --task empty --seeds 3
    python benchmarks/generalization.py --task doorkey --algo a2c --timesteps 100000
    python benchmarks/generalization.py --task multiroom --variants lstm   # share the runs between processes

Training sequences are cut every ``--bptt-length`` steps (32 by default: the seed's torch_ac ``recurrence``;
0 keeps sb3-contrib's whole sequences); runs go to ``OUT/TASK/ALGO-BUDGET[-bpttN]/VARIANT/seedS``.

The benchmark is resumable: a finished run whose ``results.json`` exists is skipped, an interrupted run
continues from its saved model, and a trained run without results is only evaluated.

The PPO zoo's agents have one memory shared by actor and critic and trained by both losses, as the seed's
torch_ac model (:mod:`structrl.policies.shared_memory`); the A2C zoo's have a memory each (sb3-contrib's
default), which generalises better under A2C. ``--separate-memories`` and ``--single-memory`` force one
layout or the other; their runs go to ``...-separate`` and ``...-single``.

``--first-finished`` also evaluates every finished run under the protocol of the seed's ``evaluate.py``
(rl-starter-files: 16 envs, stop once 100 episodes have finished; see
:func:`structrl.agents.evaluation.evaluate_first_finished`) and prints that table too, so the seed's numbers
can be compared like with like. ``--variants ''`` skips training and only (re-)evaluates and tabulates:

    python benchmarks/generalization.py --task empty --variants '' --first-finished

``--variants ff`` adds the memory-less baseline (PPO with the seed's conv stack and heads, ``zoo/ppo.yml``;
the flags that change memories or losses do not apply to it). ``--seed-cell-state`` trains the RIM variants
with the seed's glue, which rebuilt each LSTM unit's cell state from its hidden state before every step
(``RIM(carry_cell_state=False)``; runs in ``...-seedcell``), to test whether that bug explains the seed's
numbers.

``--seed-update`` gives the RIM the seed's unit update (``RIMCell(seed_update=True)``: no biases in the unit
RNNs, communication reads the inactive units' zero-input updates; runs in ``...-seedupd``).
``--seed-dropout`` gives the RIM the seed's attention dropout (0.1 on both attentions; structrl's default is
none) and keeps it on while the agent collects experience, as torch_ac never leaves train mode
(:class:`structrl.callbacks.TrainModeRolloutsCallback`; runs in ``...-seeddrop``).
``--seed-timeouts`` ends training episodes that hit MiniGrid's step limit as terminal, as the gym of early
2020 did, so SB3 does not bootstrap them with the last observation's value
(:class:`structrl.envs.TimeoutAsTermination`; any variant; runs in ``...-seedtimeout``).

``--torch-ac-losses`` trains with the losses of the seed's torch_ac PPO instead of SB3's defaults: the value
loss clipped with the policy's clip range (``clip_range_vf``; SB3 keeps only the clipped term where torch_ac
takes the larger of the clipped and unclipped ones) and advantages left unnormalised
(``normalize_advantage=False``); its runs go to ``...-torchac``. ``--torch-ac-init`` starts the network
the seed's way instead of SB3's: PyTorch's default layer initialisation rather than orthogonal layers with a
0.01-gain policy head (``ortho_init=False``; ``--row-normalized-init`` adds the seed's exact layers), and
the optimiser's epsilon at torch_ac's 1e-8 rather than the zoo's 1e-5 (the entry's other optimiser settings
are kept); its runs go to ``...-torchacinit``. ``--torch-ac-update`` trains with torch_ac's whole PPO update
(``RecurrentPPO(update_rule="torch_ac")``: chunks of ``--bptt-length`` steps with every other epoch shifted
by half a chunk, memories refreshed during the update, the larger of the unclipped and clipped value losses,
advantages unnormalised); it includes ``--torch-ac-losses``, and its runs go to ``...-torchacupd``.
``--row-normalized-init``, with ``--torch-ac-init``, replaces PyTorch's default init of the linear layers by
the seed's exact one: Gaussian weights with unit-norm rows and zero biases on the heads and the RIM's
key/value projection (``row_normalized_init=True``; runs in ``...-torchacinit-rownorm``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from structrl.agents.config import build_config, eval_policy_kwargs
from structrl.agents.evaluation import evaluate_first_finished, generalize, load_model, write_json
from structrl.agents.training import CHECKPOINT_DIR, MODEL_FILE, read_progress, resume, train

ROOT = Path(__file__).resolve().parents[1]

#: task -> (training environment, evaluation environments)
TASKS: dict[str, tuple[str, list[str]]] = {
    "empty": (
        "MiniGrid-Empty-5x5-v0",
        [
            "MiniGrid-Empty-5x5-v0",
            "MiniGrid-Empty-6x6-v0",
            "MiniGrid-Empty-8x8-v0",
            "MiniGrid-Empty-16x16-v0",
        ],
    ),
    "doorkey": (
        "MiniGrid-DoorKey-5x5-v0",
        [
            "MiniGrid-DoorKey-5x5-v0",
            "MiniGrid-DoorKey-6x6-v0",
            "MiniGrid-DoorKey-8x8-v0",
            "MiniGrid-DoorKey-16x16-v0",
        ],
    ),
    # minigrid 3 keeps MultiRoom-N4-S5-v0 at 6 rooms for backwards compatibility; v1 has the 4 rooms of
    # gym-minigrid's N4-S5, which the seed evaluated on.
    "multiroom": (
        "MiniGrid-MultiRoom-N2-S4-v0",
        ["MiniGrid-MultiRoom-N2-S4-v0", "MiniGrid-MultiRoom-N4-S5-v1", "MiniGrid-MultiRoom-N6-v0"],
    ),
}

#: the variant without memory: PPO with the seed's conv stack and heads, zoo/ppo.yml
FEED_FORWARD = "ff"

#: table label -> variant of the zoo entry (None: the default entry; FEED_FORWARD: zoo/ppo.yml's entry)
VARIANTS: dict[str, str | None] = {
    "RIM (Kt=4, Ka=3)": None,
    "RIM (Kt=4, Ka=2)": "rim-ka2",
    "LSTM": "lstm",
    "Feed-forward (no memory)": FEED_FORWARD,
}

#: table label -> directory name of its runs
RUN_NAMES: dict[str, str] = {label: variant or "rim-ka3" for label, variant in VARIANTS.items()}

#: rim_kwargs of ``--seed-cell-state``: the seed's RIM glue, which rebuilt the cell state from the hidden
#: state before every step (see :class:`structrl.policies.RIM`'s ``carry_cell_state``)
SEED_CELL_STATE = "carry_cell_state=False"

#: rim_kwargs of ``--seed-attention``: the seed's input attention (null key and value = the biases, units
#: ranked by raw input score; see :class:`structrl.policies.RIMCell`'s ``seed_attention``)
SEED_ATTENTION = "seed_attention=True"

#: ``--torch-ac-init``: torch_ac's optimiser epsilon (Adam for PPO, RMSprop for A2C)
TORCH_AC_EPS = 1e-8

#: rim_kwargs of ``--seed-update``: the seed's unit update (no RNN biases; communication reads the inactive
#: units' zero-input updates; see :class:`structrl.policies.RIMCell`'s ``seed_update``)
SEED_UPDATE = "seed_update=True"

#: rim_kwargs and callback of ``--seed-dropout``: the seed's attention dropout, on while acting as in torch_ac
SEED_DROPOUT = "input_dropout=0.1, comm_dropout=0.1"
TRAIN_MODE_ROLLOUTS = "structrl.callbacks.TrainModeRolloutsCallback"

#: env_wrapper added by ``--seed-timeouts``
TIMEOUT_AS_TERMINATION = "structrl.envs.TimeoutAsTermination"


def with_timeout_termination(env_wrapper: Any) -> list[Any]:
    """
    :param env_wrapper: a zoo entry's ``env_wrapper`` (rl_zoo3 format: ``None``, one wrapper or a list)
    :return: the same wrappers, then :class:`structrl.envs.TimeoutAsTermination`
    """
    wrappers = [] if env_wrapper is None else env_wrapper if isinstance(env_wrapper, list) else [env_wrapper]
    return [*wrappers, TIMEOUT_AS_TERMINATION]


#: policy_kwargs of ``--separate-memories`` and ``--single-memory``: a memory each for actor and critic
#: (sb3-contrib's default), or one memory that both losses train (the seed's torch_ac model)
MEMORY_LAYOUTS = {
    "separate": "shared_lstm=False, enable_critic_lstm=True, shared_memory_value_gradient=False",
    "single": "shared_lstm=True, enable_critic_lstm=False, shared_memory_value_gradient=True",
}

ZOO_FILES = {"ppo": ROOT / "zoo" / "ppo_lstm.yml", "a2c": ROOT / "zoo" / "a2c_lstm.yml"}
FEED_FORWARD_ZOO = ROOT / "zoo" / "ppo.yml"


def run_one(args: argparse.Namespace, variant: str | None, seed: int, run_dir: Path) -> list[dict[str, Any]]:
    """
    Train (or resume) one variant and seed, evaluate it; reuse the results if they exist for the task's
    current evaluation environments (a finished run evaluated on others is evaluated again).
    """
    results_file = run_dir / "results.json"
    train_env, eval_envs = TASKS[args.task]
    if results_file.is_file():
        results: list[dict[str, Any]] = json.loads(results_file.read_text())["results"]
        if [result["env_id"] for result in results] == eval_envs:
            return results
    status = read_progress(run_dir).get("status")
    if status == "running" and not list((run_dir / CHECKPOINT_DIR).glob("*.zip")):
        status = None  # killed before its first checkpoint: start again
    if status in ("interrupted", "running"):
        resume(run_dir, threads=args.threads, progress_bar=args.progress)
    elif status != "finished" and variant == FEED_FORWARD:
        config = build_config(
            "ppo", train_env, hyperparams_file=FEED_FORWARD_ZOO, n_timesteps=args.timesteps, seed=seed
        )
        if args.seed_timeouts:
            config.env_wrapper = with_timeout_termination(config.env_wrapper)
        train(config, run_dir, threads=args.threads, progress_bar=args.progress)
    elif status != "finished":
        config = build_config(
            args.algo,
            train_env,
            hyperparams_file=ZOO_FILES[args.algo],
            variant=variant,
            n_timesteps=args.timesteps,
            seed=seed,
            params={"bptt_length": args.bptt_length} if args.bptt_length else None,
        )
        if args.torch_ac_update:
            config.hyperparams["update_rule"] = "torch_ac"
        if args.seed_timeouts:
            config.env_wrapper = with_timeout_termination(config.env_wrapper)
        if args.torch_ac_losses:  # the value loss clipped like the policy, advantages unnormalised
            clip_range = config.hyperparams.get("clip_range", 0.2)
            config.hyperparams.update(normalize_advantage=False, clip_range_vf=clip_range)
        if args.torch_ac_init:  # PyTorch's default layer init; the entry's optimiser settings but eps
            entry = config.hyperparams.get("policy_kwargs") or "dict()"
            optimizer_kwargs = {**eval_policy_kwargs(entry).get("optimizer_kwargs", {}), "eps": TORCH_AC_EPS}
            row_normalized = ", row_normalized_init=True" if args.row_normalized_init else ""
            config.hyperparams["policy_kwargs"] = (
                f"dict({entry}, ortho_init=False{row_normalized}, optimizer_kwargs={optimizer_kwargs!r})"
            )
        if args.memory is not None:
            entry = config.hyperparams.get("policy_kwargs") or "dict()"
            config.hyperparams["policy_kwargs"] = f"dict({entry}, {MEMORY_LAYOUTS[args.memory]})"
        rim_kwargs = [
            kwargs
            for kwargs, chosen in (
                (SEED_CELL_STATE, args.seed_cell_state),
                (SEED_ATTENTION, args.seed_attention),
                (SEED_UPDATE, args.seed_update),
                (SEED_DROPOUT, args.seed_dropout),
            )
            if chosen
        ]
        if args.seed_dropout:  # after the zoo entry's own callbacks, if it has any
            zoo_callbacks = config.callback if isinstance(config.callback, list) else [config.callback]
            config.callback = [*(entry for entry in zoo_callbacks if entry), TRAIN_MODE_ROLLOUTS]
        if rim_kwargs:
            entry = config.hyperparams.get("policy_kwargs") or "dict()"
            config.hyperparams["policy_kwargs"] = f"dict({entry}, rim_kwargs=dict({', '.join(rim_kwargs)}))"
        train(config, run_dir, threads=args.threads, progress_bar=args.progress)
    model = load_model(run_dir / MODEL_FILE)
    results = generalize(model, eval_envs, episodes=args.episodes, deterministic=args.deterministic)
    write_json(results_file, {"variant": variant, "seed": seed, "results": results})
    return results


def first_finished_results(run_dir: Path, eval_envs: list[str], episodes: int) -> list[dict[str, Any]]:
    """
    The results of a finished run under the seed's evaluation protocol (16 envs seeded 0, 10000, 20000, ...,
    sampled actions, stop once ``episodes`` have finished), computed once and kept in the run directory.
    """
    results_file = run_dir / "results_first_finished.json"
    if results_file.is_file():
        saved = json.loads(results_file.read_text())
        cached = saved.get("results", [])
        if saved.get("requested_episodes") == episodes and [r["env_id"] for r in cached] == eval_envs:
            return list(cached)
    model = load_model(run_dir / MODEL_FILE)
    torch.manual_seed(0)  # sampled actions: reproducible, as the seed's evaluate.py seeds torch
    results = [evaluate_first_finished(model, env_id, episodes=episodes) for env_id in eval_envs]
    write_json(results_file, {"requested_episodes": episodes, "results": results})
    return results


def summarise(table: dict[str, list[list[dict[str, Any]]]], eval_envs: list[str]) -> dict[str, Any]:
    """Mean and std over seeds of the success rate and mean return, per variant and environment."""
    summary: dict[str, Any] = {}
    for label, runs in table.items():
        summary[label] = {}
        for index, env_id in enumerate(eval_envs):
            success = np.array([run[index]["success_rate"] for run in runs])
            returns = np.array([run[index]["mean_return"] for run in runs])
            summary[label][env_id] = {
                "success_rate_mean": float(success.mean()),
                "success_rate_std": float(success.std()),
                "mean_return_mean": float(returns.mean()),
                "mean_return_std": float(returns.std()),
                "seeds": len(runs),
            }
    return summary


def markdown(summary: dict[str, Any], eval_envs: list[str], train_env: str) -> str:
    """The summary as a Markdown table: success rate and mean return, mean ± std over seeds."""
    header = ["Model"] + [env_id + (" *" if env_id == train_env else "") for env_id in eval_envs]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for label, cells in summary.items():
        row = [label]
        for env_id in eval_envs:
            cell = cells[env_id]
            row.append(
                f"{cell['success_rate_mean']:.2f} ± {cell['success_rate_std']:.2f} "
                f"({cell['mean_return_mean']:.2f} ± {cell['mean_return_std']:.2f})"
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :return: the exit code
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=list(TASKS), required=True)
    parser.add_argument("--algo", choices=list(ZOO_FILES), default="ppo")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (1, 2, ...)")
    parser.add_argument(
        "--only-seed",
        type=int,
        help="train only this seed of --seeds, so that several processes can share one variant",
    )
    recurrent = ",".join(name for name in RUN_NAMES.values() if name != FEED_FORWARD)
    parser.add_argument(
        "--variants",
        default=recurrent,
        help="comma-separated variants to run, so that several processes can share the work "
        f"(default: the seed's {recurrent}; {FEED_FORWARD}: PPO without memory; '' only tabulates); the "
        "table covers the finished runs of all",
    )
    parser.add_argument("--timesteps", type=int, help="training budget (default: the zoo file's)")
    parser.add_argument(
        "--bptt-length",
        type=int,
        default=32,
        help="cut training sequences every N steps (default 32, the seed's recurrence; 0: whole sequences)",
    )
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per environment")
    parser.add_argument("--deterministic", action="store_true", help="evaluate the most probable actions")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument(
        "--separate-memories",
        action="store_const",
        const="separate",
        dest="memory",
        help="a memory each for actor and critic, sb3-contrib's default (runs in *-separate)",
    )
    memory.add_argument(
        "--single-memory",
        action="store_const",
        const="single",
        dest="memory",
        help="one memory for actor and critic, trained by both losses (runs in *-single)",
    )
    parser.add_argument(
        "--torch-ac-losses",
        action="store_true",
        help="clip the value loss and keep advantages unnormalised, as torch_ac (runs in *-torchac)",
    )
    parser.add_argument(
        "--torch-ac-update",
        action="store_true",
        help="torch_ac's PPO update: shifted chunks, refreshed memories, its value loss, unnormalised "
        "advantages (runs in *-torchacupd)",
    )
    parser.add_argument(
        "--torch-ac-init",
        action="store_true",
        help="PyTorch's default layer init instead of SB3's orthogonal one, optimiser eps 1e-8, as the seed "
        "(runs in *-torchacinit)",
    )
    parser.add_argument(
        "--row-normalized-init",
        action="store_true",
        help="with --torch-ac-init: the seed's Gaussian linear layers with unit-norm rows and zero biases "
        "(runs in *-torchacinit-rownorm)",
    )
    parser.add_argument(
        "--seed-cell-state",
        action="store_true",
        help="RIM only: rebuild the cell state from the hidden state before every step, as the seed's "
        "agent did (runs in *-seedcell)",
    )
    parser.add_argument(
        "--seed-attention",
        action="store_true",
        help="RIM only: the seed's input attention (null key and value = the key/value biases, units ranked "
        "by raw input score, no query bias; runs in *-seedattn)",
    )
    parser.add_argument(
        "--seed-update",
        action="store_true",
        help="RIM only: the seed's unit update (no RNN biases, communication reads the inactive units' "
        "zero-input updates; runs in *-seedupd)",
    )
    parser.add_argument(
        "--seed-dropout",
        action="store_true",
        help="RIM only: the seed's attention dropout of 0.1, on while collecting rollouts too, as torch_ac "
        "(runs in *-seeddrop)",
    )
    parser.add_argument(
        "--seed-timeouts",
        action="store_true",
        help="training episodes cut by the step limit end as terminal, without SB3's value bootstrap, as in "
        "the seed's gym (runs in *-seedtimeout)",
    )
    parser.add_argument(
        "--first-finished",
        action="store_true",
        help="also evaluate the finished runs under the seed's evaluate.py protocol (biased to short ones)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_env, eval_envs = TASKS[args.task]
    budget = "zoo" if args.timesteps is None else str(args.timesteps)
    root = (
        args.out
        / args.task
        / (
            f"{args.algo}-{budget}"
            + (f"-bptt{args.bptt_length}" if args.bptt_length else "")
            + (f"-{args.memory}" if args.memory else "")
            + ("-torchac" if args.torch_ac_losses else "")
            + ("-torchacupd" if args.torch_ac_update else "")
            + ("-torchacinit" if args.torch_ac_init else "")
            + ("-rownorm" if args.row_normalized_init else "")
            + ("-seedcell" if args.seed_cell_state else "")
            + ("-seedattn" if args.seed_attention else "")
            + ("-seedupd" if args.seed_update else "")
            + ("-seeddrop" if args.seed_dropout else "")
            + ("-seedtimeout" if args.seed_timeouts else "")
        )
    )
    if args.torch_ac_losses and args.algo != "ppo":
        parser.error(
            "--torch-ac-losses changes PPO's losses; A2C already keeps advantages unnormalised and its "
            "single gradient step never clips the value loss: drop the flag or use --algo ppo"
        )
    if args.torch_ac_update and (
        args.algo != "ppo" or args.torch_ac_losses or not args.bptt_length or args.memory == "separate"
    ):
        parser.error(
            "--torch-ac-update is torch_ac's PPO update, its losses included, on chunks of --bptt-length "
            "steps of one memory: use it with --algo ppo and a positive --bptt-length, without "
            "--torch-ac-losses and --separate-memories"
        )
    if args.row_normalized_init and not args.torch_ac_init:
        parser.error(
            "--row-normalized-init refines --torch-ac-init's PyTorch-default layers into the seed's "
            "row-normalised ones: add --torch-ac-init"
        )
    if args.bptt_length < 0:
        parser.error(
            f"--bptt-length must be 0 (whole sequences) or a positive number of steps, got {args.bptt_length}"
        )
    if args.only_seed is not None and not 1 <= args.only_seed <= args.seeds:
        parser.error(f"--only-seed must be one of the seeds 1..{args.seeds}, got {args.only_seed}")
    selected = [variant for variant in args.variants.split(",") if variant]
    unknown = sorted(set(selected) - set(RUN_NAMES.values()))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose among {sorted(RUN_NAMES.values())}")
    if FEED_FORWARD in selected and args.algo != "ppo":
        parser.error(f"the {FEED_FORWARD} variant is PPO's (zoo/ppo.yml): drop it or use --algo ppo")
    without_rim = sorted(set(selected) & {"lstm", FEED_FORWARD})
    for flag, chosen in (
        ("--seed-cell-state", args.seed_cell_state),
        ("--seed-attention", args.seed_attention),
        ("--seed-update", args.seed_update),
        ("--seed-dropout", args.seed_dropout),
    ):
        if chosen and without_rim:
            parser.error(f"{flag} changes the RIM; {without_rim} have no RIM: drop them")
    if FEED_FORWARD in selected and (
        args.memory or args.torch_ac_losses or args.torch_ac_update or args.torch_ac_init
    ):
        parser.error(
            f"the {FEED_FORWARD} variant has no memory and keeps zoo/ppo.yml's settings: run it without "
            "--separate-memories, --single-memory, --torch-ac-losses, --torch-ac-update and --torch-ac-init"
        )
    table: dict[str, list[list[dict[str, Any]]]] = {}
    finished_runs: dict[str, list[Path]] = {}
    for label, variant in VARIANTS.items():
        table[label] = []
        finished_runs[label] = []
        for seed in range(1, args.seeds + 1):
            run_dir = root / RUN_NAMES[label] / f"seed{seed}"
            if RUN_NAMES[label] in selected and args.only_seed in (None, seed):
                begin = time.perf_counter()
                run_one(args, variant, seed, run_dir)
                print(
                    f"{label}, seed {seed}: done in {time.perf_counter() - begin:.0f} s ({run_dir})",
                    flush=True,
                )
            results_file = run_dir / "results.json"
            if results_file.is_file():
                results = json.loads(results_file.read_text())["results"]
                if [result["env_id"] for result in results] == eval_envs:
                    table[label].append(results)
                    finished_runs[label].append(run_dir)
    table = {label: runs for label, runs in table.items() if runs}
    if not table:
        print("no finished runs to summarise")
        return 0

    summary = summarise(table, eval_envs)
    seeds = ", ".join(f"{label}: {len(runs)}" for label, runs in table.items())
    print(f"\nSuccess rate (mean return), mean ± std over seeds ({seeds}); trained on {train_env} (*):\n")
    print(markdown(summary, eval_envs, train_env))
    first_finished = None
    if args.first_finished:
        ff_table = {
            label: [
                first_finished_results(run_dir, eval_envs, args.episodes) for run_dir in finished_runs[label]
            ]
            for label in table
        }
        first_finished = summarise(ff_table, eval_envs)
        counted = [
            len(result["episode_returns"]) for runs in ff_table.values() for run in runs for result in run
        ]
        print(
            f"\nThe same runs under the seed's evaluate.py protocol (16 envs, stop once {args.episodes} "
            f"episodes have finished; {min(counted)}-{max(counted)} episodes counted per cell):\n"
        )
        print(markdown(first_finished, eval_envs, train_env))
    summary_file = root / "summary.json"
    write_json(
        summary_file,
        {"task": args.task, "algo": args.algo, "timesteps": args.timesteps, "episodes": args.episodes,
         "deterministic": args.deterministic, "bptt_length": args.bptt_length or None,
         "memory": args.memory or "zoo", "torch_ac_losses": args.torch_ac_losses,
         "torch_ac_update": args.torch_ac_update, "torch_ac_init": args.torch_ac_init,
         "row_normalized_init": args.row_normalized_init,
         "seed_cell_state": args.seed_cell_state, "seed_attention": args.seed_attention,
         "seed_update": args.seed_update, "seed_dropout": args.seed_dropout,
         "seed_timeouts": args.seed_timeouts,
         "summary": summary, "first_finished": first_finished},
    )  # fmt: skip
    print(f"\nwrote {summary_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
