"""A picture of one case: three orthogonal slices through the labelled region, the label outlined on the image.

Slices are drawn in voxel space with the pixel aspect set from the spacing, so what looks round is round in mm.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from SegCore.atomic import save_figure
from SegCore.volume import Volume


def plot_case(image: Volume, label: Volume | None, title: str = ""):
    """A matplotlib Figure (Agg canvas): axial (z), coronal (y) and sagittal (x) slices of channel 0.

    image: (Z, Y, X) or (C, Z, Y, X); label: (Z, Y, X) integer on the same grid, or None.
    The slices cross at the centre of the labelled voxels (the image centre without a label).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    array = image.array if image.array.ndim == 3 else image.array[0]
    labels = None if label is None else np.asarray(label.array)
    foreground = np.argwhere(labels > 0) if labels is not None else np.empty((0, 3))
    centre_zyx = foreground.mean(axis=0).round().astype(int) if len(foreground) else np.array(array.shape) // 2
    low, high = np.percentile(array, [0.5, 99.5])
    spacing_x, spacing_y, spacing_z = image.grid.spacing_xyz_mm
    # Axial with row j = 0 on top (anterior in LPS), the others with slice k = 0 at the bottom (inferior).
    views = [("axial", (centre_zyx[0], slice(None), slice(None)), spacing_y / spacing_x, "upper"),
             ("coronal", (slice(None), centre_zyx[1], slice(None)), spacing_z / spacing_x, "lower"),
             ("sagittal", (slice(None), slice(None), centre_zyx[2]), spacing_z / spacing_y, "lower")]
    figure = Figure(figsize=(12, 4.4))
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    for column, (name, index, aspect, origin) in enumerate(views, start=1):
        axis = figure.add_subplot(1, 3, column)
        axis.imshow(array[index], cmap="gray", vmin=low, vmax=high, aspect=aspect, origin=origin,
                    interpolation="nearest")
        if labels is not None:
            plane = labels[index]
            for value in np.unique(plane[plane > 0]):
                axis.contour(plane == value, levels=[0.5], colors=[f"C{int(value) % 10}"], linewidths=1.2)
        axis.set_title(f"{name} (voxel axes)")
        axis.set_axis_off()
    return figure


def write_case_preview(image: Volume, label: Volume | None, path: str | os.PathLike, title: str = "") -> Path:
    """Write `plot_case` as a PNG, atomically; returns the path."""
    return save_figure(plot_case(image, label, title), path, dpi=90)
