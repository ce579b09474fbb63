"""A picture of one case: axial, coronal and sagittal slices through the labelled region, the label outlined.

The views are the ones 3D Slicer shows (radiological: patient right on the screen's left; see
`SegCore.datasets.views`), drawn in mm so that what is round in the patient is round on the screen. Each panel
carries the patient side at its four edges, a scale bar, the slice index and its position, and mm axes.
`show_view` and `outline_labels` are the drawing steps, for other pictures on the same views.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from SegCore.atomic import save_figure
from SegCore.datasets.views import View, anatomical_views, position_label
from SegCore.volume import Volume

FIGURE_WIDTH_IN = 12.5
MARGIN_LEFT, MARGIN_RIGHT = 0.05, 0.02  # fractions of the figure width
WSPACE = 0.3  # gap between panels, as a fraction of the mean panel width (matplotlib's wspace)
MARGIN_TOP_IN, MARGIN_BOTTOM_IN = 1.1, 0.75
SCALE_BAR_MM = (1, 2, 5, 10, 20, 50, 100, 200, 500)


def scale_bar_mm(width_mm: float) -> float:
    """The longest of 1, 2, 5, 10, 20, 50, ... mm that fits in a quarter of `width_mm` (at least 1 mm)."""
    fitting = [length for length in SCALE_BAR_MM if length <= width_mm / 4]
    return float(fitting[-1] if fitting else SCALE_BAR_MM[0])


def show_view(axis, view: View, plane: np.ndarray, *, vmin: float, vmax: float, cmap: str = "gray",
              bar_mm: float | None = None) -> None:
    """Draw `plane` (rows, columns), cut by `view.plane`, on a matplotlib axis in mm, with the patient side at
    each edge, a scale bar (`bar_mm` long, default `scale_bar_mm` of the width) and axis labels."""
    import matplotlib.patheffects as effects

    axis.imshow(plane, cmap=cmap, vmin=vmin, vmax=vmax, origin="upper", extent=view.extent_mm,
                interpolation="nearest")
    left, right, bottom, _ = view.extent_mm
    outline = [effects.withStroke(linewidth=2.5, foreground="black")]
    letters = view.letters
    for text, x, y, ha, va in ((letters["top"], right / 2, 0, "center", "top"),
                               (letters["bottom"], right / 2, bottom, "center", "bottom"),
                               (letters["left"], 0, bottom / 2, "left", "center"),
                               (letters["right"], right, bottom / 2, "right", "center")):
        axis.text(x, y, text, ha=ha, va=va, color="yellow", fontsize=11, fontweight="bold", path_effects=outline)
    length = scale_bar_mm(right) if bar_mm is None else bar_mm
    x1, y = right * 0.96, bottom * 0.9
    axis.plot([x1 - length, x1], [y, y], color="white", linewidth=3, solid_capstyle="butt", path_effects=outline)
    axis.text(x1 - length / 2, y - 0.02 * bottom, f"{length:g} mm", ha="center", va="bottom", color="white",
              fontsize=8, path_effects=outline)
    axis.set_xlabel(f"{letters['left']} \u2192 {letters['right']} (mm)", fontsize=8)
    axis.set_ylabel(f"{letters['top']} \u2192 {letters['bottom']} (mm)", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.locator_params(nbins=4)


def outline_labels(axis, view: View, plane: np.ndarray) -> None:
    """Outline each non-zero value of an integer label `plane` (rows, columns) in colour C<value>."""
    if min(plane.shape) < 2:  # matplotlib cannot contour a single row or column
        return
    for value in np.unique(plane[plane > 0]):
        axis.contour(plane == value, levels=[0.5], colors=[f"C{int(value) % 10}"], linewidths=1.2,
                     origin="upper", extent=view.extent_mm)


def fill_labels(axis, view: View, plane: np.ndarray, alpha: float = 0.4) -> None:
    """Fill each non-zero value of an integer label `plane` translucently in colour C<value> (a segmentation drawn
    under a reference's outline)."""
    from matplotlib.colors import ListedColormap

    values = plane.astype(np.int64) % 10
    colours = ListedColormap([f"C{v}" for v in range(10)])
    axis.imshow(np.ma.masked_where(plane == 0, values), cmap=colours, vmin=-0.5, vmax=9.5, alpha=alpha,
                origin="upper", extent=view.extent_mm, interpolation="nearest")


def crossing_voxel(labels: np.ndarray | None, spacing_xyz_mm) -> np.ndarray | None:
    """The labelled voxel nearest (in mm) to the centre of all labelled voxels: (3,) int (z, y, x), or None
    without labelled voxels. Not the centre itself: that of a pair (two thalami) lies between them, outside."""
    if labels is None:
        return None
    foreground = np.argwhere(labels > 0)
    if not len(foreground):
        return None
    foreground = foreground[:: max(1, len(foreground) // 1_000_000)]  # a million candidates are plenty
    scale_zyx = np.asarray(spacing_xyz_mm, dtype=float)[::-1]
    distance = np.linalg.norm((foreground - foreground.mean(axis=0)) * scale_zyx, axis=1)
    return foreground[int(np.argmin(distance))]


def plot_case(image: Volume, label: Volume | None, title: str = "", *, centre_zyx=None,
              filled: Volume | None = None):
    """A matplotlib Figure (Agg canvas): axial, coronal and sagittal slices of channel 0.

    image: (Z, Y, X) or (C, Z, Y, X); label: (Z, Y, X) integer on the same grid (outlined), or None; filled:
    another label map on that grid drawn as translucent fill (a segmentation under its reference's outline).
    The slices cross at voxel `centre_zyx` (z, y, x), by default `crossing_voxel` of the label (so each view
    shows the label) or the image centre without one. A view less
    than two voxels across (the long views of a single slice) is left out. The grey window is the 0.5-99.5
    percentile range of the slices shown.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    array = image.array if image.array.ndim == 3 else image.array[0]
    labels = None if label is None else np.asarray(label.array)
    centre = crossing_voxel(labels, image.grid.spacing_xyz_mm) if centre_zyx is None else centre_zyx
    centre = np.asarray(image.shape_zyx) // 2 if centre is None else np.asarray(centre, dtype=int)
    views = [view for view in anatomical_views(image.grid) if min(view.shape) > 1] or anatomical_views(image.grid)
    planes = [view.plane(array, centre[view.normal_axis]) for view in views]
    low, high = np.nanpercentile(np.concatenate([p.ravel() for p in planes]), [0.5, 99.5])  # NaN voxels are ignored
    # One mm-to-inch scale for all panels, so sizes compare across views and the scale bars match.
    widths_mm = [view.extent_mm[1] for view in views]
    count = len(views)
    panels_in = FIGURE_WIDTH_IN * (1 - MARGIN_LEFT - MARGIN_RIGHT) * count / (count + WSPACE * (count - 1))
    scale = panels_in / sum(widths_mm)  # inches per mm
    height_in = min(max(scale * max(view.extent_mm[2] for view in views), 1.5), FIGURE_WIDTH_IN)
    figure = Figure(figsize=(FIGURE_WIDTH_IN, height_in + MARGIN_TOP_IN + MARGIN_BOTTOM_IN))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(views), squeeze=False, gridspec_kw={"width_ratios": widths_mm})[0]
    total = height_in + MARGIN_TOP_IN + MARGIN_BOTTOM_IN
    figure.subplots_adjust(left=MARGIN_LEFT, right=1 - MARGIN_RIGHT, top=1 - MARGIN_TOP_IN / total,
                           bottom=MARGIN_BOTTOM_IN / total, wspace=WSPACE)
    figure.suptitle(title, fontsize=11)
    figure.text(0.5, 0.01, "radiological view as in 3D Slicer (patient right on the screen's left); grey window "
                f"{low:.4g}..{high:.4g} (0.5-99.5 percentile of these slices)", ha="center", fontsize=7,
                color="dimgray")
    for axis, view, plane in zip(axes, views, planes, strict=True):
        axis.set_anchor("N")  # panels of different heights line up at the top
        show_view(axis, view, plane, vmin=low, vmax=high, bar_mm=scale_bar_mm(min(widths_mm)))
        if filled is not None:
            fill_labels(axis, view, view.plane(np.asarray(filled.array), centre[view.normal_axis]))
        if labels is not None:
            outline_labels(axis, view, view.plane(labels, centre[view.normal_axis]))
        index = int(centre[view.normal_axis])
        oblique = ", oblique: nearest axis" if view.oblique else ""
        axis.set_title(f"{view.name}{oblique}\nslice {view.index_name} = {index} of {view.num_slices}, "
                       f"{position_label(view.position_mm(centre), view.patient_axis)}", fontsize=9)
    return figure


def write_case_preview(image: Volume, label: Volume | None, path: str | os.PathLike, title: str = "", *,
                       centre_zyx=None, filled: Volume | None = None) -> Path:
    """Write `plot_case` as a PNG, atomically; returns the path."""
    return save_figure(plot_case(image, label, title, centre_zyx=centre_zyx, filled=filled), path, dpi=100)
