"""`segcore export`: a checkpoint's network as TorchScript or ONNX, for use outside SegCore."""

from __future__ import annotations

from pathlib import Path

HELP = "export a checkpoint's network to TorchScript or ONNX (its labels, channels and preprocessing inside)"
DESCRIPTION = """\
Write the network of a checkpoint as a TorchScript file (torch.jit.load runs it without SegCore) or an ONNX
file (onnxruntime, TensorRT, OpenVINO, ...; needs pip install 'segstudies[onnx]'). The file takes one float32
input "image" (B, C, *spatial) and gives "logits" (B, K, *spatial), with a dynamic batch and dynamic sides that
must be multiples of the network's divisor. The checkpoint's meta (labels, channels, preprocessing, model,
plan, provenance) travels inside: a TorchScript extra file / ONNX metadata entry named segstudies_meta.json,
with an "export" section giving the input and output names, shapes and the divisor. Preprocessing, padding and
softmax stay with the caller.

The network is traced on its training patch or slice size (--example-shape overrides it) and checked against
the checkpoint's network at another batch and size (ONNX: when onnxruntime is installed). The RSTN of the
pancreas study cannot be exported: its coarse-to-fine loop depends on the data (use segcore predict). See
docs/inference.md, "Exporting a model".

examples:
  segcore export --model runs/la/best.pt --format torchscript --output la.ts
  segcore export --model runs/msd/best.pt --format onnx --output msd.onnx
  segcore export --model runs/thalamus/best.pt --format onnx --output thalamus.onnx --example-shape 256 256
"""

INPUTS = ("model",)
FORMATS = ("torchscript", "onnx")  # SegCore.inference.export.FORMATS, spelled out so --help imports no torch


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="CKPT", help="the checkpoint to export")
    parser.add_argument("--format", choices=FORMATS, required=True, help="torchscript or onnx")
    parser.add_argument("--output", type=Path, required=True, metavar="FILE",
                        help="the file to write (e.g. model.ts, model.onnx); never the checkpoint")
    parser.add_argument("--example-shape", nargs="+", type=int, default=None, metavar="N",
                        help="spatial sides of the example input (Z Y X for a 3D network, Y X for a 2D one), "
                             "multiples of the network's divisor (default: the training patch or slice)")


def run(args, progress) -> dict:
    from SegCore.inference.export import export_model, read_export_meta

    path = export_model(args.model, args.format, args.output, example_shape=args.example_shape, progress=progress)
    facts = read_export_meta(path)["export"]
    inputs, outputs = facts["input"], facts["output"]
    print(f"wrote {path} ({args.format}): {inputs['name']} {_shape(inputs['shape'])} -> {outputs['name']} "
          f"{_shape(outputs['shape'])} ({outputs['values']}); sides multiples of {inputs['spatial_multiple_of']}"
          + ("" if facts["checked_shape"] else "; not run after export (install onnxruntime to check it)"))
    return {"files": [str(path)], "format": args.format, "input": inputs, "output": outputs,
            "checked_shape": facts["checked_shape"]}


def _shape(sides: list) -> str:
    return "(" + ", ".join(map(str, sides)) + ")"
