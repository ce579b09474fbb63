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
compares with real runs). The table says which method each row used, and which device it ran on.

examples:
  segcore models                                   # every network, published sizes, estimated memory
  segcore models --batch 8 --model unet2d          # one network, batch of 8
  segcore models --input-size 256 256 --input-size 96 96 96   # 2D inputs 256x256, 3D inputs 96^3
  segcore models --small --json                    # the tiny test versions, as JSON
  segcore models --device cuda                     # measure on the first GPU (cuda:1: the second)
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
                        help="auto | cpu | cuda | cuda:N | mps: CUDA measures, anything else estimates (default "
                             "auto: cuda:0 if there is a GPU, else mps, else cpu)")
    parser.add_argument("--small", action="store_true", help="the tiny CPU versions used by the tests and demo")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of objects) instead of a table")


def run(args, progress) -> None:
    if args.batch < 1:
        raise SegCoreError(f"--batch must be >= 1, got {args.batch}", fix="pass --batch 1 or more")
    sizes = _input_sizes(args.input_size or [])

    from SegCore.devices import resolve_device
    from SegCore.models import MODELS

    names = args.model or sorted(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SegCoreError(f"unknown model(s) {', '.join(unknown)}", fix=f"use one of {', '.join(sorted(MODELS))}")
    device = resolve_device(args.device)
    rows = [describe_model(name, spatial_zyx=sizes.get(MODELS[name].spatial_dims), batch=args.batch,
                           device=device.name, small=args.small) for name in names]
    print(json.dumps(rows, indent=2) if args.json else models_table(rows, device.summary()))
    failed = [row for row in rows if row["error"]]
    if failed:
        raise SegCoreError(f"{len(failed)} network(s) could not run: "
                           + " ".join(f"{row['name']}: {row['error']}" for row in failed))


def describe_model(name: str, *, spatial_zyx: tuple[int, ...] | None = None, batch: int = 2, device: str = "cpu",
                   small: bool = False) -> dict:
    """One table row: name, study, spatial_dims, parameters, input_shape (B, C, *spatial_zyx), memory_bytes,
    memory_method ("measured-cuda", "estimated" or "estimated-by-parts"), device, error (None, or why it could not
    run), summary.

    spatial_zyx: the input's spatial size in array order, (Y, X) for a 2D network or (Z, Y, X) for a 3D one;
    None = the network's `example_input`. device: a resolved torch device string (SegCore.devices).
    """
    import torch

    from SegCore.models import MODELS
    from SegCore.models.memory import build_on_meta, training_step_memory

    spec = MODELS[name]
    kwargs = {**spec.defaults, **(spec.small if small else {})}
    channels, *example = spec.example_input
    shape = (batch, channels, *(spatial_zyx or example))
    row = {"name": name, "study": spec.study, "spatial_dims": spec.spatial_dims, "parameters": None,
           "input_shape": list(shape), "memory_bytes": None, "memory_method": None, "device": device, "error": None,
           "summary": spec.summary}
    try:
        model = build_on_meta(spec.builder, kwargs)
        row["parameters"] = sum(p.numel() for p in model.parameters())
        row["memory_bytes"], row["memory_method"] = training_step_memory(spec.builder, kwargs, shape,
                                                                         device=device, model=model)
    except SegCoreError as error:
        row["error"] = str(error)
    except torch.cuda.OutOfMemoryError:
        row["error"] = f"out of GPU memory on {device}"
    return row


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


def models_table(rows: list[dict], device: str | None = None) -> str:
    """Rows of `describe_model` as an aligned text table, with the device, the memory method and any errors
    below. device: a line naming it (SegCore.devices.DeviceInfo.summary())."""
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
    if device:
        text.append(f"device: {device}")
    if "measured-cuda" in methods:
        text.append("measured: peak of torch.cuda.max_memory_allocated over two Adam steps on random data.")
    if methods & {"estimated", "estimated-by-parts"}:
        text.append("estimated: 4 x parameters + 2 x activations, layer outputs recorded by forward hooks on the "
                    "meta device (by parts: each child module on the full input, for networks that crop).")
    text += [f"{row['name']}: {row['error']}" for row in rows if row["error"]]
    return "\n".join(text)


def _human(n_bytes: int) -> str:
    return f"{n_bytes / 1024 / MIB:.2f} GiB" if n_bytes >= 1024 * MIB else f"{n_bytes / MIB:.1f} MiB"
