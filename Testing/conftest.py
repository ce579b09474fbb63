"""Shared pytest set-up: the `gpu` marker skips without CUDA; fixtures for small seeded data."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def oblique_direction() -> np.ndarray:
    """A rotated, axis-flipping 3x3 direction (columns = LPS directions of i, j, k), determinant -1."""
    a, b = np.deg2rad(30.0), np.deg2rad(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx @ np.diag([1.0, 1.0, -1.0])


@pytest.fixture
def open_folder():
    """A folder outside pytest's private tmp tree, so that another user can reach what is in it."""
    folder = Path(tempfile.mkdtemp(prefix="segcore-permissions-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o777 if path.is_dir() else 0o666)
    shutil.rmtree(folder)
