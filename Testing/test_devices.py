"""SegCore.devices: parsing device names, refusing devices this machine lacks, and what each device reports."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from SegCore import SegCoreError
from SegCore.devices import DeviceInfo, list_devices, parse_device, resolve_device


def segcore_models(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", "models", "--model", "unet2d", "--small", *args],
                          capture_output=True, text=True, timeout=300)


def fake_gpus(monkeypatch, *gpus: tuple[str, int, tuple[int, int]]) -> None:
    """Make torch report these GPUs (name, total bytes, compute capability), each with a quarter of it in use."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(
        name=gpus[i][0], total_memory=gpus[i][1], major=gpus[i][2][0], minor=gpus[i][2][1]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (gpus[i][1] * 3 // 4, gpus[i][1]))


@pytest.mark.parametrize("text, parsed", [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
                                          ("cuda:0", ("cuda", 0)), ("cuda:12", ("cuda", 12)), (" MPS ", ("mps", None))])
def test_valid_forms_parse(text, parsed):
    assert parse_device(text) == parsed


# ids spelt out: a test id "gpu" would be taken for the gpu marker and skipped without CUDA (conftest.py)
@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cuda:", "cuda:-1", "cpu:0", "mps:1", "", "cuda0"],
                         ids=lambda text: f"device={text!r}")
def test_bad_strings_are_refused_listing_the_valid_forms(text):
    with pytest.raises(SegCoreError) as error:
        resolve_device(text)
    message = str(error.value)
    assert repr(text) in message
    for form in ("auto", "cpu", "cuda", "cuda:N", "mps", "--device"):
        assert form in message


def test_cpu_reports_its_processor_and_ram():
    info = resolve_device("cpu")
    assert (info.name, info.kind, info.index, info.amp_dtype, info.needs_grad_scaler) == ("cpu", "cpu", None, None,
                                                                                         False)
    assert info.torch_device() == torch.device("cpu")
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():  # the kernel's own count, an oracle independent of os.sysconf
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()}
        assert info.total_memory_bytes == fields["MemTotal"]
        assert 0 < info.free_memory_bytes <= info.total_memory_bytes
        processor = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith(("model name", "Model", "Hardware")))
        assert info.description.startswith(processor)
    assert info.summary().startswith("cpu (") and "GiB RAM" in info.summary()
    assert json.loads(json.dumps(info.as_dict()))["name"] == "cpu"


def test_auto_prefers_cuda_then_mps_then_cpu():
    expected = ("cuda:0" if torch.cuda.is_available() else
                "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").name == expected
    assert resolve_device().name == expected


def test_a_cuda_index_this_machine_lacks_is_refused_naming_what_it_has():
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"  # cuda:0 without a GPU
    with pytest.raises(SegCoreError) as error:
        resolve_device(missing)
    message = str(error.value)
    assert f"{missing} requested" in message and "this machine has cpu (" in message
    assert "Fix: use" in message and "--device cpu" in message
    if not torch.cuda.is_available() and torch.version.cuda is None:
        assert "CPU-only build" in message


def test_the_message_lists_each_gpu_with_name_and_memory(monkeypatch):
    fake_gpus(monkeypatch, ("NVIDIA H200", 150 * 2 ** 30, (9, 0)))
    with pytest.raises(SegCoreError) as error:
        resolve_device("cuda:3")
    message = str(error.value)
    assert "cuda:3 requested, but this machine has cpu (" in message
    assert "cuda:0 (NVIDIA H200, 150.0 GiB, 112.5 GiB free)" in message
    assert message.endswith("Fix: use --device cuda:0 or --device cpu.")


def test_gpus_and_their_mixed_precision(monkeypatch):
    fake_gpus(monkeypatch, ("Tesla T4", 16 * 2 ** 30, (7, 5)), ("NVIDIA A100", 80 * 2 ** 30, (8, 0)))
    assert resolve_device("cuda").name == "cuda:0"  # bare "cuda" is the first GPU
    assert resolve_device("auto").name == "cuda:0"
    names = [d.name for d in list_devices()]
    assert names[:3] == ["cpu", "cuda:0", "cuda:1"]
    turing, ampere = resolve_device("cuda:0"), resolve_device("cuda:1")
    assert (turing.supports_bf16, turing.amp_dtype, turing.needs_grad_scaler) == (False, "float16", True)
    assert (ampere.supports_bf16, ampere.amp_dtype, ampere.needs_grad_scaler) == (True, "bfloat16", False)
    assert ampere.total_memory_bytes == 80 * 2 ** 30 and ampere.free_memory_bytes == 60 * 2 ** 30
    assert ampere.as_dict()["compute_capability"] == [8, 0]
    assert [d.free_memory_bytes for d in list_devices(free_memory=False)[1:3]] == [None, None]


def test_mps_is_refused_where_there_is_none():
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    with pytest.raises(SegCoreError, match="mps requested.*--device cpu"):
        resolve_device("mps")


def test_cli_refuses_a_missing_or_misspelt_device_in_one_line():
    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    for device, expected in ((missing, f"{missing} requested"), ("gpu", "cuda:N")):
        result = segcore_models("--device", device)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("segcore models: error:") and expected in lines[0]
        assert result.stdout == ""  # refused before any table


def test_cli_names_the_device_it_used():
    result = segcore_models("--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("device: cpu (") for line in result.stdout.splitlines())
    result = segcore_models("--device", "cpu", "--json")
    assert [row["device"] for row in json.loads(result.stdout)] == ["cpu"]


@pytest.mark.gpu
def test_cuda_device_reports_what_torch_knows():
    info = resolve_device("cuda")
    props = torch.cuda.get_device_properties(0)
    assert isinstance(info, DeviceInfo) and info.name == "cuda:0" and info.description == props.name
    assert info.total_memory_bytes == props.total_memory
    assert 0 < info.free_memory_bytes <= info.total_memory_bytes
    assert info.compute_capability == torch.cuda.get_device_capability(0)
    assert info.supports_bf16 == torch.cuda.is_bf16_supported(including_emulation=False)
    assert [d.name for d in list_devices() if d.kind == "cuda"] == [f"cuda:{i}"
                                                                   for i in range(torch.cuda.device_count())]
    # The autocast dtype it names is what autocast produces on this GPU.
    a = torch.randn(64, 64, device=info.name)
    with torch.autocast("cuda", dtype=getattr(torch, info.amp_dtype)):
        assert (a @ a).dtype == getattr(torch, info.amp_dtype)
    result = segcore_models("--device", "cuda", "--json")
    assert result.returncode == 0, result.stderr
    assert [row["device"] for row in json.loads(result.stdout)] == ["cuda:0"]


@pytest.mark.parametrize(("before", "expected"), [
    ("", "True PASSIVE"),  # nothing set, torch not loaded: set
    ("os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'", "False ACTIVE"),  # the user's value stays
    ("import torch", "False None"),  # too late: the OpenMP runtime has read the environment already
])
def test_the_openmp_wait_policy_is_set_only_before_torch_and_never_over_the_users(before, expected):
    code = (f"import os\nos.environ.pop('OMP_WAIT_POLICY', None)\n{before}\n"
            "from SegCore.devices import prefer_passive_openmp\n"
            "print(prefer_passive_openmp(), os.environ.get('OMP_WAIT_POLICY'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
