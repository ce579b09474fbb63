"""Train/validation splits as plain data: lists of case ids, saved as JSON.

- `kfold_splits`: k folds over the case ids (sorted, then shuffled with a seed): every case is in exactly one
  fold's 'val' list. The nnU-Net convention (a list of {"train": [...], "val": [...]}).
- `pancreas_folds`: the RSTN study's 4 folds: contiguous blocks of cases in case-number order, the larger
  blocks last (82 cases: 1-20, 21-40, 41-61, 62-82), exactly as its `in_training_set` rule.
- `random_split`: seeded train / val / test fractions.
- `split_from_lists`: fixed lists read from text (one id per line) or JSON files, e.g. the thalamus study's
  training_subjects.txt / testing_subjects.txt.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from SegCore.atomic import atomic_file
from SegCore.datasets._common import list_names
from SegCore.errors import SegCoreError
from SegCore.studies import pancreas


def _checked_ids(case_ids: Sequence[str]) -> list[str]:
    ids = [str(i) for i in case_ids]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SegCoreError(f"case ids occur more than once: {list_names(duplicates)}", fix="pass each case once")
    return sorted(ids)


def kfold_splits(case_ids: Sequence[str], folds: int = 5, *, seed: int = 12345) -> list[dict[str, list[str]]]:
    """`folds` splits; fold f validates on the f-th part of the seeded shuffle of the sorted ids.

    Returns [{"fold": f, "train": [...], "val": [...]}, ...], each list sorted. The same ids and seed give the
    same folds whatever order the ids come in.
    """
    ids = _checked_ids(case_ids)
    if folds < 2 or folds > len(ids):
        raise SegCoreError(f"cannot make {folds} folds from {len(ids)} cases",
                           fix="use at least 2 folds and no more folds than cases")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, folds)
    result = []
    for fold, part in enumerate(parts):
        val = sorted(ids[i] for i in part)
        result.append({"fold": fold, "train": sorted(set(ids) - set(val)), "val": val})
    return result


def _case_number(case_id: str) -> int:
    digits = re.findall(r"\d+", case_id)
    if not digits:
        raise SegCoreError(f"case id {case_id!r} holds no case number",
                           fix=f"use ids like {pancreas.LAYOUT.case_folder(1)}")
    return int(digits[-1])


def pancreas_folds(case_ids: Sequence[str], folds: int = 4) -> list[dict[str, list[str]]]:
    """The pancreas study's folds: cases ordered by number, fold f validates on block f.

    With T cases and r = T mod folds, the first folds - r blocks hold T // folds cases and the last r blocks
    one more (the study's `in_training_set`); for the NIH set's 82 cases: 1-20, 21-40, 41-61, 62-82.
    Returns [{"fold": f, "train": [...], "val": [...]}], lists in case-number order.
    """
    ids = sorted(_checked_ids(case_ids), key=_case_number)
    total = len(ids)
    if folds < 2 or folds > total:
        raise SegCoreError(f"cannot make {folds} folds from {total} cases", fix="use 2..number-of-cases folds")
    small_blocks = folds - total % folds
    size = total // folds
    result = []
    for fold in range(folds):
        start = size * fold + max(0, fold - small_blocks)
        end = size * (fold + 1) + max(0, fold + 1 - small_blocks)
        result.append({"fold": fold, "train": ids[:start] + ids[end:], "val": ids[start:end]})
    return result


def random_split(case_ids: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), *,
                 seed: int = 0) -> dict[str, list[str]]:
    """Seeded random {"train", "val", "test"} split with the given fractions (val/test counts rounded)."""
    ids = _checked_ids(case_ids)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise SegCoreError(f"fractions must be three non-negative numbers summing to 1, got {fractions}",
                           fix="e.g. (0.7, 0.15, 0.15)")
    num_val, num_test = round(fractions[1] * len(ids)), round(fractions[2] * len(ids))
    if len(ids) - num_val - num_test < 1:
        raise SegCoreError(f"{len(ids)} cases leave none for training with fractions {fractions}",
                           fix="use more cases or smaller val/test fractions")
    shuffled = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    return {"train": sorted(shuffled[num_val + num_test:]), "val": sorted(shuffled[:num_val]),
            "test": sorted(shuffled[num_val:num_val + num_test])}


def read_case_list(path: str | os.PathLike) -> list[str]:
    """Case ids from a text file (one per line; blank lines and '#' comments skipped) or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SegCoreError(f"cannot read the case list: {error}", path=path,
                           fix="pass a text file with one case id per line, or a JSON list") from error
    if path.suffix.lower() == ".json":
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as error:
            raise SegCoreError(f"invalid JSON: {error}", path=path, fix="write a JSON list of case ids") from error
        if not isinstance(ids, list):
            raise SegCoreError("expected a JSON list of case ids", path=path, fix='write e.g. ["case01", "case02"]')
        return [str(i) for i in ids]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def split_from_lists(available_ids: Sequence[str], **lists: str | os.PathLike) -> dict[str, list[str]]:
    """A fixed split from list files, e.g. split_from_lists(ids, train="training_subjects.txt",
    test="testing_subjects.txt"). Every listed id must be available; a case may be in one list only."""
    available = set(available_ids)
    split: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for name, path in lists.items():
        ids = read_case_list(path)
        unknown = [i for i in ids if i not in available]
        if unknown:
            raise SegCoreError(f"{len(unknown)} listed case(s) are not in the dataset: {list_names(unknown)}",
                               path=path, fix="correct the list or restore those cases")
        for i in ids:
            if i in owner:
                raise SegCoreError(f"case {i} is in both the {owner[i]!r} and the {name!r} list", path=path,
                                   fix="put each case in one list only")
            owner[i] = name
        split[name] = ids
    return split


def save_splits(splits: list | dict, path: str | os.PathLike) -> Path:
    """Write splits as JSON (atomically); returns the path."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
    return path


def load_splits(path: str | os.PathLike) -> list | dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SegCoreError(f"cannot read splits: {error}", path=path, fix="pass a splits JSON file") from error
