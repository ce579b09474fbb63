"""Time SegStudies' surface metrics against MONAI, MedPy and DeepMind's surface-distance on the same mask pairs,
and the whole `segcore evaluate --out` command against surface-distance's compute alone.

Run by hand (`make bench`, or `python benchmarks/metrics.py [--quick]`) with the peers of
benchmarks/requirements.txt installed. Each library computes HD95 on each pair with its own definition; the
table gives its best wall time over repeats and the values it reports, beside SegStudies' `compare_masks`
(which computes all 17 metrics in that one call). Then, on the 512x512x300 small-organ pair saved as .nrrd,
`segcore evaluate --pred pred.nrrd --ref ref.nrrd --out report` runs as a process (start-up, reading, every
metric, tables and plots), interleaved with surface-distance's HD95 compute and SegStudies' label-map path
(`compare_label_maps`) on the same pair. The full run rewrites the "## Metrics" and "## segcore evaluate"
sections of benchmarks/RESULTS.md; --quick runs the small pairs only and writes nothing; --evaluate-only runs
and writes the second section only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing SegCore

from SegCore.metrics import compare_label_maps, compare_masks  # noqa: E402

TOLERANCE_MM = 2.0
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def ellipsoid(shape, centre, radii) -> np.ndarray:
    """bool (Z, Y, X) ellipsoid; centre and radii in voxels, (z, y, x)."""
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    return (((z[:, None, None] - centre[0]) / radii[0]) ** 2 + ((y[None, :, None] - centre[1]) / radii[1]) ** 2
            + ((x[None, None, :] - centre[2]) / radii[2]) ** 2) <= 1.0


def make_pairs(quick: bool) -> list[dict]:
    """(name, pred, ref, spacing (x, y, z) mm). The predictions are shifted, resized and carry a small false
    positive, so the Hausdorff distance, HD95 and the pooled HD95 all differ."""
    rng = np.random.default_rng(0)
    pairs = []
    shape = (64, 64, 64)
    ref = ellipsoid(shape, (32, 32, 32), (14, 18, 20))
    pred = ellipsoid(shape, (33, 31, 34), (13, 19, 20)) | ellipsoid(shape, (50, 50, 12), (2, 2, 2))
    pairs.append({"name": "64x64x64 blob", "pred": pred, "ref": ref, "spacing": (1.0, 1.0, 2.5)})
    noisy = ref ^ (rng.random(shape) < 0.002)  # scattered single-voxel errors: many surface voxels
    pairs.append({"name": "64x64x64 noisy", "pred": noisy, "ref": ref, "spacing": (0.8, 0.8, 1.5)})
    if not quick:
        shape = (300, 512, 512)
        ref = ellipsoid(shape, (150, 256, 256), (49, 49, 49))
        pred = ellipsoid(shape, (152, 259, 254), (48, 50, 49)) | ellipsoid(shape, (190, 320, 300), (4, 5, 5))
        pairs.append({"name": "512x512x300 small organ (sphere, 0.5 M voxels)", "pred": pred, "ref": ref,
                      "spacing": (0.7, 0.7, 1.0)})
        ref = ellipsoid(shape, (150, 256, 256), (80, 120, 150))
        pred = ellipsoid(shape, (153, 252, 259), (78, 122, 147)) | ellipsoid(shape, (40, 420, 100), (5, 8, 8))
        pairs.append({"name": "512x512x300 large organ (ellipsoid, 6 M voxels)", "pred": pred, "ref": ref,
                      "spacing": (0.7, 0.7, 1.0)})
    return pairs


def best_time(function, repeats: int):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


# Each runner: (pred, ref, spacing_zyx) -> (seconds for HD95 alone, {"hd", "hd95", "assd", "nsd"} values).
def run_segstudies(pred, ref, spacing_zyx, repeats):
    seconds, result = best_time(lambda: compare_masks(pred, ref, spacing_zyx[::-1], tolerance_mm=TOLERANCE_MM),
                                repeats)
    return seconds, {"hd": result["hd_mm"], "hd95": result["hd95_mm"], "hd95 pooled": result["hd95_pooled_mm"],
                     "assd": result["assd_mm"], "nsd": result["surface_dice"]}


def run_monai(pred, ref, spacing_zyx, repeats):
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    p, r = torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None]
    common = {"include_background": True, "spacing": list(spacing_zyx)}
    seconds, hd95 = best_time(lambda: compute_hausdorff_distance(p, r, percentile=95, **common), repeats)
    return seconds, {"hd": float(compute_hausdorff_distance(p, r, **common)), "hd95": float(hd95),
                     "assd": float(compute_average_surface_distance(p, r, symmetric=True, **common)),
                     "nsd": float(compute_surface_dice(p, r, [TOLERANCE_MM], **common))}


def run_surface_distance(pred, ref, spacing_zyx, repeats):
    import surface_distance as sd

    def hd95():
        return sd.compute_robust_hausdorff(sd.compute_surface_distances(ref, pred, spacing_zyx), 95)

    seconds, value = best_time(hd95, repeats)
    distances = sd.compute_surface_distances(ref, pred, spacing_zyx)
    gt_to_pred, pred_to_gt = sd.compute_average_surface_distance(distances)
    areas = np.concatenate([distances["surfel_areas_gt"], distances["surfel_areas_pred"]])
    return seconds, {"hd": sd.compute_robust_hausdorff(distances, 100), "hd95": value,
                     # area-weighted mean of both directions, the analogue of ASSD
                     "assd": float((gt_to_pred * distances["surfel_areas_gt"].sum()
                                    + pred_to_gt * distances["surfel_areas_pred"].sum()) / areas.sum()),
                     "nsd": sd.compute_surface_dice_at_tolerance(distances, TOLERANCE_MM)}


def run_medpy(pred, ref, spacing_zyx, repeats):
    from medpy.metric import binary

    seconds, hd95 = best_time(lambda: binary.hd95(pred, ref, voxelspacing=spacing_zyx), 1)
    # MedPy's hd and assd each recompute both distance maps; reuse its own helper once per direction.
    directed = getattr(binary, "__surface_distances")
    forward, backward = directed(pred, ref, spacing_zyx, 1), directed(ref, pred, spacing_zyx, 1)
    return seconds, {"hd": float(max(forward.max(), backward.max())), "hd95 pooled": float(hd95),
                     "assd": float(np.concatenate([forward, backward]).mean())}


LIBRARIES = {
    "SegStudies": ("SegCore", run_segstudies, "all 17 metrics in one call; HD95 per direction, then max"),
    "MONAI": ("monai", run_monai, "HD95 per direction, then max"),
    "surface-distance": ("surface_distance", run_surface_distance, "HD95 over surfel areas, per direction"),
    "MedPy": ("medpy", run_medpy, "HD95 of the pooled distances"),
}


def version(module: str) -> str:
    if module == "SegCore":
        import SegCore

        return SegCore.__version__
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    for name in {"monai": ["monai"], "medpy": ["medpy", "MedPy"],
                 "surface_distance": ["surface-distance", "surface-distance-based-measures"]}.get(module, [module]):
        try:
            return dist_version(name)
        except PackageNotFoundError:
            continue
    return "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(value) -> str:
    return "" if value is None else f"{value:.4f}"


def difference(name: str, values: dict, ours: dict | None) -> str:
    """Largest |peer - SegStudies| over the values both report (a different definition for surface-distance)."""
    if ours is None or name == "SegStudies":
        return ""
    shared = [key for key in values if key in ours]
    worst = max(abs(values[key] - ours[key]) for key in shared)
    return f"{worst:.1e}" + (" (other definitions)" if name == "surface-distance" else "")


def time_evaluate_command(pair: dict, repeats: int) -> dict:
    """Best wall times, interleaved run by run so that load on the machine affects all alike, of: the whole
    `segcore evaluate --out` process on the pair saved as .nrrd; surface-distance's HD95 compute on the arrays;
    SegStudies' label-map path (`compare_label_maps`) on the uint8 maps."""
    from SegCore.io import write_image
    from SegCore.volume import Volume

    pred, ref = pair["pred"].astype(np.uint8), pair["ref"].astype(np.uint8)
    spacing_zyx = tuple(pair["spacing"][::-1])
    best = {"command": float("inf"), "surface-distance": float("inf"), "label maps": float("inf")}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name, array in (("pred", pred), ("ref", ref)):
            write_image(Volume.create(array, pair["spacing"]), folder / f"{name}.nrrd")
        command = [sys.executable, "-m", "SegCore", "evaluate", "--pred", "pred.nrrd", "--ref", "ref.nrrd",
                   "--out", "report"]
        for _ in range(repeats):
            shutil.rmtree(folder / "report", ignore_errors=True)
            start = time.perf_counter()
            subprocess.run(command, cwd=folder, check=True, capture_output=True)
            best["command"] = min(best["command"], time.perf_counter() - start)
            best["surface-distance"] = min(best["surface-distance"],
                                           run_surface_distance(pair["pred"], pair["ref"], spacing_zyx, 1)[0])
            seconds, _ = best_time(lambda: compare_label_maps(pred, ref, pair["spacing"]), 1)
            best["label maps"] = min(best["label maps"], seconds)
        best["files"] = sorted(p.name for p in (folder / "report").iterdir())
    best["argv"] = " ".join(command[3:])
    return best


def lscpu_machine() -> str:
    """'model, N CPUs (`nproc`: M)' from lscpu where it exists."""
    fields = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    model = fields.get("Model name", cpu_model())
    return f"{model}, {fields.get('CPU(s)', os.cpu_count())} CPUs (`lscpu`), `nproc`: {len(os.sched_getaffinity(0))}"


def evaluate_section(timing: dict, repeats: int, command: str) -> str:
    sd, whole, maps = timing["surface-distance"], timing["command"], timing["label maps"]
    return "\n".join([
        "## segcore evaluate", "",
        f"Machine: {lscpu_machine()}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"surface-distance {version('surface_distance')}.",
        f"Command: `{command}` (best of {repeats} interleaved runs). Pair: 512x512x300 small organ (sphere, "
        "0.5 M voxels), spacing (0.7, 0.7, 1.0) mm, saved as uint8 .nrrd for the command.", "",
        "| what is timed | time (s) | surface-distance's compute / this | target |",
        "|---|---|---|---|",
        f"| the whole process `segcore {timing['argv']}`: start-up, reading both files, all 17 metrics, "
        f"CSV/JSON and the plots ({', '.join(timing['files'])}) | {whole:.3f} | {sd / whole:.2f}x "
        f"(the command takes {whole / sd:.2f}x as long) | at most 1.5x as long |",
        f"| SegStudies' label-map path, `compare_label_maps(pred, ref, spacing)` on the uint8 maps (every metric "
        f"of every label) | {maps:.3f} | {sd / maps:.1f}x | at least 3x |",
        f"| surface-distance, `compute_surface_distances` + `compute_robust_hausdorff(d, 95)` on the bool masks "
        f"| {sd:.3f} | 1x | |", "",
    ])


def replace_section(text: str, section: str) -> str:
    """`text` with the section of the same '## ' title replaced by `section` (added when missing), keeping the
    hand-written notes below a `<!-- notes -->` marker of the old section."""
    title = section.splitlines()[0]
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(text)
    notes = ""
    if match and "<!-- notes -->" in match.group(0):
        notes = match.group(0)[match.group(0).index("<!-- notes -->"):]
    new = section + ("\n" + notes if notes else "\n")
    return pattern.sub(lambda _: new, text) if match else text.rstrip("\n") + "\n\n" + new


def metrics_section(args, command: str) -> str:
    """Every library's HD95 time and values on every pair, as the '## Metrics' section."""
    available, unavailable = {}, []
    for name, (module, runner, definition) in LIBRARIES.items():
        if name in args.skip:
            continue
        try:
            importlib.import_module(module)
            available[name] = (module, runner, definition)
        except ImportError as error:
            unavailable.append(f"{name}: not installed ({error})")
    warm = make_pairs(quick=True)[0]
    for _, runner, _ in available.values():  # imports and first-call set-up are not timed
        runner(warm["pred"][24:40], warm["ref"][24:40], warm["spacing"][::-1], 1)

    lines = ["| pair | library | HD95 time (s) | peer time / SegStudies time | HD (mm) | HD95 (mm) | HD95 pooled (mm) "
             "| ASSD (mm) | surface Dice @2 mm | max abs. difference from SegStudies |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for pair in make_pairs(args.quick):
        spacing_zyx = tuple(pair["spacing"][::-1])
        times, ours = {}, None
        for name, (_, runner, _) in available.items():
            repeats = 1 if name == "MedPy" else args.repeats
            seconds, values = runner(pair["pred"], pair["ref"], spacing_zyx, repeats)
            times[name] = seconds
            ours = values if name == "SegStudies" else ours
            speedup = "" if name == "SegStudies" else f"{seconds / times['SegStudies']:.1f}x"
            lines.append(f"| {pair['name']}, spacing {pair['spacing']} mm | {name} | {seconds:.3f} | {speedup} "
                         f"| {fmt(values.get('hd'))} | {fmt(values.get('hd95'))} | {fmt(values.get('hd95 pooled'))} "
                         f"| {fmt(values.get('assd'))} | {fmt(values.get('nsd'))} | {difference(name, values, ours)} |")
            print(lines[-1], flush=True)

    machine = (f"{os.cpu_count()} cores (`nproc`: {len(os.sched_getaffinity(0))}), {cpu_model()}, "
               f"Python {platform.python_version()}, numpy {np.__version__}")
    versions = ", ".join(f"{name} {version(module)}" for name, (module, _, _) in available.items())
    definitions = "\n".join(f"- {name}: {definition}" for name, (_, _, definition) in available.items())
    return "\n".join([
        "## Metrics", "",
        f"Machine: {machine}. Versions: {versions}.", f"Command: `{command}` (best of {args.repeats} "
        "repeats; MedPy once). Time is the library's HD95 call on (pred, ref) numpy masks; SegStudies' time is "
        "`compare_masks`, which returns all 17 metrics (overlap, volumes, HD, both HD95s, ASSD, per-direction "
        "mean distances, surface Dice) in that call.", "", *lines, "",
        "HD95 definitions:", definitions, *(f"- {u}" for u in unavailable), "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small pairs only; RESULTS.md is not written")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per library and pair (best kept)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(LIBRARIES), help="libraries to leave out")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not update RESULTS.md")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="time only the whole `segcore evaluate` command against surface-distance")
    args = parser.parse_args(argv)
    command = " ".join([os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable,
                        "benchmarks/metrics.py", *(argv if argv is not None else sys.argv[1:])])
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if not args.evaluate_only:
        section = metrics_section(args, command)
        print(section)
        text = replace_section(text, section)
    if not args.quick:
        section = evaluate_section(time_evaluate_command(make_pairs(quick=False)[2], args.repeats), args.repeats,
                                   command)
        print(section)
        text = replace_section(text, section)
        if not args.no_write:
            RESULTS.write_text(text)
            print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
