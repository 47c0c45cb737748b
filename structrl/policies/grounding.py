"""
How well the word x attribute similarities of a factored attention model are grounded: whether each colour
and object-type word of the GoToLocal missions is most similar to the attribute it names ("red" to the
colour red, "ball" to the object type ball), the question behind the paper's internal-correlation figure
(Spilsbury & Ilin, 2022, Fig. 4b).

The matrix is :meth:`~structrl.policies.FactoredAttention.similarity_matrix`: one row per word of
:data:`~structrl.envs.babyai.GOTO_LOCAL_VOCABULARY`, one column per row of the attribute table (minigrid's
object types, then its colours, in index order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from structrl.envs.babyai import COLOURS, GOTO_LOCAL_VOCABULARY, OBJECT_TYPES


def attribute_labels() -> list[str]:
    """
    :return: the names of the attribute table's rows: minigrid's object types, then its colours, each in
        index order (a colour and a type never share a name, e.g. ``"red"``, ``"ball"``)
    """
    types = sorted(OBJECT_TO_IDX, key=OBJECT_TO_IDX.__getitem__)
    colours = sorted(COLOR_TO_IDX, key=COLOR_TO_IDX.__getitem__)
    return types + colours


def named_attribute(word: str) -> int | None:
    """
    :param word: a mission word
    :return: the attribute row the word names (its object type or colour), ``None`` for the other words
    """
    if word in OBJECT_TYPES:
        return OBJECT_TO_IDX[word]
    if word in COLOURS:
        return len(OBJECT_TO_IDX) + COLOR_TO_IDX[word]
    return None


@dataclass(frozen=True)
class WordGrounding:
    """
    The attributes one content word is most and second-most similar to.

    :param word: the word
    :param named: the attribute it names
    :param nearest: the attribute it is most similar to
    :param named_similarity: its cosine similarity with the named attribute
    :param best_other_similarity: its largest cosine similarity with any other attribute
    """

    word: str
    named: str
    nearest: str
    named_similarity: float
    best_other_similarity: float

    @property
    def grounded(self) -> bool:
        """Whether the word is most similar to the attribute it names."""
        return self.named == self.nearest

    @property
    def margin(self) -> float:
        """Similarity with the named attribute minus the largest with another (> 0 iff grounded)."""
        return self.named_similarity - self.best_other_similarity


def ground_words(similarity: np.ndarray) -> list[WordGrounding]:
    """
    :param similarity: ``(words, attributes)`` cosine similarities, rows in the order of
        :data:`~structrl.envs.babyai.GOTO_LOCAL_VOCABULARY`, columns in that of :func:`attribute_labels`
    :return: the grounding of each colour and object-type word, in vocabulary order
    """
    labels = attribute_labels()
    expected_shape = (len(GOTO_LOCAL_VOCABULARY), len(labels))
    if similarity.shape != expected_shape:
        raise ValueError(
            f"a word x attribute similarity matrix of GoToLocal has shape {expected_shape}, got "
            f"{similarity.shape}: pass the similarity_matrix() of a factored attention model"
        )
    groundings = []
    for word, row in GOTO_LOCAL_VOCABULARY.items():
        named = named_attribute(word)
        if named is None:
            continue
        similarities = similarity[row]
        others = np.delete(similarities, named)
        groundings.append(
            WordGrounding(
                word=word,
                named=labels[named],
                nearest=labels[int(np.argmax(similarities))],
                named_similarity=float(similarities[named]),
                best_other_similarity=float(others.max()),
            )
        )
    return groundings


def grounding_accuracy(similarity: np.ndarray) -> float:
    """
    :param similarity: a word x attribute similarity matrix (see :func:`ground_words`)
    :return: the fraction of colour and object-type words most similar to the attribute they name
    """
    groundings = ground_words(similarity)
    return sum(grounding.grounded for grounding in groundings) / len(groundings)
