"""The dataset fingerprint (after nnU-Net): what the data look like, as JSON-able numbers.

Per case: size, spacing, orientation code, channels, label values and voxel counts. Per dataset: median /
min / max size and spacing, orientation counts, intensity statistics per channel over all voxels and over
foreground (label > 0) voxels (mean, std, min, max, percentiles 0.5 / 50 / 99.5), intensity histograms,
label values and class frequencies (fraction of labelled voxels per label value).

Mean, std, min and max are exact. Percentiles and histograms use every voxel of a case while it has at most
`max_voxels_per_case` (1e7 / number of cases, at least 10 000) and a seeded random sample beyond that, as
nnU-Net does for its foreground statistics; `sampling.exact` says which happened.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from SegCore.atomic import atomic_file, save_figure
from SegCore.datasets.case import Dataset, load_case_image, load_case_label
from SegCore.datasets.views import is_oblique, patient_letter
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress

PERCENTILES = (0.5, 50.0, 99.5)
HISTOGRAM_BINS = 64
TOTAL_SAMPLE_BUDGET = 10_000_000
MIN_SAMPLES_PER_CASE = 10_000


def orientation_code(direction: np.ndarray) -> str:
    """Three letters naming where each index axis (i, j, k) points in the patient, e.g. 'LPS' for the
    identity LPS direction, 'RAS' for a NIfTI-style flip of the first two axes (the nibabel / ITK 'to'
    convention). direction: 3x3, columns = LPS directions of i, j, k."""
    return "".join(patient_letter(column) for column in np.asarray(direction, dtype=float).T)


@dataclass
class _Running:
    """Exact count / mean / M2 / min / max over chunks (Chan et al. pairwise update), plus samples."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = np.inf
    high: float = -np.inf
    samples: list = field(default_factory=list)

    def add(self, values: np.ndarray, budget: int, rng: np.random.Generator) -> None:
        if values.size == 0:
            return
        values = values.astype(np.float64, copy=False)
        n, mean = values.size, float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        keep = values if n <= budget else values[np.sort(rng.choice(n, budget, replace=False))]
        self.samples.append(keep.astype(np.float32))

    def summary(self) -> dict | None:
        if self.count == 0:
            return None
        samples = np.concatenate(self.samples)
        pct = np.percentile(samples, PERCENTILES)
        return {"mean": self.mean, "std": float(np.sqrt(self.m2 / self.count)), "min": self.low, "max": self.high,
                "percentile_00_5": float(pct[0]), "percentile_50_0": float(pct[1]),
                "percentile_99_5": float(pct[2]), "voxels": self.count}


@dataclass
class Fingerprint:
    """JSON-able summary of a dataset (see the module docstring). Shapes are (Z, Y, X), spacings (x, y, z) mm."""

    dataset: str
    layout: str
    modality: str
    num_cases: int
    num_labelled: int
    channel_names: list[str]
    label_names: dict[str, str]
    cases: list[dict]
    shape_zyx: dict[str, list[float]]
    spacing_xyz_mm: dict[str, list[float]]
    orientations: dict[str, int]
    intensity_all: list[dict | None]
    intensity_foreground: list[dict | None]
    histograms: list[dict]
    label_values: list[int]
    class_fraction: dict[str, float]
    sampling: dict

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Fingerprint:
        return cls(**data)


def _spread(rows: list[list[float]]) -> dict[str, list[float]]:
    array = np.asarray(rows, dtype=float)
    return {"median": np.median(array, axis=0).tolist(), "min": array.min(axis=0).tolist(),
            "max": array.max(axis=0).tolist()}


def _histograms(all_stats: list[_Running], fg_stats: list[_Running]) -> list[dict]:
    result = []
    for every, foreground in zip(all_stats, fg_stats, strict=True):
        samples = np.concatenate(every.samples) if every.samples else np.zeros(1, np.float32)
        fg = np.concatenate(foreground.samples) if foreground.samples else np.zeros(0, np.float32)
        low, high = np.percentile(np.concatenate([samples, fg]) if fg.size else samples, [0.1, 99.9])
        if fg.size:  # the foreground's tail is often what matters (enhancing tumour, contrast-filled organs)
            low, high = min(low, float(np.percentile(fg, 0.1))), max(high, float(np.percentile(fg, 99.9)))
        edges = np.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)
        result.append({"edges": edges.tolist(), "all": np.histogram(samples, edges)[0].tolist(),
                       "foreground": np.histogram(fg, edges)[0].tolist()})
    return result


def compute_fingerprint(dataset: Dataset, *, progress: ProgressCallback = no_progress, seed: int = 0,
                        max_voxels_per_case: int | None = None) -> Fingerprint:
    """Read every case of `dataset` (labels checked against the image grid) and summarise it.

    max_voxels_per_case: voxels per case and channel kept for percentiles and histograms (default
    1e7 / number of cases, at least 10 000); mean, std, min and max always use every voxel.
    """
    cases = dataset.cases
    budget = max_voxels_per_case or max(MIN_SAMPLES_PER_CASE, TOTAL_SAMPLE_BUDGET // max(len(cases), 1))
    rng = np.random.default_rng(seed)
    channels = len(dataset.channel_names)
    all_stats = [_Running() for _ in range(channels)]
    fg_stats = [_Running() for _ in range(channels)]
    label_voxels: dict[int, int] = {}
    summaries, exact = [], True
    for step, case in enumerate(cases):
        image = load_case_image(case)
        if image.num_channels != channels:  # generic layouts learn the channel count from the first case
            channels = image.num_channels
            all_stats = [_Running() for _ in range(channels)]
            fg_stats = [_Running() for _ in range(channels)]
        label = load_case_label(case, reference=image.grid) if case.has_label else None
        foreground = label.array > 0 if label is not None else None
        for c in range(image.num_channels):
            values = image.array[c]
            all_stats[c].add(values.ravel(), budget, rng)
            if foreground is not None:
                fg_stats[c].add(values[foreground], budget, rng)
        exact = exact and image.array[0].size <= budget
        counts = {}
        if label is not None:
            bincount = np.bincount(label.array.ravel())
            counts = {int(v): int(n) for v, n in enumerate(bincount) if n}
            for value, n in counts.items():
                label_voxels[value] = label_voxels.get(value, 0) + n
        summaries.append({
            "case_id": case.case_id, "subset": case.subset, "shape_zyx": list(image.shape_zyx),
            "spacing_xyz_mm": list(image.grid.spacing_xyz_mm), "origin_lps": list(image.grid.origin_lps),
            "orientation": orientation_code(np.asarray(image.grid.direction_lps)),
            "oblique": is_oblique(image.grid.direction_lps),
            "channels": list(case.channel_names) or [str(c) for c in range(image.num_channels)],
            "label_values": sorted(counts), "label_voxels": {str(k): v for k, v in sorted(counts.items())},
        })
        progress(ProgressEvent("fingerprint", step + 1, len(cases), case.case_id))
    total_labelled = sum(label_voxels.values())
    orientations: dict[str, int] = {}
    for summary in summaries:
        orientations[summary["orientation"]] = orientations.get(summary["orientation"], 0) + 1
    return Fingerprint(
        dataset=dataset.name, layout=dataset.layout, modality=dataset.modality, num_cases=len(cases),
        num_labelled=sum(1 for c in cases if c.has_label),
        channel_names=list(dataset.channel_names) if len(dataset.channel_names) == channels
        else [str(c) for c in range(channels)],
        label_names={str(k): v for k, v in sorted(dataset.label_names.items())}, cases=summaries,
        shape_zyx=_spread([s["shape_zyx"] for s in summaries]) if summaries else {},
        spacing_xyz_mm=_spread([s["spacing_xyz_mm"] for s in summaries]) if summaries else {},
        orientations=orientations,
        intensity_all=[s.summary() for s in all_stats], intensity_foreground=[s.summary() for s in fg_stats],
        histograms=_histograms(all_stats, fg_stats) if summaries else [],
        label_values=sorted(label_voxels),
        class_fraction={str(k): n / total_labelled for k, n in sorted(label_voxels.items())} if total_labelled else {},
        sampling={"max_voxels_per_case": budget, "exact": exact, "seed": seed},
    )


def write_fingerprint(fingerprint: Fingerprint, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write fingerprint.json and fingerprint.png (distributions) into `out_dir`, each atomically."""
    from SegCore.datasets.fingerprint_plot import plot_fingerprint

    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "fingerprint.json", out_dir / "fingerprint.png"
    with atomic_file(json_path) as tmp:
        tmp.write_text(json.dumps(fingerprint.to_dict(), indent=2) + "\n", encoding="utf-8")
    save_figure(plot_fingerprint(fingerprint), png_path, dpi=90)
    return json_path, png_path
