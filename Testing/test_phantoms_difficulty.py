"""Difficulty: the same anatomy, with less contrast between the target and its surroundings and more noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SegCore.datasets import load_case, open_dataset
from SegCore.phantoms import write_phantom_dataset

# (study, task, channel compared, label value of the target)
CASES = [
    ("pancreas", None, 0, 1),
    ("muscle", None, 0, 1),
    ("atrium", None, 0, 1),
    ("thalamus", None, 1, 1),  # FA: the thalamus against the surrounding white matter
    ("decathlon", "BrainTumour", 0, 1),  # FLAIR: oedema
    ("decathlon", "Prostate", 0, 1),  # T2: peripheral zone
    ("decathlon", "Spleen", 0, 1),
]


def contrast_to_noise(image: np.ndarray, target: np.ndarray) -> float:
    """|mean inside - mean in a 2-voxel shell around| / std inside (noise + texture)."""
    shell = ndimage.binary_dilation(target, iterations=2) & ~target
    return abs(image[target].mean() - image[shell].mean()) / image[target].std()


@pytest.mark.parametrize(("study", "task", "channel", "value"), CASES, ids=[f"{s}-{t or ''}" for s, t, *_ in CASES])
def test_harder_phantoms_have_measurably_less_contrast(tmp_path, study, task, channel, value):
    measured, labels = {}, {}
    for level in ("easy", "medium", "hard"):
        folder = tmp_path / level
        write_phantom_dataset(study, folder, cases=1, seed=5, difficulty=level, task=task or "BrainTumour")
        (case,) = open_dataset(folder).labelled_cases()
        image, label = load_case(case)
        labels[level] = label.array
        measured[level] = contrast_to_noise(image.array[channel], label.array == value)
    assert np.array_equal(labels["easy"], labels["hard"])  # same anatomy
    assert measured["easy"] > 1.3 * measured["medium"] > 1.3 * 1.3 * measured["hard"], measured
