"""Training benchmarks: augmentation throughput against MONAI, TorchIO and batchgeneratorsv2 (`--part augmentation`)
and the data pipeline's share of step time (`--part pipeline`).

Augmentation: one fixed 3D chain, the atrium study's. An 88x640x640 volume is padded to 96x640x640, a 96x144x224
patch is taken around the label, then random flips (each axis, p 0.5), a rotation of +-3 degrees about depth, a
translation of +-5 voxels, an elastic deformation and Gaussian noise (std 0.05). Each library runs the chain its
own idiomatic way, in one child process per thread count (1 thread, as one loader worker has, and 2), with
OMP/MKL/OpenBLAS thread variables and torch.set_num_threads set before anything is imported. Besides patches per
second, the outputs are checked against the un-augmented crop: the label volume kept (ratio of foreground voxels)
and the intensity distribution (mean, std, 1st/50th/99th percentiles; noise adds std 0.05 in quadrature).
SegStudies folds the padding into its one resampling (voxels outside the volume read as 0), which gives exactly
the patch of the padded volume; the benchmark checks that too.

Run by hand with the peers of benchmarks/requirements.txt installed (`make bench` builds .venv-bench):
`.venv-bench/bin/python benchmarks/training.py --part augmentation` rewrites the "## Augmentation" section of
benchmarks/RESULTS.md; `--quick` times fewer patches and writes nothing. `--part pipeline` measures the data
pipeline's share of a step (benchmarks/pipeline.py); `--part worker-cpu` prints the CPU that one batch costs inside
a loader worker and in the training process that receives it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing SegCore
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")

SHAPE_ZYX, PADDED_ZYX, PATCH_ZYX = (88, 640, 640), (96, 640, 640), (96, 144, 224)
PAD_Z = (PADDED_ZYX[0] - SHAPE_ZYX[0]) // 2
ROTATE_DEG, TRANSLATE_VOX, NOISE_STD, ELASTIC_MAX_VOX = 3.0, 5.0, 0.05, 4.0
LIBRARIES = ("SegStudies", "batchgeneratorsv2", "MONAI", "TorchIO")
MODULES = {"SegStudies": "SegCore", "batchgeneratorsv2": "batchgeneratorsv2", "MONAI": "monai", "TorchIO": "torchio"}


def make_case(seed: int = 0):
    """(1, 88, 640, 640) float32 z-scored image with a smooth background and a brighter ellipsoid 'atrium', and its
    uint8 label; the label fits inside the patch with a margin, so every transform of the chain keeps its volume."""
    import numpy as np

    rng = np.random.default_rng(seed)
    z, y, x = (np.arange(n, dtype=np.float32) for n in SHAPE_ZYX)
    background = (np.sin(z / 9)[:, None, None] * np.cos(y / 31)[None, :, None] + np.sin(x / 23)[None, None, :]
                  + np.cos((y[:, None] + x[None, :]) / 47)[None])
    inside = (((z - 44) / 28) ** 2)[:, None, None] + (((y - 300) / 45) ** 2)[None, :, None] \
        + (((x - 340) / 70) ** 2)[None, None, :] <= 1
    image = background + 2.5 * inside + 0.3 * rng.standard_normal(SHAPE_ZYX, dtype=np.float32)
    image = (image - image.mean()) / image.std()
    return image[None].astype(np.float32), inside.astype(np.uint8)


def label_centre_padded(label) -> list[float]:
    """The label's bounding-box centre in the padded volume's voxels (z shifted by the padding), moved where needed
    so that the patch lies inside the padded volume (as a sampler places it)."""
    import numpy as np

    where = [np.flatnonzero(label.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    centre = [(w[0] + w[-1]) / 2 + (PAD_Z if axis == 0 else 0) for axis, w in enumerate(where)]
    return [float(np.clip(c, (p - 1) / 2, n - 1 - (p - 1) / 2)) for c, p, n in zip(centre, PATCH_ZYX, PADDED_ZYX,
                                                                                      strict=True)]


def crop_padded(array, start_zyx, size_zyx):
    """array[..., start:start + size] of the (virtually) padded volume, zero outside the original one."""
    from SegCore.transforms.spatial import crop_patch

    return crop_patch(array, [start_zyx[0] - PAD_Z, *start_zyx[1:]], size_zyx, 0)


def chain_segstudies(image, label, centre):
    import numpy as np

    from SegCore.transforms import Augmentation

    off = {key: 0.0 for key in ("scale_p", "brightness_p", "contrast_p", "gamma_p")}
    aug = Augmentation({**off, "flip_axes": [0, 1, 2], "flip_p": 0.5, "rotate_deg": [ROTATE_DEG, 0, 0],
                        "rotate_p": 1, "translate_vox": [TRANSLATE_VOX] * 3, "translate_p": 1,
                        "elastic_sigma_vox": 16, "elastic_magnitude_vox": ELASTIC_MAX_VOX, "elastic_p": 1,
                        "noise_std": NOISE_STD, "noise_p": 1})
    centre_unpadded = [centre[0] - PAD_Z, centre[1], centre[2]]  # the padding is folded into the resampling

    def run(seed):
        return aug.sample_patch(image, label, centre_unpadded, PATCH_ZYX, np.random.default_rng(seed))
    return run


def chain_batchgeneratorsv2(image, label, centre):
    """nnU-Net v2's way: the loader crops (and pads) a region around the centre, shifted by the translation; then
    one SpatialTransform (rotation + elastic, one grid_sample), mirroring and noise on torch tensors."""
    import numpy as np
    import torch
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

    margin = 16
    region = [p + 2 * margin for p in PATCH_ZYX]
    transforms = ComposeTransforms([
        SpatialTransform(PATCH_ZYX, 0, random_crop=False, p_elastic_deform=1,
                         elastic_deform_scale=(0.1, 0.1), elastic_deform_magnitude=(ELASTIC_MAX_VOX, ELASTIC_MAX_VOX),
                         p_rotation=1, rotation=lambda dim, **_: np.random.uniform(-1, 1) * math.radians(ROTATE_DEG)
                         if dim == 0 else 0.0, p_scaling=0, mode_seg="nearest"),
        MirrorTransform(allowed_axes=(0, 1, 2)),
        GaussianNoiseTransform(noise_variance=(NOISE_STD, NOISE_STD), p_per_channel=1, synchronize_channels=True),
    ])

    def run(seed):
        np.random.seed(seed)
        torch.manual_seed(seed)
        shift = np.random.randint(-TRANSLATE_VOX, TRANSLATE_VOX + 1, size=3)
        start = [int(round(c - (r - 1) / 2)) + s for c, r, s in zip(centre, region, shift, strict=True)]
        out = transforms(image=torch.from_numpy(crop_padded(image, start, region)),
                         segmentation=torch.from_numpy(crop_padded(label, start, region)[None].astype(np.int16)))
        return out["image"].numpy(), out["segmentation"][0].numpy()
    return run


def chain_monai(image, label, centre):
    """MONAI's dictionary transforms: pad the whole volume, crop, flips, then Rand3DElasticd with the rotation and
    translation folded in (its one combined resampling), and noise."""
    import numpy as np
    from monai import transforms as mt

    keys = ("image", "label")
    chain = mt.Compose([
        mt.SpatialPadd(keys, spatial_size=PADDED_ZYX),
        mt.SpatialCropd(keys, roi_center=[int(round(c)) for c in centre], roi_size=PATCH_ZYX),
        *(mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
        mt.Rand3DElasticd(keys, sigma_range=(8, 8), magnitude_range=(400, 400), prob=1,
                          rotate_range=(math.radians(ROTATE_DEG), 0, 0), translate_range=(TRANSLATE_VOX,) * 3,
                          mode=("bilinear", "nearest"), padding_mode="zeros"),
        mt.RandGaussianNoised("image", prob=1, std=NOISE_STD, sample_std=False),
    ])

    def run(seed):
        chain.set_random_state(seed)
        out = chain({"image": image, "label": label[None]})
        return np.asarray(out["image"]), np.asarray(out["label"])[0]
    return run


def chain_torchio(image, label, centre):
    """TorchIO's Subject transforms: pad the whole volume, crop, flips, affine, elastic, noise."""
    import torch
    import torchio as tio

    start = [int(round(c - (p - 1) / 2)) for c, p in zip(centre, PATCH_ZYX, strict=True)]
    crop = []
    for axis in range(3):
        crop += [start[axis], PADDED_ZYX[axis] - start[axis] - PATCH_ZYX[axis]]
    chain = tio.Compose([
        tio.Pad((PAD_Z, PADDED_ZYX[0] - SHAPE_ZYX[0] - PAD_Z, 0, 0, 0, 0)), tio.Crop(tuple(crop)),
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5),
        tio.RandomAffine(scales=(1, 1), degrees=(-ROTATE_DEG, ROTATE_DEG, 0, 0, 0, 0),
                         translation=(-TRANSLATE_VOX, TRANSLATE_VOX) * 3, image_interpolation="linear",
                         default_pad_value=0),  # like the others (TorchIO's default pads with the minimum)
        tio.RandomElasticDeformation(num_control_points=7, max_displacement=ELASTIC_MAX_VOX),
        tio.RandomNoise(std=(NOISE_STD, NOISE_STD)),
    ])
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(image)),
                          label=tio.LabelMap(tensor=torch.from_numpy(label[None])))

    def run(seed):
        torch.manual_seed(seed)
        out = chain(subject)
        return out["image"].numpy(), out["label"].numpy()[0]
    return run


CHAINS = {"SegStudies": chain_segstudies, "batchgeneratorsv2": chain_batchgeneratorsv2, "MONAI": chain_monai,
          "TorchIO": chain_torchio}


def statistics(images, labels, reference_label_voxels: int) -> dict:
    import numpy as np

    pooled = np.concatenate([np.asarray(i, dtype=np.float32).ravel() for i in images])
    ratios = [float(np.count_nonzero(lab)) / reference_label_voxels for lab in labels]
    p1, p50, p99 = np.percentile(pooled, [1, 50, 99])
    return {"label_ratio_mean": float(np.mean(ratios)), "label_ratio_min": float(np.min(ratios)),
            "label_ratio_max": float(np.max(ratios)), "mean": float(pooled.mean()), "std": float(pooled.std()),
            "p1": float(p1), "p50": float(p50), "p99": float(p99)}


def child(args) -> int:
    """Time every chain in this process (thread variables already set by the parent) and print one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    image, label = make_case()
    centre = label_centre_padded(label)
    start = [int(math.floor(c - (p - 1) / 2 + 0.5)) for c, p in zip(centre, PATCH_ZYX, strict=True)]
    reference_image, reference_label = crop_padded(image, start, PATCH_ZYX), crop_padded(label, start, PATCH_ZYX)
    results = {"reference": statistics([reference_image], [reference_label], int(reference_label.sum()))}
    # the padding folded into SegStudies' resampling equals padding first (identity chain, no interpolation)
    from SegCore.transforms import Augmentation

    padded = np.pad(image, ((0, 0), (PAD_Z, PADDED_ZYX[0] - SHAPE_ZYX[0] - PAD_Z), (0, 0), (0, 0)))
    folded, _ = Augmentation.off().sample_patch(image, None, [centre[0] - PAD_Z, *centre[1:]], PATCH_ZYX,
                                                np.random.default_rng(0))
    results["pad_folded_max_abs_difference"] = float(np.abs(
        folded - padded[(slice(None), *(slice(s, s + p) for s, p in zip(start, PATCH_ZYX, strict=True)))]).max())
    del padded
    runs = {}
    for name in args.libraries:
        try:
            runs[name] = CHAINS[name](image, label, centre)
        except ImportError as error:
            results[name] = {"error": f"not installed ({error})"}
            continue
        runs[name](10_000)  # imports and first-call set-up are not timed
    # interleaved rounds, so that a load from elsewhere on the machine slows every library alike
    rounds = max(2, args.repeats // 4)
    per_round = {name: max(1, args.repeats // rounds) if name == "SegStudies" else 1 for name in runs}
    outputs = {name: ([], [], []) for name in runs}  # images, labels, seconds
    for round_index in range(rounds):
        for name, run in runs.items():
            for k in range(per_round[name]):
                began = time.perf_counter()
                patch, patch_label = run(round_index * per_round[name] + k)
                outputs[name][2].append(time.perf_counter() - began)
                outputs[name][0].append(patch)
                outputs[name][1].append(patch_label)
    for name, (images, labels, seconds) in outputs.items():
        # the median patch time: robust to a spike of load from elsewhere during one patch
        results[name] = {"patches_per_s": 1 / float(np.median(seconds)),
                         "mean_patches_per_s": len(seconds) / sum(seconds), "patches": len(seconds),
                         "shapes": sorted({tuple(np.shape(i)) for i in images}),
                         **statistics(images, labels, int(reference_label.sum()))}
        print(f"[{args.threads} thread(s)] {name}: {results[name]['patches_per_s']:.2f} patches/s", file=sys.stderr,
              flush=True)
    print(json.dumps(results))
    return 0


def version(module: str) -> str:
    if module == "SegCore":
        import SegCore

        return getattr(SegCore, "__version__", "?")
    try:
        from importlib.metadata import version as dist_version

        return dist_version({"monai": "monai", "torchio": "torchio", "batchgeneratorsv2": "batchgeneratorsv2"}[module])
    except Exception:  # noqa: BLE001 - a version we cannot read is shown as '?'
        return "?"


def run_child(threads: int, args) -> dict:
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--threads", str(threads), "--repeats",
               str(args.repeats), "--libraries", *args.libraries]
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def augmentation_section(by_threads: dict, args, command: str) -> str:
    import numpy as np

    from benchmarks.metrics import lscpu_machine

    reference = by_threads[1]["reference"]
    expected_std = math.hypot(reference["std"], NOISE_STD)
    lines = ["| library | threads | patches/s | x fastest peer | label volume kept (mean, min-max) | mean | std "
             f"(expected {expected_std:.3f}) | p1 | p50 | p99 |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| un-augmented crop | | | | 1 | {reference['mean']:.3f} | {reference['std']:.3f} "
             f"| {reference['p1']:.3f} | {reference['p50']:.3f} | {reference['p99']:.3f} |"]
    for threads, results in sorted(by_threads.items()):
        peers = [results[n]["patches_per_s"] for n in LIBRARIES[1:] if "patches_per_s" in results.get(n, {})]
        fastest = max(peers) if peers else None
        for name in args.libraries:
            row = results.get(name, {})
            if "error" in row:
                lines.append(f"| {name} | {threads} | {row['error']} | | | | | | | |")
                continue
            ratio = f"{row['patches_per_s'] / fastest:.1f}x" if fastest else ""
            lines.append(f"| {name} | {threads} | {row['patches_per_s']:.2f} | {ratio} | {row['label_ratio_mean']:.3f} "
                         f"({row['label_ratio_min']:.3f}-{row['label_ratio_max']:.3f}) | {row['mean']:.3f} "
                         f"| {row['std']:.3f} | {row['p1']:.3f} | {row['p50']:.3f} | {row['p99']:.3f} |")
    versions = ", ".join(f"{name} {version(MODULES[name])}" for name in args.libraries)
    return "\n".join([
        "## Augmentation", "",
        f"Machine: {lscpu_machine()}, Python {platform.python_version()}, numpy {np.__version__}. Versions: "
        f"{versions}.",
        f"Command: `{command}`. SegStudies times {args.repeats} patches, each peer {max(2, args.repeats // 4)}, "
        "in interleaved rounds after one untimed warm-up patch each (patches/s: 1 / the median patch time); "
        "one child process per thread count, with "
        "OMP/MKL/OpenBLAS/NumExpr thread variables and `torch.set_num_threads` set before the libraries load.",
        f"Chain: pad 88x640x640 to 96x640x640, a {'x'.join(map(str, PATCH_ZYX))} patch around the label, flips "
        f"(each axis p 0.5), rotation +-{ROTATE_DEG:g} deg about depth, translation +-{TRANSLATE_VOX:g} voxels, "
        f"elastic deformation (at most ~{ELASTIC_MAX_VOX:g} voxels), Gaussian noise std {NOISE_STD:g}. "
        "Label volume kept: foreground voxels of each augmented label patch / those of the un-augmented crop. "
        "Intensities: pooled over all patches of a library (padding zeros included, as the crop has them).",
        f"SegStudies folds the padding into its resampling; its identity patch equals the crop of the padded "
        f"volume with max |difference| {by_threads[1]['pad_folded_max_abs_difference']:g}. Load average (1 min) "
        f"before and after the run: {args.load[0]:.1f}, {args.load[1]:.1f} on {os.cpu_count()} CPUs.", "", *lines,
        "",
    ])


def augmentation_benchmark(args) -> str:
    """Run the chain with 1 and 2 threads in child processes; return the '## Augmentation' section."""
    command = " ".join([os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable,
                        "benchmarks/training.py", *args.argv])
    load_before = os.getloadavg()[0]
    by_threads = {threads: run_child(threads, args) for threads in (1, 2)}
    args.load = (load_before, os.getloadavg()[0])  # other work on the machine shows in the absolute numbers
    section = augmentation_section(by_threads, args, command)
    print(section)
    return section


def pipeline_benchmark(args) -> str:
    """The data pipeline's share of step time for each sampler (benchmarks/pipeline.py); the '## Data pipeline'
    section."""
    from benchmarks.pipeline import pipeline_section

    command = " ".join([os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable,
                        "benchmarks/training.py", *args.argv])
    section = pipeline_section(args, command)
    print(section)
    return section


def worker_cpu_benchmark(args) -> str:
    """CPU per batch inside a real loader worker (user + system from /proc/PID/stat, so the shared-memory and page
    costs of sending a batch count, which a batch made in the training process does not show) and in the training
    process receiving it, for the pipeline's samplers. The consumer only reads each batch once, so the numbers
    are CPU time, which load from elsewhere on the machine changes far less than wall time (Linux only)."""
    import statistics
    import tempfile

    from benchmarks.pipeline import CASE_ZYX, CASES, SAMPLERS
    from SegCore.datasets import open_dataset
    from SegCore.phantoms import write_phantom_dataset
    from SegCore.training.data import CaseCache, Sampler, build_loader
    from SegCore.transforms import Augmentation, Preprocessing

    def worker_cpu(pid: int) -> tuple[float, int]:  # (user + system seconds, minor page faults)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])

    lines = ["| sampler | batch | worker CPU per batch (ms) | worker page faults per batch | training process CPU "
             "per batch received and read once (ms) |", "|---|---|---|---|---|"]
    steps = args.pipeline_steps or 30
    with tempfile.TemporaryDirectory(prefix="segcore-worker-cpu-") as folder:
        data = write_phantom_dataset("decathlon", Path(folder) / "data", cases=CASES, seed=0, size_zyx=CASE_ZYX)
        pre = Preprocessing([{"name": "reorient"}, {"name": "zscore"}])
        cached = CaseCache(Path(folder) / "cache", pre).prepare(open_dataset(data).labelled_cases())
        for name, spec, _, batch, _ in SAMPLERS:
            with build_loader(cached, Sampler(spec), Augmentation({}), batch_size=batch, steps_per_epoch=steps,
                              seed=0, workers=1) as loader:
                shape = tuple(next(iter(loader.epoch(0)))[0].shape)  # starts the worker
                pid = loader._loader._iterator._workers[0].pid
                rounds = []
                for epoch in range(1, args.pipeline_repeats + 1):
                    (cpu, faults), main = worker_cpu(pid), time.process_time()
                    for images, _ in loader.epoch(epoch):
                        float(images.numpy().sum())  # one thread: torch's would spin between batches
                    (cpu_after, faults_after), main_after = worker_cpu(pid), time.process_time()
                    rounds.append(((cpu_after - cpu) / steps, (faults_after - faults) / steps,
                                   (main_after - main) / steps))
            cpu, faults, main = (statistics.median(r[i] for r in rounds) for i in range(3))
            lines.append(f"| {name} | {'x'.join(map(str, shape))} | {1000 * cpu:.1f} | {faults:.0f} "
                         f"| {1000 * main:.1f} |")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    table = "\n".join([f"Worker CPU: {steps} batches per epoch, median of {args.pipeline_repeats} epochs; load "
                       f"average after {load}.", "", *lines])
    print(table)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("augmentation", "pipeline", "worker-cpu", "all"), default="all",
                        help="worker-cpu: CPU per batch in a loader worker (printed, not written; not in 'all')")
    parser.add_argument("--repeats", type=int, default=12, help="SegStudies patches timed (each peer: a quarter)")
    parser.add_argument("--libraries", nargs="*", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--quick", action="store_true", help="4 patches, RESULTS.md is not written")
    parser.add_argument("--no-write", action="store_true", help="print the sections, do not update RESULTS.md")
    parser.add_argument("--pipeline-steps", type=int, default=None,
                        help="pipeline: steps per timed block (default 10)")
    parser.add_argument("--pipeline-repeats", type=int, default=8, help="pipeline: alternated rounds (median)")
    parser.add_argument("--workers", type=int, default=None, help="pipeline: worker processes (default_workers())")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.child:
        return child(args)
    if args.quick:
        args.repeats = 4
    if args.part == "worker-cpu":
        worker_cpu_benchmark(args)
        return 0
    sections = []
    if args.part in ("augmentation", "all"):
        sections.append(augmentation_benchmark(args))
    if args.part in ("pipeline", "all"):
        from SegCore.devices import prefer_passive_openmp

        prefer_passive_openmp()  # both loops as `segcore train` runs them (the section says which policy held)
        sections.append(pipeline_benchmark(args))
    sections = [s for s in sections if s]
    if sections and not (args.quick or args.no_write):
        from benchmarks.metrics import replace_section
        from SegCore.atomic import atomic_file

        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
        for section in sections:
            text = replace_section(text, section)
        with atomic_file(RESULTS) as tmp:
            tmp.write_text(text)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
