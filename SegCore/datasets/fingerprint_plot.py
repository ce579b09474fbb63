"""The fingerprint as a figure: spacing, size, class frequencies, and intensity histograms per channel.

Built on a bare matplotlib `Figure` with the Agg canvas, so it never touches pyplot's global state or needs
a display.
"""

from __future__ import annotations

import numpy as np

from SegCore.datasets.fingerprint import Fingerprint

MAX_CHANNEL_PANELS = 5


def plot_fingerprint(fingerprint: Fingerprint):
    """A matplotlib Figure (Agg canvas) summarising `fingerprint`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    channels = min(len(fingerprint.histograms), MAX_CHANNEL_PANELS)
    columns = max(3, channels)
    figure = Figure(figsize=(4.2 * columns, 7.5))
    FigureCanvasAgg(figure)
    # Fixed margins: a layout engine (constrained/tight) costs seconds per figure for little gain here.
    grid = figure.add_gridspec(2, columns, left=0.05, right=0.98, top=0.9, bottom=0.08, hspace=0.6, wspace=0.3)
    figure.suptitle(f"{fingerprint.dataset} ({fingerprint.layout}): {fingerprint.num_cases} cases, "
                    f"{fingerprint.num_labelled} labelled")

    spacing = np.asarray([c["spacing_xyz_mm"] for c in fingerprint.cases], dtype=float).reshape(-1, 3)
    shape = np.asarray([c["shape_zyx"] for c in fingerprint.cases], dtype=float).reshape(-1, 3)
    _strip(figure.add_subplot(grid[0, 0]), spacing, ("x", "y", "z"), "voxel spacing (mm)")
    _strip(figure.add_subplot(grid[0, 1]), shape[:, ::-1], ("x", "y", "z"), "image size (voxels)")

    axis = figure.add_subplot(grid[0, 2])
    values = list(fingerprint.class_fraction)
    if values:
        names = [f"{v}: {fingerprint.label_names.get(v, '')}"[:22] for v in values]
        axis.bar(range(len(values)), [fingerprint.class_fraction[v] for v in values], color="tab:purple")
        axis.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=8)
        axis.set_yscale("log")
    axis.set_title("class frequency (fraction of labelled voxels)", fontsize=10)

    for c in range(channels):
        histogram = fingerprint.histograms[c]
        edges = np.asarray(histogram["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        axis = figure.add_subplot(grid[1, c])
        axis.step(centres, np.maximum(histogram["all"], 0.5), where="mid", label="all voxels", color="tab:gray")
        if any(histogram["foreground"]):
            axis.step(centres, np.maximum(histogram["foreground"], 0.5), where="mid", label="foreground",
                      color="tab:red")
        axis.set_yscale("log")
        axis.set_title(f"intensity: {fingerprint.channel_names[c]}", fontsize=10)
        axis.legend(fontsize=7)
    return figure


def _strip(axis, values: np.ndarray, names: tuple[str, ...], title: str) -> None:
    """One column of jittered dots per axis, the median as a bar."""
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=len(values))
    for index in range(len(names)):
        column = values[:, index] if len(values) else np.zeros(0)
        axis.scatter(np.full(len(column), index) + jitter, column, s=12, alpha=0.7)
        if len(column):
            axis.hlines(np.median(column), index - 0.3, index + 0.3, color="black")
    axis.set_xticks(range(len(names)), names)
    axis.set_title(title, fontsize=10)
