"""Splits: k-fold, the pancreas study's folds, seeded random splits and fixed lists, as JSON-able data."""

from __future__ import annotations

import pytest

from SegCore.datasets import (
    kfold_splits,
    load_splits,
    pancreas_folds,
    random_split,
    read_case_list,
    save_splits,
    split_from_lists,
)
from SegCore.errors import SegCoreError

IDS = [f"case{i:02d}" for i in range(23)]


def test_kfold_validates_every_case_exactly_once():
    folds = kfold_splits(IDS, 5, seed=1)
    assert len(folds) == 5
    validated = [case for fold in folds for case in fold["val"]]
    assert sorted(validated) == IDS  # each case once
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == set(IDS) and not set(fold["train"]) & set(fold["val"])
    assert sorted(len(f["val"]) for f in folds) == [4, 4, 5, 5, 5]


def test_kfold_is_deterministic_and_independent_of_input_order():
    assert kfold_splits(IDS, 4, seed=3) == kfold_splits(list(reversed(IDS)), 4, seed=3)
    assert kfold_splits(IDS, 4, seed=3) != kfold_splits(IDS, 4, seed=4)
    with pytest.raises(SegCoreError, match="folds"):
        kfold_splits(IDS[:3], 5)
    with pytest.raises(SegCoreError, match="more than once"):
        kfold_splits(["a", "a", "b"], 2)


def test_pancreas_folds_follow_the_study_readme_for_82_cases():
    ids = [f"PANCREAS_{n:04d}" for n in range(82, 0, -1)]  # any order
    folds = pancreas_folds(ids)
    # README: Fold #0 tests cases 01-20, #1 21-40, #2 41-61, #3 62-82.
    expected = [range(1, 21), range(21, 41), range(41, 62), range(62, 83)]
    for fold, numbers in zip(folds, expected, strict=True):
        assert fold["val"] == [f"PANCREAS_{n:04d}" for n in numbers]
        assert len(fold["train"]) == 82 - len(numbers) and not set(fold["train"]) & set(fold["val"])


def test_pancreas_folds_with_missing_case_numbers_use_the_order():
    numbers = [n for n in range(1, 83) if n not in (25, 70)]  # the TCIA set lacks two cases
    folds = pancreas_folds([f"PANCREAS_{n:04d}" for n in numbers])
    assert [len(f["val"]) for f in folds] == [20, 20, 20, 20]
    assert folds[1]["val"][0] == "PANCREAS_0021" and folds[1]["val"][-1] == "PANCREAS_0041"


def test_random_split_is_reproducible_and_disjoint():
    split = random_split(IDS, (0.6, 0.2, 0.2), seed=9)
    assert split == random_split(list(reversed(IDS)), (0.6, 0.2, 0.2), seed=9)
    assert split != random_split(IDS, (0.6, 0.2, 0.2), seed=10)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (13, 5, 5)
    assert sorted(split["train"] + split["val"] + split["test"]) == IDS
    with pytest.raises(SegCoreError, match="summing to 1"):
        random_split(IDS, (0.5, 0.2, 0.2))


def test_fixed_lists_from_text_and_json_files(tmp_path):
    (tmp_path / "train.txt").write_text("# training subjects\ncase01\ncase02\n\ncase03\n")
    (tmp_path / "test.json").write_text('["case10", "case11"]')
    split = split_from_lists(IDS, train=tmp_path / "train.txt", test=tmp_path / "test.json")
    assert split == {"train": ["case01", "case02", "case03"], "test": ["case10", "case11"]}
    (tmp_path / "bad.txt").write_text("case01\nnobody\n")
    with pytest.raises(SegCoreError, match="nobody") as caught:
        split_from_lists(IDS, val=tmp_path / "bad.txt")
    assert "bad.txt" in str(caught.value)
    with pytest.raises(SegCoreError, match="both"):
        split_from_lists(IDS, train=tmp_path / "train.txt", val=tmp_path / "train.txt")
    assert read_case_list(tmp_path / "train.txt") == ["case01", "case02", "case03"]


def test_splits_round_trip_through_json(tmp_path):
    folds = kfold_splits(IDS, 3)
    path = save_splits(folds, tmp_path / "out" / "splits.json")
    assert load_splits(path) == folds
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(SegCoreError, match="broken.json"):
        load_splits(tmp_path / "broken.json")
