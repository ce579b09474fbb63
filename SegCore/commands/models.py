"""`segcore models`: the registered networks, their size, and the memory one training step needs."""

from __future__ import annotations

import json

from SegCore.commands.text import format_table
from SegCore.errors import SegCoreError

HELP = "list the networks: parameters, input shape, memory of one training step"
DESCRIPTION = """\
List every registered network (SegCore.models): its study, 2D/3D, number of parameters at the published
size, the input shape it trains on (batch first), and the memory one training step needs (forward + backward
+ Adam update, float32, batch --batch).

Memory is MEASURED on CUDA (torch.cuda.max_memory_allocated over two Adam steps on random data) when the
device is a GPU, otherwise ESTIMATED without running anything: the network is built on PyTorch's "meta" device
(shapes only, no memory, no arithmetic), one forward pass records every layer's output size with forward
hooks, and the estimate is 4 x parameters (weights, gradients, Adam m and v) + 2 x activations (those kept
for backward, and their gradients). A network that crops around its own prediction (RSTN) is estimated "by
parts": each child module on the full input. The estimate ignores convolution workspaces and allocator
rounding, and counts every layer output whether autograd keeps it or not (see docs/models.md for how it
compares with real runs). The table says which method each row used.

examples:
  segcore models                                   # every network, published sizes, estimated memory
  segcore models --batch 8 --model unet2d          # one network, batch of 8
  segcore models --input-size 256 256 --input-size 96 96 96   # 2D inputs 256x256, 3D inputs 96^3
  segcore models --small --json                    # the tiny test versions, as JSON
  segcore models --device cuda                     # measure on the GPU
"""

MIB = 2 ** 20


def add_arguments(parser) -> None:
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="only this network (repeatable; default: all)")
    parser.add_argument("--input-size", action="append", nargs="+", type=int, metavar="N",
                        help="spatial input size: one number for every side of every network, two (Y X) for the "
                             "2D networks, three (Z Y X) for the 3D networks (repeatable; default: each "
                             "network's typical training input)")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the training step (default 2)")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N: CUDA measures, anything else estimates (default auto)")
    parser.add_argument("--small", action="store_true", help="the tiny CPU versions used by the tests and demo")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of objects) instead of a table")


def run(args, progress) -> None:
    if args.batch < 1:
        raise SegCoreError(f"--batch must be >= 1, got {args.batch}", fix="pass --batch 1 or more")
    sizes = _input_sizes(args.input_size or [])

    import torch

    from SegCore.models import MODELS

    names = args.model or sorted(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SegCoreError(f"unknown model(s) {', '.join(unknown)}", fix=f"use one of {', '.join(sorted(MODELS))}")
    device = _device(args.device, torch)
    rows = [describe_model(name, spatial=sizes.get(MODELS[name].spatial_dims), batch=args.batch, device=device,
                           small=args.small) for name in names]
    print(json.dumps(rows, indent=2) if args.json else models_table(rows))
    failed = [row for row in rows if row["error"]]
    if failed:
        raise SegCoreError(f"{len(failed)} network(s) could not run: "
                           + " ".join(f"{row['name']}: {row['error']}" for row in failed))


def describe_model(name: str, *, spatial: tuple[int, ...] | None = None, batch: int = 2, device: str = "cpu",
                   small: bool = False) -> dict:
    """One table row: name, study, spatial_dims, parameters, input_shape (B, C, *spatial), memory_bytes,
    memory_method ("measured-cuda", "estimated" or "estimated-by-parts"), error (None, or why it could not run)."""
    import torch

    from SegCore.models import MODELS

    spec = MODELS[name]
    kwargs = {**spec.defaults, **(spec.small if small else {})}
    channels, *example = spec.example_input
    shape = (batch, channels, *(spatial or example))
    row = {"name": name, "study": spec.study, "spatial_dims": spec.spatial_dims, "parameters": None,
           "input_shape": list(shape), "memory_bytes": None, "memory_method": None, "error": None,
           "summary": spec.summary}
    try:
        model = _build_on_meta(spec.builder, kwargs)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        if device.startswith("cuda"):
            row["memory_bytes"] = measure_training_step_cuda(spec.builder, kwargs, shape, device)
            row["memory_method"] = "measured-cuda"
        else:
            row["memory_bytes"], row["memory_method"] = estimate_training_step(spec.builder, kwargs, shape, model)
    except SegCoreError as error:
        row["error"] = str(error)
    except torch.cuda.OutOfMemoryError:
        row["error"] = f"out of GPU memory on {device}"
    return row


def _build_on_meta(builder, kwargs: dict):
    """Build on the meta device (no memory, instant even for big 3D networks); on CPU if a layer refuses meta."""
    import torch

    try:
        with torch.device("meta"):
            return builder(**kwargs)
    except (NotImplementedError, RuntimeError):
        return builder(**kwargs)


def estimate_training_step(builder, kwargs: dict, shape: tuple[int, ...], model=None) -> tuple[int, str]:
    """Bytes of one float32 training step: 4 x parameters + 2 x (input + every layer's output).

    A forward pass on the meta device (shapes only: exact sizes, instant, no memory): method "estimated".
    A network whose forward needs real values cannot run there (RSTN crops around a mask); it is estimated as
    the sum of its direct parts (child modules), each run on the meta device on an input shaped like the
    network's: method "estimated-by-parts". For RSTN that is its largest case, the fine stage seeing the
    whole image.
    """
    model = model if model is not None else _build_on_meta(builder, kwargs)
    parameters = sum(p.numel() for p in model.parameters())
    try:
        activations, method = _activation_elements(model, shape), "estimated"
    except (NotImplementedError, RuntimeError) as error:
        parts = list(model.children())
        try:
            if not parts or any(not _callable_part(part) for part in parts):
                raise error
            by_parts = sum(_activation_elements(part, shape) for part in parts)
        except (NotImplementedError, RuntimeError) as part_error:
            raise SegCoreError(f"cannot estimate the memory of {type(model).__name__} without running it "
                               f"({str(part_error).splitlines()[0]})",
                               fix="run on a CUDA device (--device cuda) to measure it") from error
        activations = by_parts - (len(parts) - 1) * _numel(shape)  # the shared input counted once
        method = "estimated-by-parts"
    return 4 * (4 * parameters + 2 * activations), method


def _callable_part(module) -> bool:
    import torch

    return not isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict))


def _numel(shape: tuple[int, ...]) -> int:
    import math

    return math.prod(shape)


def _activation_elements(model, shape: tuple[int, ...]) -> int:
    """Elements of the input and of every leaf layer's output in one forward pass in train() mode.

    Runs on the model's device (meta: shapes only). Outputs of in-place layers (ReLU(inplace=True)) and of
    Identity share their input's memory and are not counted. A forward that takes a `label` (RSTN's training
    forward) gets an all-ones label shaped like the input.
    """
    import torch

    counted = [_numel(shape)]

    def record(module, inputs, output):
        if getattr(module, "inplace", False) or isinstance(module, torch.nn.Identity):
            return
        counted.extend(t.numel() for t in _tensors(output))

    device = next(model.parameters()).device
    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        model.train()
        with torch.no_grad():
            model(torch.ones(shape, device=device), **_label_argument(model, shape, device))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(counted)


def _label_argument(model, shape: tuple[int, ...], device) -> dict:
    """{"label": ones like the input} for a forward that takes a label (RSTN's training modes), else {}."""
    import inspect

    import torch

    return {"label": torch.ones(shape, device=device)} if "label" in inspect.signature(model.forward).parameters \
        else {}


def measure_training_step_cuda(builder, kwargs: dict, shape: tuple[int, ...], device: str) -> int:
    """Peak bytes allocated on `device` during two Adam steps (forward, backward, update) on random data."""
    import torch

    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model = builder(**kwargs).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(shape, device=device)
    extra = _label_argument(model, shape, device)
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


def _tensors(output) -> list:
    """Every tensor in a forward output (a tensor, or tuples/lists/dicts of them)."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    return []


def _device(choice: str, torch) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SegCoreError(f"--device {choice}: no CUDA device here",
                               fix="use --device cpu (memory is then estimated) or run on a GPU machine")
        return choice
    if choice in ("cpu", "mps"):
        return choice
    raise SegCoreError(f"unknown --device {choice!r}", fix="use auto, cpu, cuda or cuda:N")


def _input_sizes(values: list[list[int]]) -> dict[int, tuple[int, ...]]:
    """--input-size occurrences -> {spatial_dims: sides}. One number applies to 2D and 3D unless given there."""
    sizes: dict[int, tuple[int, ...]] = {}
    everywhere = None
    for sides in values:
        if any(s < 1 for s in sides) or len(sides) not in (1, 2, 3):
            raise SegCoreError(f"--input-size takes 1, 2 or 3 positive numbers, got {' '.join(map(str, sides))}",
                               fix="e.g. --input-size 160, --input-size 256 256 or --input-size 96 128 128")
        if len(sides) == 1:
            everywhere = sides[0]
        else:
            sizes[len(sides)] = tuple(sides)
    if everywhere is not None:
        for dims in (2, 3):
            sizes.setdefault(dims, (everywhere,) * dims)
    return sizes


def models_table(rows: list[dict]) -> str:
    """Rows of `describe_model` as an aligned text table, with the memory method and any errors below."""
    header = ("network", "study", "dims", "parameters", "input (B, C, *spatial)", "train-step memory")
    lines = []
    for row in rows:
        memory = "-" if row["memory_bytes"] is None else _human(row["memory_bytes"])
        if row["memory_bytes"] is not None:
            memory += {"measured-cuda": " (measured)", "estimated": " (estimated)",
                       "estimated-by-parts": " (estimated by parts)"}[row["memory_method"]]
        lines.append((row["name"], row["study"], f"{row['spatial_dims']}D",
                      "-" if row["parameters"] is None else f"{row['parameters']:,}",
                      "x".join(map(str, row["input_shape"])), memory))
    text = [format_table([header, *lines])]
    methods = {row["memory_method"] for row in rows}
    text += ["", "memory: float32, one training step (forward + backward + Adam state)."]
    if "measured-cuda" in methods:
        text.append("measured: peak of torch.cuda.max_memory_allocated over two Adam steps on random data.")
    if methods & {"estimated", "estimated-by-parts"}:
        text.append("estimated: 4 x parameters + 2 x activations, layer outputs recorded by forward hooks on the "
                    "meta device (by parts: each child module on the full input, for networks that crop).")
    text += [f"{row['name']}: {row['error']}" for row in rows if row["error"]]
    return "\n".join(text)


def _human(n_bytes: int) -> str:
    return f"{n_bytes / 1024 / MIB:.2f} GiB" if n_bytes >= 1024 * MIB else f"{n_bytes / MIB:.1f} MiB"
