"""DistributedDataParallel under the real torchrun: 2 CPU processes with gloo, against one process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from training_runs import ENV, REPO, config, phantom, run_train, status, weights

from SegCore.training.distributed import DistInfo, all_reduce_sum, any_rank, init_distributed, same_on_all_ranks

# GroupNorm, no dropout, and a loss that is a mean over equal-sized samples: the mean of two ranks' gradients is
# then the gradient of the global batch, so 2 x batch 2 must equal 1 x batch 4 up to float rounding.
DDP = {"model": {"name": "segresnet", "arguments": {"init_filters": 4, "num_groups": 2, "blocks_down": [1, 1],
                                                     "blocks_up": [1]}},
       "loss": {"name": "cross_entropy", "arguments": {}},
       "augmentation": {"flip_p": 0.5, "rotate_p": 0, "scale_p": 0, "noise_p": 0.5, "gamma_p": 0},
       "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
       "training": {"epochs": 2, "steps_per_epoch": 8, "batch_size": 2, "workers": 0, "checkpoint_every_steps": 1,
                    "deterministic": True, "clip_grad_norm": 0}}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in process groups of their own)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*arguments) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "SegCore", "train", "--device", "cpu", *map(str, arguments)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom(tmp_path_factory.mktemp("la") / "la", cases=4, size=32)


def test_single_process_helpers_do_nothing_distributed():
    assert init_distributed("cpu") == DistInfo() or "WORLD_SIZE" in os.environ
    info = DistInfo()
    assert all_reduce_sum([1.0, 2.0], info, "cpu").tolist() == [1.0, 2.0]
    assert any_rank(True, info, "cpu") and not any_rank(False, info, "cpu")
    assert same_on_all_ranks({"w": torch.ones(2)}, info, "cpu")


def test_torchrun_two_processes_match_one_process_and_resume(tmp_path, data):
    cfg = config(tmp_path, **DDP)
    single = run_train("--data", data, "--out", tmp_path / "single", "--config", cfg, "--batch", "4")
    assert single.returncode == 0, single.stderr
    # Kill the whole torchrun job (agent and both ranks) with SIGKILL after a step checkpoint ...
    run = tmp_path / "ddp"
    job = subprocess.Popen(torchrun("--data", data, "--out", run, "--config", cfg), env=ENV, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 180
    while time.monotonic() < end:
        assert job.poll() is None, job.communicate()
        try:
            if (status(run).get("step") or 0) >= 3 and status(run)["state"] == "training":
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    for pid in [job.pid, *descendants(job.pid)]:
        os.kill(pid, signal.SIGKILL)
    job.communicate()
    assert status(run)["state"] == "training" and (status(run).get("step") or 0) < 16
    # ... then resume under torchrun.
    resumed = subprocess.run(torchrun("--data", data, "--out", run, "--config", cfg, "--resume"), env=ENV, cwd=REPO,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert status(run)["state"] == "finished"
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "weights bit-identical on all 2 ranks" in log
    assert "world size 2" in log
    ddp, one = weights(run / "last.pt"), weights(tmp_path / "single" / "last.pt")
    assert ddp.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-6)
    # Only rank 0 writes: the run folder holds the run's files and the cache, nothing per rank.
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["best.pt", "cache", "curves.png", "history.csv", "last.pt", "plan.json", "status.json", "train.log"])
