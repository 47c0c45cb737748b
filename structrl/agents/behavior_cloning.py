"""
Behaviour cloning of BabyAI GoToLocal demonstrations (``structrl bc``), for the sample-efficiency study of
Spilsbury & Ilin (2022): train on the first ``limit`` demonstrations of each in-distribution (ID) goal, and
evaluate the greedy policy in the environment on the fixed ID and out-of-distribution (OOD) validation seeds
of the demonstration store (:mod:`structrl.data.splits`).

**Feed-forward policies** (an SB3 ``ActorCriticPolicy`` with one of the language-conditioned extractors and
``normalize_images=False``) are trained by the ``imitation`` library's ``bc.BC`` on the demonstrations as
``types.DictObs`` trajectories. ``imitation`` has no hook for an extra loss term, so the sparsity penalty
of the factored (or simple) attention model is added by :class:`SparseBCLossCalculator`, which replaces the
trainer's ``loss_calculator``: ``imitation``'s BC loss plus ``SparsitySchedule(step) * sparsity_penalty``.

**DAgger** (``dagger=True``) uses ``imitation``'s ``SimpleDAggerTrainer`` with the BabyAI bot as the expert.
``imitation``'s DAgger cannot handle Dict observations (its trajectory collector asserts array observations
and its trajectory files reject ``DictObs``), so DAgger trains a twin policy on one packed integer ``Box``
observation (:class:`PackedObservation`, unpacked by :class:`PackedObservationExtractor` in front of the same
extractor), whose weights are copied into the Dict policy for evaluation and saving. The bot reads the
privileged state of each environment (:class:`BotExpert`); its rollouts are restricted to the ID goals
(:class:`TrainingGoals`), and round 0 trains on the ``limit`` demonstrations only.

**Recurrent policies** (RIM or LSTM) are trained on whole episodes by
:class:`~structrl.agents.sequence_cloning.SequenceCloningTrainer`, since ``imitation`` has no recurrent BC.

A run directory holds ``config.yml`` (settings, environment, library versions), ``best_model.zip`` (the
checkpoint with the best ID success rate, written atomically at each improvement), ``model.zip`` (the final
policy), ``summary.json`` (every evaluation, the best and the final one) and ``tensorboard/`` (the loss terms
``bc/...`` per optimizer step and the success rates ``eval/...``). The models are Stable-Baselines3 ``PPO``
(``RecurrentPPO`` for recurrent policies) files holding the cloned policy, so ``structrl evaluate``,
:func:`~structrl.agents.evaluation.load_model` and further PPO training read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from imitation.algorithms import bc, dagger
from imitation.data import rollout, types
from imitation.data.wrappers import RolloutInfoWrapper
from imitation.util import logger as imitation_logger
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv

from structrl.agents.evaluation import evaluate_seeds, write_json
from structrl.agents.sequence_cloning import Demonstration, SequenceCloningTrainer
from structrl.agents.training import library_versions, write_yaml
from structrl.data.demos import policy_observations
from structrl.data.episode_store import EpisodeReader
from structrl.data.splits import (
    ID_VALID_PER_GOAL,
    OOD_VALID_PER_GOAL,
    VALIDATION_SETS,
    DemoSplit,
    split_demo_store,
)
from structrl.envs.babyai import (
    GOTO_LOCAL_ID,
    REGISTERED_ROOM_SIZES,
    FullyObservedBot,
    goal_id,
    goto_local_id,
)
from structrl.policies.factored_attention import SparsitySchedule, sparsity_penalty
from structrl.policies.language_baselines import language_policy_kwargs
from structrl.policies.minigrid_policies import MiniGridLstmPolicy
from structrl.policies.rim_policy import RIMPolicy

#: The models of ``structrl bc --model``, and their names in :func:`language_policy_kwargs`.
BC_MODELS = {
    "factored-attention": "factored_attention",
    "simple-attention": "simple_attention",
    "film": "film_gru",
    "transformer": "transformer",
}
#: The recurrent policies of ``structrl bc --recurrent``.
RECURRENT_POLICIES: dict[str, type[RecurrentActorCriticPolicy]] = {
    "rim": RIMPolicy,
    "lstm": MiniGridLstmPolicy,
}
CONFIG_FILE = "config.yml"
MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
DAGGER_DIR = "dagger"


class BCError(ValueError):
    """Behaviour-cloning settings that cannot work, or a demonstration store they cannot use."""


@dataclass
class BCConfig:
    """
    A behaviour-cloning run.

    :param dataset: The demonstration store (``structrl demos``).
    :param model: The features extractor: ``factored-attention``, ``simple-attention``, ``film`` or
        ``transformer`` (see :data:`BC_MODELS`).
    :param limit: Training demonstrations per ID goal (default: all but the ID validation ones).
    :param goal_split: The goal split (``paper``).
    :param id_valid_per_goal: ID validation episodes per ID goal (the last ones of each goal).
    :param ood_valid_per_goal: OOD validation episodes per held-out goal (the first ones of each goal).
    :param sparsity_weight: Final weight of the attention model's sparsity penalty (0: none).
    :param sparsity_start: Optimizer steps before the penalty's weight starts to ramp up.
    :param sparsity_ramp: Optimizer steps of the linear ramp to ``sparsity_weight``.
    :param epochs: Passes over the training demonstrations (per DAgger round with ``dagger``).
    :param batch_size: Transitions per optimizer step (episodes per step for recurrent policies).
    :param learning_rate: Adam's learning rate.
    :param ent_weight: Weight of the entropy bonus (the paper's imitation loss used 0.01).
    :param seed: Seed of the weights, the batch order and DAgger's rollouts.
    :param recurrent: ``rim`` or ``lstm`` for a recurrent policy cloned on whole episodes (default:
        feed-forward).
    :param dagger: Continue with DAgger rounds, the BabyAI bot labelling the states the policy visits.
    :param dagger_rounds: DAgger rounds after round 0 (which trains on the demonstrations only).
    :param dagger_episodes: Episodes collected per DAgger round.
    :param eval_every: Optimizer steps between greedy evaluations (0: only at the end); there is always one
        at the end.
    :param eval_episodes: Validation episodes per set and evaluation, taken goal by goal (default: all).
    :param eval_envs: Environments stepped together during evaluations.
    :param extractor_kwargs: Keyword arguments of the features extractor (e.g. smaller widths).
    """

    dataset: str
    model: str = "factored-attention"
    limit: int | None = None
    goal_split: str = "paper"
    id_valid_per_goal: int = ID_VALID_PER_GOAL
    ood_valid_per_goal: int = OOD_VALID_PER_GOAL
    sparsity_weight: float = 0.0
    sparsity_start: int = 1000
    sparsity_ramp: int = 5000
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    ent_weight: float = 1e-2
    seed: int = 0
    recurrent: str | None = None
    dagger: bool = False
    dagger_rounds: int = 3
    dagger_episodes: int = 48
    eval_every: int = 500
    eval_episodes: int | None = None
    eval_envs: int = 32
    extractor_kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """
        :raises BCError: naming the first invalid setting and how to fix it
        """
        attention = self.model in ("factored-attention", "simple-attention")
        problems = (
            (self.model not in BC_MODELS, f"unknown model {self.model!r}: use one of {', '.join(BC_MODELS)}"),
            (
                self.recurrent is not None and self.recurrent not in RECURRENT_POLICIES,
                f"unknown recurrent policy {self.recurrent!r}: use one of {', '.join(RECURRENT_POLICIES)}",
            ),
            (self.sparsity_weight < 0, f"the sparsity weight must be >= 0, got {self.sparsity_weight}"),
            (
                self.sparsity_weight > 0 and not attention,
                f"--sparsity-weight needs an attention model (factored-attention or simple-attention), "
                f"not {self.model}",
            ),
            (
                self.sparsity_start < 0 or self.sparsity_ramp < 0,
                "the sparsity schedule's start and ramp must be >= 0",
            ),
            (self.epochs < 1, f"the number of epochs must be positive, got {self.epochs}"),
            (self.batch_size < 1, f"the batch size must be positive, got {self.batch_size}"),
            (self.learning_rate <= 0, f"the learning rate must be positive, got {self.learning_rate}"),
            (self.ent_weight < 0, f"the entropy weight must be >= 0, got {self.ent_weight}"),
            (
                self.dagger and self.recurrent is not None,
                "--dagger needs a feed-forward policy: imitation's DAgger trains through its BC trainer, "
                "which has no recurrent support; drop --dagger or --recurrent",
            ),
            (
                self.dagger and (self.dagger_rounds < 1 or self.dagger_episodes < 1),
                "DAgger needs at least one round and one episode per round",
            ),
            (self.eval_every < 0, f"--eval-every must be >= 0, got {self.eval_every}"),
            (
                self.eval_episodes is not None and self.eval_episodes < 1,
                f"--eval-episodes must be positive, got {self.eval_episodes}",
            ),
            (self.eval_envs < 1, f"the number of evaluation envs must be positive, got {self.eval_envs}"),
        )
        for failed, message in problems:
            if failed:
                raise BCError(message)

    def sparsity_schedule(self) -> SparsitySchedule:
        """
        :return: the weight of the sparsity penalty by optimizer step
        """
        return SparsitySchedule(self.sparsity_start, self.sparsity_ramp, self.sparsity_weight)

    def to_dict(self) -> dict[str, Any]:
        """
        :return: the settings as plain YAML/JSON data
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))


def read_demonstrations(path: str | Path, indices: np.ndarray) -> list[Demonstration]:
    """
    :param path: a demonstration store
    :param indices: the episodes to read
    :return: their observations (as the GoToLocal env gives them, ``T + 1`` rows) and actions
    """
    with EpisodeReader(path) as reader:
        episodes = [reader[int(index)] for index in indices]
    return [Demonstration(policy_observations(episode), episode.actions) for episode in episodes]


def store_env_settings(path: str | Path) -> tuple[str, dict[str, Any]]:
    """
    The registered environment of a demonstration store, for evaluation and ``structrl evaluate``.

    :param path: a demonstration store
    :return: the ``structrl/GoToLocal*`` id of its room size and the keyword arguments of its success rule
    :raises BCError: if the store was not recorded on GoToLocal or its room size has no registered id
    """
    with EpisodeReader(path) as reader:
        attrs = reader.attrs
    env_id, room_size = str(attrs.get("env_id")), attrs.get("room_size")
    if env_id != GOTO_LOCAL_ID and env_id not in REGISTERED_ROOM_SIZES:
        raise BCError(
            f"{path} holds {env_id} demonstrations: behaviour cloning needs GoToLocal (structrl demos)"
        )
    registered = goto_local_id(int(room_size)) if room_size is not None else ""
    if registered not in REGISTERED_ROOM_SIZES:
        raise BCError(
            f"{path} was recorded in {room_size}x{room_size} rooms, which have no registered environment: "
            f"record demonstrations in one of the sizes {sorted(REGISTERED_ROOM_SIZES.values())}"
        )
    return registered, {"stock_success": True} if attrs.get("stock_success") else {}


def balanced_seeds(seeds: np.ndarray, n_goals: int, count: int | None) -> np.ndarray:
    """
    The first ``count`` validation seeds taken goal by goal, so any prefix covers the goals evenly.

    :param seeds: validation seeds grouped by goal, the same number per goal
    :param n_goals: number of goals
    :param count: seeds to keep (``None``: all)
    :return: the selected seeds
    """
    interleaved = seeds.reshape(n_goals, -1).T.reshape(-1)
    return interleaved if count is None else interleaved[:count]


@dataclasses.dataclass(frozen=True)
class SparseBCTrainingMetrics(bc.BCTrainingMetrics):
    """
    ``imitation``'s BC loss terms plus the sparsity penalty (logged as ``bc/sparsity`` and
    ``bc/sparsity_weight``); ``loss`` includes the weighted penalty.
    """

    sparsity: th.Tensor
    sparsity_weight: float


class SparseBCLossCalculator:
    """
    ``imitation``'s behaviour-cloning loss plus the scheduled sparsity penalty of the policy's attention
    models: ``loss = neglogp - ent_weight * entropy + l2 + schedule(step) * sparsity_penalty(policy)``.

    It replaces a ``bc.BC`` trainer's ``loss_calculator``; the trainer calls it once per optimizer step
    (``minibatch_size == batch_size``), which counts the steps of the schedule.

    :param base: ``imitation``'s loss calculator.
    :param schedule: Weight of the penalty by optimizer step.
    """

    def __init__(self, base: bc.BehaviorCloningLossCalculator, schedule: SparsitySchedule) -> None:
        self.base = base
        self.schedule = schedule
        #: Calls so far (optimizer steps).
        self.step = 0

    def __call__(self, policy: ActorCriticPolicy, obs: Any, acts: Any) -> SparseBCTrainingMetrics:
        """
        :param policy: the policy being trained
        :param obs: a batch of observations
        :param acts: the demonstrated actions
        :return: the loss terms
        :raises BCError: if the policy holds no attention model
        """
        metrics = self.base(policy, obs, acts)
        penalty = sparsity_penalty(policy)
        if penalty is None:
            raise BCError("the sparsity penalty needs an attention model in the policy")
        weight = self.schedule(self.step)
        self.step += 1
        terms = {item.name: getattr(metrics, item.name) for item in dataclasses.fields(metrics)}
        terms["loss"] = metrics.loss + weight * penalty
        return SparseBCTrainingMetrics(**terms, sparsity=penalty.detach(), sparsity_weight=weight)


class TrainingGoals(gym.Wrapper):
    """
    Episodes of some goals only: a reset whose mission is another goal is followed by further resets
    (seeded by the environment's own generator) until one is. Keeps DAgger's rollouts off the held-out goals.

    :param env: A GoToLocal env.
    :param goals: The allowed goal ids.
    """

    def __init__(self, env: gym.Env, goals: Sequence[int]) -> None:
        super().__init__(env)
        self.goals = frozenset(goals)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        observation, info = self.env.reset(seed=seed, options=options)
        while goal_id(self.env.unwrapped.mission) not in self.goals:  # type: ignore[attr-defined]
            observation, info = self.env.reset(options=options)
        return observation, info


class PackedObservation(gym.ObservationWrapper):
    """
    The GoToLocal ``Dict(image, direction, mission)`` observation packed into one int64 ``Box``: the grid's
    values (row-major), the direction, then the mission's word ids. ``imitation``'s DAgger needs array
    observations; :class:`PackedObservationExtractor` unpacks them.

    :param env: A GoToLocal env (Dict observation).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.dict_space = env.observation_space
        self.observation_space = packed_space(env.observation_space)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return pack_observations({key: np.asarray(value)[None] for key, value in observation.items()})[0]


def packed_space(dict_space: spaces.Space) -> spaces.Box:
    """
    :param dict_space: a GoToLocal observation space
    :return: the space of its packed observations (see :class:`PackedObservation`)
    """
    assert isinstance(dict_space, spaces.Dict), (
        f"expected a Dict(image, direction, mission), got {dict_space}"
    )
    image, mission = dict_space["image"], dict_space["mission"]
    assert isinstance(image, spaces.Box) and isinstance(mission, spaces.Box)
    high = max(int(image.high.max()), 3, int(mission.high.max()))
    return spaces.Box(0, high, (int(np.prod(image.shape)) + 1 + mission.shape[0],), dtype=np.int64)


def pack_observations(observations: dict[str, np.ndarray]) -> np.ndarray:
    """
    :param observations: a batch of GoToLocal observations, ``image (N, H, W, 3)``, ``direction (N,)``,
        ``mission (N, L)``
    :return: the packed observations, ``(N, H * W * 3 + 1 + L)`` int64
    """
    count = len(observations["direction"])
    return np.concatenate(
        [
            observations["image"].reshape(count, -1),
            np.asarray(observations["direction"]).reshape(count, 1),
            observations["mission"].reshape(count, -1),
        ],
        axis=1,
    ).astype(np.int64)


class PackedObservationExtractor(BaseFeaturesExtractor):
    """
    A language-conditioned extractor (``inner``) behind the unpacking of :class:`PackedObservation`.

    :param observation_space: The packed space.
    :param dict_space: The GoToLocal Dict space the inner extractor is built on.
    :param extractor_class: The inner extractor's class.
    :param extractor_kwargs: Its keyword arguments.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        dict_space: spaces.Dict,
        extractor_class: type[BaseFeaturesExtractor],
        extractor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        inner = extractor_class(dict_space, **(extractor_kwargs or {}))
        super().__init__(observation_space, inner.features_dim)
        self.inner = inner
        image = dict_space["image"].shape
        assert image is not None
        self.image_shape = tuple(image)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        cells = int(np.prod(self.image_shape))
        unpacked = {
            "image": observations[:, :cells].reshape(-1, *self.image_shape),
            "direction": observations[:, cells].long(),
            "mission": observations[:, cells + 1 :],
        }
        return self.inner(unpacked)


def unpacked_state_dict(packed_policy: ActorCriticPolicy) -> dict[str, th.Tensor]:
    """
    :param packed_policy: a policy with :class:`PackedObservationExtractor`
    :return: its parameters named as in the same policy on the Dict observations
    """
    return {
        re.sub(r"^(\w*features_extractor)\.inner\.", r"\1.", name): value
        for name, value in packed_policy.state_dict().items()
    }


class BotExpert(BasePolicy):
    """
    The BabyAI bot (:class:`~structrl.envs.babyai.FullyObservedBot`) as ``imitation``'s DAgger expert: it
    ignores the observations and plans afresh from the privileged state of each environment of a
    ``DummyVecEnv`` (so it follows whatever actions were really taken, the learner's included). Where the
    learner has made the goal unreachable for the bot (it carries or has destroyed every matching object),
    the label is ``drop`` if it carries something, else ``done``.

    :param venv: The DAgger environments (a ``DummyVecEnv`` of GoToLocal envs).
    """

    def __init__(self, venv: DummyVecEnv) -> None:
        super().__init__(venv.observation_space, venv.action_space)
        self.venv = venv

    def _predict(self, observation: Any, deterministic: bool = False) -> th.Tensor:
        assert len(observation) == self.venv.num_envs, "the bot acts for all environments at once"
        return th.as_tensor([bot_action(env) for env in self.venv.envs])


def bot_action(env: gym.Env) -> int:
    """
    :param env: a GoToLocal env in any state
    :return: the bot's action from that state (see :class:`BotExpert` for unreachable goals)
    """
    level = env.unwrapped
    try:
        return int(FullyObservedBot(env).replan())
    except AssertionError:  # the bot asserts that some matching object is left to go to
        actions = level.actions  # type: ignore[attr-defined]
        return int(actions.drop if level.carrying is not None else actions.done)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _quiet_dataset_progress() -> Iterator[None]:
    """Hide the progress bars HuggingFace ``datasets`` shows when DAgger saves each trajectory."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _quiet_imitation_warnings() -> Iterator[None]:
    """
    Hide the warnings ``imitation`` gives on every batch or trajectory: that BC "unwraps" the (already
    unwrapped) Dict observations, that it logs loss tensors that require gradients, and jsonpickle's
    deprecation notice when DAgger reads its trajectory files.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "trying to unwrap object", UserWarning)
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True", UserWarning)
        warnings.filterwarnings("ignore", "keys will default to True in jsonpickle", DeprecationWarning)
        yield


def _save_model(model: BaseAlgorithm, path: Path) -> None:
    """Save a model atomically (SB3 writes ``.zip`` files, so the temporary name ends in ``.zip``)."""
    partial = path.with_name(f".{path.stem}.partial.zip")
    model.save(partial)
    os.replace(partial, path)


def build_model(config: BCConfig, env: gym.Env) -> BaseAlgorithm:
    """
    The SB3 model whose policy is cloned: ``PPO`` with an ``ActorCriticPolicy`` or ``RecurrentPPO`` with the
    RIM or LSTM policy, the chosen extractor and ``normalize_images=False``, seeded with ``config.seed``.

    :param config: the run's settings
    :param env: the GoToLocal env (its spaces)
    :return: the model
    :raises BCError: if the extractor rejects ``config.extractor_kwargs``
    """
    overrides: dict[str, Any] = {}
    if config.extractor_kwargs:
        overrides["features_extractor_kwargs"] = dict(config.extractor_kwargs)
    policy_kwargs = language_policy_kwargs(BC_MODELS[config.model], **overrides)
    venv = DummyVecEnv([lambda: env])
    algorithm: type[BaseAlgorithm] = PPO if config.recurrent is None else RecurrentPPO
    policy = ActorCriticPolicy if config.recurrent is None else RECURRENT_POLICIES[config.recurrent]
    try:
        return algorithm(
            policy, venv, learning_rate=config.learning_rate, policy_kwargs=policy_kwargs, seed=config.seed
        )
    except TypeError as error:
        raise BCError(
            f"the {config.model} extractor rejects the arguments {config.extractor_kwargs} ({error}): see "
            "the documentation of its class in structrl.policies"
        ) from error


class _Validation:
    """Greedy evaluation on the validation seeds, its logging, and the best checkpoint."""

    def __init__(
        self,
        model: BaseAlgorithm,
        env_id: str,
        env_kwargs: dict[str, Any],
        seeds: dict[str, np.ndarray],
        config: BCConfig,
        run_dir: Path,
        logger: imitation_logger.HierarchicalLogger,
        on_evaluation: Callable[[dict[str, Any]], object] | None,
    ) -> None:
        self.model, self.env_id, self.env_kwargs, self.seeds = model, env_id, env_kwargs, seeds
        self.config, self.run_dir, self.logger, self.on_evaluation = config, run_dir, logger, on_evaluation
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        #: Makes ``model.policy`` the policy being trained (DAgger trains a packed twin).
        self.sync: Callable[[], None] = lambda: None

    def __call__(self, step: int) -> dict[str, Any]:
        """
        Evaluate the policy after ``step`` optimizer steps; save it as the best checkpoint if its ID success
        rate is the best so far.

        :param step: optimizer steps done
        :return: the evaluation record
        """
        self.sync()
        record: dict[str, Any] = {"step": step}
        for which in VALIDATION_SETS:
            result = evaluate_seeds(
                self.model,
                self.env_id,
                self.seeds[which],
                deterministic=True,
                n_envs=self.config.eval_envs,
                env_kwargs=self.env_kwargs,
            )
            for name in ("success_rate", "mean_return", "mean_length"):
                record[f"{which}_{name}"] = result[name]
                self.logger.record(f"eval/{which}_{name}", result[name])
        self.model.policy.set_training_mode(True)
        self.logger.dump(step)
        record["best"] = self.best is None or record["id_success_rate"] > self.best["id_success_rate"]
        if record["best"]:
            self.best = record
            _save_model(self.model, self.run_dir / BEST_MODEL_FILE)
        self.history.append(record)
        if self.on_evaluation is not None:
            self.on_evaluation(record)
        return record


class _StepCounter:
    """Counts optimizer steps and evaluates every ``every`` of them."""

    def __init__(self, every: int, validation: _Validation) -> None:
        self.every, self.validation, self.steps = every, validation, 0

    def __call__(self) -> None:
        self.steps += 1
        if self.every and self.steps % self.every == 0:
            self.validation(self.steps)

    def finish(self) -> None:
        """Evaluate after the last step, unless that was just done."""
        if not self.validation.history or self.validation.history[-1]["step"] != self.steps:
            self.validation(self.steps)


def _bc_trainer(
    config: BCConfig,
    policy: ActorCriticPolicy,
    demonstrations: Any,
    logger: imitation_logger.HierarchicalLogger,
) -> bc.BC:
    """``imitation``'s BC trainer of a policy, with the sparsity term for attention models."""
    trainer = bc.BC(
        observation_space=policy.observation_space,
        action_space=policy.action_space,
        rng=np.random.default_rng(config.seed),
        policy=policy,
        demonstrations=demonstrations,
        batch_size=config.batch_size,
        optimizer_kwargs={"lr": config.learning_rate},
        ent_weight=config.ent_weight,
        device=policy.device,
        custom_logger=logger,
    )
    if sparsity_penalty(policy) is not None:
        trainer.loss_calculator = SparseBCLossCalculator(  # type: ignore[assignment]
            trainer.loss_calculator, config.sparsity_schedule()
        )
    return trainer


def _bc_train_kwargs(config: BCConfig, counter: _StepCounter) -> dict[str, Any]:
    return {
        "n_epochs": config.epochs,
        "on_batch_end": counter,
        "log_interval": 1,
        "log_rollouts_venv": None,
        "progress_bar": False,
    }


def _train_feed_forward(
    config: BCConfig,
    model: BaseAlgorithm,
    demonstrations: list[Demonstration],
    counter: _StepCounter,
    logger: imitation_logger.HierarchicalLogger,
) -> None:
    trajectories = [
        types.Trajectory(obs=types.DictObs(demo.observations), acts=demo.actions, infos=None, terminal=True)
        for demo in demonstrations
    ]
    policy = model.policy
    assert isinstance(policy, ActorCriticPolicy)
    policy.set_training_mode(True)
    with _quiet_imitation_warnings():
        _bc_trainer(config, policy, trajectories, logger).train(**_bc_train_kwargs(config, counter))


def _train_dagger(
    config: BCConfig,
    model: BaseAlgorithm,
    demonstrations: list[Demonstration],
    split: DemoSplit,
    env_factory: Callable[[], gym.Env],
    counter: _StepCounter,
    logger: imitation_logger.HierarchicalLogger,
    run_dir: Path,
) -> None:
    goals = split.split.train_goals
    venv = DummyVecEnv(
        [
            lambda: RolloutInfoWrapper(PackedObservation(TrainingGoals(env_factory(), goals)))
            for _ in range(min(config.eval_envs, config.dagger_episodes))
        ]
    )
    venv.seed(config.seed)
    dict_space = model.policy.observation_space
    assert isinstance(dict_space, spaces.Dict)
    policy_kwargs = dict(model.policy_kwargs)
    policy_kwargs["features_extractor_kwargs"] = {
        "dict_space": dict_space,
        "extractor_class": policy_kwargs.pop("features_extractor_class"),
        "extractor_kwargs": policy_kwargs.pop("features_extractor_kwargs", None),
    }
    packed_policy = ActorCriticPolicy(
        venv.observation_space,
        venv.action_space,
        lambda _: config.learning_rate,
        features_extractor_class=PackedObservationExtractor,
        **policy_kwargs,
    ).to(model.device)
    counter.validation.sync = lambda: model.policy.load_state_dict(unpacked_state_dict(packed_policy))
    trajectories = [
        types.Trajectory(
            obs=pack_observations(demo.observations), acts=demo.actions, infos=None, terminal=True
        )
        for demo in demonstrations
    ]
    rng = np.random.default_rng(config.seed)
    with contextlib.closing(venv), _quiet_dataset_progress(), _quiet_imitation_warnings():
        trainer = dagger.SimpleDAggerTrainer(
            venv=venv,
            scratch_dir=run_dir / DAGGER_DIR,
            expert_policy=BotExpert(venv),
            rng=rng,
            expert_trajs=trajectories,
            beta_schedule=dagger.LinearBetaSchedule(config.dagger_rounds),
            bc_trainer=_bc_trainer(config, packed_policy, None, logger),
            custom_logger=logger,
        )
        train_kwargs = _bc_train_kwargs(config, counter)
        for round_number in range(config.dagger_rounds + 1):
            if round_number > 0:  # round 0 trains on the demonstrations only
                collector = trainer.create_trajectory_collector()
                rollout.generate_trajectories(
                    trainer.expert_policy,
                    collector,
                    rollout.make_sample_until(min_timesteps=None, min_episodes=config.dagger_episodes),
                    rng=rng,
                    deterministic_policy=True,
                )
            packed_policy.set_training_mode(True)
            trainer.extend_and_update(train_kwargs)


def train_bc(
    config: BCConfig,
    run_dir: str | Path,
    threads: int = 1,
    on_evaluation: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """
    Clone the demonstrations of a store into a policy and write the run directory (see the module
    documentation); the run replaces the files of an earlier run in the same directory.

    :param config: the run's settings
    :param run_dir: the run directory (created if needed)
    :param threads: torch intra-op threads (1 is fastest on shared CPUs)
    :param on_evaluation: called with each evaluation record (``step``, ``id_success_rate``,
        ``ood_success_rate``, mean returns and lengths, ``best``)
    :return: the summary written to ``summary.json``
    :raises BCError: on invalid settings or an unusable store (the store's own errors are
        :class:`~structrl.data.episode_store.EpisodeStoreError` and
        :class:`~structrl.data.splits.SplitError`)
    """
    config.check()
    started = time.perf_counter()
    th.set_num_threads(threads)
    env_id, env_kwargs = store_env_settings(config.dataset)
    split = split_demo_store(
        config.dataset, config.goal_split, config.limit, config.id_valid_per_goal, config.ood_valid_per_goal
    )
    demonstrations = read_demonstrations(config.dataset, split.train)
    transitions = sum(len(demo) for demo in demonstrations)
    if config.recurrent is None and transitions < config.batch_size:
        raise BCError(
            f"the {len(demonstrations)} training episodes hold {transitions} transitions, fewer than a batch "
            f"of {config.batch_size}: raise --limit or lower --batch-size"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, BEST_MODEL_FILE, SUMMARY_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for name in (TENSORBOARD_DIR, DAGGER_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)

    def make_env() -> gym.Env:
        return gym.make(env_id, **env_kwargs)

    model = build_model(config, make_env())
    write_yaml(
        run_dir / CONFIG_FILE,
        {
            **config.to_dict(),
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "threads": threads,
            "versions": library_versions(),
        },
    )
    goals = {"id": len(split.split.train_goals), "ood": len(split.split.test_goals)}
    seeds = {
        which: balanced_seeds(split.validation_seeds(which), goals[which], config.eval_episodes)
        for which in VALIDATION_SETS
    }
    logger = imitation_logger.configure(run_dir / TENSORBOARD_DIR, ["tensorboard"])
    validation = _Validation(model, env_id, env_kwargs, seeds, config, run_dir, logger, on_evaluation)
    counter = _StepCounter(config.eval_every, validation)
    try:
        if config.recurrent is not None:
            policy = model.policy
            assert isinstance(policy, RecurrentActorCriticPolicy)
            trainer = SequenceCloningTrainer(
                policy,
                demonstrations,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                ent_weight=config.ent_weight,
                sparsity_schedule=config.sparsity_schedule()
                if sparsity_penalty(policy) is not None
                else None,
                rng=np.random.default_rng(config.seed),
                logger=logger,
            )
            trainer.train(config.epochs, on_batch_end=counter)
        elif config.dagger:
            _train_dagger(config, model, demonstrations, split, make_env, counter, logger, run_dir)
        else:
            _train_feed_forward(config, model, demonstrations, counter, logger)
        counter.finish()
    finally:
        logger.close()
    _save_model(model, run_dir / MODEL_FILE)
    penalty = sparsity_penalty(model.policy)
    assert validation.best is not None
    summary = {
        "config": config.to_dict(),
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "limit": split.limit,
        "train_episodes": len(demonstrations),
        "train_transitions": transitions,
        "validation_episodes": {which: len(seeds[which]) for which in VALIDATION_SETS},
        "steps": counter.steps,
        "seconds": time.perf_counter() - started,
        "sparsity_penalty": None if penalty is None else penalty.item(),
        "best": validation.best,
        "final": validation.history[-1],
        "evaluations": validation.history,
        "best_model": BEST_MODEL_FILE,
        "model": MODEL_FILE,
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary
