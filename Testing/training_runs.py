"""Shared set-up of the training tests: a small phantom dataset, small configurations, and `segcore train` runs.

Every training here runs on the CPU with one thread per process (the test machine has 2 cores, shared), so that
runs are fast and deterministic runs compare bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
NO_AUGMENTATION = {"flip_p": 0, "rotate_p": 0, "scale_p": 0, "noise_p": 0, "gamma_p": 0}


def phantom(folder: Path, *, cases: int = 4, size: int = 32, seed: int = 0) -> Path:
    """An atrium phantom (LA 2018 layout, one label) of `cases` cases of `size` voxels along the largest side."""
    from SegCore.phantoms import write_phantom_dataset

    return write_phantom_dataset("atrium", folder, cases=cases, size_zyx=size, seed=seed)


def config(folder: Path, **sections) -> Path:
    """A JSON configuration: a 2D U-Net on axial slices, Dice+CE, no augmentation, small and fast; `sections`
    replace or extend the top-level sections (dicts are merged one level deep)."""
    plan = {"model": {"name": "unet2d", "arguments": {"features": [4, 8]}},
            "loss": {"name": "dice_ce", "arguments": {}},
            "sampler": {"kind": "slice2d", "size_yx": [32, 32], "foreground_fraction": 0.5},
            "augmentation": dict(NO_AUGMENTATION),
            "optim": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 2, "workers": 0,
                         "checkpoint_every_steps": 1, "deterministic": True}}
    for key, value in sections.items():
        plan[key] = {**plan.get(key, {}), **value} if isinstance(value, dict) and key in plan else value
    path = folder / "config.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    return path


def train_command(*arguments) -> list[str]:
    return [sys.executable, "-m", "SegCore", "train", "--device", "cpu", *map(str, arguments)]


def run_train(*arguments, progress: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`segcore train ARGUMENTS` in a subprocess (text output captured)."""
    head = [sys.executable, "-m", "SegCore"] + (["--progress", progress] if progress else [])
    command = head + ["train", "--device", "cpu", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model state of a checkpoint, read with torch.load(weights_only=True) alone (no SegCore code)."""
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text(encoding="utf-8"))


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("segcore train: error: "), lines[0]
    return lines[0]
