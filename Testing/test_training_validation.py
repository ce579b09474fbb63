"""Validation on whole cases (SegCore.training.validation) against computations written here: one forward of the
whole volume, the inference engine's sliding window with a numpy Dice, all slices in one batch, and two gloo ranks
of which one has no case."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import time

import numpy as np
import pytest
import torch
from training_runs import config, phantom

from SegCore.losses import build_loss
from SegCore.models import build_model
from SegCore.training.config import default_plan, resolve_plan
from SegCore.training.distributed import DistInfo
from SegCore.training.validation import metric_name, validate

torch.set_num_threads(1)
CPU = torch.device("cpu")


def cached_cases(folder, data):
    """The phantom's labelled cases, preprocessed and cached as the Trainer does; and their label names."""
    from SegCore.datasets import open_dataset
    from SegCore.training.cache import CaseCache
    from SegCore.transforms import Preprocessing

    plan = resolve_plan(config(folder), flags={"data": str(data), "device": "cpu"})
    dataset = open_dataset(plan["data"]["root"], plan["data"]["layout"])
    cases = CaseCache(folder / "cache", Preprocessing(plan["preprocessing"])).prepare(dataset.labelled_cases())
    return cases, {int(item["value"]): str(item["name"]) for item in plan["data"]["label_set"]}


@pytest.fixture(scope="module")
def atrium(tmp_path_factory):
    folder = tmp_path_factory.mktemp("la")
    return cached_cases(folder, phantom(folder / "la", cases=2, size=32))


@pytest.fixture(scope="module")
def prostate(tmp_path_factory):
    from SegCore.phantoms import write_phantom_dataset

    folder = tmp_path_factory.mktemp("prostate")
    cases, names = cached_cases(folder, write_phantom_dataset("decathlon", folder / "d", cases=2, size_zyx=(16, 32, 32),
                                                              task="Prostate"))
    return [cropped(case, 16) for case in cases], names


def cropped(case, divisor: int):
    """The case cut down to sides that are multiples of `divisor` (one forward of the whole volume then fits)."""
    z, y, x = (n // divisor * divisor for n in case.image.shape[1:])
    return dataclasses.replace(case, image=np.array(case.image[:, :z, :y, :x]), label=np.array(case.label[:z, :y, :x]))


def plan_with(sampler: dict, *, batch: int = 2, overlap: float = 0.5, max_cases=None) -> dict:
    plan = default_plan()
    plan["sampler"] = sampler
    plan["training"]["batch_size"] = batch
    plan["training"]["validation"] = {"max_cases": max_cases, "overlap": overlap}
    return plan


def network(name: str, **arguments):
    torch.manual_seed(0)
    return build_model(name, **arguments).eval()


@pytest.fixture(scope="module")
def unet2d_state(atrium):
    """The weights of a small 2D U-Net after 60 full-batch Adam steps on the axial slices of the first case (an
    untrained network predicts about one class everywhere, which makes every Dice uninformative)."""
    cases, _ = atrium
    model = network("unet2d", in_channels=1, out_channels=2, features=[4, 8])
    case = cropped(cases[0], model.divisor)
    images, labels = torch.from_numpy(stacks(case.image, 0, 1)), torch.from_numpy(case.label.astype(np.int64))
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = build_loss("dice_ce")
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()
    return model.state_dict()


def unet2d(state: dict, k: int = 1):
    """The trained 2D U-Net in eval mode; k > 1: a 2.5D one whose first convolution sees the centre slice only."""
    model = build_model("unet2d", in_channels=k, out_channels=2, features=[4, 8])
    state = dict(state)
    if k > 1:
        first = next(name for name, value in state.items() if value.ndim == 4)  # (out, 1, kh, kw)
        wide = torch.zeros((state[first].shape[0], k, *state[first].shape[2:]))
        wide[:, k // 2] = state[first][:, 0]
        state[first] = wide
    model.load_state_dict(state)
    return model.eval()


def numpy_metrics(predictions: list[np.ndarray], labels: list[np.ndarray], names: dict[int, str],
                  losses: list[float]) -> dict[str, float]:
    """Pooled Dice per label value > 0 (2 TP / (2 TP + FP + FN)), their mean, and the mean case loss."""
    out = {"val_loss": float(np.mean(losses))}
    for value in sorted(v for v in names if v > 0):
        tp = sum(int(np.sum((p == value) & (r == value))) for p, r in zip(predictions, labels, strict=True))
        sizes = sum(int(np.sum(p == value)) + int(np.sum(r == value)) for p, r in zip(predictions, labels,
                                                                                       strict=True))
        out[metric_name(names[value])] = 2 * tp / sizes if sizes else 1.0
    out["dice_mean"] = float(np.mean([v for k, v in out.items() if k.startswith("dice_")]))
    return out


def assert_metrics(got: dict, want: dict, *, dice_abs: float = 1e-12, loss_rel: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        tolerance = {"rel": loss_rel} if key == "val_loss" else {"abs": dice_abs}
        assert got[key] == pytest.approx(value, **tolerance), (key, got[key], value)


@pytest.mark.parametrize(("fixture", "out_channels"), [("atrium", 2), ("atrium", 1), ("prostate", 3)])
def test_whole_sampler_equals_one_forward_of_the_volume(request, fixture, out_channels):
    cases, names = request.getfixturevalue(fixture)
    cases = [cropped(case, 16) for case in cases]
    model = network("unet3d", in_channels=cases[0].image.shape[0], out_channels=out_channels, resize_factor=16)
    loss_fn = build_loss("dice_ce")
    predictions, labels, losses = [], [], []
    for case in cases:
        with torch.no_grad():
            logits = model(torch.from_numpy(np.array(case.image))[None])
        label = torch.from_numpy(case.label.astype(np.int64))[None]
        losses.append(float(loss_fn(logits, label)))  # the loss of the raw logits: softmax(log p) = softmax(z)
        pred = (logits[0, 0] > 0).long() if out_channels == 1 else logits[0].argmax(0)
        predictions.append(pred.numpy())
        labels.append(case.label)
    want = numpy_metrics(predictions, labels, names, losses)
    assert 0 < want["dice_mean"] < 1  # the seeded network predicts some of each class: Dice is informative
    got = validate(model, cases, loss_fn, names, DistInfo(), CPU, None, plan_with({"kind": "whole"}))
    assert_metrics(got, want)
    if fixture == "prostate":
        assert {"dice_pz", "dice_tz"} <= got.keys()


@pytest.mark.parametrize("sampler", [{"kind": "patch3d", "patch_zyx": [16, 16, 16]},
                                     {"kind": "crop", "size_zyx": [16, 32, 16]}])
def test_patch_networks_slide_the_training_patch_with_the_plan_overlap(atrium, sampler):
    from SegCore.inference.windows import SlidingWindow

    cases, names = atrium
    model = network("unet3d", in_channels=1, out_channels=2, resize_factor=16)
    loss_fn = build_loss("dice_ce")
    patch = sampler.get("patch_zyx") or sampler["size_zyx"]

    def net_fn(x):
        with torch.no_grad():
            return model(x)

    for overlap, max_cases in ((0.5, None), (0.25, 1)):
        chosen = cases[:max_cases] if max_cases else cases
        predictions, losses = [], []
        for case in chosen:
            probs = SlidingWindow(patch, overlap=overlap, batch=2)(net_fn, torch.from_numpy(np.array(case.image)),
                                                                   device=CPU, divisor=16)
            predictions.append(probs.argmax(0).numpy())
            label = torch.from_numpy(case.label.astype(np.int64))[None]
            losses.append(float(loss_fn(probs.clamp_min(1e-12).log()[None], label)))
        want = numpy_metrics(predictions, [c.label for c in chosen], names, losses)
        got = validate(model, cases, loss_fn, names, DistInfo(), CPU, None,
                       plan_with(sampler, overlap=overlap, max_cases=max_cases))
        assert_metrics(got, want)


def stacks(image_czyx: np.ndarray, axis: int, k: int) -> np.ndarray:
    """(S, C * k, H, W): slice s along `axis` with its neighbours, channel c * k + j = channel c of slice
    s - k // 2 + j, zeros past the ends (the stack25d sampler's layout)."""
    slices = np.moveaxis(image_czyx, axis + 1, 1)  # (C, S, H, W)
    half = k // 2
    padded = np.pad(slices, ((0, 0), (half, half), (0, 0), (0, 0)))
    count = slices.shape[1]
    return np.stack([padded[:, s:s + k].reshape(-1, *slices.shape[2:]) for s in range(count)]).astype(np.float32)


@pytest.mark.parametrize(("sampler", "k"), [({"kind": "slice2d", "axis": "axial"}, 1),
                                            ({"kind": "slice2d", "axis": "coronal"}, 1),
                                            ({"kind": "stack25d", "axis": "sagittal", "k": 3}, 3)])
def test_2d_networks_go_slice_by_slice_along_the_training_axis(atrium, unet2d_state, sampler, k):
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[sampler["axis"]]
    model = unet2d(unet2d_state, k)
    cases, names = atrium
    cases = [cropped(case, model.divisor) for case in cases]  # so that the one batch of all slices fits too
    loss_fn = build_loss("dice_ce")
    inputs = [torch.from_numpy(stacks(np.array(case.image), axis, k)) for case in cases]
    labels = [np.moveaxis(case.label, axis, 0).astype(np.int64) for case in cases]  # (S, H, W)
    with torch.no_grad():
        logits = [model(x) for x in inputs]  # every slice of the case in one batch
    losses = [float(loss_fn(z, torch.from_numpy(r))) for z, r in zip(logits, labels, strict=True)]
    predictions = [np.moveaxis(z.argmax(1).numpy(), 0, axis) for z in logits]
    want = numpy_metrics(predictions, [case.label for case in cases], names, losses)
    assert 0.05 < want["dice_mean"] < 1  # trained on axial slices: other views score lower, still well above 0
    got = validate(model, cases, loss_fn, names, DistInfo(), CPU, None, plan_with(sampler, batch=3))
    print(got, want)
    # batches of 3 slices against one batch of all: the same up to float rounding of the convolutions
    assert_metrics(got, want, dice_abs=1e-12, loss_rel=1e-7)


def _rank(rank: int, port: int, state: dict, cases: list, names: dict, results) -> None:
    """One gloo rank: validate a DistributedDataParallel network (BatchNorm buffers, which a DDP forward
    broadcasts) on `cases`, of which rank 1 gets none."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from SegCore.training import distributed as ddp

    info = ddp.init_distributed("cpu")
    model = build_model("unet2d", in_channels=1, out_channels=2, features=[4, 8])
    model.load_state_dict(state)
    net = ddp.wrap_model(model, info, CPU)
    metrics = validate(net, cases, build_loss("dice_ce"), names, info, CPU, None,
                       plan_with({"kind": "slice2d", "axis": "axial"}))
    ddp.shutdown(info)
    results.put((rank, metrics))


def test_two_ranks_sum_their_counts_and_a_rank_without_a_case_does_not_hang(atrium, unet2d_state):
    cases, names = atrium
    model = unet2d(unet2d_state)
    one_case = cases[:1]  # rank 0 validates it, rank 1 has nothing but must still join the sums
    alone = validate(model, one_case, build_loss("dice_ce"), names, DistInfo(), CPU, None,
                     plan_with({"kind": "slice2d", "axis": "axial"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork where there is one: the ranks start in a moment, without importing torch and SegCore again
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(r, port, model.state_dict(), one_case, names, results))
             for r in range(2)]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + 120
    for process in ranks:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [process for process in ranks if process.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, "a rank hung in validation"
    assert [process.exitcode for process in ranks] == [0, 0]
    got = dict(results.get(timeout=10) for _ in ranks)
    assert got[0] == got[1]
    assert_metrics(got[0], alone)
