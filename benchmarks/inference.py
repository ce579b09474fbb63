"""Inference benchmark: SegStudies' sliding window beside MONAI's `sliding_window_inference` and the floor (the
bare forward passes its windows need), file to file with the `Predictor` and `segcore predict` against that floor
with their peak memory, and on CUDA float16 against float32.

    .venv-bench/bin/python benchmarks/inference.py            # CPU (and CUDA where there is one); rewrites RESULTS.md
    .venv-bench/bin/python benchmarks/inference.py --quick    # small inputs, under a minute idle, writes nothing
    .venv-bench/bin/python benchmarks/inference.py --file-only   # only the CT file to file (CPU), writes nothing
    .venv-bench/bin/python benchmarks/inference.py --stages      # RSS per stage of it, quickly, writes nothing

One network, one input and one setting for all: the atrium study's V-Net with its `small` arguments (`--model
unet3d`: the decathlon U-Net's), seeded and untrained, eval, under torch.inference_mode; windows of PATCH_ZYX,
overlap 0.5, Gaussian weights with sigma 0.125 x side, the same windows per forward pass (the settings' "auto"
batch of the device), no mirroring. Inputs: CT-sized (300x512x512, z first) and MR-sized (88x640x640, the atrium
study's). On the CPU, which others may share, each batch of a method is followed by its bare forward pass, timed
apart, so the method and its floor meet the same load (`compare`). File to file: an int16 CT NIfTI and a
checkpoint written as training writes one; fresh processes read, predict and write the label map, and their peak
RSS (ru_maxrss, through `LAUNCHER`) is set against the input's float32 size. `--stages` runs the same command with
the network at every STAGE_NET_EVERY-th window only (a cheap stand-in for the others, so the run takes seconds)
and samples the RSS (VmRSS) in each stage: where the memory goes, for development; its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing SegCore
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
INPUTS = {"CT-sized": (300, 512, 512), "MR-sized": (88, 640, 640)}
QUICK_INPUTS = {"CT-sized": (48, 160, 160), "MR-sized": (32, 192, 192)}
PATCH_ZYX, QUICK_PATCH_ZYX = [64, 128, 128], [32, 64, 64]
PEER_FLOOR_EVERY = 4  # on the CPU, one batch in this many of MONAI and of the file run is paired with a bare pass
MB = 1e6
STAGE_NET_EVERY = 50  # --stages: windows 0, 50, 100, ... go through the real network
STAGES = (("SegCore.inference.inputs", "read_input", "read the input", "float32 copy"),
          ("SegCore.transforms.preprocess", "Preprocessing.apply", "preprocess", "after preprocessing"),
          ("SegCore.inference.windows", "SlidingWindow.__call__", "network", "labels to the input grid"),
          ("SegCore.inference.outputs", "write_prediction", "write", "done"))  # module, function, during, after


def make_image(shape_zyx, seed: int = 0) -> np.ndarray:
    """(Z, Y, X) float32, z-scored: a smooth background, a brighter ellipsoid in the middle, Gaussian noise."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape_zyx)
    image = rng.standard_normal(shape_zyx, dtype=np.float32)
    image *= 0.3
    image += np.sin(z / 9)[:, None, None] * np.cos(y / 31)[None, :, None]
    image += np.sin(x / 23)[None, None, :]
    radius = [((a - n / 2) / (n / 4)) ** 2 for a, n in zip((z, y, x), shape_zyx, strict=True)]
    image += 2.5 * (radius[0][:, None, None] + radius[1][None, :, None] + radius[2][None, None, :] <= 1)
    image -= image.mean()
    image /= image.std()
    return image


def make_plan(folder: Path, model: str, patch_zyx: list[int]) -> dict:
    """The resolved `--tiny` plan of `model` (its `small` arguments) on a small atrium phantom, with the inference
    patch set: what `segcore train --tiny` would write into the checkpoint."""
    from SegCore.phantoms import write_phantom_dataset
    from SegCore.training.config import resolve_plan
    from SegCore.training.derive import data_facts

    root = folder / "phantom"
    write_phantom_dataset("atrium", root, cases=2, seed=0, size_zyx=(20, 40, 40))
    config = {"data": {"root": str(root)}, "model": {"name": model}, "inference": {"patch_zyx": patch_zyx}}
    return resolve_plan(config, tiny=True, facts=data_facts(root))


class NetFn:
    """The network as a net_fn: float32 (B, C, *patch) on the device -> float32 logits (B, K, *patch), in the
    settings' precision. Logs each call's batch size and forward time (CUDA events on a GPU, so that the log
    never makes the host wait for the device)."""

    def __init__(self, net: torch.nn.Module, device: torch.device, precision: str):
        self.net, self.device = net, device
        self.dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[precision]
        self.reset()

    def reset(self) -> None:
        self.batches: list[int] = []
        self._seconds, self._events = 0.0, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = self.net(x)
                end.record()
                self._events.append((start, end))
            else:
                began = time.perf_counter()
                out = self.net(x)
                self._seconds += time.perf_counter() - began
        self.batches.append(int(x.shape[0]))
        return out.float()

    def forward_seconds(self) -> float:
        if self._events:
            torch.cuda.synchronize()
        return self._seconds + sum(start.elapsed_time(end) for start, end in self._events) / 1000


def timed(run, device: torch.device) -> tuple[float, object]:
    """(wall seconds, result) of `run()` under inference_mode."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    with torch.inference_mode():
        result = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began, result


def methods(fn: NetFn, image_czyx: torch.Tensor, settings: dict, device: torch.device, divisor: int,
            after_batch) -> dict:
    """name -> run() returning probabilities (K, Z, Y, X) float32 on the CPU; each calls `after_batch(b)` after
    every forward pass of b windows (SegStudies through its progress callback, MONAI through its predictor)."""
    from monai.inferers import sliding_window_inference

    from SegCore.inference.windows import SlidingWindow

    patch, batch = settings["patch_zyx"], settings["batch"]
    window = SlidingWindow(patch, overlap=settings["overlap"], sigma_scale=settings["sigma_scale"], batch=batch)

    def predictor(x):
        out = torch.softmax(fn(x), 1)
        after_batch(int(x.shape[0]))
        return out

    def monai():
        return sliding_window_inference(image_czyx[None], patch, batch, predictor, overlap=settings["overlap"],
                                        mode="gaussian", sigma_scale=settings["sigma_scale"], sw_device=device,
                                        device=device)[0].cpu()
    return {"SegStudies": lambda: window(fn, image_czyx, device=device, divisor=divisor,
                                         progress=lambda done, total: after_batch(fn.batches[-1])),
            "MONAI": monai}


def compare(image_zyx: np.ndarray, net, settings: dict, device: torch.device, repeats: int) -> dict:
    """Per method: wall time, its floor and the network's time inside the run (the round of least wall time of
    `repeats`), and how far MONAI's probabilities and labels are from SegStudies'.

    The floor runs the same batches through the network on the first window's crop, nothing else. On the CPU,
    which others may share, batches of the method are followed by a bare pass, timed apart and taken off the
    method's time, so that both meet the same load: every batch for SegStudies (its floor is their sum), one in
    PEER_FLOOR_EVERY for MONAI (a peer, not a target: its floor is their time per window times its windows, which
    spares the full run most of two passes). On CUDA, where stopping to time one pass would stall the queue, the
    floor runs alone after each method."""
    image = torch.from_numpy(image_zyx[None])
    patch, on_cpu = settings["patch_zyx"], device.type == "cpu"
    fn, bare = NetFn(net, device, settings["precision"]), NetFn(net, device, settings["precision"])
    crop = image[:, :patch[0], :patch[1], :patch[2]]
    inputs = {b: crop.expand(b, *crop.shape).contiguous().to(device) for b in range(1, settings["batch"] + 1)}
    every, calls, spent = [0], [0], [0.0]  # pair one batch in `every` (0: none)

    def pair(b: int) -> None:
        calls[0] += 1
        if every[0] and (calls[0] - 1) % every[0] == 0:
            began = time.perf_counter()
            bare(inputs[b])
            spent[0] += time.perf_counter() - began

    def floor():
        for b in fn.batches:
            bare(inputs[b])
    small = image[:, :patch[0] * 3 // 2, :patch[1] * 3 // 2]
    for run in methods(fn, small, settings, device, net.divisor, pair).values():  # imports, allocator: untimed
        timed(run, device)
    best, outputs = {}, {}
    for round_index in range(repeats):
        for name, run in methods(fn, image, settings, device, net.divisor, pair).items():
            fn.reset()
            bare.reset()
            every[0] = (1 if name == "SegStudies" else PEER_FLOOR_EVERY) if on_cpu else 0
            calls[0], spent[0] = 0, 0.0
            wall, out = timed(run, device)
            if not on_cpu:
                timed(floor, device)
            row = {"wall_s": wall - spent[0], "forward_s": fn.forward_seconds(), "windows": sum(fn.batches),
                   "floor_s": bare.forward_seconds() / sum(bare.batches) * sum(fn.batches), "floor_every": every[0]}
            if name not in best or row["wall_s"] < best[name]["wall_s"]:
                best[name] = row
            if round_index == 0:
                outputs[name] = out
            del out
            print(f"  {name}: {row['wall_s']:.2f} s, floor {row['floor_s']:.2f} s, {row['windows']} windows",
                  file=sys.stderr, flush=True)
    ours, theirs = outputs["SegStudies"], outputs["MONAI"]
    best["MONAI"]["max_abs_dp"] = float((ours - theirs).abs_().max())
    best["MONAI"]["labels_agree"] = float((ours.argmax(0) == theirs.argmax(0)).double().mean())
    return best


def precision_compare(image_zyx: np.ndarray, net, settings: dict, device: torch.device, repeats: int) -> dict:
    """CUDA only: SegStudies' sliding window in float32 and in float16 (best of `repeats`), labels agreeing."""
    rows, labels = {}, {}
    for precision in ("float32", "float16"):
        fn = NetFn(net, device, precision)
        run = methods(fn, torch.from_numpy(image_zyx[None]), settings, device, net.divisor, lambda b: None)
        timed(run["SegStudies"], device)  # warm-up: cuDNN picks its kernels for this precision
        walls = []
        for _ in range(repeats):
            wall, out = timed(run["SegStudies"], device)
            walls.append(wall)
        rows[precision], labels[precision] = min(walls), out.argmax(0)
    return {**rows, "labels_agree": float((labels["float32"] == labels["float16"]).double().mean())}


def write_inputs(folder: Path, image_zyx: np.ndarray, plan: dict, net) -> tuple[Path, Path]:
    """The CT-sized input as an int16 NIfTI (CT's usual storage) and the checkpoint of `net` with `plan`."""
    from SegCore.io.images import write_image
    from SegCore.training.checkpoint import capture_rng_state, checkpoint_meta, save_checkpoint
    from SegCore.volume import Volume

    image_path, checkpoint = folder / "ct.nii.gz", folder / "model.pt"
    hu = np.clip(np.rint(image_zyx * 200), -1024, 3071).astype(np.int16)
    write_image(Volume.create(hu, spacing_xyz_mm=(0.7, 0.7, 1.0)), image_path)
    save_checkpoint(checkpoint, model_state=net.state_dict(), epoch=1, step=0, best_metric=None, history=[],
                    rng_state=capture_rng_state(), meta=checkpoint_meta(plan))
    return image_path, checkpoint


# Runs one command and prints its wall time and peak RSS. A child's ru_maxrss starts from the RSS of the process
# that forked it (exec records the old address space's peak), so the measured process must be forked by this small,
# fresh launcher, never by the benchmark, which holds the whole volume.
LAUNCHER = """import json, resource, subprocess, sys, time
began = time.perf_counter()
code = subprocess.call(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"wall_s": time.perf_counter() - began, "peak_rss_bytes": peak, "code": code}))"""


def process(command: list[str], threads: int) -> tuple[dict, list[str]]:
    """({wall_s, peak_rss_bytes}, the command's stdout lines) of one fresh process, run by LAUNCHER."""
    env = {**os.environ, **{name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], stdout=subprocess.PIPE, text=True, env=env,
                          check=True)
    *lines, last = done.stdout.strip().splitlines()
    measured = json.loads(last)
    code = measured.pop("code")
    if code:
        raise RuntimeError(f"exit code {code}: {' '.join(command)}")
    return measured, lines


def file_to_file(image_path: Path, checkpoint: Path, settings: dict, device: torch.device, threads: int) -> dict:
    """`segcore predict` on the CT file in one fresh process: `child_file`'s report, the process's wall time and
    its peak RSS. (CUDA: the command's "auto" mirroring runs; the floor counts the windows it really ran.)"""
    command = ["predict", "--model", str(checkpoint), "--input", str(image_path), "--output",
               str(image_path.with_name("label.nii.gz")), "--device", device.type, "--batch", str(settings["batch"]),
               "--overlap", str(settings["overlap"])]
    measured, lines = process([sys.executable, str(Path(__file__).resolve()), "--child-file", json.dumps(command),
                               "--device", device.type, "--threads", str(threads)], threads)
    report = json.loads(lines[-1])
    return {**report, **measured, "wall_s": measured["wall_s"] - report["spent_s"]}  # without the floor's passes


def child_file(args) -> int:
    """Run `segcore predict` (the CLI's own code, in this process) and print one JSON line: its time, windows, the
    network's time inside it and, on the CPU, a floor paired with it. Every network call is seen through global
    module hooks (no wrapper): one batch in PEER_FLOOR_EVERY is followed by a bare pass of the same module on its
    first input, timed apart and taken off the total."""
    torch.set_num_threads(args.threads)
    import SegCore.inference  # noqa: F401  (the command's imports happen before the RSS reading)
    from SegCore.cli import main as segcore
    from SegCore.models import MODELS

    networks, paired = tuple(spec.builder for spec in MODELS.values()), args.device[0] == "cpu"
    log = {"windows": 0, "calls": 0, "forward_s": 0.0, "floor_s": 0.0, "floor_windows": 0, "spent_s": 0.0}
    state = {"bare": False, "began": 0.0, "inputs": {}}

    def before(module, inputs):
        if type(module) in networks and not state["bare"]:
            state["began"] = time.perf_counter()

    def after(module, inputs, output):
        if type(module) not in networks or state["bare"]:
            return
        ended, b = time.perf_counter(), int(inputs[0].shape[0])
        log["forward_s"] += ended - state["began"]
        log["windows"], log["calls"] = log["windows"] + b, log["calls"] + 1
        if paired and (log["calls"] - 1) % PEER_FLOOR_EVERY == 0:
            x = state["inputs"].setdefault(b, inputs[0].clone())
            state["bare"] = True
            began = time.perf_counter()
            module(x)
            log["floor_s"] += time.perf_counter() - began
            state["bare"] = False
            log["floor_windows"] += b
            log["spent_s"] += time.perf_counter() - ended
    torch.nn.modules.module.register_module_forward_pre_hook(before)
    torch.nn.modules.module.register_module_forward_hook(after)
    status = Path("/proc/self/status").read_text()  # the RSS now (this process's own ru_maxrss is the forker's)
    after_imports = int(status.split("VmRSS:")[1].split()[0]) * 1024
    began = time.perf_counter()
    code = segcore(json.loads(args.child_file))
    total = time.perf_counter() - began - log["spent_s"]
    print(json.dumps({**log, "code": code, "total_s": total, "forward_s": log["forward_s"] if paired else None,
                      "after_imports_bytes": after_imports}))
    return code


def child_stages(args) -> int:
    """Run `segcore predict` with the real network at every STAGE_NET_EVERY-th window only (the others get
    cheap logits: the input's first channel scaled per class) and print one JSON line: the maximum VmRSS in
    each stage (STAGES: set as the named functions start and end; sampled every 2 ms by a thread)."""
    import importlib
    import threading

    torch.set_num_threads(args.threads)
    import SegCore.inference  # noqa: F401
    from SegCore.cli import main as segcore
    from SegCore.models import MODELS

    def rss() -> int:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024

    peaks, stage, calls = {"after imports": rss()}, ["start"], [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.002):
            peaks[stage[0]] = max(peaks.get(stage[0], 0), rss())

    def staged(function, during: str, after: str):
        def run(*a, **k):
            stage[0] = during
            try:
                return function(*a, **k)
            finally:
                stage[0] = after
        return run

    for module_name, name, during, after in STAGES:
        owner = importlib.import_module(module_name)
        *outer, attribute = name.split(".")
        owner = getattr(owner, outer[0]) if outer else owner
        setattr(owner, attribute, staged(getattr(owner, attribute), during, after))
    classes = {}

    def stand_in(forward):
        def run(self, x):
            calls[0] += 1
            if (calls[0] - 1) % STAGE_NET_EVERY == 0:
                out = forward(self, x)
                classes[type(self)] = (out[0] if isinstance(out, (list, tuple)) else out).shape[1]
                return out
            scale = torch.linspace(-1, 1, classes[type(self)], device=x.device).view(1, -1, 1, 1, 1)
            return x[:, :1] * scale
        return run

    for spec in MODELS.values():
        if isinstance(spec.builder, type):
            spec.builder.forward = stand_in(spec.builder.forward)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    began = time.perf_counter()
    code = segcore(json.loads(args.child_stages))
    done.set()
    thread.join()
    print(json.dumps({"code": code, "seconds": time.perf_counter() - began, "windows": calls[0],
                      "peaks_bytes": {k: v for k, v in peaks.items() if k != "start"}}))
    return code


def stages(image_path: Path, checkpoint: Path, settings: dict, threads: int) -> list[str]:
    """The RSS table of `child_stages` on the CT file (CPU), with the whole process's peak (ru_maxrss)."""
    command = ["predict", "--model", str(checkpoint), "--input", str(image_path), "--output",
               str(image_path.with_name("label.nii.gz")), "--device", "cpu", "--batch", str(settings["batch"]),
               "--overlap", str(settings["overlap"])]
    measured, lines = process([sys.executable, str(Path(__file__).resolve()), "--child-stages", json.dumps(command),
                               "--threads", str(threads)], threads)
    report = json.loads(lines[-1])
    out = [f"{report['windows']} windows, the network at every {STAGE_NET_EVERY}th, {report['seconds']:.1f} s; "
           f"peak RSS of the whole process {measured['peak_rss_bytes'] / MB:.0f} MB", "",
           "| stage | peak RSS (MB) |", "|---|---|"]
    out += [f"| {name} | {value / MB:.0f} |" for name, value in report["peaks_bytes"].items()]
    return out


def file_lines(report: dict) -> list[str]:
    """The file-to-file table of `report["file"]`, with the sentence that explains it."""
    lines = ["File to file on the CT-sized input: `segcore predict` reads an int16 .nii.gz and writes the uint8 "
             ".nii.gz label map, in a fresh process; in the process: the command's own time (`SegCore.cli.main`), "
             "without interpreter start-up and imports. Floor: on the CPU paired in that process (one batch in "
             f"{PEER_FLOOR_EVERY} followed by a bare pass, per window times its windows); on CUDA the floor above "
             "per window times its windows.", "",
             "| device | windows | whole process (s) | in the process (s) | floor (s) | whole / floor "
             "| in the process / floor | forward inside (s) | beyond forward | peak RSS (MB) | RSS after imports (MB) "
             "| float32 input (MB) | peak / input |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for device, f in report["file"].items():
        inside = (f"{f['forward_s']:.2f} | {100 * (1 - f['forward_s'] / f['total_s']):.1f} %"
                  if f["forward_s"] is not None else " | ")
        lines.append(f"| {device} | {f['windows']} | {f['wall_s']:.2f} | {f['total_s']:.2f} | {f['floor_s']:.2f} "
                     f"| {f['wall_s'] / f['floor_s']:.3f} | {f['total_s'] / f['floor_s']:.3f} | {inside} "
                     f"| {f['peak_rss_bytes'] / MB:.0f} | {f['after_imports_bytes'] / MB:.0f} "
                     f"| {f['input_bytes'] / MB:.0f} | {f['peak_rss_bytes'] / f['input_bytes']:.2f} |")
    return lines


def section(report: dict, args, command: str) -> str:
    from benchmarks.metrics import lscpu_machine, version

    s = next(iter(report["settings"].values()))
    per_device = ", ".join(f"{d}: {v['batch']} window(s) per forward pass, {v['precision']}"
                           for d, v in report["settings"].items())
    lines = ["## Inference", "",
             f"Machine: {lscpu_machine()}, {report['ram_gb']:.0f} GB RAM, Python {platform.python_version()}, "
             f"torch {torch.__version__} ({report['threads']} threads: `torch.get_num_threads()`), numpy "
             f"{np.__version__}. Versions: SegStudies {version('SegCore')}, MONAI {version('monai')}.",
             f"Command: `{command}` (the best of {args.repeats} run(s) per method). Load average (1 min) before and "
             f"after: {report['load'][0]:.1f}, {report['load'][1]:.1f} on {os.cpu_count()} CPUs.",
             f"Network: `{args.model}` with its `small` arguments ({report['parameters']:,} parameters), seeded, "
             f"untrained, eval, torch.inference_mode. Settings: patch {'x'.join(map(str, s['patch_zyx']))} (z, y, "
             f"x), overlap {s['overlap']}, Gaussian sigma {s['sigma_scale']} x side, no mirroring; {per_device}.",
             "Floor: the same batches through the network alone. On the CPU batches of the method are followed by "
             "a bare pass, timed apart and not counted in the method's time, so both meet the same load: every "
             f"batch of SegStudies, one in {PEER_FLOOR_EVERY} of MONAI's (marked *: its floor is their time per "
             "window times its windows); on CUDA the floor runs after each method. Forward inside: the network's "
             "own time within the method's run; beyond forward: the rest of the run (crops, softmax, stitching) "
             "as a share of it.", "",
             "| device | input (z, y, x) | method | windows | wall (s) | floor (s) | wall / floor "
             "| forward inside (s) | beyond forward | max abs. prob. difference from SegStudies | labels agreeing |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (device, name), rows in report["compare"].items():
        for method, r in rows.items():
            extra = f"{r['max_abs_dp']:.1e} | {100 * r['labels_agree']:.4f} %" if "max_abs_dp" in r else " | "
            sampled = "*" if r["floor_every"] > 1 else ""
            lines.append(f"| {device} | {name} {'x'.join(map(str, report['shapes'][name]))} | {method} "
                         f"| {r['windows']} | {r['wall_s']:.2f} | {r['floor_s']:.2f}{sampled} "
                         f"| {r['wall_s'] / r['floor_s']:.3f} | {r['forward_s']:.2f} "
                         f"| {100 * (1 - r['forward_s'] / r['wall_s']):.1f} % | {extra} |")
    lines += ["", *file_lines(report), "", "Targets:", ""]
    verdict = {True: "met", False: "not met"}
    for (device, name), rows in report["compare"].items():
        ratio = rows["SegStudies"]["wall_s"] / rows["SegStudies"]["floor_s"]
        lines.append(f"- sliding window within 3 % of the floor, {device}, {name}: {ratio:.3f}x, "
                     f"{verdict[ratio <= 1.03]}")
    for device, f in report["file"].items():
        ratio, memory = f["total_s"] / f["floor_s"], f["peak_rss_bytes"] / f["input_bytes"]
        lines.append(f"- file to file within 1.25x of the floor, {device}: {ratio:.3f}x in the process "
                     f"({f['wall_s'] / f['floor_s']:.3f}x as a whole process), "
                     f"{verdict[ratio <= 1.25]}; peak RAM below 3x the float32 input: {memory:.2f}x, "
                     f"{verdict[memory < 3]}")
    if report["precision"]:
        p = report["precision"]
        speed = p["float32"] / p["float16"]
        lines.append(f"- CUDA float16 at least 2x faster than float32: {p['float32']:.2f} s / {p['float16']:.2f} s "
                     f"= {speed:.2f}x, {verdict[speed >= 2]}; labels agreeing {100 * p['labels_agree']:.4f} % "
                     f"(> 99.9 %: {verdict[p['labels_agree'] > 0.999]})")
    else:
        lines.append("- CUDA float16 against float32 (at least 2x faster, > 99.9 % of labels agreeing): not run, "
                     "no CUDA device here")
    return "\n".join([*lines, ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"] if cuda else ["cpu"])
    parser.add_argument("--model", choices=("vnet", "unet3d"), default="vnet")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (the best is kept)")
    parser.add_argument("--batch", type=int, default=None, help="windows per forward pass (default: the device's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="small inputs and patch; RESULTS.md is not written")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not update RESULTS.md")
    parser.add_argument("--file-only", action="store_true",
                        help="only the CT-sized file-to-file run (CPU: its paired floor); prints its table, writes "
                             "nothing")
    parser.add_argument("--stages", action="store_true",
                        help="RSS per stage of the CT file to file (CPU), the network at every "
                             f"{STAGE_NET_EVERY}th window only; prints its table, writes nothing")
    parser.add_argument("--child-file", help=argparse.SUPPRESS)  # JSON list: the `segcore` arguments
    parser.add_argument("--child-stages", help=argparse.SUPPRESS)  # the same, for --stages
    args = parser.parse_args(argv)
    if args.child_file:
        return child_file(args)
    if args.child_stages:
        return child_stages(args)
    torch.set_num_threads(args.threads)
    from SegCore.inference.settings import inference_settings
    from SegCore.models import build_model
    from SegCore.training.checkpoint import checkpoint_meta

    inputs, patch = (QUICK_INPUTS, QUICK_PATCH_ZYX) if args.quick else (INPUTS, PATCH_ZYX)
    report = {"compare": {}, "file": {}, "settings": {}, "precision": None, "shapes": inputs,
              "threads": torch.get_num_threads(),
              "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9}
    print(f"torch threads: {report['threads']}", file=sys.stderr)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="segcore-inference-bench-") as tmp:
        plan = make_plan(Path(tmp), args.model, patch)
        torch.manual_seed(0)
        net = build_model(plan["model"]["name"], **plan["model"]["arguments"]).eval()
        report["parameters"] = sum(p.numel() for p in net.parameters())
        for device_name in args.device:
            device = torch.device(device_name)
            settings = inference_settings(checkpoint_meta(plan), {"tta": False, "batch": args.batch},
                                          device_type=device.type)
            report["settings"][device_name] = settings
            net.to(device)
            for name, shape in inputs.items():
                if (args.file_only or args.stages) and (name != "CT-sized" or device.type != "cpu"):
                    continue  # the CPU's file run pairs its own floor; CUDA's needs the comparison's
                print(f"[{device_name}] {name} {shape}", file=sys.stderr, flush=True)
                image = make_image(shape)
                if args.stages:
                    image_path, checkpoint = write_inputs(Path(tmp), image, plan, net.cpu())
                    print(f"load average (1 min) before: {load_before:.1f}; float32 input {image.size * 4 / MB:.0f} "
                          "MB", *stages(image_path, checkpoint, settings, args.threads),
                          f"load average (1 min) after: {os.getloadavg()[0]:.1f}", sep="\n")
                    return 0
                if not args.file_only:
                    report["compare"][(device_name, name)] = compare(image, net, settings, device, args.repeats)
                if name == "CT-sized" and device.type == "cuda":
                    report["precision"] = precision_compare(image, net, settings, device, args.repeats)
                if name == "CT-sized":
                    image_path, checkpoint = write_inputs(Path(tmp), image, plan, net.cpu())
                    net.to(device)
                    f = file_to_file(image_path, checkpoint, settings, device, args.threads)
                    per_window = (f["floor_s"] / f["floor_windows"] if f["floor_windows"] else
                                  report["compare"][(device_name, name)]["SegStudies"]["floor_s"]
                                  / report["compare"][(device_name, name)]["SegStudies"]["windows"])
                    f.update(floor_s=per_window * f["windows"], input_bytes=image.size * 4)
                    report["file"][device_name] = f
                del image
    report["load"] = (load_before, os.getloadavg()[0])
    command = " ".join([os.path.relpath(sys.executable) if sys.executable.startswith(str(ROOT)) else sys.executable,
                        "benchmarks/inference.py", *(argv if argv is not None else sys.argv[1:])])
    if args.file_only:
        print("\n".join([f"Command: `{command}`; load average (1 min) before and after: {report['load'][0]:.1f}, "
                         f"{report['load'][1]:.1f} on {os.cpu_count()} CPUs.", "", *file_lines(report)]))
        return 0
    text = section(report, args, command)
    print(text)
    if not (args.quick or args.no_write):
        from benchmarks.metrics import replace_section
        from SegCore.atomic import atomic_file

        results = replace_section(RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n", text)
        with atomic_file(RESULTS) as tmp_path:
            tmp_path.write_text(results)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
