"""Input mixup and manifold mixup (SegCore/training/mixup.py), the networks' MIXUP_LAYERS, and self-distillation
(SegCore/training/distill.py).

Oracles: the same draws replayed from an identically seeded Generator, the linearity of a 1x1 / 3x3 convolution head
(mixing the last hidden state mixes the logits), torch's cross-entropy, scipy's Beta distribution; for
distillation, numpy slicing of the volume, a slice-by-slice forward, and the scan's own body box.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from SegCore.datasets.case import Case, ImageSource, LabelRule, load_case_label
from SegCore.errors import SegCoreError
from SegCore.io import read_image, write_image
from SegCore.models import MODELS, build_model
from SegCore.training.checkpoint import capture_rng_state, checkpoint_meta, save_checkpoint
from SegCore.training.config import default_plan
from SegCore.training.distill import pseudo_label_cases, teacher_forward
from SegCore.training.mixup import Mixup
from SegCore.transforms import Preprocessing
from SegCore.volume import Volume

MIXUP_NETWORKS = [name for name, spec in MODELS.items() if getattr(spec.builder, "MIXUP_LAYERS", ())]


def small(name: str):
    torch.manual_seed(0)
    return build_model(name, **MODELS[name].small, **({"drop_connect_rate": 0.0} if name == "efficientnet_unet"
                                                      else {}))


def batch(name: str, size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    channels = MODELS[name].defaults.get("in_channels", 1)
    images = torch.randn(size, channels, 32, 32, generator=generator)
    labels = torch.randint(0, 2, (size, 32, 32), generator=generator)
    return images, labels


def test_unet2d_and_efficientnet_unet_declare_layers():
    assert {"unet2d", "efficientnet_unet"} <= set(MIXUP_NETWORKS)


@pytest.mark.parametrize("name", MIXUP_NETWORKS)
def test_every_mixup_layer_names_a_submodule(name):
    layers = MODELS[name].builder.MIXUP_LAYERS
    assert isinstance(layers, tuple) and layers
    for network in (build_model(name, **MODELS[name].small), build_model(name)):
        modules = dict(network.named_modules())
        for layer in layers:
            assert layer in modules and layer != "", layer


def test_input_mixup_mixes_images_with_beta_lam_and_changes_the_loss():
    model = small("unet2d").train()
    images, labels = batch("unet2d")
    mix = Mixup({"mode": "input", "alpha": 0.4}, model)
    with mix.step(images, labels, np.random.default_rng(7)) as mixed:
        logits = model(mixed.images)
        loss = mixed.loss(F.cross_entropy, logits, labels)
    replay = np.random.default_rng(7)
    lam, perm = replay.beta(0.4, 0.4), torch.from_numpy(replay.permutation(4))
    assert mixed.lam == lam and torch.equal(mixed.perm, perm) and not torch.equal(perm, torch.arange(4))
    assert torch.allclose(mixed.images, lam * images + (1 - lam) * images[perm])
    expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[perm])
    assert torch.allclose(loss, expected)
    off = Mixup({"mode": "off"}, model)
    with off.step(images, labels, np.random.default_rng(7)) as plain:
        plain_loss = plain.loss(F.cross_entropy, model(plain.images), labels)
    assert plain.images is images and plain.perm is None
    assert abs(float(loss.detach()) - float(plain_loss.detach())) > 1e-4


@pytest.mark.parametrize(("name", "last"), [("unet2d", "decoder1"), ("efficientnet_unet", "decoder.4")])
def test_manifold_mixup_at_the_last_hidden_layer_mixes_the_logits(name, last):
    """Mixing the input of the final convolution mixes its output: head(l a + (1-l) b) = l head(a) + (1-l) head(b)."""
    model = small(name).eval()  # no batch statistics: the unmixed forward is the reference
    images, labels = batch(name)
    with torch.no_grad():
        plain = model(images)
    mix = Mixup({"mode": "manifold", "alpha": 1.0, "layers": [last]}, model)
    with torch.no_grad(), mix.step(images, labels, np.random.default_rng(3)) as mixed:
        logits = model(mixed.images)
    assert mixed.fired == 1 and mixed.layer == last and mixed.images is images
    expected = mixed.lam * plain + (1 - mixed.lam) * plain[mixed.perm]
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, plain, atol=1e-3)


@pytest.mark.parametrize("name", ["unet2d", "efficientnet_unet"])
def test_manifold_mixup_fires_at_each_declared_layer_changes_the_loss_and_is_removed(name):
    model = small(name).train()
    images, labels = batch(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in MODELS[name].builder.MIXUP_LAYERS:
        model.load_state_dict(state)  # BatchNorm running statistics back to the same start every step
        mix = Mixup({"mode": "manifold", "alpha": 1.0, "layers": [layer]}, model)
        with mix.step(images, labels, np.random.default_rng(1)) as mixed:  # this seed's perm is not the identity
            loss = mixed.loss(F.cross_entropy, model(mixed.images), labels)
        loss.backward()  # the mixed graph is differentiable
        assert mixed.fired == 1 and mixed.layer == layer and not torch.equal(mixed.perm, torch.arange(4))
        assert all(not m._forward_hooks for m in model.modules())
        model.load_state_dict(state)
        with torch.no_grad():
            plain_loss = F.cross_entropy(model(images), labels)
        assert abs(float(loss.detach()) - float(plain_loss)) > 1e-5, layer


def test_manifold_layer_is_drawn_uniformly_after_lam_and_perm():
    model = small("efficientnet_unet").eval()
    images, labels = batch("efficientnet_unet", size=2)
    layers = MODELS["efficientnet_unet"].builder.MIXUP_LAYERS
    mix = Mixup({"mode": "manifold", "alpha": 1.0}, model)
    assert mix.layers == layers
    rng, replay = np.random.default_rng(11), np.random.default_rng(11)
    chosen = []
    for _ in range(8):  # with this seed, 8 draws reach all 5 layers
        with torch.no_grad(), mix.step(images, labels, rng) as mixed:
            model(mixed.images)
        lam, perm = replay.beta(1.0, 1.0), replay.permutation(2)
        assert mixed.lam == lam and mixed.perm.tolist() == perm.tolist()
        assert mixed.layer == layers[replay.integers(len(layers))] and mixed.fired == 1
        chosen.append(mixed.layer)
    assert set(chosen) == set(layers)


def test_hook_is_removed_on_an_exception_and_a_layer_that_never_ran_is_an_error():
    model = small("unet2d")
    images, labels = batch("unet2d")
    mix = Mixup({"mode": "manifold", "layers": ["encoder1"]}, model)
    with pytest.raises(RuntimeError, match="boom"), mix.step(images, labels, np.random.default_rng(0)):
        raise RuntimeError("boom")
    assert not model.encoder1._forward_hooks
    with pytest.raises(SegCoreError, match="never ran"), mix.step(images, labels, np.random.default_rng(0)):
        pass
    assert not model.encoder1._forward_hooks


def test_lam_follows_beta_alpha_alpha():
    model = small("unet2d")
    images, labels = torch.zeros(2, 5, 16, 16), torch.zeros(2, 16, 16, dtype=torch.int64)
    for alpha in (0.4, 2.0):
        mix = Mixup({"mode": "input", "alpha": alpha}, model)
        rng = np.random.default_rng(2024)
        lams = []
        for _ in range(2000):
            with mix.step(images, labels, rng) as mixed:
                lams.append(mixed.lam)
        assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 0.01
        assert stats.kstest(lams, stats.beta(alpha * 3, alpha * 3).cdf).pvalue < 1e-6  # the test can tell


def test_one_hot_labels_are_permuted_along_the_batch():
    model = small("unet2d")
    images, labels = batch("unet2d")
    one_hot = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    mix = Mixup({"mode": "input", "alpha": 1.0}, model)
    with mix.step(images, one_hot, np.random.default_rng(1)) as mixed:
        logits = model(mixed.images)
        loss = mixed.loss(lambda p, t: -(t * F.log_softmax(p, 1)).sum(1).mean(), logits)
    expected = mixed.lam * F.cross_entropy(logits, labels) + (1 - mixed.lam) * F.cross_entropy(
        logits, labels[mixed.perm])
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize(("spec", "name", "message"), [
    ({"mode": "cutmix"}, "unet2d", "unknown mixup mode"),
    ({"mode": "input", "alpha": 0}, "unet2d", "mixup.alpha"),
    ({"mode": "input", "alpha": True}, "unet2d", "mixup.alpha"),
    ({"mode": "manifold", "layers": ["encoder9"]}, "unet2d", "no submodule 'encoder9'"),
    ({"mode": "manifold", "layers": []}, "unet2d", "non-empty list"),
    ({"mode": "manifold"}, "unet3d", "declares no MIXUP_LAYERS"),
    ({"mode": "input", "beta": 1}, "unet2d", "unknown mixup key"),
])
def test_bad_mixup_specs_are_named(spec, name, message):
    with pytest.raises(SegCoreError, match=message):
        Mixup(spec, build_model(name, **MODELS[name].small))


def test_mismatched_batch_is_refused():
    model = small("unet2d")
    images, labels = batch("unet2d")
    with pytest.raises(SegCoreError, match="4 images but 3 labels"), \
            Mixup({"mode": "input"}, model).step(images, labels[:3], np.random.default_rng(0)):
        pass


# ---- Self-distillation: a teacher checkpoint labels unlabelled scans -------------------------------------------

class ChannelProbe(nn.Module):
    """A stand-in network whose class-1 logit is input channel `channel`: the predicted class is x[:, channel] > 0.
    Records the input shapes, to check the padding to `divisor`."""

    def __init__(self, channel: int, divisor: int = 4):
        super().__init__()
        self.channel, self.divisor, self.shapes = channel, divisor, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, self.channel:self.channel + 1]], dim=1)


def shifted(volume: np.ndarray, axis: int, offset: int) -> np.ndarray:
    """volume (Z, Y, X) with out[i] = volume[i + offset] along `axis`, 0 beyond the ends (numpy only)."""
    out = np.zeros_like(volume)
    size = volume.shape[axis]
    source = [slice(None)] * 3
    target = [slice(None)] * 3
    source[axis] = slice(max(offset, 0), size + min(offset, 0))
    target[axis] = slice(max(-offset, 0), size + min(-offset, 0))
    out[tuple(target)] = volume[tuple(source)]
    return out


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize(("kind", "channel"), [("slice2d", 1), ("stack25d", 0), ("stack25d", 2), ("stack25d", 5)])
def test_teacher_forward_slices_like_the_sampler(axis, kind, channel):
    volume = np.random.default_rng(4).standard_normal((2, 5, 6, 7)).astype(np.float32)  # (C, Z, Y, X), odd sizes
    probe = ChannelProbe(channel)
    classes = teacher_forward(probe, volume, spatial_dims=2, sampler={"kind": kind, "axis": axis, "k": 3},
                              batch_size=2)
    a = {"axial": 0, "coronal": 1, "sagittal": 2}[axis]
    if kind == "slice2d":
        expected = volume[channel] > 0
    else:  # channel c * k + j of a stack is channel c of slice (centre - 1 + j)
        c, j = divmod(channel, 3)
        expected = shifted(volume[c], a, j - 1) > 0
    assert classes.dtype == np.uint8 and classes.shape == (5, 6, 7)
    np.testing.assert_array_equal(classes, expected)
    assert all(s[-1] % 4 == 0 and s[-2] % 4 == 0 and s[0] <= 2 for s in probe.shapes)


def test_teacher_forward_whole_volume():
    volume = np.random.default_rng(5).standard_normal((1, 5, 6, 7)).astype(np.float32)
    probe = ChannelProbe(0)
    classes = teacher_forward(probe, volume, spatial_dims=3)
    np.testing.assert_array_equal(classes, volume[0] > 0)
    assert probe.shapes == [(1, 1, 8, 8, 8)]


def teacher_plan(steps: list[dict], muscle_value: int = 1) -> dict:
    plan = default_plan()
    plan["data"].update(channels=["CT"], label_set=[{"value": 0, "name": "background"},
                                                     {"value": muscle_value, "name": "muscle"}])
    plan["model"] = {"name": "unet2d", "arguments": {"in_channels": 1, "out_channels": 2, "features": [4, 8, 16]}}
    plan["sampler"] = {"kind": "slice2d", "axis": "axial"}
    plan["preprocessing"] = steps
    plan["study"] = "muscle"
    return plan


def scan_case(folder: Path, name: str, channels=("CT",)) -> tuple[Case, Volume]:
    """A CT-like phantom scan on a flipped, anisotropic grid: air (-1000 HU) around a body with values."""
    rng = np.random.default_rng(9)
    array = np.full((4, 22, 26), -1000.0, dtype=np.float32)
    array[:, 5:17, 6:20] = rng.normal(40, 60, (4, 12, 14))
    volume = Volume.create(array, spacing_xyz_mm=(0.7, 0.8, 2.5), origin_lps=(-20.0, 13.0, 100.0),
                           direction_lps=np.diag([-1.0, 1.0, -1.0]))
    path = write_image(volume, folder / f"{name}.nii.gz")
    return Case(name, (ImageSource(path, tuple(channels)),), None, LabelRule(), "muscle"), read_image(path)


@pytest.mark.parametrize("muscle_value", [1, 2])
def test_pseudo_labels_land_on_the_scan_grid_and_are_marked(tmp_path, muscle_value):
    steps = [{"name": "reorient"}, {"name": "crop_foreground", "margin_zyx": [0, 1, 1], "threshold": -500},
             {"name": "clip_scale", "low": -200, "high": 300, "mean": 50, "std": 100},
             {"name": "pad", "multiple_zyx": [1, 4, 4]}]
    plan = teacher_plan(steps, muscle_value)
    case, scan = scan_case(tmp_path, "scan_ABDO_1")
    pre = Preprocessing(steps)
    prepared = pre.apply(scan)

    def slice_by_slice(network):  # the oracle's forward: one axial slice at a time, on the preprocessed scan
        with torch.no_grad():
            return torch.cat([network(torch.from_numpy(prepared.image[:, z][None]))
                              for z in range(prepared.image.shape[1])])

    torch.manual_seed(3)
    teacher = build_model("unet2d", in_channels=1, out_channels=2, features=(4, 8, 16)).eval()
    logits = slice_by_slice(teacher)
    with torch.no_grad():  # an untrained head says "background" everywhere: centre it so that it labels half
        teacher.conv.bias[1] -= float((logits[:, 1] - logits[:, 0]).median())
    checkpoint = save_checkpoint(tmp_path / "teacher.pt", model_state=teacher.state_dict(), epoch=1, step=0,
                                 best_metric=None, history=[], rng_state=capture_rng_state(),
                                 meta=checkpoint_meta(plan))
    scan_bytes = case.image_paths[0].read_bytes()
    out = tmp_path / "pseudo"
    [labelled] = pseudo_label_cases(checkpoint, [case], out, weight=0.5, joins="validation")
    assert labelled.case_id == case.case_id and labelled.image_paths == case.image_paths
    assert labelled.metadata == {"pseudo_label": True, "loss_weight": 0.5, "teacher": str(checkpoint),
                                 "joins": "validation"}
    assert labelled.label_path.parent == out
    label = load_case_label(labelled, reference=scan.grid)  # on the scan's grid, or io refuses it
    assert label.grid.same_as(scan.grid) and label.array.shape == scan.array.shape
    # Oracle: the teacher run slice by slice on the preprocessed scan, mapped back by the preprocessing inverse.
    brute = slice_by_slice(teacher).argmax(1).numpy() * muscle_value  # class 1 is the label value muscle_value
    np.testing.assert_array_equal(label.array, pre.invert_label(brute.astype(np.uint8), prepared.record).array)
    # Geometry oracle from the raw scan alone: outside the body's box (+ the crop margin) nothing is labelled.
    body = np.zeros(scan.array.shape, bool)
    body[:, 4:18, 5:21] = True
    assert not label.array[~body].any()
    assert set(np.unique(label.array[body])) == {0, muscle_value}  # the teacher does label something, not everything
    manifest = json.loads((out / "pseudo_labels.json").read_text())
    assert manifest["weight"] == 0.5 and [row["case_id"] for row in manifest["cases"]] == [case.case_id]
    assert case.image_paths[0].read_bytes() == scan_bytes


def test_bad_distillation_inputs_fail_before_writing(tmp_path):
    plan = teacher_plan([{"name": "pad", "multiple_zyx": [1, 4, 4]}])
    teacher = build_model("unet2d", in_channels=1, out_channels=2, features=(4, 8, 16))
    checkpoint = save_checkpoint(tmp_path / "teacher.pt", model_state=teacher.state_dict(), epoch=1, step=0,
                                 best_metric=None, history=[], rng_state=capture_rng_state(),
                                 meta=checkpoint_meta(plan))
    case, _ = scan_case(tmp_path, "scan", channels=("T1",))
    out = tmp_path / "pseudo"
    with pytest.raises(SegCoreError, match="weight must be a number > 0"):
        pseudo_label_cases(checkpoint, [case], out, weight=0)
    with pytest.raises(SegCoreError, match="subset must be one of"):
        pseudo_label_cases(checkpoint, [case], out, joins="test")
    with pytest.raises(SegCoreError, match=r"channels \['T1'\], the teacher was trained on \['CT'\]") as error:
        pseudo_label_cases(checkpoint, [case], out)
    assert str(case.image_paths[0]) in str(error.value)
    with pytest.raises(SegCoreError, match="no checkpoint file"):
        pseudo_label_cases(tmp_path / "missing.pt", [case], out)
    assert not out.exists()
    good, _ = scan_case(tmp_path, "good")
    broken = Case("broken", (ImageSource(tmp_path / "broken.nii.gz", ("CT",)),), None, LabelRule(), "muscle")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(SegCoreError, match="broken.nii.gz"):  # the second scan fails: nothing of the first stays
        pseudo_label_cases(checkpoint, [good, broken], out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    pseudo_label_cases(checkpoint, [good], out)
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "pseudo_labels.json"]
    [again] = pseudo_label_cases(checkpoint, [dataclasses.replace(good, case_id="good2")], out)
    assert sorted(p.name for p in out.iterdir()) == ["good2.nii.gz", "pseudo_labels.json"]  # replaced as a whole
    assert again.label_path == out / "good2.nii.gz"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SegCoreError, match="holds other files"):
        pseudo_label_cases(checkpoint, [good], other)
    assert (other / "notes.txt").read_text() == "mine"
