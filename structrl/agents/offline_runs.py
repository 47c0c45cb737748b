"""
The run directory of the offline trainers of the BabyAI line: behaviour cloning
(:mod:`structrl.agents.behavior_cloning`), the goal discriminator
(:mod:`structrl.agents.goal_discriminator`) and the MVProp planner (:mod:`structrl.agents.mvprop_training`).

Their run directories hold ``config.yml`` (the settings, the environment where the trainer has one, the
torch threads and the library versions), ``checkpoint.pt`` (the state to continue from, written atomically
and tagged with the trainer's format), ``summary.json``, ``tensorboard/`` and the trainer's own model files.
This module writes and reads those shared files, refuses to resume a run whose settings or demonstrations
have changed, and keeps a run's progress (:class:`RunProgress`): its evaluations, the best one and its
weights, the training time of its sessions and where it was resumed.

:class:`RunKind` holds what tells one trainer's runs from another's (names in messages, error class,
checkpoint format, counters), and :class:`OfflineSettings` gives the trainers' settings dataclasses their
shared methods.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch as th
import yaml
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from structrl.agents.evaluation import write_json
from structrl.agents.training import library_versions, write_yaml
from structrl.data.atomic_files import atomic_open
from structrl.data.splits import DemoSplit, split_demo_store
from structrl.policies.factored_attention import SparsitySchedule

CONFIG_FILE = "config.yml"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class RunKind:
    """
    What tells one trainer's runs from the other trainers'.

    :param name: The trainer in messages: ``"behaviour-cloning"``, ``"discriminator"``, ``"MVProp"``.
    :param article: Its indefinite article, ``"a"`` or ``"an"``.
    :param error: The trainer's error class, raised for unusable settings, run directories and checkpoints.
    :param tag: The ``kind`` entry of its ``config.yml`` (``None``: none, the config is told by its
        ``dataset``).
    :param checkpoint_format: The ``format`` entry of its ``checkpoint.pt``.
    :param unit: What the length of its runs counts, ``"epoch"`` or ``"step"``: the settings give the number
        of ``unit + "s"``, a checkpoint the number done under the key ``unit``.
    :param resumable: The settings a resumed run may change.
    :param outputs: Its own files and folders in the run directory, besides the shared ones.
    :param metric: The entry of the evaluation records that picks the best one (higher is better).
    :param best_weights: The checkpoint's entry for the weights of the best evaluation.
    :param unreadable_advice: What to do with a checkpoint that cannot be read.
    :param foreign_advice: What to do with a checkpoint of another format.
    :param restore_in_config: Whether to say where the checkpoint's settings are restored (``config.yml``).
    """

    name: str
    article: str
    error: type[ValueError]
    tag: str | None
    checkpoint_format: int | str
    unit: str
    resumable: tuple[str, ...]
    outputs: tuple[str, ...]
    metric: str
    best_weights: str
    unreadable_advice: str = "delete it to start again"
    foreign_advice: str = "delete it"
    restore_in_config: bool = False

    @property
    def a_name(self) -> str:
        """The trainer's name with its article, e.g. ``"an MVProp"``."""
        return f"{self.article} {self.name}"


SettingsT = TypeVar("SettingsT", bound="OfflineSettings")


class OfflineSettings:
    """
    The methods shared by the settings dataclasses of the offline trainers, which derive from this class and
    set :attr:`run_kind`.
    """

    #: The trainer's runs.
    run_kind: ClassVar[RunKind]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]
    dataset: str
    goal_split: str
    limit: int | None
    id_valid_per_goal: int
    ood_valid_per_goal: int
    sparsity_weight: float
    sparsity_start: int
    sparsity_ramp: int
    seed: int

    def _raise_first(self, problems: Iterable[tuple[object, str]]) -> None:
        """Raise the trainer's error with the message of the first failed check of ``(failed, message)``."""
        for failed, message in problems:
            if failed:
                raise self.run_kind.error(message)

    def sparsity_schedule(self) -> SparsitySchedule:
        """
        :return: the weight of the sparsity penalty by optimizer step
        """
        return SparsitySchedule(self.sparsity_start, self.sparsity_ramp, self.sparsity_weight)

    def demo_split(self) -> DemoSplit:
        """
        :return: the training and validation episodes these settings select from their demonstration store
        """
        return split_demo_store(
            self.dataset, self.goal_split, self.limit, self.id_valid_per_goal, self.ood_valid_per_goal
        )

    def to_dict(self) -> dict[str, Any]:
        """
        :return: the settings as plain YAML/JSON data
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[SettingsT], data: dict[str, Any]) -> SettingsT:
        """
        Rebuild settings written by :meth:`to_dict` (extra keys, such as those ``config.yml`` adds, are
        ignored).

        :param data: the dictionary
        :return: the settings
        :raises ValueError: the trainer's error, if ``dataset`` is missing
        """
        if "dataset" not in data:
            raise cls.run_kind.error(f"the {cls.run_kind.name} settings lack the dataset")
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


# --------------------------------------------------------------------------------------------------------
# Files


def fresh_run_dir(run_dir: str | Path, kind: RunKind) -> Path:
    """
    Create a run directory if needed and remove the files of an earlier run in it.

    :param run_dir: the run directory
    :param kind: the trainer's runs (their own files)
    :return: the run directory
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (*kind.outputs, SUMMARY_FILE, CHECKPOINT_FILE, TENSORBOARD_DIR):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return run_dir


def write_run_config(run_dir: Path, settings: OfflineSettings, threads: int, **environment: Any) -> None:
    """
    Write ``config.yml``: the trainer's ``kind`` tag (if it has one), the settings, the ``environment``
    entries (``env_id``, ``env_kwargs``), the torch threads and the library versions.

    :param run_dir: the run directory
    :param settings: the run's settings
    :param threads: torch intra-op threads
    :param environment: further entries, after the settings
    """
    tag = settings.run_kind.tag
    write_yaml(
        run_dir / CONFIG_FILE,
        {
            **({"kind": tag} if tag is not None else {}),
            **settings.to_dict(),
            **environment,
            "threads": threads,
            "versions": library_versions(),
        },
    )


def read_run_config(run_dir: str | Path, settings_class: type[SettingsT]) -> SettingsT:
    """
    :param run_dir: a run directory
    :param settings_class: the trainer's settings
    :return: the settings of its ``config.yml``
    :raises ValueError: the trainer's error, if the directory holds no ``config.yml`` of the trainer
    """
    kind = settings_class.run_kind
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise kind.error(f"{run_dir} is not {kind.a_name} run directory (no {CONFIG_FILE})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise kind.error(f"malformed YAML in {path}: {error}") from error
    hint = ""
    if kind.tag is not None:
        ours = isinstance(data, dict) and data.get("kind") == kind.tag
    else:  # an untagged config.yml is told from one of structrl train by its dataset
        ours = isinstance(data, dict) and "dataset" in data
        if isinstance(data, dict) and "algo" in data:
            hint = ": resume it with structrl train --resume"
    if not ours:
        raise kind.error(f"{path} is not the configuration of {kind.a_name} run{hint}")
    return settings_class.from_dict(data)


def save_torch_file(path: str | Path, payload: dict[str, Any]) -> None:
    """
    ``torch.save`` a dictionary atomically.

    :param path: the file
    :param payload: tensors and plain data (readable with ``weights_only=True``)
    """
    with atomic_open(path, "wb") as file:
        th.save(payload, file)


def cpu_state_dict(module: nn.Module) -> dict[str, th.Tensor]:
    """
    :param module: a module
    :return: a copy of its state dict on the CPU
    """
    return {name: value.detach().to("cpu", copy=True) for name, value in module.state_dict().items()}


def save_checkpoint(run_dir: Path, kind: RunKind, state: dict[str, Any]) -> None:
    """
    Write ``checkpoint.pt`` atomically, tagged with the trainer's format.

    :param run_dir: the run directory
    :param kind: the trainer's runs
    :param state: the state to continue from
    """
    save_torch_file(run_dir / CHECKPOINT_FILE, {"format": kind.checkpoint_format, **state})


def read_checkpoint(run_dir: str | Path, kind: RunKind) -> dict[str, Any] | None:
    """
    :param run_dir: a run directory
    :param kind: the trainer's runs
    :return: its checkpoint (``None`` without one)
    :raises ValueError: the trainer's error, if the file is not a readable checkpoint of the trainer's format
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        payload = th.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise kind.error(f"cannot read the checkpoint {path} ({error}): {kind.unreadable_advice}") from error
    if not isinstance(payload, dict) or payload.get("format") != kind.checkpoint_format:
        raise kind.error(
            f"{path} is not {kind.a_name} checkpoint of this structrl version: {kind.foreign_advice}"
        )
    return payload


def tensorboard_writer(run_dir: Path) -> SummaryWriter:
    """
    :param run_dir: the run directory
    :return: a writer of its ``tensorboard/`` folder (a resumed run's logs go on in the same folder)
    """
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """
    :param run_dir: the run directory
    :param summary: the run's summary
    :return: the summary, written to ``summary.json``
    """
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


# --------------------------------------------------------------------------------------------------------
# Resuming


def check_resume(run_dir: Path, config: OfflineSettings, saved: dict[str, Any]) -> None:
    """
    Refuse to continue a run from its checkpoint with other settings than the checkpoint's (but those of
    :attr:`RunKind.resumable`), or with fewer epochs (steps) than done, or none more for a finished run.

    :param run_dir: the run directory
    :param config: the settings to continue with (its ``config.yml`` and the new values)
    :param saved: the run's checkpoint
    :raises ValueError: the trainer's error, naming what to change
    """
    kind = config.run_kind
    saved_config = type(config).from_dict(saved["config"])
    changed = [
        item.name
        for item in dataclasses.fields(config)
        if item.name not in kind.resumable and getattr(saved_config, item.name) != getattr(config, item.name)
    ]
    if changed:
        settings = ", ".join(f"{name}={getattr(saved_config, name)!r}" for name in changed)
        where = f" in {CONFIG_FILE}" if kind.restore_in_config else ""
        raise kind.error(
            f"the {CONFIG_FILE} of {run_dir} disagrees with its checkpoint on {', '.join(changed)}: restore "
            f"the checkpoint's settings ({settings}){where}"
        )
    units = f"{kind.unit}s"
    done, total = int(saved[kind.unit]), getattr(config, units)
    if total < done:
        raise kind.error(f"{run_dir} has trained {done} {units} already: ask for at least {done}")
    if saved["finished"] and total == done:
        raise kind.error(f"{run_dir} has finished its {done} {units}: ask for more {units} to train further")


def check_train_transitions(config: OfflineSettings, transitions: int, saved: dict[str, Any]) -> None:
    """
    Refuse to continue a run on other training demonstrations than it was trained on.

    :param config: the run's settings
    :param transitions: transitions of the training demonstrations read now
    :param saved: the run's checkpoint (its ``train_transitions``)
    :raises ValueError: the trainer's error
    """
    if transitions != saved["train_transitions"]:
        raise config.run_kind.error(
            f"the training demonstrations of {config.dataset} hold {transitions} transitions, the run was "
            f"trained on {saved['train_transitions']}: resume with the store the run started with"
        )


# --------------------------------------------------------------------------------------------------------
# Progress


@dataclass
class RunProgress:
    """
    What a run has done, for its checkpoint and summary: the evaluation records, the best one (by the
    trainer's metric; a later record must beat it) with the weights it was made with, the training seconds of
    the earlier sessions and where the run was resumed.

    :param kind: The trainer's runs.
    :param on_evaluation: Called with each new record.
    """

    kind: RunKind
    on_evaluation: Callable[[dict[str, Any]], object] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    #: The weights of the best record (on the CPU).
    best_state: dict[str, th.Tensor] | None = None
    #: The epochs (steps) the run was resumed at.
    resumed: list[int] = field(default_factory=list)
    #: Training seconds of the earlier sessions.
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """
        :return: training seconds of the run, earlier sessions included
        """
        return self.seconds + time.perf_counter() - self.started

    def add(
        self,
        record: dict[str, Any],
        weights: Callable[[], dict[str, th.Tensor]],
        save_best: Callable[[], None],
    ) -> None:
        """
        Add an evaluation record, marked ``best`` if it beats the best so far (the first one does).

        :param record: the record
        :param weights: gives the current weights (on the CPU), kept if the record is the best
        :param save_best: writes the best model's file, called if the record is the best
        """
        metric = self.kind.metric
        record["best"] = self.best is None or record[metric] > self.best[metric]
        if record["best"]:
            self.best = record
            self.best_state = weights()
            save_best()
        self.history.append(record)
        if self.on_evaluation is not None:
            self.on_evaluation(record)

    def evaluated_at(self, step: int) -> bool:
        """
        :param step: an optimizer step
        :return: whether the last evaluation was at that step
        """
        return bool(self.history) and self.history[-1]["step"] == step

    def restore(self, saved: dict[str, Any]) -> None:
        """
        Take the records, the best weights and the time of a checkpoint, and count its position as a
        resumption.

        :param saved: the checkpoint
        """
        self.history = list(saved["history"])
        self.best = saved["best"]
        self.best_state = saved[self.kind.best_weights]
        self.seconds = float(saved["seconds"])
        self.resumed = [*saved["resumed"], int(saved[self.kind.unit])]

    def checkpoint(self) -> dict[str, Any]:
        """
        :return: the checkpoint's ``seconds``, ``resumed``, ``history``, ``best`` and best weights
        """
        return {
            "seconds": self.elapsed(),
            "resumed": self.resumed,
            "history": self.history,
            "best": self.best,
            self.kind.best_weights: self.best_state,
        }

    def results(self, best_file: str, model_file: str) -> dict[str, Any]:
        """
        :param best_file: the name of the best model's file
        :param model_file: the name of the final model's file
        :return: the end of the summary: ``best``, ``final`` and all the ``evaluations``, and the two files
        """
        assert self.best is not None
        return {
            "best": self.best,
            "final": self.history[-1],
            "evaluations": self.history,
            "best_model": best_file,
            "model": model_file,
        }
