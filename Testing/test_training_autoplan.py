"""The automatic plan (--memory-budget): deterministic, monotonic in the budget, within the budget, the patch and
batch checked against brute-force searches with the memory estimator, the target spacing against hand-computed
medians and percentiles, refusals in one line, and a real decathlon phantom planned and trained for a step."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from SegCore.errors import SegCoreError
from SegCore.models import MODELS
from SegCore.models.memory import training_step_memory
from SegCore.training.autoplan import MIB, autoplan, case_grids, target_spacing
from SegCore.training.config import CLI_FLAGS, resolve_plan
from SegCore.volume import Grid

REPO = Path(__file__).resolve().parents[1]
STEPS = [{"name": "resample", "spacing_xyz_mm": "auto"}, {"name": "zscore"}, {"name": "pad", "multiple_zyx": "auto"}]
TINY_UNET = {"name": "unet3d", "arguments": {"resize_factor": 16}}  # filters 4..64, divisor 16
# the same without BatchNorm, whose meta-device forward is 10x slower: for the brute-force searches
FAST_UNET = {"name": "unet3d", "arguments": {"resize_factor": 16, "regularisation": "dropout"}}


def config(root=None, model=TINY_UNET, budget_mb=None, **training) -> dict:
    return {"data": {"root": None if root is None else str(root)}, "model": copy.deepcopy(model),
            "preprocessing": copy.deepcopy(STEPS),
            "training": {"batch_size": "auto", "memory_budget_mb": budget_mb, **training}}


def geometry(shapes_zyx, spacings_xyz) -> dict:
    """A fingerprint-like dict: one case per shape and spacing (identity direction)."""
    return {"cases": [{"shape_zyx": list(s), "spacing_xyz_mm": list(p)} for s, p in zip(shapes_zyx, spacings_xyz,
                                                                                      strict=True)]}


def step_bytes(plan: dict, batch: int, window) -> int:
    """The oracle's memory of one step: the estimator called directly, the network built by it."""
    name, arguments = plan["model"]["name"], plan["model"]["arguments"]
    shape = (batch, arguments["in_channels"], *window)
    return training_step_memory(MODELS[name].builder, arguments, shape, device="cpu")[0]


@pytest.fixture(scope="module")
def spleen(tmp_path_factory) -> Path:
    """A decathlon phantom (3 labelled cases of different spacings, 1 test case) written by `segcore phantoms`."""
    root = tmp_path_factory.mktemp("autoplan") / "Task09_Spleen"
    subprocess.run([sys.executable, "-m", "SegCore", "phantoms", "--study", "decathlon", "--task", "Spleen",
                    "--out", str(root), "--cases", "4", "--size", "24", "48", "48", "--seed", "0"], check=True,
                   capture_output=True)
    return root


# ---- the spacing ----------------------------------------------------------------------------------------------
def test_target_spacing_is_the_median_and_the_10th_percentile_on_an_anisotropic_axis():
    grid = lambda shape, spacing: Grid(shape, spacing, (0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))  # noqa: E731
    # medians per axis by hand: x 1.0, y 1.0, z 2.0 (not 3x the others): the median
    plain = [grid((40, 64, 64), (1.0, 1.0, 1.5)), grid((40, 64, 64), (0.8, 0.9, 2.5)),
             grid((40, 64, 64), (1.2, 1.1, 2.0))]
    assert target_spacing(plain)[0] == [1.0, 1.0, 2.0]
    # z median 5 > 3 x 0.7 and 20 slices x 3 < 300: z takes the 10th percentile of 3, 4, 5, 6, 7 = 3.4
    thick = [grid((20, 300, 300), (0.7, 0.7, z)) for z in (5.0, 3.0, 7.0, 4.0, 6.0)]
    spacing, why = target_spacing(thick)
    assert spacing[:2] == [0.7, 0.7] and spacing[2] == pytest.approx(3.4) and "anisotropic" in why
    # the same spacings over many slices: not anisotropic in voxels, the median stays
    assert target_spacing([grid((200, 300, 300), g.spacing_xyz_mm) for g in thick])[0] == [0.7, 0.7, 5.0]
    # a 10th percentile finer than the other axes stops at them: z of 0.2, 0.2, 4, 4, 4 -> 1.0, not 0.2
    mixed = [grid((20, 300, 300), (1.0, 1.0, z)) for z in (0.2, 4.0, 0.2, 4.0, 4.0)]
    assert target_spacing(mixed)[0] == [1.0, 1.0, 1.0]


def test_a_fingerprint_and_the_dataset_give_the_same_plan(spleen):
    from SegCore.datasets import compute_fingerprint, open_dataset

    fingerprint = compute_fingerprint(open_dataset(spleen))
    assert len(case_grids(fingerprint)) == 3  # the test case has no label: not planned on
    from_data = resolve_plan(config(spleen, budget_mb=60))
    assert resolve_plan(config(spleen, budget_mb=60), fingerprint=fingerprint) == from_data


# ---- the plan on a phantom ------------------------------------------------------------------------------------
def test_the_same_data_and_budget_give_the_same_plan_and_plan_json_resolves_to_itself(spleen):
    first = resolve_plan(config(spleen), flags={"memory_budget": 60})
    assert resolve_plan(config(spleen), flags={"memory_budget": 60}) == first
    again = json.loads(json.dumps(first))  # plan.json
    assert resolve_plan(again) == first
    record = first["training"]["autoplan"]
    spacings = [list(c.grid.spacing_xyz_mm) for c in labelled_images(spleen)]  # the median of each axis
    assert first["preprocessing"][0]["spacing_xyz_mm"] == record["spacing_xyz_mm"] == np.median(spacings, 0).tolist()
    assert {"budget_mb", "estimate_mb", "cases", "median_shape_zyx", "patch_why", "batch_why"} <= set(record)
    assert record["budget_mb"] == 60 and record["cases"] == 3


def labelled_images(root: Path) -> list:
    from SegCore.datasets import load_case_image, open_dataset

    return [load_case_image(case) for case in open_dataset(root).labelled_cases()]


def test_the_plan_fits_the_budget_and_the_image_and_trains_a_step(spleen, tmp_path):
    from SegCore.training.trainer import train_from_plan

    plan = resolve_plan(config(spleen, budget_mb=60), flags={"epochs": 1, "steps_per_epoch": 1, "workers": 0,
                                                              "device": "cpu"},
                        overrides=["training.validation.max_cases=1"])
    patch, batch = plan["sampler"]["patch_zyx"], plan["training"]["batch_size"]
    median = plan["training"]["autoplan"]["median_shape_zyx"]
    assert all(n % 16 == 0 and 16 <= n <= max(16, m) for n, m in zip(patch, median, strict=True)) and batch >= 1
    assert step_bytes(plan, batch, patch) <= 60 * MIB
    assert plan["preprocessing"][-1]["min_zyx"] == [max(1, n) for n in patch]  # every case padded to the patch
    result = train_from_plan(plan, tmp_path / "run")
    assert (tmp_path / "run" / "last.pt").is_file() and result is not None


def test_an_impossible_budget_is_refused_in_one_line_naming_the_smallest_that_fits(spleen):
    with pytest.raises(SegCoreError) as caught:
        resolve_plan(config(spleen), flags={"memory_budget": 1})
    message = str(caught.value)
    assert "\n" not in message and "--memory-budget" in message
    smallest = int(re.search(r"give --memory-budget (\d+)", message).group(1))
    plan = resolve_plan(config(spleen), flags={"memory_budget": smallest})  # the number given fits ...
    assert plan["sampler"]["patch_zyx"] == [16, 16, 16] and plan["training"]["batch_size"] == 2
    with pytest.raises(SegCoreError):  # ... and one MB less does not
        resolve_plan(config(spleen), flags={"memory_budget": smallest - 1})


def test_the_cli_flag_reaches_the_plan_and_refuses_in_one_line(spleen, tmp_path, capsys):
    from SegCore.cli import main

    assert CLI_FLAGS["memory_budget"] == "training.memory_budget_mb"
    code = main(["train", "--data", str(spleen), "--out", str(tmp_path / "run"), "--memory-budget", "0.5",
                 "--device", "cpu"])
    error = capsys.readouterr().err
    assert code != 0 and "--memory-budget 0.5 MB cannot hold" in error and not (tmp_path / "run").exists()
    assert len(error.strip().splitlines()) == 1, error


def test_given_values_are_kept_and_checked(spleen):
    plan = resolve_plan(config(spleen, budget_mb=60), flags={"batch": 3})
    assert plan["training"]["batch_size"] == 3 and step_bytes(plan, 3, plan["sampler"]["patch_zyx"]) <= 60 * MIB
    with pytest.raises(SegCoreError, match=r"sampler\.patch_zyx \[32, 48, 48\] with batch 3"):
        resolve_plan(config(spleen, budget_mb=60), flags={"batch": 3}, overrides=["sampler.patch_zyx=[32,48,48]"])


def test_without_data_auto_values_wait_for_the_data():
    plan = resolve_plan(config(budget_mb=1), inspect_data=False)  # a budget that nothing could meet: not checked
    assert plan["preprocessing"][0]["spacing_xyz_mm"] == "auto" and plan["training"]["batch_size"] == 2
    assert plan["training"]["autoplan"] is None
    assert resolve_plan(config())["training"]["batch_size"] == 2  # "auto" without a budget: the default


def test_plans_resolve_fast_for_tiny_and_default_widths(spleen):
    for model in (TINY_UNET, {"name": "unet3d", "arguments": {}}):
        start = time.perf_counter()
        plan = resolve_plan(config(spleen, model=model, budget_mb=8000))
        assert time.perf_counter() - start < 4.0 and plan["training"]["autoplan"]["estimate_mb"] <= 8000


# ---- the search, against brute force --------------------------------------------------------------------------
FINGERPRINT = geometry([(40, 90, 70), (48, 100, 80), (40, 96, 72)], [(1.0, 1.0, 1.0)] * 3)
PADDED_MEDIAN = [48, 96, 80]  # by hand: the shapes padded to multiples of 16 are 48x96x80 (twice) and 48x112x80


def resolved(model=FAST_UNET, **training) -> dict:
    plan = config(model=model, **training)
    plan["preprocessing"][0]["spacing_xyz_mm"] = [1.0, 1.0, 1.0]
    return resolve_plan(plan, inspect_data=False)


def oracle_patches(base_zyx, divisor=16) -> list[list[int]]:
    """Every patch s * base (sides rounded down to the divisor, at least the divisor) for s on a fine grid."""
    top = [max(divisor, b // divisor * divisor) for b in base_zyx]
    found = []
    for s in np.linspace(1e-3, 1.0, 4001):
        patch = [int(max(divisor, min(t, math.floor(s * b / divisor) * divisor))) for b, t in zip(base_zyx, top,
                                                                                                 strict=True)]
        if patch not in found:
            found.append(patch)
    return found


def test_the_patch_is_the_largest_scaled_median_image_that_fits():
    plan = resolved()
    candidates = oracle_patches(PADDED_MEDIAN)
    needs = [step_bytes(plan, 2, p) for p in candidates]
    assert needs == sorted(needs) and len(candidates) >= 6
    for i in (1, len(candidates) // 2, len(candidates) - 2):
        budget = (needs[i] + needs[i + 1]) // 2  # between two candidates: the smaller one is the answer
        values = autoplan(plan, FINGERPRINT, budget)
        assert values["patch_zyx"] == candidates[i] and values["batch_size"] == 2
        assert values["estimate_bytes"] == needs[i] <= budget


def test_with_the_whole_image_the_batch_is_the_largest_that_fits_up_to_5_percent_of_the_data():
    plan = resolved()
    many = geometry([(32, 32, 32)] * 200, [(1.0, 1.0, 1.0)] * 200)  # 5% of 200 images: at most 10 patches a step
    needs = {b: step_bytes(plan, b, [32, 32, 32]) for b in range(2, 12)}
    for budget in (needs[5] + 1, needs[8] - 1, needs[11] * 10):
        values = autoplan(plan, many, budget)
        fit = max(b for b in range(2, 11) if needs[b] <= budget)  # linear scan, capped at 10
        assert values["patch_zyx"] == [32, 32, 32] and values["batch_size"] == fit
    assert autoplan(resolved(even_batch=True), many, needs[5] + 1)["batch_size"] == 4  # pairs: 5 -> 4


def test_a_larger_budget_never_gives_a_smaller_patch_or_batch():
    plan = resolved()
    previous = None
    for budget_mb in (12, 30, 100, 400, 2000):
        values = autoplan(plan, FINGERPRINT, budget_mb * MIB)
        assert step_bytes(plan, values["batch_size"], values["patch_zyx"]) <= budget_mb * MIB
        if previous is not None:
            assert all(a >= b for a, b in zip(values["patch_zyx"], previous["patch_zyx"], strict=True))
            assert values["batch_size"] >= previous["batch_size"]
        previous = values
    assert previous["patch_zyx"] == PADDED_MEDIAN  # the largest budget holds the whole median image


def test_slices_plan_their_batch():
    plan = resolve_plan({"model": {"name": "unet2d", "arguments": {"features": [4, 8]}},
                         "sampler": {"kind": "slice2d", "size_yx": [64, 64]}, "training": {"batch_size": "auto"}},
                        inspect_data=False)
    needs = {b: training_step_memory(MODELS["unet2d"].builder, plan["model"]["arguments"],
                                     (b, plan["model"]["arguments"]["in_channels"], 64, 64))[0] for b in (2, 6, 7)}
    values = autoplan(plan, None, needs[6] + (needs[7] - needs[6]) // 2)
    assert values["patch_zyx"] == [64, 64] and values["batch_size"] == 6


def test_batch_1_is_planned_although_batchnorm_cannot_run_one_sample_of_the_smallest_patch(spleen):
    # The estimator cannot run one BatchNorm sample whose bottleneck is one voxel: it extrapolates from 2 and 3
    # samples. The oracle: the patch chosen for batch 1 is at least the one chosen for batch 2 in the same budget.
    one = resolve_plan(config(spleen, budget_mb=60), flags={"batch": 1})
    two = resolve_plan(config(spleen, budget_mb=60), flags={"batch": 2})
    assert one["training"]["batch_size"] == 1
    assert all(a >= b for a, b in zip(one["sampler"]["patch_zyx"], two["sampler"]["patch_zyx"], strict=True))
    window = one["sampler"]["patch_zyx"]
    assert step_bytes(one, 2, window) - (step_bytes(one, 3, window) - step_bytes(one, 2, window)) <= 60 * MIB
