"""The fingerprint as a figure: spacing, size, class frequencies, and intensity histograms per channel.

Built on a bare matplotlib `Figure` with the Agg canvas, so it never touches pyplot's global state or needs
a display. Only panels with something to show are drawn: no class frequency without labelled cases, at most
`MAX_CHANNEL_PANELS` histograms. Up to four panels share one row; beyond that the histograms get a row of
their own.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from SegCore.datasets.fingerprint import Fingerprint

MAX_CHANNEL_PANELS = 5
PANEL_WIDTH_IN, ROW_HEIGHT_IN = 4.2, 3.4


def plot_fingerprint(fingerprint: Fingerprint):
    """A matplotlib Figure (Agg canvas) summarising `fingerprint`; every axes has data and labelled axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = fingerprint.cases
    panels = [] if not cases else [_spacing_panel, _size_panel]
    if fingerprint.class_fraction:
        panels.append(_class_panel)
    channels = min(len(fingerprint.histograms), MAX_CHANNEL_PANELS)
    histograms = [partial(_histogram_panel, channel=c) for c in range(channels)]
    rows = [panels + histograms] if len(panels) + channels <= 4 else [panels, histograms]
    rows = [row for row in rows if row]
    columns = max((len(row) for row in rows), default=1)
    height = ROW_HEIGHT_IN * max(len(rows), 1) + 1.0
    figure = Figure(figsize=(PANEL_WIDTH_IN * columns, height))
    FigureCanvasAgg(figure)
    oblique = sum(1 for c in cases if c["oblique"])
    orientations = ", ".join(f"{code} {n}" for code, n in sorted(fingerprint.orientations.items()))
    shown = "" if channels == len(fingerprint.histograms) else \
        f"; histograms of the first {channels} of {len(fingerprint.histograms)} channels"
    figure.suptitle(f"{fingerprint.dataset} ({fingerprint.layout}, {fingerprint.modality}): {fingerprint.num_cases} "
                    f"cases, {fingerprint.num_labelled} labelled\norientations: {orientations or '-'}"
                    f"{f' ({oblique} oblique)' if oblique else ''}{shown}", fontsize=11)
    if not rows:
        figure.text(0.5, 0.5, "no cases", ha="center", va="center")
        return figure
    # Fixed margins: a layout engine (constrained/tight) costs seconds per figure for little gain here.
    outer = figure.add_gridspec(len(rows), 1, left=0.8 / (PANEL_WIDTH_IN * columns), right=0.98, top=1 - 0.9 / height,
                                bottom=1.0 / height, hspace=0.7)
    for row_index, row in enumerate(rows):
        cells = outer[row_index].subgridspec(1, len(row), wspace=0.35)
        for column, draw in enumerate(row):
            draw(figure.add_subplot(cells[0, column]), fingerprint)
    return figure


def _spacing_panel(axis, fingerprint: Fingerprint) -> None:
    spacing = np.asarray([c["spacing_xyz_mm"] for c in fingerprint.cases], dtype=float).reshape(-1, 3)
    _strip(axis, spacing)
    axis.set_ylabel("spacing (mm)")
    axis.set_title("voxel spacing per case", fontsize=10)


def _size_panel(axis, fingerprint: Fingerprint) -> None:
    from matplotlib.ticker import MaxNLocator

    shape = np.asarray([c["shape_zyx"] for c in fingerprint.cases], dtype=float).reshape(-1, 3)
    _strip(axis, shape[:, ::-1])
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))  # sizes are whole voxels
    axis.set_ylabel("size (voxels)")
    axis.set_title("image size per case", fontsize=10)


def _class_panel(axis, fingerprint: Fingerprint) -> None:
    values = list(fingerprint.class_fraction)
    fractions = [fingerprint.class_fraction[v] for v in values]
    names = [f"{v}: {fingerprint.label_names.get(v, '?')}"[:22] for v in values]
    bars = axis.bar(range(len(values)), fractions, color="tab:purple")
    axis.bar_label(bars, [f"{f:.3g}" for f in fractions], fontsize=7, padding=2)
    axis.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=8)
    axis.set_yscale("log")
    axis.set_ylim(min(fractions) / 3, 3.0)  # room for the value labels above the bars
    axis.set_xlabel("label value: name")
    axis.set_ylabel("fraction of labelled voxels")
    axis.set_title("class frequency", fontsize=10)


def _histogram_panel(axis, fingerprint: Fingerprint, channel: int) -> None:
    """Counts per bin on a log axis; empty bins are left out (NaN) rather than drawn at a fake floor."""
    histogram = fingerprint.histograms[channel]
    edges = np.asarray(histogram["edges"], dtype=float)
    every = np.asarray(histogram["all"], dtype=float)
    axis.stairs(np.where(every > 0, every, np.nan), edges, fill=True, color="tab:gray", alpha=0.45,
                label="all voxels")
    foreground = np.asarray(histogram["foreground"], dtype=float)
    if foreground.any():
        axis.stairs(np.where(foreground > 0, foreground, np.nan), edges, color="tab:red", linewidth=1.4,
                    label="foreground (label > 0)")
    axis.set_yscale("log")
    axis.set_ylim(bottom=0.5)  # a bin holding one voxel still shows
    unit = "HU" if fingerprint.modality == "CT" else "stored value"
    axis.set_xlabel(f"intensity ({unit})")
    axis.locator_params(axis="x", nbins=5)
    axis.ticklabel_format(axis="x", style="sci", scilimits=(-2, 5))  # diffusivities (~1e-3 mm²/s) stay legible
    axis.set_ylabel("voxels per bin" + ("" if fingerprint.sampling.get("exact", True) else " (sampled)"))
    axis.set_title(f"intensity: {fingerprint.channel_names[channel]}", fontsize=10)
    axis.legend(fontsize=7)


def _strip(axis, values: np.ndarray) -> None:
    """One column of jittered dots per axis x, y, z (values: (cases, 3)), the median as a black bar."""
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=len(values))
    for index in range(3):
        column = values[:, index]
        axis.scatter(np.full(len(column), index) + jitter, column, s=12, alpha=0.7)
        axis.hlines(np.median(column), index - 0.3, index + 0.3, color="black", label="median" if index == 0 else None)
    axis.set_xticks(range(3), ["x (i)", "y (j)", "z (k)"])
    axis.set_xlim(-0.6, 2.6)
    axis.set_xlabel("image axis")
    axis.legend(fontsize=7, loc="best")
