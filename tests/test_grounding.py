"""Grounding of the word x attribute similarities of factored attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from structrl.envs.babyai import COLOURS, GOTO_LOCAL_VOCABULARY, OBJECT_TYPES
from structrl.policies.factored_attention import FactoredAttention
from structrl.policies.grounding import attribute_labels, ground_words, grounding_accuracy, named_attribute

CONTENT_WORDS = [word for word in GOTO_LOCAL_VOCABULARY if word in COLOURS or word in OBJECT_TYPES]


def grounded_matrix(rng: np.random.Generator) -> np.ndarray:
    """Small random similarities, 0.9 between every content word and the attribute it names."""
    matrix = rng.uniform(-0.3, 0.3, size=(len(GOTO_LOCAL_VOCABULARY), len(attribute_labels())))
    for word in CONTENT_WORDS:
        matrix[GOTO_LOCAL_VOCABULARY[word], named_attribute(word)] = 0.9
    return matrix


def test_labels_follow_the_attribute_table_of_factored_attention() -> None:
    model = FactoredAttention(len(GOTO_LOCAL_VOCABULARY))
    labels = attribute_labels()
    assert len(labels) == model.attributes.shape[0] == 17
    # a red ball's two factor embeddings are the rows labelled "ball" and "red"
    image = th.tensor([[[[OBJECT_TO_IDX["ball"], COLOR_TO_IDX["red"], 0]]]])
    cells = model.embed_cells(image)[0, :, 0, 0]
    assert th.equal(cells[0], model.attributes[labels.index("ball")])
    assert th.equal(cells[1], model.attributes[labels.index("red")])


def test_every_content_word_names_its_attribute() -> None:
    labels = attribute_labels()
    assert len(CONTENT_WORDS) == 9
    for word in CONTENT_WORDS:
        index = named_attribute(word)
        assert index is not None and labels[index] == word
    assert named_attribute("go") is None and named_attribute("the") is None


def test_a_grounded_matrix_scores_one_and_a_swap_loses_two_words() -> None:
    matrix = grounded_matrix(np.random.default_rng(0))
    groundings = ground_words(matrix)
    assert [grounding.word for grounding in groundings] == CONTENT_WORDS
    assert all(grounding.grounded and grounding.margin > 0.5 for grounding in groundings)
    assert grounding_accuracy(matrix) == 1.0

    red, blue = GOTO_LOCAL_VOCABULARY["red"], GOTO_LOCAL_VOCABULARY["blue"]
    matrix[[red, blue]] = matrix[[blue, red]]
    by_word = {grounding.word: grounding for grounding in ground_words(matrix)}
    assert by_word["red"].nearest == "blue" and by_word["blue"].nearest == "red"
    assert not by_word["red"].grounded and by_word["red"].margin < 0
    assert grounding_accuracy(matrix) == pytest.approx(7 / 9)


def test_a_model_whose_words_equal_their_attributes_is_grounded() -> None:
    th.manual_seed(0)
    model = FactoredAttention(len(GOTO_LOCAL_VOCABULARY))
    assert grounding_accuracy(model.similarity_matrix().detach().numpy()) < 1.0
    with th.no_grad():
        for word in CONTENT_WORDS:
            model.words[GOTO_LOCAL_VOCABULARY[word]] = model.attributes[named_attribute(word)]
    assert grounding_accuracy(model.similarity_matrix().detach().numpy()) == 1.0


def test_a_matrix_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \(15, 17\), got \(15, 66\).*factored attention"):
        ground_words(np.zeros((15, 66)))
