"""Transforms: preprocessing as invertible, recorded steps (`Preprocessing`), and random augmentation.

`Preprocessing(steps).apply(image, label)` gives the arrays a network sees and a JSON-able record of every step;
`invert_label` / `invert_probabilities` map a prediction on the preprocessed grid back onto the source grid.
"""

from SegCore.transforms.augment import Augmentation
from SegCore.transforms.preprocess import STEPS, Preprocessed, Preprocessing

__all__ = [
    "STEPS",
    "Augmentation",
    "Preprocessed",
    "Preprocessing",
]
