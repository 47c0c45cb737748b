"""
Training of a contrastive structured world model (C-SWM) on an episode store.

The episodes are read once into memory as uint8 frames (a 1000-episode, 100-step Shapes store takes
760 MB; frames become float only batch by batch). The last ``validation_fraction`` of the episodes is held
out; the model kept as ``model.pt`` is the one of lowest validation loss (the original kept the lowest
training loss).

A run directory holds:

* ``config.yml``: the training settings;
* ``model.pt``: the best model so far (:meth:`~structrl.world_models.cswm.ContrastiveSWM.load` reads it);
* ``checkpoint.pt``: the latest state (model, optimizer, epoch, batches done, torch RNG, history), written
  after every epoch and every ``checkpoint_seconds`` within an epoch, so ``resume=True`` continues an
  interrupted run where the checkpoint left it;
* ``tensorboard/``: the losses (``train/*`` every ``log_interval`` batches, ``validation/*`` every epoch).

Every file is written to a temporary file and renamed over the old one. Randomness is reproducible: the
shuffling of epoch ``e`` comes from ``numpy.random.default_rng([seed, e])`` and the negatives of its batch
``b`` from ``default_rng([seed, e, b])``, so a resumed run draws exactly what the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from torch.utils.tensorboard import SummaryWriter

from structrl.agents.training import write_yaml
from structrl.world_models.cswm import ContrastiveLoss, ContrastiveSWM, CSWMConfig, save_atomically
from structrl.world_models.episode_frames import EpisodeFrames, check_episodes_fit, open_store, read_episodes
from structrl.world_models.errors import WorldModelError
from structrl.world_models.negatives import EpisodeLayout, NegativeSampler, make_negative_sampler

CONFIG_FILE = "config.yml"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
TENSORBOARD_DIR = "tensorboard"
#: Format tag of a training checkpoint.
CHECKPOINT_FORMAT = "structrl-cswm-checkpoint"
#: Settings that may change when a run is resumed.
_RESUMABLE = ("epochs", "log_interval", "checkpoint_seconds")
#: Seed-sequence entry of the validation negatives (epochs use their index).
_VALIDATION_STREAM = 2**31


@dataclass(frozen=True)
class CSWMTrainConfig:
    """
    What to train. The defaults are the original's (Adam, learning rate 5e-4, batch 1024, 100 epochs).

    :param dataset: The episode store of training episodes.
    :param model: Architecture and loss; ``observation_shape`` is taken from the dataset.
    :param negatives: Negative sampling: ``batch``, ``episodic``, ``time-aligned``, ``out-of-episode``,
        ``mixed`` or ``mixed-time-aligned`` (see
        :func:`~structrl.world_models.negatives.make_negative_sampler`).
    :param beta: Probability of an episodic negative in the mixtures.
    :param epochs: Passes over the training transitions.
    :param batch_size: Transitions per optimizer step.
    :param learning_rate: Adam's learning rate.
    :param validation_fraction: Fraction of the episodes (the last ones of the store) held out.
    :param seed: Seed of the initial weights, the shuffling and the negatives.
    :param log_interval: Batches between two tensorboard records of the training loss.
    :param checkpoint_seconds: Seconds between two checkpoints within an epoch (an epoch's end always
        writes one).
    """

    dataset: str
    model: CSWMConfig = field(default_factory=CSWMConfig)
    negatives: str = "batch"
    beta: float = 0.5
    epochs: int = 100
    batch_size: int = 1024
    learning_rate: float = 5e-4
    validation_fraction: float = 0.1
    seed: int = 42
    log_interval: int = 20
    checkpoint_seconds: float = 300.0

    def check(self) -> None:
        """
        :raises WorldModelError: naming the first invalid setting
        """
        self.model.check()
        make_negative_sampler(self.negatives, self.beta)
        problems = (
            (self.epochs < 1, f"the number of epochs must be positive, got {self.epochs}"),
            (self.batch_size < 2, f"the batch size must be at least 2, got {self.batch_size}"),
            (self.learning_rate <= 0, f"the learning rate must be positive, got {self.learning_rate}"),
            (
                not 0.0 < self.validation_fraction < 1.0,
                f"the validation fraction must be in (0, 1), got {self.validation_fraction}",
            ),
            (self.log_interval < 1, f"the log interval must be positive, got {self.log_interval}"),
        )
        for failed, message in problems:
            if failed:
                raise WorldModelError(message)

    def to_dict(self) -> dict[str, Any]:
        """
        :return: the settings as plain values
        """
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CSWMTrainConfig:
        """
        :param values: settings as written by :meth:`to_dict`
        :return: the configuration
        """
        return cls(**{**values, "model": CSWMConfig.from_dict(values["model"])})


@dataclass(frozen=True)
class EpochRecord:
    """
    The losses of one epoch.

    :param epoch: Epoch number, from 1.
    :param train_loss: Mean training loss per transition.
    :param validation_loss: Mean validation loss per transition.
    :param validation_positive: Mean validation energy of the predictions.
    :param validation_hinge: Mean validation hinge term.
    :param seconds: Wall time of the epoch's training batches.
    :param samples_per_second: Training transitions per second.
    """

    epoch: int
    train_loss: float
    validation_loss: float
    validation_positive: float
    validation_hinge: float
    seconds: float
    samples_per_second: float


@dataclass(frozen=True)
class TrainingResult:
    """
    A finished training run.

    :param run_dir: The run directory.
    :param history: One record per epoch, resumed epochs included.
    :param best_epoch: Epoch of the saved model.
    :param best_validation_loss: Its validation loss.
    """

    run_dir: Path
    history: list[EpochRecord]
    best_epoch: int
    best_validation_loss: float


class TransitionSplit:
    """
    The transitions of some episodes of an :class:`EpisodeFrames`, with what negative sampling needs.

    :param frames: All loaded episodes.
    :param episodes: Indices of the episodes of this split.
    """

    def __init__(self, frames: EpisodeFrames, episodes: np.ndarray) -> None:
        self.frames = frames
        self.episodes = episodes
        steps = frames.num_steps[episodes]
        #: Split-local episode and step of every transition of the split.
        self.transition_episodes = np.repeat(np.arange(len(episodes)), steps)
        self.transition_steps = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
        self.layout = EpisodeLayout(frames.num_observations[episodes])

    def __len__(self) -> int:
        return len(self.transition_episodes)

    def batch(
        self,
        transitions: np.ndarray,
        sampler: NegativeSampler,
        anchor: str,
        rng: np.random.Generator,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """
        :param transitions: split-local transition indices
        :param sampler: negative sampler
        :param anchor: ``"next"`` or ``"current"``, the observation the negatives are compared with
        :param rng: random generator of the negatives
        :return: observations, actions, next observations and negatives (images, or the batch positions of
            in-batch negatives), as :meth:`~structrl.world_models.cswm.ContrastiveSWM.loss` takes them
        """
        local_episodes = self.transition_episodes[transitions]
        steps = self.transition_steps[transitions]
        episodes = self.episodes[local_episodes]
        rows = self.frames.frame_rows(episodes, steps)
        actions = self.frames.actions[self.frames.transition_rows(episodes, steps)]
        negatives = sampler.sample(self.layout, local_episodes, steps + (anchor == "next"), rng)
        if negatives.batch_positions is not None:
            negative_input = th.from_numpy(negatives.batch_positions)
        else:
            negative_rows = self.frames.frame_rows(self.episodes[negatives.episodes], negatives.steps)
            negative_input = th.from_numpy(self.frames.frames[negative_rows])
        return (
            th.from_numpy(self.frames.frames[rows]),
            th.from_numpy(actions),
            th.from_numpy(self.frames.frames[rows + 1]),
            negative_input,
        )

    def batches(self, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """
        :param order: split-local transition indices, in the order to visit them
        :param batch_size: transitions per batch
        :return: consecutive batches; a last batch of a single transition is dropped
        """
        return [
            order[start : start + batch_size]
            for start in range(0, len(order), batch_size)
            if len(order) - start >= 2
        ]


def split_episodes(num_episodes: int, validation_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """
    :param num_episodes: episodes of the store
    :param validation_fraction: fraction held out
    :return: training and validation episode indices: the last ``ceil(fraction * N)`` episodes validate
    :raises WorldModelError: if either part would be empty
    """
    validation = int(np.ceil(validation_fraction * num_episodes))
    if num_episodes < 2 or validation >= num_episodes:
        raise WorldModelError(
            f"the dataset has {num_episodes} episodes: too few to hold out {validation_fraction:.0%} of them "
            "for validation and train on the rest; collect more episodes"
        )
    episodes = np.arange(num_episodes)
    return episodes[:-validation], episodes[-validation:]


@dataclass
class _RunState:
    """Where a run stands: finished epochs, batches done in the current one and its running sums."""

    epoch: int = 0
    batches_done: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_validation_loss: float = float("inf")
    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0


def train_cswm(
    config: CSWMTrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    device: str | th.device = "cpu",
    on_batch: Callable[[int, float], object] | None = None,
    on_epoch: Callable[[EpochRecord], object] | None = None,
) -> TrainingResult:
    """
    Train a C-SWM, keeping the model of lowest validation loss in ``run_dir/model.pt``.

    :param config: what to train
    :param run_dir: the run directory
    :param resume: continue the run of ``run_dir`` from its checkpoint (with the same settings; only
        ``epochs`` may grow); without a checkpoint, start a new run
    :param device: torch device
    :param on_batch: called after each training batch with its number of transitions and its loss
    :param on_epoch: called after each epoch with its record
    :return: the losses of every epoch and the best one
    :raises WorldModelError: for bad settings or data, or a run directory holding another run
    """
    config.check()
    config = dataclasses.replace(config, dataset=str(Path(config.dataset).resolve()))
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if checkpoint_path.exists() and not resume:
        raise WorldModelError(
            f"{run_dir} already holds a training run: resume it (--resume) or choose another directory "
            "(--out)"
        )
    with open_store(config.dataset) as reader:
        frames = read_episodes(reader, 0, len(reader))
    model_config = dataclasses.replace(config.model, observation_shape=tuple(frames.frames.shape[1:]))
    config = dataclasses.replace(config, model=model_config)
    check_episodes_fit(frames, model_config, config.dataset)
    train_episodes, validation_episodes = split_episodes(len(frames), config.validation_fraction)
    train_split = TransitionSplit(frames, train_episodes)
    validation_split = TransitionSplit(frames, validation_episodes)
    sampler = make_negative_sampler(config.negatives, config.beta)
    for split in (train_split, validation_split):
        if len(split) < 2:
            raise WorldModelError(
                f"{config.dataset} leaves {len(split)} transition(s) for training or validation: collect "
                "more or longer episodes"
            )
        # Fail now, not after an epoch, when the split cannot give these negatives (e.g. a single episode).
        split.batch(np.arange(2), sampler, model_config.negative_anchor, np.random.default_rng(0))

    th.manual_seed(config.seed)
    model = ContrastiveSWM(model_config).to(device)
    optimizer = th.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = _RunState()
    if resume and checkpoint_path.exists():
        state = _load_checkpoint(checkpoint_path, config, model, optimizer)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / CONFIG_FILE, config.to_dict())

    batches_per_epoch = len(train_split.batches(np.arange(len(train_split)), config.batch_size))
    writer = SummaryWriter(
        str(run_dir / TENSORBOARD_DIR), purge_step=state.epoch * batches_per_epoch + state.batches_done
    )
    try:
        while state.epoch < config.epochs:
            _train_epoch(model, optimizer, train_split, sampler, config, state, run_dir, writer, on_batch)
            validation = _validate(model, validation_split, sampler, config)
            _finish_epoch(model, optimizer, config, state, validation, run_dir, writer, batches_per_epoch)
            if on_epoch is not None:
                on_epoch(state.history[-1])
    finally:
        writer.close()
    return TrainingResult(run_dir, state.history, state.best_epoch, state.best_validation_loss)


def _train_epoch(
    model: ContrastiveSWM,
    optimizer: th.optim.Optimizer,
    split: TransitionSplit,
    sampler: NegativeSampler,
    config: CSWMTrainConfig,
    state: _RunState,
    run_dir: Path,
    writer: SummaryWriter,
    on_batch: Callable[[int, float], object] | None,
) -> None:
    """Train the rest of epoch ``state.epoch``, from batch ``state.batches_done``."""
    device = next(model.parameters()).device
    order = np.random.default_rng([config.seed, state.epoch]).permutation(len(split))
    batches = split.batches(order, config.batch_size)
    model.train()
    last_checkpoint = time.monotonic()
    for index in range(state.batches_done, len(batches)):
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, state.epoch, index])
        inputs = split.batch(batches[index], sampler, config.model.negative_anchor, rng)
        loss = model.loss(*(tensor.to(device) for tensor in inputs))
        optimizer.zero_grad()
        loss.loss.backward()
        optimizer.step()
        size = len(batches[index])
        value = float(loss.loss.item())
        state.loss_sum += value * size
        state.samples += size
        state.seconds += time.perf_counter() - started
        state.batches_done = index + 1
        step = state.epoch * len(batches) + index
        if index % config.log_interval == 0:
            _log(writer, "train", loss, step)
        if on_batch is not None:
            on_batch(size, value)
        if (
            state.batches_done < len(batches)
            and time.monotonic() - last_checkpoint >= config.checkpoint_seconds
        ):
            _save_checkpoint(run_dir / CHECKPOINT_FILE, config, model, optimizer, state)
            last_checkpoint = time.monotonic()


def _validate(
    model: ContrastiveSWM,
    split: TransitionSplit,
    sampler: NegativeSampler,
    config: CSWMTrainConfig,
) -> tuple[float, float, float]:
    """Mean loss, positive energy and hinge per validation transition, with the same negatives every epoch."""
    rng = np.random.default_rng([config.seed, _VALIDATION_STREAM])
    device = next(model.parameters()).device
    model.eval()
    sums = np.zeros(3)
    samples = 0
    with th.inference_mode():
        for batch in split.batches(rng.permutation(len(split)), config.batch_size):
            inputs = split.batch(batch, sampler, config.model.negative_anchor, rng)
            loss = model.loss(*(tensor.to(device) for tensor in inputs))
            sums += len(batch) * np.array([term.item() for term in loss])
            samples += len(batch)
    loss_value, positive, hinge = sums / max(samples, 1)
    return float(loss_value), float(positive), float(hinge)


def _finish_epoch(
    model: ContrastiveSWM,
    optimizer: th.optim.Optimizer,
    config: CSWMTrainConfig,
    state: _RunState,
    validation: tuple[float, float, float],
    run_dir: Path,
    writer: SummaryWriter,
    batches_per_epoch: int,
) -> None:
    """Record the epoch, keep the model if it is the best so far, and write the checkpoint."""
    validation_loss, positive, hinge = validation
    record = EpochRecord(
        epoch=state.epoch + 1,
        train_loss=state.loss_sum / max(state.samples, 1),
        validation_loss=validation_loss,
        validation_positive=positive,
        validation_hinge=hinge,
        seconds=state.seconds,
        samples_per_second=state.samples / max(state.seconds, 1e-9),
    )
    step = (state.epoch + 1) * batches_per_epoch
    for name, value in (("loss", validation_loss), ("positive", positive), ("hinge", hinge)):
        writer.add_scalar(f"validation/{name}", value, step)
    writer.add_scalar("train/epoch_loss", record.train_loss, step)
    writer.add_scalar("train/samples_per_second", record.samples_per_second, step)
    writer.flush()
    state.history.append(record)
    if validation_loss < state.best_validation_loss:
        state.best_epoch, state.best_validation_loss = record.epoch, validation_loss
        model.save(run_dir / MODEL_FILE, epoch=record.epoch, validation_loss=validation_loss)
    state.epoch += 1
    state.batches_done = 0
    state.loss_sum, state.samples, state.seconds = 0.0, 0, 0.0
    _save_checkpoint(run_dir / CHECKPOINT_FILE, config, model, optimizer, state)


def _log(writer: SummaryWriter, prefix: str, loss: ContrastiveLoss, step: int) -> None:
    for name, value in zip(("loss", "positive", "hinge"), loss, strict=True):
        writer.add_scalar(f"{prefix}/{name}", float(value.item()), step)


def _save_checkpoint(
    path: Path,
    config: CSWMTrainConfig,
    model: ContrastiveSWM,
    optimizer: th.optim.Optimizer,
    state: _RunState,
) -> None:
    save_atomically(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": dataclasses.asdict(state),
            "torch_rng": th.get_rng_state(),
        },
        path,
    )


def _load_checkpoint(
    path: Path, config: CSWMTrainConfig, model: ContrastiveSWM, optimizer: th.optim.Optimizer
) -> _RunState:
    """Restore the model, optimizer and RNG from a checkpoint of the same settings (``epochs`` may differ)."""
    try:
        payload = th.load(path, map_location=next(model.parameters()).device, weights_only=True)
    except Exception as error:
        raise WorldModelError(
            f"{path} cannot be read ({error}): start a new run in another directory"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WorldModelError(
            f"{path} is not a C-SWM training checkpoint: start a new run in another directory"
        )
    saved = dict(payload["config"])
    current = config.to_dict()
    differences = sorted(key for key in current if key not in _RESUMABLE and saved.get(key) != current[key])
    if differences:
        raise WorldModelError(
            f"{path.parent} was trained with other settings ({', '.join(differences)} differ); only "
            f"{', '.join(_RESUMABLE)} may change when resuming: repeat the original settings or start a new "
            "run in another directory"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    th.set_rng_state(payload["torch_rng"])
    saved_state = dict(payload["state"])
    saved_state["history"] = [EpochRecord(**record) for record in saved_state["history"]]
    return _RunState(**saved_state)
