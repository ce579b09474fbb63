"""Memory of one training step of a network: measured on CUDA, estimated without running anything elsewhere.

    from SegCore.models import MODELS
    from SegCore.models.memory import training_step_memory

    spec = MODELS["unet3d"]
    n_bytes, method = training_step_memory(spec.builder, spec.defaults, (2, 4, 128, 128, 128), device="cpu")

`segcore models` prints these numbers; the Trainer uses them to check that a batch fits before it starts.

- Measured ("measured-cuda"): the peak of torch.cuda.max_memory_allocated over two Adam steps on random data.
- Estimated ("estimated"): the network is built on PyTorch's "meta" device (shapes only, no memory, no
  arithmetic), one forward pass records every layer's output size with forward hooks, and the estimate is
  4 bytes x (4 x parameters + 2 x activations): weights, gradients, Adam's m and v, plus the activations kept
  for backward and their gradients (float32).
- "estimated-by-parts": a network whose forward needs real values (RSTN crops around its own prediction) is
  estimated as the sum of its child modules, each on an input of the full size.
The estimate ignores convolution workspaces and allocator rounding and counts every layer output whether
autograd keeps it or not (docs/models.md compares it with real runs).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from SegCore.errors import SegCoreError

METHODS = ("measured-cuda", "estimated", "estimated-by-parts")


def training_step_memory(builder: Callable[..., nn.Module], kwargs: dict, input_shape: tuple[int, ...], *,
                         device: str = "cpu", model: nn.Module | None = None) -> tuple[int, str]:
    """Bytes one float32 training step (forward + backward + Adam update) needs, and how they were obtained.

    builder, kwargs: the network's class and its complete constructor arguments (e.g. `MODELS[name].builder`
    and `{**spec.defaults, **overrides}`). input_shape: the batch's tensor shape (B, C, *spatial), spatial
    (Y, X) or (Z, Y, X). device: a torch device string ("cuda:0" measures; anything else estimates; resolve
    it with SegCore.devices.resolve_device first). model: the network already built on the meta device, to
    avoid building it twice (estimates only).
    Returns (bytes, method) with method one of METHODS. Raises SegCoreError when a network can be neither run on
    the meta device nor estimated by parts; torch.cuda.OutOfMemoryError when a measured step does not fit.
    """
    if str(device).startswith("cuda"):
        return measure_training_step_cuda(builder, kwargs, input_shape, device), "measured-cuda"
    return estimate_training_step(builder, kwargs, input_shape, model)


def build_on_meta(builder: Callable[..., nn.Module], kwargs: dict) -> nn.Module:
    """Build on the meta device (no memory, instant even for big 3D networks); on CPU if a layer refuses meta."""
    try:
        with torch.device("meta"):
            return builder(**kwargs)
    except (NotImplementedError, RuntimeError):
        return builder(**kwargs)


def estimate_training_step(builder: Callable[..., nn.Module], kwargs: dict, input_shape: tuple[int, ...],
                           model: nn.Module | None = None) -> tuple[int, str]:
    """Bytes of one float32 training step: 4 x parameters + 2 x (input + every layer's output).

    A forward pass on the meta device (shapes only: exact sizes, instant, no memory): method "estimated".
    A network whose forward needs real values cannot run there (RSTN crops around a mask); it is estimated as
    the sum of its direct parts (child modules), each run on the meta device on an input shaped like the
    network's: method "estimated-by-parts". For RSTN that is its largest case, the fine stage seeing the
    whole image.
    """
    model = model if model is not None else build_on_meta(builder, kwargs)
    parameters = sum(p.numel() for p in model.parameters())
    try:
        activations, method = _activation_elements(model, input_shape), "estimated"
    except (NotImplementedError, RuntimeError) as error:
        parts = list(model.children())
        try:
            if not parts or any(not _callable_part(part) for part in parts):
                raise error
            by_parts = sum(_activation_elements(part, input_shape) for part in parts)
        except (NotImplementedError, RuntimeError) as part_error:
            raise SegCoreError(f"cannot estimate the memory of {type(model).__name__} without running it "
                               f"({str(part_error).splitlines()[0]})",
                               fix="run on a CUDA device (--device cuda) to measure it") from error
        activations = by_parts - (len(parts) - 1) * math.prod(input_shape)  # the shared input counted once
        method = "estimated-by-parts"
    return 4 * (4 * parameters + 2 * activations), method


def measure_training_step_cuda(builder: Callable[..., nn.Module], kwargs: dict, input_shape: tuple[int, ...],
                               device: str) -> int:
    """Peak bytes allocated on `device` during two Adam steps (forward, backward, update) on random data."""
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model = builder(**kwargs).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(input_shape, device=device)
    extra = _label_argument(model, input_shape, device)
    try:
        for _ in range(2):  # the second step holds activations and Adam state at once
            optimizer.zero_grad(set_to_none=True)
            loss = sum(t.float().mean() for t in _tensors(model(x, **extra)) if t.is_floating_point())
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    finally:
        del model, optimizer, x
        torch.cuda.empty_cache()


def _callable_part(module: nn.Module) -> bool:
    return not isinstance(module, (nn.ModuleList, nn.ModuleDict))


def _activation_elements(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Elements of the input and of every leaf layer's output in one forward pass in train() mode.

    Runs on the model's device (meta: shapes only). Outputs of in-place layers (ReLU(inplace=True)) and of
    Identity share their input's memory and are not counted. A forward that takes a `label` (RSTN's training
    forward) gets an all-ones label shaped like the input.
    """
    counted = [math.prod(input_shape)]

    def record(module, inputs, output):
        if getattr(module, "inplace", False) or isinstance(module, nn.Identity):
            return
        counted.extend(t.numel() for t in _tensors(output))

    device = next(model.parameters()).device
    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        model.train()
        with torch.no_grad():
            model(torch.ones(input_shape, device=device), **_label_argument(model, input_shape, device))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted)


def _label_argument(model: nn.Module, input_shape: tuple[int, ...], device) -> dict:
    """{"label": ones like the input} for a forward that takes a label (RSTN's training modes), else {}."""
    if "label" in inspect.signature(model.forward).parameters:
        return {"label": torch.ones(input_shape, device=device)}
    return {}


def _tensors(output) -> list:
    """Every tensor in a forward output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []
