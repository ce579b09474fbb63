"""Inference settings: the plan's `inference` section, what "auto" resolves to for a checkpoint, and their checks.

    settings = inference_settings(checkpoint.meta, {"overlap": 0.25, "tta": True})

A checkpoint written before the plan had an `inference` section gets these defaults. "auto" is resolved from the
checkpoint alone: the strategy from the network and the training sampler (3D networks: sliding window over the
training patch; 2D: slice by slice along the training axis; a 2.5D sampler: k slices in; RSTN: coarse to fine),
the batch from the device, test-time mirroring on for CUDA and off on the CPU, the precision float16 on CUDA.
"""

from __future__ import annotations

import copy
import json

from SegCore.errors import SegCoreError

STRATEGIES = ("sliding_window", "slices", "stack25d", "locate_segment", "coarse_to_fine")
VIEWS = ("axial", "coronal", "sagittal")  # slicing axis z, y, x of a (Z, Y, X) array
FUSIONS = ("mean", "vote")
PRECISIONS = ("float32", "float16", "bfloat16")
UNCERTAINTIES = ("entropy", "variance")

def default_settings() -> dict:
    """A fresh copy of the plan's `inference` defaults (`SegCore.training.config.default_plan`, their one source)."""
    from SegCore.training.config import default_plan

    return default_plan()["inference"]


def _merge(base: dict, update: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if key not in base:
            raise SegCoreError(f"unknown inference setting '{where}{key}'",
                               fix=f"use one of {', '.join(sorted(base))}")
        out[key] = _merge(base[key], value, f"{where}{key}.") if isinstance(base[key], dict) and isinstance(
            value, dict) else copy.deepcopy(value)
    return out


def inference_settings(meta: dict, overrides: dict | None = None, *, device_type: str = "cpu") -> dict:
    """The defaults < the checkpoint plan's `inference` < `overrides`, with every "auto" resolved and every value
    checked (SegCoreError naming the setting). device_type: 'cuda', 'mps' or 'cpu'."""
    defaults = default_settings()
    settings = _merge(defaults, (meta.get("plan") or {}).get("inference") or {}, "")
    settings = _merge(settings, {k: v for k, v in (overrides or {}).items() if v is not None}, "")
    sampler = meta.get("sampler") or {}
    model = meta["model"]["name"]
    if settings["strategy"] == "auto":
        if model == "rstn":
            settings["strategy"] = "coarse_to_fine"
        elif meta.get("spatial_dims") == 2:
            settings["strategy"] = "stack25d" if sampler.get("kind") == "stack25d" else "slices"
        else:
            settings["strategy"] = "locate_segment" if settings["locator"]["checkpoint"] else "sliding_window"
    if settings["patch_zyx"] == "auto":
        patch = sampler.get("patch_zyx") or sampler.get("size_zyx")
        settings["patch_zyx"] = list(patch) if isinstance(patch, list) else None  # None: the whole volume
    if settings["locator"]["crop_zyx"] == "auto":  # the crop the segmenter was trained on
        crop = sampler.get("size_zyx") if sampler.get("kind") == "crop" else sampler.get("patch_zyx")
        settings["locator"]["crop_zyx"] = list(crop) if isinstance(crop, list) else [96, 144, 224]
    if settings["views"] == "auto":
        settings["views"] = [sampler.get("axis", "axial")]
    elif isinstance(settings["views"], str):
        settings["views"] = [settings["views"]]
    if settings["tta"] == "auto":
        settings["tta"] = device_type == "cuda"
    if settings["precision"] == "auto":
        settings["precision"] = "float16" if device_type == "cuda" else "float32"
    if settings["batch"] == "auto":
        settings["batch"] = 4 if device_type == "cuda" else 1
    settings["k"] = int(sampler.get("k", 3)) if settings["strategy"] == "stack25d" else 1
    check_settings(settings)
    return settings


def _bad(key: str, value, want: str, example: str) -> SegCoreError:
    return SegCoreError(f"inference setting '{key}' is {json.dumps(value)}; it must be {want}", fix=example)


def check_settings(s: dict) -> None:
    """Choices and ranges of resolved settings; SegCoreError naming the setting and a valid value."""
    for key, choices in (("strategy", STRATEGIES), ("fusion", FUSIONS), ("precision", PRECISIONS),
                         ("uncertainty", UNCERTAINTIES)):
        if s[key] not in choices:
            raise _bad(key, s[key], f"one of {', '.join(choices)}", f"e.g. {key}={choices[0]}")
    if not (isinstance(s["overlap"], (int, float)) and 0 <= s["overlap"] < 1):
        raise _bad("overlap", s["overlap"], "a number in [0, 1)", "--overlap 0.5")
    if not (isinstance(s["sigma_scale"], (int, float)) and s["sigma_scale"] > 0):
        raise _bad("sigma_scale", s["sigma_scale"], "a positive number", "0.125 (nnU-Net's)")
    if not (type(s["batch"]) is int and s["batch"] >= 1):
        raise _bad("batch", s["batch"], "a whole number >= 1", "--batch 2")
    patch = s["patch_zyx"]
    if patch is not None and not (isinstance(patch, list) and len(patch) == 3 and all(
            type(n) is int and n > 0 for n in patch)):
        raise _bad("patch_zyx", patch, "3 positive whole numbers (z, y, x)", "[96, 96, 96]")
    if not (isinstance(s["views"], list) and s["views"] and all(v in VIEWS for v in s["views"])
            and len(set(s["views"])) == len(s["views"])):
        raise _bad("views", s["views"], f"a list of distinct views from {', '.join(VIEWS)}", '["axial"]')
    if not (isinstance(s["mirror_axes"], list) and all(a in (0, 1, 2) for a in s["mirror_axes"])):
        raise _bad("mirror_axes", s["mirror_axes"], "a list of axes 0 (z), 1 (y), 2 (x)", "[0, 1, 2]")
    if type(s["tta"]) is not bool:
        raise _bad("tta", s["tta"], "true, false or \"auto\"", "--tta")
    post = s["postprocess"]
    for key in ("largest_component", "fill_holes"):
        if not (post[key] == "all" or isinstance(post[key], list) and all(type(v) is int and v > 0
                                                                           for v in post[key])):
            raise _bad(f"postprocess.{key}", post[key], "\"all\" or a list of label values > 0", "[1]")
    if not (type(post["min_component_voxels"]) is int and post["min_component_voxels"] >= 0):
        raise _bad("postprocess.min_component_voxels", post["min_component_voxels"], "a whole number >= 0", "0")
    loc = s["locator"]
    for key in ("scale_zyx", "crop_zyx"):
        if not (isinstance(loc[key], list) and len(loc[key]) == 3 and all(
                isinstance(n, (int, float)) and n > 0 for n in loc[key])):
            example = "[0.5, 0.25, 0.25]" if key == "scale_zyx" else "[96, 144, 224]"
            raise _bad(f"locator.{key}", loc[key], "3 positive numbers (z, y, x)", example)
    if not (type(loc["margin_voxels"]) is int and loc["margin_voxels"] >= 0):
        raise _bad("locator.margin_voxels", loc["margin_voxels"], "a whole number >= 0", "30 (the study's)")
    c2f = s["coarse_to_fine"]
    if not (type(c2f["max_rounds"]) is int and c2f["max_rounds"] >= 1):
        raise _bad("coarse_to_fine.max_rounds", c2f["max_rounds"], "a whole number >= 1", "10 (the study's)")
    if not (isinstance(c2f["convergence_dice"], (int, float)) and 0 < c2f["convergence_dice"] <= 1):
        raise _bad("coarse_to_fine.convergence_dice", c2f["convergence_dice"], "a number in (0, 1]", "0.99")
