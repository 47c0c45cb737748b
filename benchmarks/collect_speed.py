"""
Random-policy collection speed and dataset size of ``structrl collect`` on the C-SWM block-pushing worlds,
against the original C-SWM generator (``ns.data_gen.env``, measured on a 2-core CPU; see
``shared/reference/cswm.md`` section 9.2).

Each row runs :func:`structrl.data.collection.collect` (environment steps, rendering and the compressed
HDF5 write, timed together) and reports steps per second (best of ``--repeats``) and stored bytes per
transition. The original layout stores ``obs`` and ``next_obs`` as 3 x 50 x 50 float32 (shapes) or float64
(cubes) for every transition, plus an int64 action and, with state ids, two int64 (10,) ids.

    python benchmarks/collect_speed.py --json benchmarks/results/collect_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from structrl.data.collection import CollectionConfig, collect
from structrl.envs.registration import register_envs

# (env id, episodes, save state ids, original steps/s or None when the reference has no figure)
ROWS = (
    ("ShapesImmovableTrain-v0", 500, False, 1226.0),
    ("ShapesImmovableEval-v0", 5000, True, 1183.0),
    ("CubesImmovableTrain-v0", 200, False, 8.9),
    ("CubesImmovableEval-v0", 2000, True, None),
)
HEADER = (
    "| env | episodes | state ids | procs | steps/s | original steps/s | B/transition | original B "
    "| smaller |"
)
FRAME_VALUES = 3 * 50 * 50
STATE_ID_BYTES = 10 * 8


def original_bytes_per_transition(env_id: str, state_ids: bool) -> int:
    """
    :param env_id: a block-pushing id
    :param state_ids: whether the dataset has state ids
    :return: bytes per transition of the original layout (obs + next_obs + action [+ two state ids])
    """
    value_bytes = 4 if env_id.startswith("Shapes") else 8
    return 2 * FRAME_VALUES * value_bytes + 8 + (2 * STATE_ID_BYTES if state_ids else 0)


def measure(
    env_id: str, episodes: int, state_ids: bool, procs: int, repeats: int, folder: Path
) -> dict[str, float]:
    """
    :return: steps/s (best of ``repeats``) and bytes per transition of one collection
    """
    config = CollectionConfig(env_id=env_id, num_episodes=episodes, seed=1, save_state_ids=state_ids)
    path = folder / f"{env_id}.h5"
    best = None
    for _ in range(repeats):
        summary = collect(config, path, procs=procs, overwrite=True)
        rate = summary.transitions / summary.seconds
        best = rate if best is None else max(best, rate)
    assert best is not None
    return {"steps_per_second": best, "bytes_per_transition": path.stat().st_size / summary.transitions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the episode counts (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per row; the best counts (default 2)")
    parser.add_argument(
        "--procs", type=int, nargs="+", default=[1], help="process counts to measure (default 1)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    register_envs()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for env_id, episodes, state_ids, original_rate in ROWS:
            for procs in args.procs:
                count = max(1, round(episodes * args.scale))
                measured = measure(env_id, count, state_ids, procs, args.repeats, Path(folder))
                original_size = original_bytes_per_transition(env_id, state_ids)
                results.append(
                    {
                        "env_id": env_id,
                        "episodes": count,
                        "state_ids": state_ids,
                        "procs": procs,
                        **measured,
                        "original_steps_per_second": original_rate,
                        "original_bytes_per_transition": original_size,
                        "size_ratio": original_size / measured["bytes_per_transition"],
                    }
                )
    print(HEADER)
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        original = (
            "n/a" if row["original_steps_per_second"] is None else f"{row['original_steps_per_second']:,.1f}"
        )
        print(
            f"| {row['env_id']} | {row['episodes']} | {'yes' if row['state_ids'] else 'no'} | {row['procs']} "
            f"| {row['steps_per_second']:,.0f} | {original} | {row['bytes_per_transition']:.0f} "
            f"| {row['original_bytes_per_transition']:,} | {row['size_ratio']:.0f}x |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
