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

A run directory holds ``config.yml`` (settings, environment and its ``env_kwargs``, library versions),
``best_model.zip`` (the checkpoint with the best ID success rate, written atomically at each improvement),
``model.zip`` (the final policy, or the current one after Ctrl-C), ``checkpoint.pt`` (the state after the last
completed epoch, see below), ``summary.json`` (every evaluation, the best and the final one) and
``tensorboard/`` (the loss terms ``bc/...`` per optimizer step and the success rates ``eval/...``). The models
are Stable-Baselines3 ``PPO`` (``RecurrentPPO`` for recurrent policies) files holding the cloned policy, so
``structrl evaluate`` (which builds the environment with the run's ``env_kwargs``),
:func:`~structrl.agents.evaluation.load_model` and further PPO training read them.

**Resuming.** At the end of each epoch, feed-forward and recurrent runs save atomically to ``checkpoint.pt``
the policy's weights, the optimizer's state, the step and epoch counters (and the sparsity schedule's), the
random states that order the batches (torch's, which ``imitation``'s data loader draws from, and the
trainer's numpy generator), the evaluations so far and the best policy's weights. :func:`resume_bc` continues
an interrupted run from there (the batches of the interrupted epoch are trained again), or a finished run for
more epochs, and ends with the same weights as an uninterrupted run. DAgger runs are not resumable.

The run directory's shared files, the resume checks and the evaluation records are those of all the offline
trainers (:mod:`structrl.agents.offline_runs`); the greedy evaluations and the model files are shared with the
MVProp planner (:mod:`structrl.agents.greedy_validation`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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

from structrl.agents.evaluation import balanced_seeds as balanced_seeds
from structrl.agents.evaluation import evaluate_seeds
from structrl.agents.greedy_validation import (
    BEST_MODEL_FILE,
    MODEL_FILE,
    GreedyValidation,
    evaluation_problems,
    validation_seeds,
)
from structrl.agents.offline_runs import CHECKPOINT_FILE as CHECKPOINT_FILE
from structrl.agents.offline_runs import CONFIG_FILE as CONFIG_FILE
from structrl.agents.offline_runs import SUMMARY_FILE as SUMMARY_FILE
from structrl.agents.offline_runs import (
    TENSORBOARD_DIR,
    OfflineSettings,
    RunKind,
    RunProgress,
    check_resume,
    check_train_transitions,
    fresh_run_dir,
    read_checkpoint,
    read_run_config,
    save_checkpoint,
    write_run_config,
    write_summary,
)
from structrl.agents.sequence_cloning import Demonstration, SequenceCloningTrainer
from structrl.data.demos import policy_observations
from structrl.data.episode_store import EpisodeReader
from structrl.data.splits import ID_VALID_PER_GOAL, OOD_VALID_PER_GOAL, VALIDATION_SETS, DemoSplit
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
DAGGER_DIR = "dagger"
#: Version of the layout of ``checkpoint.pt``.
CHECKPOINT_FORMAT = 1
#: Settings :func:`resume_bc` may change; the others must stay those of the checkpoint.
RESUMABLE_SETTINGS = ("epochs", "eval_envs")


class BCError(ValueError):
    """Behaviour-cloning settings that cannot work, or a demonstration store they cannot use."""


_RUN = RunKind(
    name="behaviour-cloning",
    article="a",
    error=BCError,
    tag=None,
    checkpoint_format=CHECKPOINT_FORMAT,
    unit="epoch",
    resumable=RESUMABLE_SETTINGS,
    outputs=(MODEL_FILE, BEST_MODEL_FILE, DAGGER_DIR),
    metric="id_success_rate",
    best_weights="best_policy",
    unreadable_advice="delete it to start the run again from epoch 0",
    foreign_advice="delete it to start the run again from epoch 0",
    restore_in_config=True,
)


@dataclass
class BCConfig(OfflineSettings):
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

    run_kind: ClassVar[RunKind] = _RUN
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
            *evaluation_problems(self.eval_every, self.eval_episodes, self.eval_envs),
        )
        self._raise_first(problems)


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
    """
    The greedy evaluations of a run (:class:`~structrl.agents.greedy_validation.GreedyValidation`), logged to
    ``imitation``'s logger.

    :param greedy: The evaluations and the run's progress.
    :param logger: The run's logger.
    """

    def __init__(self, greedy: GreedyValidation, logger: imitation_logger.HierarchicalLogger) -> None:
        self.greedy, self.logger = greedy, logger
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
        record = self.greedy.evaluate(step, self.logger.record, evaluate_seeds)
        self.greedy.model.policy.set_training_mode(True)
        self.logger.dump(step)
        self.greedy.keep(record)
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
        if not self.validation.greedy.progress.evaluated_at(self.steps):
            self.validation(self.steps)


class _Checkpoint:
    """
    The resumable state of a run (see :func:`read_bc_checkpoint`), written atomically to ``checkpoint.pt``
    at the end of each epoch and when the run finishes.

    :param run_dir: The run directory.
    :param config: The run's settings.
    :param counter: The optimizer steps and the evaluations.
    :param train_transitions: Transitions of the training demonstrations (checked when resuming).
    """

    def __init__(
        self, run_dir: Path, config: BCConfig, counter: _StepCounter, train_transitions: int
    ) -> None:
        self.run_dir, self.config, self.counter = run_dir, config, counter
        self.greedy = counter.validation.greedy
        self.train_transitions = train_transitions
        #: Epochs completed.
        self.epoch = 0
        #: The state of the trainer (optimizer, counters, generators); set by the training path.
        self.trainer_state: Callable[[], dict[str, Any]] = dict
        #: The trainer's state in a restored checkpoint.
        self.saved_trainer: dict[str, Any] | None = None
        #: torch's random state after the last completed epoch (``None`` before the first).
        self.torch_rng: th.Tensor | None = None

    def restore(self, saved: dict[str, Any]) -> None:
        """
        Take the state of a checkpoint: the policy's weights, the step and epoch counters, the evaluations
        and the best model, whose file is written again (the trainer's own state is restored when the
        training path attaches its trainer, torch's random state when it begins).

        :param saved: a checkpoint (:func:`read_bc_checkpoint`)
        """
        self.greedy.restore(saved)
        self.counter.steps = int(saved["steps"])
        self.epoch = int(saved["epoch"])
        self.saved_trainer = saved["trainer"]
        self.torch_rng = saved["torch_rng"]

    def attach(self, state: Callable[[], dict[str, Any]], load: Callable[[dict[str, Any]], None]) -> None:
        """
        Save the trainer's state with each checkpoint, and restore it from a restored checkpoint.

        :param state: gives the trainer's state
        :param load: restores the trainer's state
        """
        self.trainer_state = state
        if self.saved_trainer is not None:
            load(self.saved_trainer)

    def begin(self) -> None:
        """Restore torch's random state of a restored checkpoint, just before training continues."""
        if self.torch_rng is not None:
            th.set_rng_state(self.torch_rng)

    def end_epoch(self) -> None:
        """Count a completed epoch and save the checkpoint."""
        self.epoch += 1
        self.torch_rng = th.get_rng_state()
        self.save(finished=False)

    def save(self, finished: bool) -> None:
        """
        Write the checkpoint atomically.

        :param finished: whether the run has finished its epochs (and final evaluation)
        """
        save_checkpoint(
            self.run_dir,
            _RUN,
            {
                "config": self.config.to_dict(),
                "train_transitions": self.train_transitions,
                "epoch": self.epoch,
                "steps": self.counter.steps,
                "finished": finished,
                "trainer": self.trainer_state(),
                "torch_rng": th.get_rng_state() if self.torch_rng is None else self.torch_rng,
                **self.greedy.checkpoint(),
            },
        )


def read_bc_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """
    The checkpoint of a behaviour-cloning run: the state after its last completed epoch.

    :param run_dir: the run directory
    :return: ``None`` if the run has no checkpoint (it ended before its first epoch, or is a DAgger run), else
        ``config`` (the settings), ``epoch`` (epochs completed), ``steps`` (optimizer steps), ``finished``,
        ``seconds`` (of training so far), ``resumed`` (the epochs it was resumed at), ``history`` and
        ``best`` (the evaluation records), ``train_transitions``, and the state: ``policy`` and
        ``best_policy`` (weights), ``trainer`` (optimizer, counters, generators) and ``torch_rng``
    :raises BCError: if the file is not a readable checkpoint of this version
    """
    return read_checkpoint(run_dir, _RUN)


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


class _ContinuedBCLogger(bc.BCLogger):
    """
    ``imitation``'s BC logger for a run continued from a checkpoint: the tensorboard steps and the epoch
    numbers go on from the checkpoint's instead of starting again at 0.

    :param logger: The run's logger.
    :param steps: Optimizer steps done.
    :param epochs: Epochs done.
    """

    def __init__(self, logger: imitation_logger.HierarchicalLogger, steps: int, epochs: int) -> None:
        super().__init__(logger)
        self._tensorboard_step = steps
        self.epochs = epochs

    def log_epoch(self, epoch_number: int) -> None:
        super().log_epoch(epoch_number + self.epochs)


def _bc_trainer_state(trainer: bc.BC) -> dict[str, Any]:
    """The state of ``imitation``'s BC trainer between epochs (the policy's weights aside)."""
    calculator = trainer.loss_calculator
    return {
        "optimizer": trainer.optimizer.state_dict(),
        "rng": trainer.rng.bit_generator.state,
        "loss_step": calculator.step if isinstance(calculator, SparseBCLossCalculator) else 0,
    }


def _load_bc_trainer_state(trainer: bc.BC, state: dict[str, Any]) -> None:
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.rng.bit_generator.state = state["rng"]
    calculator = trainer.loss_calculator
    if isinstance(calculator, SparseBCLossCalculator):
        calculator.step = int(state["loss_step"])


def _bc_train_kwargs(
    n_epochs: int, counter: _StepCounter, on_epoch_end: Callable[[], None] | None = None
) -> dict[str, Any]:
    return {
        "n_epochs": n_epochs,
        "on_batch_end": counter,
        "on_epoch_end": on_epoch_end,
        "log_interval": 1,
        "log_rollouts_venv": None,
        "progress_bar": False,
    }


def _train_feed_forward(
    config: BCConfig,
    model: BaseAlgorithm,
    demonstrations: list[Demonstration],
    logger: imitation_logger.HierarchicalLogger,
    checkpoint: _Checkpoint,
) -> None:
    trajectories = [
        types.Trajectory(obs=types.DictObs(demo.observations), acts=demo.actions, infos=None, terminal=True)
        for demo in demonstrations
    ]
    policy = model.policy
    assert isinstance(policy, ActorCriticPolicy)
    policy.set_training_mode(True)
    with _quiet_imitation_warnings():
        trainer = _bc_trainer(config, policy, trajectories, logger)
        # imitation counts tensorboard steps and epochs per trainer: a continued run goes on from its own
        trainer._bc_logger = _ContinuedBCLogger(logger, checkpoint.counter.steps, checkpoint.epoch)
        checkpoint.attach(
            lambda: _bc_trainer_state(trainer), lambda state: _load_bc_trainer_state(trainer, state)
        )
        remaining = config.epochs - checkpoint.epoch
        checkpoint.begin()
        if remaining > 0:  # imitation's loop fails on 0 epochs
            trainer.train(**_bc_train_kwargs(remaining, checkpoint.counter, checkpoint.end_epoch))


def _train_recurrent(
    config: BCConfig,
    model: BaseAlgorithm,
    demonstrations: list[Demonstration],
    logger: imitation_logger.HierarchicalLogger,
    checkpoint: _Checkpoint,
) -> None:
    policy = model.policy
    assert isinstance(policy, RecurrentActorCriticPolicy)
    trainer = SequenceCloningTrainer(
        policy,
        demonstrations,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        ent_weight=config.ent_weight,
        sparsity_schedule=config.sparsity_schedule() if sparsity_penalty(policy) is not None else None,
        rng=np.random.default_rng(config.seed),
        logger=logger,
    )
    checkpoint.attach(trainer.state_dict, trainer.load_state_dict)
    checkpoint.begin()
    trainer.train(
        config.epochs - checkpoint.epoch, on_batch_end=checkpoint.counter, on_epoch_end=checkpoint.end_epoch
    )


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
        train_kwargs = _bc_train_kwargs(config.epochs, counter)
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


@dataclass(frozen=True)
class _TrainingData:
    """The environment and the demonstrations of a run."""

    env_id: str
    env_kwargs: dict[str, Any]
    split: DemoSplit
    demonstrations: list[Demonstration]
    transitions: int

    @classmethod
    def load(cls, config: BCConfig) -> _TrainingData:
        env_id, env_kwargs = store_env_settings(config.dataset)
        split = config.demo_split()
        demonstrations = read_demonstrations(config.dataset, split.train)
        transitions = sum(len(demo) for demo in demonstrations)
        if config.recurrent is None and transitions < config.batch_size:
            raise BCError(
                f"the {len(demonstrations)} training episodes hold {transitions} transitions, fewer than a "
                f"batch of {config.batch_size}: raise --limit or lower --batch-size"
            )
        return cls(env_id, env_kwargs, split, demonstrations, transitions)


def train_bc(
    config: BCConfig,
    run_dir: str | Path,
    threads: int = 1,
    on_evaluation: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """
    Clone the demonstrations of a store into a policy and write the run directory (see the module
    documentation); the run replaces the files of an earlier run in the same directory.

    The state after each epoch is saved to ``checkpoint.pt`` (except for DAgger runs). On
    ``KeyboardInterrupt`` (Ctrl-C) the current policy is saved to ``model.zip`` before the exception
    propagates; :func:`resume_bc` continues the run from its checkpoint.

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
    data = _TrainingData.load(config)
    return _run(config, fresh_run_dir(run_dir, _RUN), data, threads, on_evaluation, saved=None)


def load_bc_config(run_dir: str | Path) -> BCConfig:
    """
    The settings of a behaviour-cloning run directory.

    :param run_dir: the run directory
    :return: the settings read from its ``config.yml``
    :raises BCError: if the directory holds no ``config.yml`` of ``structrl bc``
    """
    return read_run_config(run_dir, BCConfig)


def resume_bc(
    run_dir: str | Path,
    epochs: int | None = None,
    threads: int = 1,
    eval_envs: int | None = None,
    on_evaluation: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """
    Continue an interrupted (or finished, with more ``epochs``) behaviour-cloning run from the checkpoint of
    its last completed epoch: the policy's weights, the optimizer's state, the step and epoch counters, the
    random states of the batch order, the evaluations and the best model. The continued run ends with the
    weights the uninterrupted run would have had (with the same ``threads``: CPU kernels may sum in another
    order with other thread counts). A run without a checkpoint (stopped in its first epoch) starts again.
    The tensorboard logs go on in the same folder.

    :param run_dir: the run directory (its ``config.yml`` and ``checkpoint.pt``)
    :param epochs: a new number of epochs (default: the configured one)
    :param threads: torch intra-op threads
    :param eval_envs: environments stepped together in evaluations (default: the configured number; the
        results do not depend on it)
    :param on_evaluation: called with each new evaluation record
    :return: the summary written to ``summary.json``
    :raises BCError: if the directory holds no behaviour-cloning run, the run is a DAgger run, has already
        finished its epochs, or its checkpoint disagrees with its settings or demonstrations
    """
    run_dir = Path(run_dir)
    config = load_bc_config(run_dir)
    if config.dagger:
        raise BCError(
            "DAgger runs cannot be resumed: imitation's DAgger keeps its rounds' state (the collecting "
            "environments, the expert's labels so far) outside any checkpoint; start the run again with "
            "structrl bc"
        )
    if epochs is not None:
        config.epochs = epochs
    if eval_envs is not None:
        config.eval_envs = eval_envs
    config.check()
    saved = read_bc_checkpoint(run_dir)
    if saved is None:
        data = _TrainingData.load(config)
        return _run(config, fresh_run_dir(run_dir, _RUN), data, threads, on_evaluation, saved=None)
    check_resume(run_dir, config, saved)
    data = _TrainingData.load(config)
    check_train_transitions(config, data.transitions, saved)
    return _run(config, run_dir, data, threads, on_evaluation, saved=saved)


def _run(
    config: BCConfig,
    run_dir: Path,
    data: _TrainingData,
    threads: int,
    on_evaluation: Callable[[dict[str, Any]], object] | None,
    saved: dict[str, Any] | None,
) -> dict[str, Any]:
    """Train (from the checkpoint ``saved``, if given), evaluate and write the run directory."""
    th.set_num_threads(threads)

    def make_env() -> gym.Env:
        return gym.make(data.env_id, **data.env_kwargs)

    model = build_model(config, make_env())
    write_run_config(run_dir, config, threads, env_id=data.env_id, env_kwargs=data.env_kwargs)
    split = data.split
    seeds = validation_seeds(split, config.eval_episodes)
    logger = imitation_logger.configure(run_dir / TENSORBOARD_DIR, ["tensorboard"])
    progress = RunProgress(_RUN, on_evaluation)
    greedy = GreedyValidation(model, data.env_id, data.env_kwargs, seeds, config.eval_envs, run_dir, progress)
    validation = _Validation(greedy, logger)
    counter = _StepCounter(config.eval_every, validation)
    checkpoint = _Checkpoint(run_dir, config, counter, data.transitions)
    if saved is not None:
        checkpoint.restore(saved)
    try:
        if config.recurrent is not None:
            _train_recurrent(config, model, data.demonstrations, logger, checkpoint)
        elif config.dagger:
            _train_dagger(config, model, data.demonstrations, split, make_env, counter, logger, run_dir)
        else:
            _train_feed_forward(config, model, data.demonstrations, logger, checkpoint)
        counter.finish()
    except KeyboardInterrupt:
        validation.sync()
        greedy.save_current()
        raise
    finally:
        logger.close()
    if not config.dagger:
        checkpoint.save(finished=True)
    greedy.save_current()
    penalty = sparsity_penalty(model.policy)
    return write_summary(
        run_dir,
        {
            "config": config.to_dict(),
            "env_id": data.env_id,
            "env_kwargs": data.env_kwargs,
            "limit": split.limit,
            "train_episodes": len(data.demonstrations),
            "train_transitions": data.transitions,
            "validation_episodes": {which: len(seeds[which]) for which in VALIDATION_SETS},
            "epochs": config.epochs,
            "steps": counter.steps,
            "resumed_at_epochs": progress.resumed,
            "seconds": progress.elapsed(),
            "sparsity_penalty": None if penalty is None else penalty.item(),
            **progress.results(BEST_MODEL_FILE, MODEL_FILE),
        },
    )
