"""Export a checkpoint's network to TorchScript or ONNX, the checkpoint's meta (labels, channels, preprocessing,
model, sampler, plan, provenance) inside the file, so the export is as self-describing as the checkpoint.

    export_model("runs/la/best.pt", "torchscript", "la.ts")
    net = torch.jit.load("la.ts")                       # no SegCore needed to run it
    logits = net(x)                                     # x (B, C, Z, Y, X) float32 -> (B, K, Z, Y, X) float32
    export_model("runs/la/best.pt", "onnx", "la.onnx")  # needs the onnx package: pip install 'segstudies[onnx]'
    session = onnxruntime.InferenceSession("la.onnx")
    logits = session.run(["logits"], {"image": x_numpy})[0]
    meta = read_export_meta("la.onnx")                  # the checkpoint's meta, plus meta["export"]

Both formats take one float32 input "image" (B, C, *spatial) and give "logits" (B, K, *spatial), exactly what the
checkpoint's network returns (logits unless its `final_activation` is set; `meta["export"]["output"]` says
which). Batch and spatial sides are dynamic; every side must be a multiple of the network's divisor
(`meta["export"]["input"]["spatial_multiple_of"]`; pad and crop back, as SegCore's inference does). The
exported graph holds no input checks, no preprocessing and no softmax: those stay with the caller.

How: the network is traced on an example input of the training patch or slice (meta["sampler"]: patch_zyx for
3D, size_yx for 2D, size_zyx for a crop sampler; otherwise the registry's typical training input; `example_shape`
overrides it), in eval mode on the CPU, float32. TorchScript uses `torch.jit.trace`, checked against the network
at a second input of another batch and size (a graph that depended on the size would be refused). ONNX uses the
TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`) with dynamic axes, one file (no external
data; protobuf caps it at 2 GiB), checked with onnxruntime at the second input when it is installed. Not the
dynamo exporter, because: torch.export specialises a side equal to the divisor and a batch of 1 (so the
training patch cannot be the example), its non-strict mode specialises every side on the networks' input checks
(`int(size)`), it is 5 to 10 times slower, and it needs torch >= 2.5 where SegCore supports 2.1.

RSTN (pancreas) is refused: its test is a loop of a coarse FCN, a saliency map and a fine FCN on a crop around
its own prediction until two rounds agree, whose box and round count depend on the data and cannot live in a
traced graph; its coarse FCN alone would give coarse results under the full model's name. Segment with it in
SegCore (`segcore predict`), where the loop runs in Python.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import warnings
from pathlib import Path

from SegCore.atomic import atomic_file, refuse_overwriting_inputs
from SegCore.errors import SegCoreError
from SegCore.progress import ProgressEvent, no_progress

FORMATS = ("torchscript", "onnx")
META_FILE = "segstudies_meta.json"  # TorchScript: the extra file; ONNX: the metadata_props key
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_FIX = "pip install 'segstudies[onnx]'"
# An export must match the network to this share of its largest logit (at least 1): float32 reordering in
# onnxruntime's kernels stays far below it, a graph that baked in a size is off by the logits' own order.
CHECK_TOLERANCE = 1e-4


def example_shape_for(meta: dict, divisor: int, example_shape=None) -> tuple[int, ...]:
    """The example input (1, C, *spatial) a checkpoint is traced on; see the module docstring.

    C = len(meta["channels"]), times k for a stack25d sampler. example_shape: spatial sides in array order ((Z, Y,
    X) for a 3D network, (Y, X) for a 2D one), each a multiple of `divisor`; None: from the sampler, each side
    rounded up to a multiple of `divisor`.
    """
    from SegCore.models import MODELS
    from SegCore.models.blocks import nearest_valid_sizes

    dims = int(meta["spatial_dims"])
    sampler = meta.get("sampler") or {}
    channels = len(meta["channels"]) * (int(sampler.get("k", 3)) if sampler.get("kind") == "stack25d" else 1)
    if example_shape is not None:
        sides = [int(s) for s in example_shape]
        axes = "Z Y X" if dims == 3 else "Y X"
        if len(sides) != dims or any(s <= 0 for s in sides):
            raise SegCoreError(f"the example shape {sides} is not {dims} positive sides ({axes}) of this "
                               f"{dims}D network", fix=f"pass --example-shape {axes} with {dims} numbers")
        bad = sorted({s for s in sides if s % divisor})
        if bad:
            nearest = ", ".join(f"{s} -> {'/'.join(map(str, nearest_valid_sizes(s, divisor)))}" for s in bad)
            raise SegCoreError(f"the example shape {sides} has sides that are not multiples of {divisor}, the "
                               f"network's divisor ({nearest})", fix="use multiples of the divisor")
        return (1, channels, *sides)
    key = "patch_zyx" if dims == 3 else "size_yx"
    sides = sampler.get(key) or (sampler.get("size_zyx") if dims == 3 else None)
    if not sides:
        sides = MODELS[meta["model"]["name"]].example_input[1:]
    return (1, channels, *(-(-int(s) // divisor) * divisor for s in sides))


def export_model(checkpoint_path: str | os.PathLike, fmt: str, output: str | os.PathLike, *,
                 example_shape=None, progress=no_progress) -> Path:
    """Export the checkpoint's network to `output` as "torchscript" or "onnx"; returns the output path.

    example_shape: spatial sides of the example input (see `example_shape_for`). progress: receives stage
    "export" events (1 loaded, 2 exported, 3 checked and written). The file is written through atomic_file, never
    over the checkpoint. SegCoreError for an unknown format, a missing onnx package, RSTN, or an export that
    does not reproduce the network.
    """
    import numpy as np
    import torch

    from SegCore.training.checkpoint import load_checkpoint

    if fmt not in FORMATS:
        raise SegCoreError(f"unknown export format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _import_onnx()
    refuse_overwriting_inputs(output, [checkpoint_path])
    checkpoint = load_checkpoint(checkpoint_path)
    name = checkpoint.meta["model"]["name"]
    if name == "rstn":
        raise SegCoreError("rstn cannot be exported: its coarse-to-fine test crops around its own prediction and "
                           "repeats until two rounds agree, which no traced graph can hold", path=checkpoint_path,
                           fix="segment with this checkpoint in SegCore (segcore predict), which runs the loop")
    net = checkpoint.build_model().eval()
    divisor = int(getattr(net, "divisor", 1))
    shape = example_shape_for(checkpoint.meta, divisor, example_shape)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(shape, generator=generator)
    # the second input differs in batch and in every side: a graph that baked in either would disagree there
    other_sides = [s - divisor if s > divisor else s + divisor for s in shape[2:]]
    other = torch.randn((2, shape[1], *other_sides), generator=generator)
    with torch.no_grad():
        want = net(other)  # what every exported graph must reproduce
    if not isinstance(want, torch.Tensor):
        raise SegCoreError(f"{name} returns {type(want).__name__}, not one logits tensor; it cannot be exported",
                           path=checkpoint_path, fix="export a network whose forward returns one tensor")
    progress(ProgressEvent("export", 1, 3, f"loaded {name}"))
    meta = dict(checkpoint.meta, export=_export_facts(fmt, checkpoint.meta, shape, want.shape[1], divisor,
                                                      list(other.shape)))

    def check(got, what: str) -> None:
        scale = max(1.0, float(want.abs().max()))
        if got.shape != want.shape or not float(np.abs(got - want.numpy()).max()) <= CHECK_TOLERANCE * scale:
            raise SegCoreError(f"the {what} graph does not reproduce {name} at input shape {tuple(other.shape)}: "
                               "its forward depends on the input in a way a trace cannot hold",
                               path=checkpoint_path, fix="report this network; export the other format meanwhile")

    with atomic_file(output) as tmp, _quiet_exporters():
        (_to_torchscript if fmt == "torchscript" else _to_onnx)(net, example, other, check, meta, tmp, progress)
    progress(ProgressEvent("export", 3, 3, f"wrote {output}"))
    return Path(output)


def _export_facts(fmt: str, meta: dict, shape: tuple[int, ...], classes: int, divisor: int, checked) -> dict:
    import torch

    spatial = ["z", "y", "x"][-int(meta["spatial_dims"]):]
    activation = meta["model"]["arguments"].get("final_activation")
    return {"format": fmt, "torch": torch.__version__,
            "input": {"name": INPUT_NAME, "shape": ["batch", shape[1], *spatial], "dtype": "float32",
                      "spatial_multiple_of": divisor, "example_shape": list(shape)},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", classes, *spatial], "dtype": "float32",
                       "values": activation or "logits"},
            "checked_shape": list(checked)}


def _to_torchscript(net, example, other, check, meta: dict, tmp: Path, progress) -> None:
    import torch

    # check_trace=False: torch's own check traces again and runs ~6 forward passes; one comparison at the other
    # shape (`check`) is what shows that nothing size-dependent was baked into the graph
    traced = torch.jit.trace(net, example, check_trace=False)
    progress(ProgressEvent("export", 2, 3, "traced to TorchScript"))
    with torch.no_grad():
        check(traced(other).numpy(), "TorchScript")
    torch.jit.save(traced, str(tmp), _extra_files={META_FILE: json.dumps(meta)})


def _to_onnx(net, example, other, check, meta: dict, tmp: Path, progress) -> None:
    import torch

    onnx = _import_onnx()
    axes = {0: "batch", **{2 + i: side for i, side in enumerate(meta["export"]["input"]["shape"][2:])}}
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(net, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, do_constant_folding=True, **legacy)
    progress(ProgressEvent("export", 2, 3, "exported to ONNX"))
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    try:
        import onnxruntime
    except ImportError:
        meta["export"]["checked_shape"] = None  # nothing to run the graph with here
    else:
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        check(session.run([OUTPUT_NAME], {INPUT_NAME: other.numpy()})[0], "ONNX")
    entry = model.metadata_props.add()
    entry.key, entry.value = META_FILE, json.dumps(meta)
    onnx.save(model, str(tmp))


def read_export_meta(path: str | os.PathLike) -> dict:
    """The meta an exported file carries (the checkpoint's, plus "export"), by its format: ONNX files begin with
    a protobuf, TorchScript files are zip archives."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise SegCoreError("no exported model here", path=path, fix="pass a file written by segcore export")
    if zipfile.is_zipfile(path):
        import torch

        files = {META_FILE: ""}
        with _quiet_exporters():
            torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        text = files[META_FILE]
    else:
        onnx = _import_onnx()
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf's DecodeError and friends: not an ONNX file
            raise SegCoreError(f"neither TorchScript nor ONNX ({type(error).__name__})", path=path,
                               fix="pass a file written by segcore export") from None
        text = next((p.value for p in model.metadata_props if p.key == META_FILE), "")
    if not text:
        raise SegCoreError("the file holds no SegStudies meta", path=path, fix="export it with segcore export")
    return json.loads(text)


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise SegCoreError("ONNX export needs the onnx package, which is not installed", fix=ONNX_FIX) from None
    return onnx


@contextlib.contextmanager
def _quiet_exporters():
    """Silence what users cannot act on: TracerWarnings about the networks' own input checks (baked in for the
    example; the check at a second shape proves the graph right) and the exporters' deprecation notices."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*(`torch\.jit\.\w+` is deprecated|legacy TorchScript-based "
                                                  r"ONNX|The feature will be removed).*")
        yield
