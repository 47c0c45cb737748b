"""
Greedy validation of the Stable-Baselines3 policies that two offline trainers produce (behaviour cloning,
:mod:`structrl.agents.behavior_cloning`, and the MVProp planner, :mod:`structrl.agents.mvprop_training`): the
fixed evaluation seeds of a run's ID and OOD validation episodes, the evaluation records (success rate, mean
return and length of each set), and the model files of the run, ``best_model.zip`` (the best ID success rate)
and ``model.zip`` (the final or current policy), written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from structrl.agents.evaluation import balanced_seeds, evaluate_seeds
from structrl.agents.offline_runs import RunProgress, cpu_state_dict
from structrl.data.splits import VALIDATION_SETS, DemoSplit

MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"
#: The results of each validation set in an evaluation record (``id_success_rate``, ...).
RESULTS = ("success_rate", "mean_return", "mean_length")


def validation_seeds(split: DemoSplit, episodes: int | None) -> dict[str, np.ndarray]:
    """
    :param split: a run's demonstration split
    :param episodes: validation episodes per set, taken goal by goal (``None``: all)
    :return: the reset seeds of the ``id`` and ``ood`` validation episodes evaluated
    """
    return {
        which: balanced_seeds(split.validation_seeds(which), len(split.split.goals(which)), episodes)
        for which in VALIDATION_SETS
    }


def evaluation_problems(
    eval_every: int, eval_episodes: int | None, eval_envs: int
) -> tuple[tuple[bool, str], ...]:
    """
    The checks of a run's evaluation settings, for its settings' ``check``.

    :param eval_every: optimizer steps between evaluations (0: only at the end)
    :param eval_episodes: validation episodes per set and evaluation (``None``: all)
    :param eval_envs: environments stepped together
    :return: ``(failed, message)`` of each check
    """
    return (
        (eval_every < 0, f"--eval-every must be >= 0, got {eval_every}"),
        (
            eval_episodes is not None and eval_episodes < 1,
            f"--eval-episodes must be positive, got {eval_episodes}",
        ),
        (eval_envs < 1, f"the number of evaluation envs must be positive, got {eval_envs}"),
    )


def save_model(model: BaseAlgorithm, path: Path) -> None:
    """Save a model atomically (SB3 writes ``.zip`` files, so the temporary name ends in ``.zip``)."""
    partial = path.with_name(f".{path.stem}.partial.zip")
    try:
        model.save(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@dataclass
class GreedyValidation:
    """
    Greedy evaluations of a model's policy on fixed validation seeds, kept in the run's progress, and the
    run's model files.

    :param model: The model being trained.
    :param env_id: The environment.
    :param env_kwargs: Its keyword arguments.
    :param seeds: The seeds of each validation set (:func:`validation_seeds`).
    :param n_envs: Environments stepped together.
    :param run_dir: The run directory.
    :param progress: The run's progress (its metric is the ID success rate).
    """

    model: BaseAlgorithm
    env_id: str
    env_kwargs: dict[str, Any]
    seeds: dict[str, np.ndarray]
    n_envs: int
    run_dir: Path
    progress: RunProgress

    def evaluate(
        self,
        step: int,
        log: Callable[[str, float], object],
        evaluate: Callable[..., dict[str, Any]] = evaluate_seeds,
    ) -> dict[str, Any]:
        """
        :param step: optimizer steps done
        :param log: records a result as a scalar (``eval/id_success_rate``, ...)
        :param evaluate: the evaluation of some seeds (:func:`~structrl.agents.evaluation.evaluate_seeds`)
        :return: the evaluation record: ``step`` and the :data:`RESULTS` of each validation set
        """
        record: dict[str, Any] = {"step": step}
        for which in VALIDATION_SETS:
            result = evaluate(
                self.model,
                self.env_id,
                self.seeds[which],
                deterministic=True,
                n_envs=self.n_envs,
                env_kwargs=self.env_kwargs,
            )
            for name in RESULTS:
                record[f"{which}_{name}"] = result[name]
                log(f"eval/{which}_{name}", result[name])
        return record

    def keep(self, record: dict[str, Any]) -> None:
        """
        Add an evaluation record to the run's progress; if it is the best so far, keep the policy's weights
        and save the model to ``best_model.zip``.

        :param record: the record
        """
        self.progress.add(
            record,
            lambda: cpu_state_dict(self.model.policy),
            lambda: save_model(self.model, self.run_dir / BEST_MODEL_FILE),
        )

    def restore(self, saved: dict[str, Any]) -> None:
        """
        Take the progress and the policy's weights of a checkpoint; ``best_model.zip`` is written again from
        the checkpoint's best weights (an evaluation after the checkpoint may have replaced it before an
        interruption).

        :param saved: the checkpoint (``policy``, and the progress of :meth:`RunProgress.checkpoint`)
        """
        self.progress.restore(saved)
        if self.progress.best_state is not None:
            self.model.policy.load_state_dict(self.progress.best_state)
            save_model(self.model, self.run_dir / BEST_MODEL_FILE)
        self.model.policy.load_state_dict(saved["policy"])

    def checkpoint(self) -> dict[str, Any]:
        """
        :return: the policy's weights (``policy``) and the progress, for the run's checkpoint
        """
        return {"policy": cpu_state_dict(self.model.policy), **self.progress.checkpoint()}

    def save_current(self) -> None:
        """Save the model to ``model.zip``."""
        save_model(self.model, self.run_dir / MODEL_FILE)
