"""What a model is given: the input image as one `Volume`, and its checks against the checkpoint.

    image = read_input([Path("scan.nii.gz")])                        # 3D, a 4D file (channels), or a DICOM folder
    image = read_input([Path("t1.nii.gz"), Path("t2.nii.gz")], channels=["T1w", "T2w"])   # one file per channel
    warnings = check_input(image, meta, path=Path("scan.nii.gz"))    # SegCoreError for what cannot work

Channels on different grids are an error unless `resample=True`, which resamples every channel (linearly) onto
the first one's grid. The checks: the number of channels, that the image is 3D, and a modality hint: a CT-trained
model given values that look like an MR or an 8-bit picture (all within 0..255), or an MR-trained one given values
that look like Hounsfield units (below -500), gets a warning, not an error: the user may know better.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.volume import Volume

CT_NAMES = ("ct",)


def read_input(paths: list[str | os.PathLike], *, channels: list[str] | None = None, resample: bool = False) -> Volume:
    """One image (Z, Y, X) or (C, Z, Y, X) from one path (a file, a 4D file, a DICOM folder) or one path per
    channel (in the model's channel order `channels`, when given, for the messages)."""
    from SegCore.io import read_image

    paths = [Path(p) for p in paths]
    if not paths:
        raise SegCoreError("no input image was given", fix="give --input FILE (or one file per channel)")
    if len(paths) == 1:
        return read_image(paths[0])
    volumes = []
    for i, path in enumerate(paths):
        volume = read_image(path, allow_4d=False)
        if volumes and (problem := volumes[0].grid.mismatch(volume.grid)) is not None:
            if not resample:
                name = f" (channel {channels[i]!r})" if channels and i < len(channels) else ""
                raise SegCoreError(f"this channel{name} is not on the grid of {paths[0].name}: {problem}",
                                   path=path, fix="resample the channels onto one grid, or pass --resample")
            from SegCore.volume import resample_to_grid

            volume = resample_to_grid(Volume(volume.array.astype(np.float32), volume.grid), volumes[0].grid,
                                      interpolation="linear")
        volumes.append(volume)
    return Volume(np.stack([v.array.astype(np.float32, copy=False) for v in volumes]), volumes[0].grid)


def _is_ct(meta: dict) -> bool | None:
    """True for a CT-trained model, False for an MR one, None when the checkpoint does not say."""
    study = meta.get("study")
    if study:
        from SegCore.studies import get_study

        modality = get_study(study).modality.upper()
        if modality in ("CT", "MRI"):
            return modality == "CT"
    names = [str(c).lower() for c in meta.get("channels") or []]
    if names and all(n in CT_NAMES for n in names):
        return True
    return None


def check_input(image: Volume, meta: dict, *, path: str | os.PathLike | None = None) -> list[str]:
    """Refuse an image the checkpoint's network cannot take (SegCoreError naming `path`); return warnings."""
    channels = list(meta.get("channels") or [])
    array = image.array
    if array.ndim not in (3, 4):
        raise SegCoreError(f"the image has {array.ndim} dimensions; a model takes a 3D image (Z, Y, X) or one with "
                           "channels (C, Z, Y, X)", path=path, fix="give a 3D image")
    given = 1 if array.ndim == 3 else array.shape[0]
    expected = len(channels) or given
    if given != expected:
        names = ", ".join(channels)
        raise SegCoreError(f"the model takes {expected} channel(s) ({names}), the image has {given}", path=path,
                           fix=f"give {expected} channel file(s) in this order: {names}" if expected > 1 else
                           "give a single-channel image (or one file per channel, in the model's order)")
    warnings = []
    ct = _is_ct(meta)
    if ct is not None and array.size:
        low, high = float(np.min(array)), float(np.max(array))
        if ct and low >= 0 and high <= 255:
            warnings.append(f"the model was trained on CT (Hounsfield units), but this image's values lie in "
                            f"{low:g}..{high:g}, as in an MR or an 8-bit picture: the result may be meaningless")
        elif ct is False and low < -500:
            warnings.append(f"the model was trained on MR, but this image has values down to {low:g}, as in a CT "
                            "(Hounsfield units): the result may be meaningless")
    return warnings
