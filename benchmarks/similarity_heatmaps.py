"""
Heat maps of word x attribute cosine similarities of factored attention models, shared by the BabyAI
benchmarks (``compgen_sample_efficiency.py``, ``discriminator_grounding.py``): one panel per matrix, the
attribute each colour and type word names boxed, cosines of magnitude 0.2 or more written in.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from structrl.envs.babyai import GOTO_LOCAL_VOCABULARY
from structrl.policies.grounding import attribute_labels, named_attribute


def plot_word_attribute_matrices(panels: dict[str, np.ndarray], path: Path) -> Path:
    """
    :param panels: panel title -> ``(words, attributes)`` similarity matrix (rows in vocabulary order)
    :param path: the PNG file to write
    :return: ``path``
    """
    words = list(GOTO_LOCAL_VOCABULARY)
    attributes = attribute_labels()
    figure, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 7), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], panels.items(), strict=True):
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
        for row, word in enumerate(words):
            named = named_attribute(word)
            if named is not None:
                ax.add_patch(Rectangle((named - 0.5, row - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
        for row, column in zip(*np.nonzero(np.abs(matrix) >= 0.2), strict=True):
            ax.text(column, row, f"{matrix[row, column]:.1f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(attributes)), attributes, rotation=90)
        ax.set_yticks(range(len(words)), words)
        ax.set_title(title)
        ax.set_xlabel("attribute (object type | colour); boxes: the attribute the word names")
        ax.set_ylabel("word")
        figure.colorbar(image, ax=ax, fraction=0.04, label="cos(word, attribute)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
