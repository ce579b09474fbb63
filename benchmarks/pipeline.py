"""The data pipeline's share of a training step (`benchmarks/training.py --part pipeline`).

For each sampler (3D patches, 2D slices, 2.5D stacks of 3) one small real network step (forward, cross-entropy,
backward, SGD) runs on the CPU in two loops, alternated `--pipeline-repeats` times: fed by the real pipeline
(`build_loader` with `default_workers()` worker processes, the memory-mapped case cache, the default
augmentation), and fed from batches already in memory as tensors. Two shares are reported: of wall time,
1 - (in-memory step time) / (pipeline step time) round by round, where each epoch starts the workers' queue
afresh as training does; and of CPU time (see `measure`), which stays meaningful on a machine others share.
Data: a decathlon phantom (4 channels, 4 labels).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

SAMPLERS = (
    # name, spec, network, batch, steps per timed block (an epoch)
    ("3D patch", {"kind": "patch3d", "patch_zyx": [32, 64, 64]}, "unet3d", 2, 10),
    ("2D slice", {"kind": "slice2d", "axis": "axial", "size_yx": [128, 128]}, "unet2d", 16, 10),
    ("2.5D stack (k=3)", {"kind": "stack25d", "axis": "axial", "k": 3, "size_yx": [128, 128]}, "unet2d", 16, 10),
)
CASES, CASE_ZYX = 6, (48, 160, 160)


def _step(model, optimizer, images, labels) -> float:
    import torch.nn.functional as F

    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _time_loop(model, optimizer, batches) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) per step."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = 0
    for images, labels in batches:
        _step(model, optimizer, images, labels)
        count += 1
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def measure(cached, name: str, spec: dict, network: str, batch: int, steps: int, repeats: int, workers: int) -> dict:
    """Step times fed by the pipeline and from memory (medians of `repeats` alternated rounds of `steps` steps
    each; every fed block is a whole epoch, so it pays the workers' start-of-epoch latency), and the pipeline's share.

    share_wall = median over rounds of 1 - memory / pipeline wall time per step. share_cpu counts CPU seconds
    instead, which other processes on a shared machine disturb far less: (one batch made on one core) / (that +
    one in-memory step), the work the workers take from a network step that already fills the cores. The training
    process's own extra CPU per fed step (receiving batches) is reported beside it, as `extra_cpu_s`.
    """
    import itertools

    import torch

    from SegCore.models import MODELS, build_model
    from SegCore.training.data import Sampler, build_loader
    from SegCore.transforms import Augmentation

    sampler = Sampler(spec)
    torch.manual_seed(0)
    model = build_model(network, **{**MODELS[network].small, "in_channels": sampler.input_channels(4),
                                    "out_channels": 4})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loader = build_loader(cached, sampler, Augmentation({}), batch_size=batch, steps_per_epoch=steps, seed=0,
                          workers=workers)
    inline = build_loader(cached, sampler, Augmentation({}), batch_size=batch, steps_per_epoch=steps, seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    distinct = list(itertools.islice(inline.epoch(0), 8))  # a few distinct batches, cycled: memory stays small
    produce_wall, produce_cpu = [(time.perf_counter() - wall) / len(distinct),
                                 (time.process_time() - cpu) / len(distinct)]
    in_memory = [distinct[i % len(distinct)] for i in range(steps)]
    _time_loop(model, optimizer, in_memory[:2])  # warm-up: first-call allocations
    _time_loop(model, optimizer, loader.epoch(0))  # starts the (persistent) workers
    fed, memory = [], []
    for repeat in range(repeats):
        fed.append(_time_loop(model, optimizer, loader.epoch(repeat + 1)))
        memory.append(_time_loop(model, optimizer, in_memory))
    # short blocks, alternated, compared round by round: load from other processes comes and goes slower than
    # a round, so it cancels in each round's ratio; the median of the rounds' ratios drops the rounds it hit
    fed_s, memory_s = (statistics.median(t[0] for t in runs) for runs in (fed, memory))
    fed_cpu, memory_cpu = (statistics.median(t[1] for t in runs) for runs in (fed, memory))
    share_wall = statistics.median(1 - m[0] / f[0] for f, m in zip(fed, memory, strict=True))
    share_cpu = produce_cpu / (memory_cpu + produce_cpu)
    row = {"sampler": name, "spec": spec, "network": network, "batch": batch, "steps": steps,
           "shape": list(in_memory[0][0].shape), "pipeline_step_s": fed_s, "memory_step_s": memory_s,
           "share_wall": share_wall, "share_cpu": share_cpu, "produce_batch_s": produce_wall,
           "produce_batch_cpu_s": produce_cpu, "step_cpu_s": memory_cpu, "extra_cpu_s": fed_cpu - memory_cpu,
           "fed": fed, "memory": memory}
    print(f"{name}: pipeline {1 / fed_s:.2f} steps/s, in memory {1 / memory_s:.2f} steps/s (wall share "
          f"{100 * row['share_wall']:.1f}%), CPU share {100 * share_cpu:.1f}% (batch {1000 * produce_cpu:.0f} ms CPU, "
          f"step {1000 * memory_cpu:.0f} ms CPU)", file=sys.stderr, flush=True)
    return row


def pipeline_section(args, command: str) -> str:
    """Run every sampler; return the '## Data pipeline' section of RESULTS.md."""
    import numpy as np
    import torch

    from benchmarks.metrics import lscpu_machine
    from SegCore.datasets import open_dataset
    from SegCore.phantoms import write_phantom_dataset
    from SegCore.training.data import CaseCache, default_workers
    from SegCore.transforms import Preprocessing

    repeats = 2 if args.quick else args.pipeline_repeats
    workers = default_workers() if args.workers is None else args.workers
    with tempfile.TemporaryDirectory(prefix="segcore-pipeline-") as folder:
        data = write_phantom_dataset("decathlon", Path(folder) / "data", cases=CASES, seed=0, size_zyx=CASE_ZYX)
        dataset = open_dataset(data)
        pre = Preprocessing([{"name": "reorient"}, {"name": "zscore"}])
        began = time.perf_counter()
        cached = CaseCache(Path(folder) / "cache", pre).prepare(dataset.labelled_cases())
        build_s = time.perf_counter() - began
        began = time.perf_counter()
        CaseCache(Path(folder) / "cache", pre).prepare(dataset.labelled_cases())
        reuse_s = time.perf_counter() - began
        rows = [measure(cached, name, spec, network, batch, 4 if args.quick else args.pipeline_steps or steps,
                        repeats, workers) for name, spec, network, batch, steps in SAMPLERS]
    lines = ["| sampler | network (small) | batch (B, C, *spatial) | steps per block | steps/s, pipeline | steps/s, in "
             "memory | share of wall time | share of CPU time | one batch (CPU ms) | one step (CPU ms) "
             "| extra CPU per fed step, training process (ms) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['sampler']} | {row['network']} | {'x'.join(map(str, row['shape']))} | {row['steps']} "
                     f"| {1 / row['pipeline_step_s']:.2f} | {1 / row['memory_step_s']:.2f} "
                     f"| {100 * row['share_wall']:.1f}% | {100 * row['share_cpu']:.1f}% "
                     f"| {1000 * row['produce_batch_cpu_s']:.0f} | {1000 * row['step_cpu_s']:.0f} "
                     f"| {1000 * row['extra_cpu_s']:.0f} |")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return "\n".join([
        "## Data pipeline", "",
        f"Machine: {lscpu_machine()}, Python {platform.python_version()}, numpy {np.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads in the training process, OpenMP wait policy "
        f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, as `segcore train` sets it); load average after the "
        f"run {load} (other work shared the cores: wall times are noisy, CPU times much less so).",
        f"Command: `{command}`. Median of {repeats} alternated rounds (a block of each loop per round), "
        f"{workers} worker process(es) "
        "(`default_workers()`), default augmentation (`Augmentation({})`), SGD step with cross-entropy.",
        f"Data: {len(cached)} labelled decathlon phantom cases of {'x'.join(map(str, CASE_ZYX))} voxels, 4 "
        f"channels, preprocessed by reorient + z-score into the case cache once ({build_s:.1f} s; a second "
        f"`prepare` that reuses every entry: {1000 * reuse_s:.0f} ms).",
        "Share of wall time = median over rounds of 1 - (step time from tensors in memory) / (step time fed by the "
        "pipeline); each fed block is a whole epoch, so it pays the workers' start-of-epoch latency. Share of CPU "
        "time = (CPU of one batch made on one core) / (that + CPU of one step fed from memory): what the workers take "
        "from a network step that already fills the cores. The last column is the training process's own CPU per "
        "fed step minus per in-memory step (receiving batches; noise of either sign where it is small). Target: "
        f"under 10% for every sampler. Worst here: {100 * max(r['share_wall'] for r in rows):.1f}% of wall time, "
        f"{100 * max(r['share_cpu'] for r in rows):.1f}% of CPU time.", "", *lines, "",
    ])
