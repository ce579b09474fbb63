"""DistributedDataParallel under `torchrun`: PyTorch's own launcher and process group, nothing home-made.

    torchrun --nproc_per_node 2 -m SegCore train --data DIR --out RUN ...     # one machine, 2 processes
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 --nproc_per_node 4 -m SegCore train ...

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each process; `init_distributed`
reads them (a plain run, without them, is world size 1 and never touches torch.distributed). NCCL on GPUs (one
GPU per process: cuda:LOCAL_RANK), gloo on the CPU. Each rank draws its own share of every global batch (the
loader's rank/world_size); gradients are averaged by DDP, validation counts are summed across ranks, and only
rank 0 writes (checkpoints, status, history, log).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from SegCore.errors import SegCoreError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job. rank: global rank (0..world_size-1); local_rank: on this machine;
    backend: 'nccl', 'gloo' or None (not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when WORLD_SIZE and RANK are in the environment (torchrun, or a launcher that sets the same)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank_from_environment() -> int:
    """This process's global rank as torchrun says (0 without torchrun), before the process group exists."""
    return _int_variable("RANK") if launched_by_torchrun() else 0


def _int_variable(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise SegCoreError(f"environment variable {name}={value!r} is not a whole number",
                           fix="start the job with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK") from None


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (nothing to do for a single process).

    device_kind: 'cuda' (NCCL, this process's GPU becomes cuda:LOCAL_RANK) or anything else (gloo).
    Returns DistInfo; call `shutdown` at the end.
    """
    if not launched_by_torchrun() or _int_variable("WORLD_SIZE") <= 1:
        return DistInfo()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise SegCoreError(f"distributed run without {', '.join(missing)} in the environment",
                           fix="start it with torchrun --nproc_per_node N (and --nnodes/--master_addr for nodes)")
    import torch
    import torch.distributed as dist

    rank, world, local = _int_variable("RANK"), _int_variable("WORLD_SIZE"), _int_variable("LOCAL_RANK")
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise SegCoreError(f"LOCAL_RANK {local} needs GPU cuda:{local}, but this machine has "
                               f"{torch.cuda.device_count()} GPU(s)",
                               fix="use --nproc_per_node no larger than the number of GPUs")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank, world, local, backend)


def device_for(info: DistInfo, device_name: str) -> str:
    """The device this rank trains on: cuda:LOCAL_RANK for a distributed CUDA run, else `device_name`."""
    if info.backend == "nccl":
        return f"cuda:{info.local_rank}"
    return device_name


def wrap_model(model, info: DistInfo, device):
    """DistributedDataParallel around `model` when distributed (identity otherwise).

    Parameters are broadcast from rank 0 when wrapped, so every rank starts from the same weights; buffers
    (BatchNorm statistics) are broadcast from rank 0 at each forward. Frozen parameters take no part."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model):
    """The network inside DDP (or `torch.compile`), whose state_dict keys carry no 'module.' prefix."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def all_reduce_sum(values, info: DistInfo, device):
    """Sum a float64 numpy array (or list of numbers) over all ranks; returns a numpy array (a copy)."""
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    if not info.enabled:
        return array.copy()
    import torch
    import torch.distributed as dist

    tensor = torch.as_tensor(array, device=device if info.backend == "nccl" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def any_rank(flag: bool, info: DistInfo, device) -> bool:
    """True when `flag` is true on any rank (so that all ranks stop at the same step)."""
    if not info.enabled:
        return bool(flag)
    return bool(all_reduce_sum([1.0 if flag else 0.0], info, device)[0] > 0)


def same_on_all_ranks(state: dict, info: DistInfo, device) -> bool:
    """True when every rank holds bit-identical tensors in `state` (a state_dict): the SHA-256 of their bytes,
    as four 31-bit words, has the same maximum and minimum over the ranks."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    words = [int.from_bytes(digest.digest()[i:i + 4], "little") & 0x7FFFFFFF for i in range(0, 16, 4)]
    if not info.enabled:
        return True
    import torch.distributed as dist

    where = device if info.backend == "nccl" else "cpu"
    high = torch.tensor(words, dtype=torch.int64, device=where)
    low = high.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return bool(torch.equal(high, low))


def broadcast_object(value, info: DistInfo):
    """Rank 0's `value` on every rank (a small picklable object, e.g. the list of pseudo-labelled cases)."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    holder = [value if info.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo, *, finished: bool = False) -> None:
    """Leave the process group (each rank, at the end or after a failure). Free the DDP wrapper first (see
    `train_from_plan`). finished: every rank got to the end, so a barrier first lets every collective in flight
    complete before the group's threads are joined (after a failure the other ranks may never reach it)."""
    if info.enabled:
        import gc

        import torch.distributed as dist

        if dist.is_initialized():
            gc.collect()  # what still wraps the group (DDP's reducer) dies now, before the group does
            if finished:
                dist.barrier()
            dist.destroy_process_group()
