"""RecurrentPPO training speed with the RIM policy against the LSTM baseline (default: MiniGrid-Empty-5x5).

Each configuration trains for ``--timesteps`` steps on ``--n-envs`` (8) DummyVecEnv envs with one torch
thread; the script reports total steps per second (rollouts and updates, like SB3's ``fps``), rollout-only
steps per second and seconds per update, best of ``--repeats`` runs (interleaved, so outside load hits every
configuration alike).
The ``bptt 32`` rows cut training sequences every 32 steps (``structrl.agents.RecurrentPPO(bptt_length=32)``,
the seed's torch_ac ``recurrence``); the others train on sb3-contrib's whole sequences. ``shared`` rows have
one memory for actor and critic, trained by both losses (``shared_memory_value_gradient=True``), as the zoo.
The ``torch_ac update`` rows train with ``update_rule="torch_ac"`` (the seed's PPO update). ``--match TEXT``
runs only the configurations whose name contains TEXT.

    python benchmarks/train_fps.py --timesteps 8192 --repeats 2 --json benchmarks/results/train_fps.json
    python benchmarks/train_fps.py --env MiniGrid-DoorKey-5x5-v0 --n-envs 16 --timesteps 16384 --repeats 1 \
        --json benchmarks/results/train_fps_doorkey.json
    python benchmarks/train_fps.py --env MiniGrid-MultiRoom-N2-S4-v0 --n-envs 16 --timesteps 16384 \
        --repeats 1 --match "shared, bptt 32" --json benchmarks/results/train_fps_update_rules.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from structrl.agents import RecurrentPPO
from structrl.envs import make_minigrid_env
from structrl.policies import MiniGridLstmPolicy, RIMPolicy

#: One memory for actor and critic, trained by both losses (the zoo's setting, the seed's torch_ac model).
_SHARED = {"shared_lstm": True, "enable_critic_lstm": False, "shared_memory_value_gradient": True}

#: name -> (policy class, policy kwargs, bptt_length, update_rule)
CONFIGS: dict[str, tuple[type, dict[str, Any], int | None, str]] = {
    "RIM Kt=4x16 Ka=3 (actor+critic RIMs)": (RIMPolicy, {}, None, "sb3"),
    "LSTM 64 (actor+critic LSTMs)": (MiniGridLstmPolicy, {}, None, "sb3"),
    "RIM Kt=4x16 Ka=3 (shared)": (RIMPolicy, _SHARED, None, "sb3"),
    "LSTM 64 (shared)": (MiniGridLstmPolicy, _SHARED, None, "sb3"),
    "RIM Kt=4x16 Ka=3 (actor+critic RIMs, bptt 32)": (RIMPolicy, {}, 32, "sb3"),
    "LSTM 64 (actor+critic LSTMs, bptt 32)": (MiniGridLstmPolicy, {}, 32, "sb3"),
    "RIM Kt=4x16 Ka=3 (shared, bptt 32: the zoo's)": (RIMPolicy, _SHARED, 32, "sb3"),
    "LSTM 64 (shared, bptt 32: the zoo's)": (MiniGridLstmPolicy, _SHARED, 32, "sb3"),
    "RIM Kt=4x16 Ka=3 (shared, bptt 32, torch_ac update)": (RIMPolicy, _SHARED, 32, "torch_ac"),
    "LSTM 64 (shared, bptt 32, torch_ac update)": (MiniGridLstmPolicy, _SHARED, 32, "torch_ac"),
}

#: ratio name -> (RIM configuration, LSTM configuration)
RATIOS = {
    "separate": ("RIM Kt=4x16 Ka=3 (actor+critic RIMs)", "LSTM 64 (actor+critic LSTMs)"),
    "shared": ("RIM Kt=4x16 Ka=3 (shared)", "LSTM 64 (shared)"),
    "separate, bptt 32": (
        "RIM Kt=4x16 Ka=3 (actor+critic RIMs, bptt 32)",
        "LSTM 64 (actor+critic LSTMs, bptt 32)",
    ),
    "shared, bptt 32 (zoo)": (
        "RIM Kt=4x16 Ka=3 (shared, bptt 32: the zoo's)",
        "LSTM 64 (shared, bptt 32: the zoo's)",
    ),
    "shared, bptt 32, torch_ac update": (
        "RIM Kt=4x16 Ka=3 (shared, bptt 32, torch_ac update)",
        "LSTM 64 (shared, bptt 32, torch_ac update)",
    ),
}


class _RolloutTimer(BaseCallback):
    """Accumulates the wall time spent collecting rollouts."""

    def __init__(self) -> None:
        super().__init__()
        self.rollout_seconds = 0.0
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.rollout_seconds += time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def run(
    policy: type,
    policy_kwargs: dict[str, Any],
    bptt_length: int | None,
    update_rule: str,
    env_id: str,
    timesteps: int,
    n_envs: int,
    seed: int,
) -> dict[str, float]:
    env = make_vec_env(make_minigrid_env, n_envs=n_envs, seed=seed, env_kwargs={"env_id": env_id})
    model = RecurrentPPO(
        policy,
        env,
        n_steps=128,
        batch_size=256,
        n_epochs=4,
        bptt_length=bptt_length,
        update_rule=update_rule,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device="cpu",
    )
    timer = _RolloutTimer()
    start = time.perf_counter()
    model.learn(timesteps, callback=timer)
    total = time.perf_counter() - start
    updates = timesteps // (128 * n_envs)
    return {
        "fps": model.num_timesteps / total,
        "rollout_fps": model.num_timesteps / timer.rollout_seconds,
        "train_seconds_per_update": (total - timer.rollout_seconds) / max(updates, 1),
        "params": float(sum(p.numel() for p in model.policy.parameters())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="MiniGrid-Empty-5x5-v0", help="MiniGrid environment id")
    parser.add_argument("--timesteps", type=int, default=8192)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/train_fps.json"))
    parser.add_argument("--match", default="", help="run only the configurations whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = {name: config for name, config in CONFIGS.items() if args.match in name}
    if not configs:
        parser.error(f"--match {args.match!r} selects no configuration; names: {', '.join(CONFIGS)}")

    best: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for name, (policy, kwargs, bptt_length, update_rule) in configs.items():
            result = run(
                policy, kwargs, bptt_length, update_rule, args.env, args.timesteps, args.n_envs, seed=repeat
            )
            if name not in best or result["fps"] > best[name]["fps"]:
                best[name] = result

    print(f"RecurrentPPO on {args.env}, {args.n_envs} envs, {args.timesteps} steps, best of {args.repeats}")
    print("| policy | total FPS | rollout FPS | train s/update | params |")
    print("|---|---|---|---|---|")
    for name, result in best.items():
        print(
            f"| {name} | {result['fps']:.0f} | {result['rollout_fps']:.0f} | "
            f"{result['train_seconds_per_update']:.2f} | {result['params']:.0f} |"
        )
    ratios = {
        name: best[rim]["fps"] / best[lstm]["fps"]
        for name, (rim, lstm) in RATIOS.items()
        if {rim, lstm} <= set(best)
    }
    print(
        "RIM/LSTM FPS ratio (target >= 0.6): "
        + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items())
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {"config": vars(args) | {"json": str(args.json)}, "results": best, "ratios": ratios}, indent=2
        )
    )
    os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
