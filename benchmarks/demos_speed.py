"""
Speed of ``structrl demos`` (BabyAI bot demonstrations of GoToLocal with per-goal quotas) with 1 and 2
worker processes, against minigrid's bot alone in a plain loop (stock env, stock rule, no recording: the
reference's "about 70-110 episodes/s on one core").

Each row runs :func:`structrl.data.demos.generate_demos` (resets, bot solves, recording, shards and the final
compressed HDF5 merge, timed together) and reports

* demos/s: kept episodes per second;
* solved/s: episodes the bot solved per second (kept ones, and those dropped as shorter than the minimum
  length), the figure comparable to the plain loop;
* seeds/s: candidate seeds per second (including those skipped after a reset because their goal was full);
* demos per worker CPU-second: kept episodes per second of CPU time of the processes that solve (the
  worker processes, or the main process with 1 process), the per-process rate without the effect of other
  load on the machine; with ``--procs 2`` on a 2-core machine shared with other jobs the wall-clock rates
  cannot scale, but this one shows what each process sustains;
* main CPU s: CPU time of the main process (ordering, shards, merge), the serial part.

    python benchmarks/demos_speed.py --json /tmp/demos_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import minigrid  # noqa: F401  (registers the BabyAI ids)
from minigrid.utils.baby_ai_bot import BabyAIBot

from structrl.data.demos import DemoConfig, generate_demos

HEADER = (
    "| setting | min length | per goal | procs | demos | demos/s | solved/s | seeds/s "
    "| demos per worker CPU-s | main CPU s |"
)


def plain_bot_loop(episodes: int) -> float:
    """
    :param episodes: episodes to solve (seeds 1, 2, ...)
    :return: episodes per second of minigrid's bot on the stock env, without recording
    """
    env = gym.make("BabyAI-GoToLocal-v0")
    start = time.perf_counter()
    for seed in range(1, episodes + 1):
        with contextlib.redirect_stdout(io.StringIO()):
            env.reset(seed=seed)
        bot = BabyAIBot(env)
        bot.vis_mask[:] = True
        terminated = truncated = False
        while not (terminated or truncated):
            _, _, terminated, truncated, _ = env.step(bot.replan())
    return episodes / (time.perf_counter() - start)


def cpu_seconds() -> tuple[float, float]:
    """
    :return: CPU time (user + system) of this process and of its finished child processes
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measure(min_length: int, per_goal: int, procs: int, repeats: int, folder: Path) -> dict[str, float]:
    """
    :return: the rates of the best of ``repeats`` collections
    """
    best: dict[str, float] = {}
    for repeat in range(repeats):
        config = DemoConfig(per_goal=per_goal, min_length=min_length, seed=repeat)
        main_before, workers_before = cpu_seconds()
        summary = generate_demos(config, folder / "demos.h5", procs=procs, overwrite=True)
        main_after, workers_after = cpu_seconds()
        main_cpu, workers_cpu = main_after - main_before, workers_after - workers_before
        rates = {
            "demos": summary.episodes,
            "demos_per_second": summary.episodes / summary.seconds,
            "solved_per_second": (summary.episodes + summary.short + summary.failed) / summary.seconds,
            "seeds_per_second": summary.candidates / summary.seconds,
            "demos_per_worker_cpu_second": summary.episodes / (main_cpu if procs == 1 else workers_cpu),
            "main_cpu_seconds": main_cpu,
        }
        if not best or rates["demos_per_second"] > best["demos_per_second"]:
            best = rates
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-goal", type=int, default=20, help="episodes per goal (default 20)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the best counts (default 2)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    plain = max(plain_bot_loop(500) for _ in range(args.repeats))
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for min_length in (1, 7):
            for procs in args.procs:
                rates = measure(min_length, args.per_goal, procs, args.repeats, Path(folder))
                results.append({"min_length": min_length, "per_goal": args.per_goal, "procs": procs, **rates})
    print(f"minigrid bot alone, plain loop (stock env, no recording): {plain:.0f} episodes/s\n")
    print(HEADER)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        setting = "every solve kept" if row["min_length"] == 1 else "paper filter"
        print(
            f"| {setting} | {row['min_length']} | {row['per_goal']} | {row['procs']} | {row['demos']:.0f} "
            f"| {row['demos_per_second']:.0f} | {row['solved_per_second']:.0f} "
            f"| {row['seeds_per_second']:.0f} | {row['demos_per_worker_cpu_second']:.0f} "
            f"| {row['main_cpu_seconds']:.2f} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"plain_bot_episodes_per_second": plain, "rows": results}, indent=2)
        )


if __name__ == "__main__":
    main()
