"""Real checkpoints for inference tests: a phantom dataset, a `--tiny` plan resolved on it, a seeded network.

    path = tiny_checkpoint(tmp_path / "unet3d.pt", "unet3d")                     # 1 channel, decathlon phantom
    path = tiny_checkpoint(tmp_path / "m.pt", "unet2d", plan={"sampler": {"axis": "coronal"}})
    path = tiny_checkpoint(tmp_path / "m.pt", "unet3d", weights=lambda net: ...)   # set weights by hand

The checkpoint is exactly what `segcore train` writes (checkpoint_meta of a resolved plan, save_checkpoint),
only with untrained (seeded) weights, so inference is tested on the real format without a training run.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from SegCore.training.checkpoint import capture_rng_state, checkpoint_meta, save_checkpoint
from SegCore.training.config import resolve_plan
from SegCore.training.derive import data_facts

_DATASETS: dict[tuple, Path] = {}


def phantom_root(folder: Path, study: str = "decathlon", size_zyx=(20, 40, 40), cases: int = 2) -> Path:
    """A phantom dataset in `folder` (written once per folder and arguments)."""
    from SegCore.phantoms import write_phantom_dataset

    key = (str(folder), study, tuple(size_zyx), cases)
    if key not in _DATASETS:
        root = folder / f"{study}-{'x'.join(map(str, size_zyx))}"
        if not root.exists():
            write_phantom_dataset(study, root, cases=cases, seed=0, size_zyx=tuple(size_zyx))
        _DATASETS[key] = root
    return _DATASETS[key]


def tiny_plan(data_root: Path, model: str, plan: dict | None = None) -> dict:
    """The resolved `--tiny` plan of `model` on the dataset at `data_root`, with `plan` merged over it."""
    config = copy.deepcopy(plan or {})
    config.setdefault("data", {})["root"] = str(data_root)
    config.setdefault("model", {})["name"] = model
    return resolve_plan(config, tiny=True, facts=data_facts(data_root))


def tiny_checkpoint(path: Path, model: str = "unet3d", *, plan: dict | None = None, study: str = "decathlon",
                    size_zyx=(20, 40, 40), seed: int = 0, weights=None) -> Path:
    """Write a checkpoint of the small `model` (seeded weights; `weights(net)` may change them in place)."""
    from SegCore.models import build_model

    path = Path(path)
    resolved = tiny_plan(phantom_root(path.parent, study, size_zyx), model, plan)
    torch.manual_seed(seed)
    net = build_model(resolved["model"]["name"], **resolved["model"]["arguments"]).eval()
    if weights is not None:
        with torch.no_grad():
            weights(net)
    save_checkpoint(path, model_state=net.state_dict(), epoch=1, step=0, best_metric=None, history=[],
                    rng_state=capture_rng_state(), meta=checkpoint_meta(resolved))
    return path


class ThresholdNet(torch.nn.Module):
    """A pointwise toy network: class 1 where channel 0 > threshold (logit slope * (x - threshold)), else 0.

    Mirror-equivariant and independent of neighbours, so a sliding window, mirroring or any resampling of its
    input changes its output only as that input's values change: the oracle of the geometry tests."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, threshold: float = 0.0, slope: float = 20.0):
        super().__init__()
        self.threshold, self.slope = float(threshold), float(slope)
        self.scale = torch.nn.Parameter(torch.ones(()))  # one weight, so the checkpoint has a state to load

    def forward(self, x):
        foreground = self.slope * self.scale * (x[:, :1] - self.threshold)
        return torch.cat([-foreground, foreground], 1)


@contextlib.contextmanager
def threshold_net_registered():
    """ThresholdNet in the model registry as 'threshold_net' (3D) while the block runs, removed afterwards so no
    other test sees it."""
    from SegCore.models.registry import MODELS, register_model

    if "threshold_net" in MODELS:  # already inside such a block
        yield
        return
    register_model("threshold_net", study="test", spatial_dims=3, defaults={}, example_input=(1, 8, 8, 8))(
        ThresholdNet)
    try:
        yield
    finally:
        MODELS.pop("threshold_net", None)


def threshold_locator_pair(folder: Path) -> tuple[Path, Path]:
    """(locator, segmenter) ThresholdNet checkpoints of a locate-then-segment model (call inside
    `threshold_net_registered`): the locator marks channel 0 > 0.9 on the volume halved on every axis, the
    segmenter marks > 0.3 on an 8-voxel crop around it widened by 2 voxels; the segmenter's plan names no locator."""
    common = {"data": {"channels": ["FLAIR"]}, "preprocessing": [],
              "sampler": {"kind": "patch3d", "patch_zyx": [8, 8, 8]}}
    locator = tiny_checkpoint(folder / "locator.pt", "threshold_net",
                              plan={**common, "model": {"arguments": {"threshold": 0.9}}})
    segmenter = tiny_checkpoint(folder / "segmenter.pt", "threshold_net", plan={
        **common, "model": {"arguments": {"threshold": 0.3}},
        "inference": {"locator": {"scale_zyx": [0.5, 0.5, 0.5], "margin_voxels": 2, "crop_zyx": [8, 8, 8]}}})
    return locator, segmenter

