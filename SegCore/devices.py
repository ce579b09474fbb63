"""Where tensors run: the one place that turns `auto | cpu | cuda | cuda:N | mps` into a checked device.

    info = resolve_device("auto")        # cuda:0 if PyTorch sees a GPU, else mps, else cpu
    model.to(info.name)                  # "cuda:0", "mps" or "cpu"
    print(info.summary())                # "cpu (AMD EPYC, 2 cores, 23.5 GiB RAM, 21.0 GiB free)"
    list_devices()                       # every device of this machine, CPU first (the Slicer module lists them)

A device that does not exist is refused with a `SegCoreError` listing the ones that do. `DeviceInfo` also holds
what a trainer needs for mixed precision (`supports_bf16`, `amp_dtype`, `needs_grad_scaler`). torch is imported
inside the functions, so importing this module is free (Slicer imports SegCore at start-up).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass

from SegCore.errors import SegCoreError

VALID_FORMS = "auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"
GIB = 2 ** 30
# bfloat16 runs natively from Ampere (compute capability 8.0) on; older GPUs emulate it slowly.
BF16_MIN_CAPABILITY = (8, 0)
_FORM = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceInfo:
    """One device, as found on this machine.

    name: the torch device string ("cpu", "cuda:0", "mps"); kind: "cpu", "cuda" or "mps"; index: the CUDA
    index (None otherwise). description: the GPU's name, or the processor's ("AMD EPYC, 16 cores").
    total_memory_bytes: the GPU's memory, the RAM for the CPU (None where it cannot be read); free_memory_bytes:
    what is free now where PyTorch or the OS can tell, else None. compute_capability: (major, minor) on CUDA.
    supports_bf16: bfloat16 arithmetic runs natively (CUDA compute capability >= 8.0; False on CPU, where it is
    emulated, and on MPS, where SegCore does not use mixed precision). supports_fp16: float16 autocast works
    (every CUDA GPU).
    """

    name: str
    kind: str
    index: int | None
    description: str
    total_memory_bytes: int | None
    free_memory_bytes: int | None
    compute_capability: tuple[int, int] | None = None
    supports_bf16: bool = False
    supports_fp16: bool = False

    @property
    def amp_dtype(self) -> str | None:
        """The autocast dtype for training: "bfloat16" (CUDA, Ampere on), "float16" (older CUDA) or None
        (float32: CPU and MPS; mixed precision is CUDA only, as DESIGN.md says)."""
        if self.kind != "cuda":
            return None
        return "bfloat16" if self.supports_bf16 else "float16" if self.supports_fp16 else None

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling (torch.amp.GradScaler); bfloat16 ones do not."""
        return self.amp_dtype == "float16"

    def torch_device(self):
        import torch

        return torch.device(self.name)

    def summary(self) -> str:
        """One line for people: "cpu (AMD EPYC, 2 cores, 23.5 GiB RAM, 21.0 GiB free)"; a GPU reads
        "cuda:0 (its name, total GiB, free GiB free)"."""
        parts = [self.description]
        if self.total_memory_bytes is not None:
            parts.append(f"{_gib(self.total_memory_bytes)}{' RAM' if self.kind == 'cpu' else ''}")
        if self.free_memory_bytes is not None:
            parts.append(f"{_gib(self.free_memory_bytes)} free")
        return f"{self.name} ({', '.join(parts)})"

    def as_dict(self) -> dict:
        """JSON-able fields, `amp_dtype` included (for `--json` output, run folders and the Slicer module)."""
        return {**asdict(self), "compute_capability": (list(self.compute_capability)
                                                       if self.compute_capability else None),
                "amp_dtype": self.amp_dtype}


def parse_device(choice: str, *, option: str = "--device") -> tuple[str, int | None]:
    """Check the spelling only (no torch): "auto" -> ("auto", None), "cuda:1" -> ("cuda", 1), "mps" -> ("mps", None).

    Raises SegCoreError naming the valid forms for anything else ("gpu", "cuda:x", "cpu:0").
    """
    match = _FORM.match(str(choice).strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise SegCoreError(f"unknown device {choice!r}", fix=f"give {option} one of {VALID_FORMS}")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def resolve_device(choice: str = "auto", *, option: str = "--device") -> DeviceInfo:
    """The device `choice` names, checked to exist on this machine.

    auto = cuda:0 if PyTorch sees a CUDA GPU, else mps if available, else cpu; "cuda" = cuda:0.
    `option` is how the user gave the choice, used in the fix ("--device" on the command line).
    Raises SegCoreError for a misspelt device, or one this machine lacks, listing the devices it has.
    """
    kind, index = parse_device(choice, option=option)
    import torch

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "auto":
        kind, index = ("cuda", 0) if cuda_count else ("mps", None) if _mps_available() else ("cpu", None)
    if kind == "cuda":
        index = 0 if index is None else index
        if index >= cuda_count:
            raise _missing(str(choice).strip().lower(), _why_no_cuda(torch) if cuda_count == 0 else None, option)
        return _cuda_info(index)
    if kind == "mps":
        if not _mps_available():
            raise _missing("mps", "PyTorch finds no Apple GPU (MPS needs macOS on Apple silicon)", option)
        return _mps_info()
    return _cpu_info()


def list_devices(*, free_memory: bool = True) -> list[DeviceInfo]:
    """Every device of this machine: the CPU, each CUDA GPU (cuda:0, cuda:1, ...), then MPS if available.

    free_memory: read each GPU's free memory (torch.cuda.mem_get_info opens a CUDA context on every GPU,
    a few hundred MiB each; pass False to skip it).
    """
    import torch

    devices = [_cpu_info()]
    if torch.cuda.is_available():
        devices += [_cuda_info(i, free_memory=free_memory) for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append(_mps_info())
    return devices


def _missing(name: str, why: str | None, option: str) -> SegCoreError:
    available = list_devices()
    has = ", ".join(d.summary() for d in available)
    fix = " or ".join(f"{option} {d.name}" for d in [*available[1:], available[0]])
    return SegCoreError(f"{name} requested, but {why + '; ' if why else ''}this machine has {has}",
                        fix=f"use {fix}")


def _why_no_cuda(torch) -> str:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this PyTorch is a CPU-only build (torch {torch.__version__})"
    return "PyTorch finds no CUDA GPU (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)"


def _cuda_info(index: int, *, free_memory: bool = True) -> DeviceInfo:
    import torch

    props = torch.cuda.get_device_properties(index)
    free = None
    if free_memory:
        try:
            free = int(torch.cuda.mem_get_info(index)[0])
        except RuntimeError:  # a GPU in exclusive mode held by another process
            free = None
    capability = (int(props.major), int(props.minor))
    return DeviceInfo(f"cuda:{index}", "cuda", index, str(props.name), int(props.total_memory), free, capability,
                      supports_bf16=capability >= BF16_MIN_CAPABILITY, supports_fp16=True)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _mps_info() -> DeviceInfo:
    import torch

    # Apple GPUs share the RAM; PyTorch's recommended working-set size is the useful limit.
    recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
    total = int(recommended()) if recommended is not None else ram_bytes()[0]
    return DeviceInfo("mps", "mps", None, f"Apple GPU ({platform.machine()})", total, None, supports_fp16=True)


def _cpu_info() -> DeviceInfo:
    total, free = ram_bytes()
    cores = os.cpu_count()
    return DeviceInfo("cpu", "cpu", None, f"{_cpu_name()}{f', {cores} cores' if cores else ''}", total, free)


def _cpu_name() -> str:
    """The processor's name: /proc/cpuinfo's "model name" on Linux, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def ram_bytes() -> tuple[int | None, int | None]:
    """(total, available) RAM in bytes: os.sysconf and /proc/meminfo's MemAvailable (POSIX), the Win32 API on
    Windows; None for what cannot be read."""
    if os.name == "nt":
        return _windows_ram_bytes()
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    free = None
    try:  # MemAvailable counts reclaimable caches, which SC_AVPHYS_PAGES does not
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            free = None
    return total, free


def _windows_ram_bytes() -> tuple[int | None, int | None]:
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total", ctypes.c_ulonglong),
                    ("available", ctypes.c_ulonglong), ("total_page", ctypes.c_ulonglong),
                    ("available_page", ctypes.c_ulonglong), ("total_virtual", ctypes.c_ulonglong),
                    ("available_virtual", ctypes.c_ulonglong), ("available_extended", ctypes.c_ulonglong)]

    status = MemoryStatus()
    status.length = ctypes.sizeof(MemoryStatus)
    try:
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.total), int(status.available)
    except (AttributeError, OSError):
        pass
    return None, None


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.1f} GiB"


def prefer_passive_openmp() -> bool:
    """For training: let torch's OpenMP threads sleep, not spin, while they wait (OMP_WAIT_POLICY=PASSIVE).

    Spinning threads hold the cores that the data-loader workers need, which costs a fed step more wall time
    than the workers' own CPU (2 cores, a 2.5D sampler: 8-17 % of step time with spinning, 6-9 % without; the
    network's steps at the same speed: benchmarks/RESULTS.md, "Data pipeline"). Only before torch is imported
    (the OpenMP runtime reads the variable once, when it loads) and never over a value the user set. Returns
    whether it set it."""
    import sys

    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
