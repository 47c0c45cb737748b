"""MiniGrid environment construction and the mission tokeniser."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (importing minigrid registers the MiniGrid-* and BabyAI-* ids)
import numpy as np
from gymnasium import spaces
from minigrid.wrappers import ImgObsWrapper

PAD_TOKEN = "<pad>"
UNKNOWN_TOKEN = "<unk>"

#: Every word that appears in MiniGrid and BabyAI mission strings, after lower-casing.
MISSION_WORDS: tuple[str, ...] = (
    "a", "after", "and", "avoid", "ball", "behind", "blue", "box", "cross", "door", "drop", "fetch",
    "find", "front", "get", "go", "goal", "green", "grey", "in", "it", "key", "lava", "left", "next",
    "object", "of", "on", "open", "pick", "purple", "put", "red", "right", "room", "rooms", "square",
    "the", "then", "to", "traverse", "up", "use", "yellow", "you", "your", "matching", "color", "same",
    "corridor", "end", "unlock", "toggle", "there", "is", "at", "near", "exit", "locked", "opening",
)  # fmt: skip

_WORD_PATTERN = re.compile(r"[a-z]+")


def mission_vocabulary(words: Sequence[str] = MISSION_WORDS) -> dict[str, int]:
    """
    Map words to integer ids: 0 is padding, 1 any unknown word, then ``words`` in order (duplicates dropped).

    :param words: The known words.
    :return: The word -> id mapping.
    """
    vocab = {PAD_TOKEN: 0, UNKNOWN_TOKEN: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    return vocab


class MissionTokenWrapper(gym.ObservationWrapper):
    """
    Replace MiniGrid's free-text ``mission`` with a fixed-length integer Box of word ids.

    SB3 cannot feed text to a network; an integer ``Box`` is only cast to float by SB3 (a ``Discrete`` or
    ``MultiDiscrete`` would be one-hot encoded), so a features extractor can embed the ids directly.
    The observation becomes ``Dict(image=..., mission=Box(0, V-1, (max_length,), int64))`` plus
    ``direction`` when ``keep_direction`` is set. Missions longer than ``max_length`` words are truncated.

    :param env: A MiniGrid env with a Dict observation (``image``, ``direction``, ``mission``).
    :param max_length: Number of word slots; shorter missions are right-padded with 0.
    :param vocabulary: Word -> id mapping (ids 0 and 1 reserved for padding and unknown words).
    :param keep_direction: Keep the agent's direction (``Discrete(4)``) in the observation.
    """

    def __init__(
        self,
        env: gym.Env,
        max_length: int = 24,
        vocabulary: dict[str, int] | None = None,
        keep_direction: bool = False,
    ) -> None:
        super().__init__(env)
        source = env.observation_space
        assert isinstance(source, spaces.Dict) and "mission" in source.spaces, (
            "MissionTokenWrapper needs a MiniGrid Dict observation with a 'mission' key; "
            f"got {source}. Apply it before ImgObsWrapper."
        )
        assert max_length > 0, f"max_length must be positive, got {max_length}"
        self.max_length = max_length
        self.vocabulary = vocabulary if vocabulary is not None else mission_vocabulary()
        obs_spaces: dict[str, spaces.Space] = {
            "image": source["image"],
            "mission": spaces.Box(0, len(self.vocabulary) - 1, (max_length,), dtype=np.int64),
        }
        if keep_direction:
            obs_spaces["direction"] = source["direction"]
        self._passed_keys = [key for key in obs_spaces if key != "mission"]
        self.observation_space = spaces.Dict(obs_spaces)

    def tokenize(self, mission: str) -> np.ndarray:
        """
        Turn a mission string into a padded array of word ids.

        :param mission: The mission text.
        :return: int64 array of shape ``(max_length,)``.
        """
        unknown = self.vocabulary[UNKNOWN_TOKEN]
        ids = [self.vocabulary.get(word, unknown) for word in _WORD_PATTERN.findall(mission.lower())]
        tokens = np.zeros(self.max_length, dtype=np.int64)
        ids = ids[: self.max_length]
        tokens[: len(ids)] = ids
        return tokens

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        out = {key: observation[key] for key in self._passed_keys}
        out["mission"] = self.tokenize(observation["mission"])
        return out


def make_minigrid_env(env_id: str, mission: bool = False, **make_kwargs: Any) -> gym.Env:
    """
    Make a MiniGrid/BabyAI env with the 7x7x3 symbolic egocentric view that structrl's policies expect.

    The view's shape does not depend on the grid size, so an agent trained on a small grid can be evaluated
    on larger variants as it is.

    :param env_id: A registered id such as ``MiniGrid-Empty-5x5-v0``.
    :param mission: Also return the mission as word ids (``Dict(image, mission)`` via
        :class:`MissionTokenWrapper`) instead of the image alone.
    :param make_kwargs: Passed to ``gymnasium.make`` (e.g. ``render_mode="rgb_array"``).
    :return: The wrapped env.
    """
    env = gym.make(env_id, **make_kwargs)
    if mission:
        return MissionTokenWrapper(env)
    return ImgObsWrapper(env)
