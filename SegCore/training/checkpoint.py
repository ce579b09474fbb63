"""Checkpoints: one self-describing file that loads with `torch.load(weights_only=True)` and nothing else.

    save_checkpoint(run.last, model_state=model.state_dict(), optimizer_state=opt.state_dict(), epoch=3, step=120,
                    best_metric=0.81, history=rows, rng_state=capture_rng_state(), meta=checkpoint_meta(plan))
    ck = load_checkpoint("RUN/best.pt")          # layout checked; SegCoreError naming what is missing or wrong
    model = ck.build_model()                     # network rebuilt from ck.meta["model"], weights loaded

The file holds only tensors, numbers, strings, booleans, None, lists and dicts (layout in docs/training.md), so
PyTorch's weights-only unpickler reads it: a file holding any other pickled object (a class instance, a
function) is refused before any of its code can run. Writing goes through `atomic_file` (temporary file,
fsync, rename): the bytes are serialised in memory first, so their size is known, free space is checked before
the previous checkpoint is touched, and a failed write (disk full, file size limit) leaves it byte-identical.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import shutil
import subprocess
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from SegCore.atomic import atomic_file
from SegCore.errors import SegCoreError
from SegCore.failures import os_error

FORMAT = "segstudies-checkpoint"
FORMAT_VERSION = 1
# Top-level fields -> the Python types each may have (None where a field is optional).
FIELDS = {"format": (str,), "format_version": (int,), "model_state": (dict,), "optimizer_state": (dict, type(None)),
          "scheduler_state": (dict, type(None)), "scaler_state": (dict, type(None)), "epoch": (int,),
          "step": (int,), "best_metric": (float, int, type(None)), "history": (list,), "rng_state": (dict,),
          "meta": (dict,)}
META_FIELDS = {"format": (str,), "format_version": (int,), "study": (str, type(None)), "labels": (list,),
               "channels": (list,), "preprocessing": (list,), "model": (dict,), "spatial_dims": (int,),
               "sampler": (dict,), "plan": (dict,), "provenance": (dict,)}
PROVENANCE_FIELDS = ("fingerprint_hash", "fold", "git_revision", "date", "segstudies", "torch", "numpy", "python")
FREE_SPACE_MARGIN = 1.1  # a checkpoint needs its own size free, plus this share, before it is written
_FALLBACK_COLOURS = ((128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
                     (221, 130, 101), (144, 238, 144), (192, 104, 88))


def git_revision() -> str | None:
    """The git commit of the SegCore sources when they are a git checkout, else None."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def checkpoint_meta(plan: dict, *, labels: list[dict] | None = None, fingerprint_hash: str | None = None) -> dict:
    """The JSON-able description a checkpoint carries, from a resolved plan (SegCore.training.config).

    labels: [{"value", "name", "colour_rgb", "terminology"}]; by default the plan's data.label_set with the study
    label's colour (else Slicer's GenericAnatomyColors by name, else a fixed palette) and its Slicer
    TerminologyEntry (None when the plan names no study or the study has no such label). fingerprint_hash: the
    data fingerprint's hash.
    """
    from SegCore.models import MODELS
    from SegCore.studies.colours import GENERIC_ANATOMY_COLORS
    from SegCore.studies.terminology import study_label

    if labels is None:
        labels = []
        for i, label in enumerate(plan["data"]["label_set"] or []):
            known = study_label(plan.get("study"), int(label["value"]), label["name"])
            colour = known.colour_rgb if known is not None else GENERIC_ANATOMY_COLORS.get(
                label["name"].lower(), _FALLBACK_COLOURS[i % len(_FALLBACK_COLOURS)])
            terminology = None if known is None else known.terminology
            labels.append({"value": int(label["value"]), "name": label["name"], "colour_rgb": list(colour),
                           "terminology": terminology.to_slicer_entry() if terminology else None})
    versions = plan.get("versions", {})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "study": plan.get("study"),
            "labels": [dict(label, colour_rgb=list(label["colour_rgb"])) for label in labels],
            "channels": list(plan["data"]["channels"] or []), "preprocessing": plan["preprocessing"],
            "model": plan["model"], "spatial_dims": MODELS[plan["model"]["name"]].spatial_dims,
            "sampler": plan["sampler"], "plan": plan,
            "provenance": {"fingerprint_hash": fingerprint_hash, "fold": plan["split"]["fold"],
                           "git_revision": git_revision(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "segstudies": versions.get("segstudies"), "torch": versions.get("torch"),
                           "numpy": versions.get("numpy"), "python": versions.get("python")}}


def capture_rng_state() -> dict:
    """Every global RNG state as plain data: torch CPU (uint8 tensor), each CUDA device's (list of tensors, when
    CUDA is initialised), numpy's legacy global RNG and Python's `random` (lists of ints)."""
    import numpy as np
    import torch

    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def restore_rng_state(state: dict) -> None:
    """Put back what `capture_rng_state` recorded (CUDA states only where CUDA is available)."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch_cpu"].cpu())
    if state.get("torch_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["torch_cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def _check_plain(value, where: str) -> None:
    """Refuse, before writing, anything the weights-only unpickler would refuse on loading."""
    import torch

    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint field {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}.{key}")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not (isinstance(value, torch.Tensor) or type(value) in (str, int, float, bool, type(None))):
        # Exact types: subclasses (numpy scalars, torch.__version__) would be pickled as their own class.
        raise TypeError(f"checkpoint field {where} is a {type(value).__name__}; a checkpoint holds only tensors, "
                        "numbers, strings, lists and dicts")


def save_checkpoint(path: str | os.PathLike, *, model_state: dict, optimizer_state: dict | None = None,
                    scheduler_state: dict | None = None, scaler_state: dict | None = None, epoch: int, step: int,
                    best_metric: float | None, history: list[dict], rng_state: dict, meta: dict) -> Path:
    """Write one checkpoint atomically (see the module docstring); returns `path`.

    model_state: the network's state_dict (tensors, moved to the CPU); epoch: completed epochs; step: steps done
    in the current epoch (a step-boundary checkpoint resumes there). Raises SegCoreError naming `path` when the
    disk has too little space or the write fails; the previous file at `path` is then unchanged.
    """
    import torch

    path = Path(path)
    content = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "model_state": {k: v.detach().cpu() for k, v in model_state.items()},
               "optimizer_state": optimizer_state, "scheduler_state": scheduler_state, "scaler_state": scaler_state,
               "epoch": int(epoch), "step": int(step),
               "best_metric": None if best_metric is None else float(best_metric), "history": list(history),
               "rng_state": rng_state, "meta": meta}
    _check_plain(content, "checkpoint")
    buffer = io.BytesIO()
    torch.save(content, buffer)
    data = buffer.getbuffer()
    folder = next(p for p in (path.absolute().parent, *path.absolute().parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < len(data) * FREE_SPACE_MARGIN:
        raise SegCoreError(f"no space for the checkpoint: it needs {len(data) / 2**20:.1f} MiB, "
                           f"{free / 2**20:.1f} MiB are free", path=path, fix="free some space on that disk")
    try:
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            handle.write(data)
    except OSError as error:
        raise os_error(error, path, writing=True, what="checkpoint") from None
    return path


@dataclass
class Checkpoint:
    """A checkpoint as loaded and checked: the fields of the layout in docs/training.md."""

    path: Path
    model_state: dict
    optimizer_state: dict | None
    scheduler_state: dict | None
    scaler_state: dict | None
    epoch: int
    step: int
    best_metric: float | None
    history: list[dict]
    rng_state: dict
    meta: dict

    def build_model(self, device=None):
        """The network of meta["model"] with these weights (strict: every weight must fit), in eval mode."""
        from SegCore.models import build_model

        model = build_model(self.meta["model"]["name"], **self.meta["model"]["arguments"])
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
            raise SegCoreError(f"the weights do not fit the network {self.meta['model']['name']!r} its meta "
                               f"describes: {first}", path=self.path, fix="the checkpoint is inconsistent; use "
                               "another one") from None
        if device is not None:
            model.to(device)
        return model.eval()

    def restore_rng(self) -> None:
        restore_rng_state(self.rng_state)


def _check_fields(data: dict, fields: dict, where: str, path: Path) -> None:
    missing = [key for key in fields if key not in data]
    if missing:
        raise SegCoreError(f"the checkpoint lacks the field{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(where + k for k in missing)}", path=path,
                           fix="it was not written by this version of SegCore (or is damaged); use another one")
    for key, types in fields.items():
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise SegCoreError(f"the checkpoint's field {where}{key} is a {type(value).__name__}, not {names}",
                               path=path, fix="the file is damaged or not a SegStudies checkpoint")


def check_layout(data, path: Path) -> None:
    """Raise SegCoreError naming the first field of the layout that is missing or of the wrong type."""
    if not isinstance(data, dict) or "format" not in data:
        shape = "a bare state_dict" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise SegCoreError(f"not a SegStudies checkpoint: it holds {shape}, without the 'format' field", path=path,
                           fix="use a checkpoint written by segcore train")
    if data["format"] != FORMAT:
        raise SegCoreError(f"not a SegStudies checkpoint: format {data['format']!r}, not {FORMAT!r}", path=path,
                           fix="use a checkpoint written by segcore train")
    if data.get("format_version") != FORMAT_VERSION:
        raise SegCoreError(f"checkpoint format version {data.get('format_version')!r}; this SegCore reads "
                           f"version {FORMAT_VERSION}", path=path, fix="use the SegCore version that wrote it")
    _check_fields(data, FIELDS, "", path)
    _check_fields(data["meta"], META_FIELDS, "meta.", path)
    _check_fields(data["meta"]["model"], {"name": (str,), "arguments": (dict,)}, "meta.model.", path)
    missing = [key for key in PROVENANCE_FIELDS if key not in data["meta"]["provenance"]]
    if missing:
        raise SegCoreError(f"the checkpoint lacks meta.provenance.{', meta.provenance.'.join(missing)}", path=path,
                           fix="it was not written by this version of SegCore (or is damaged); use another one")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    """Read and check a checkpoint with `torch.load(weights_only=True)`; pickled objects are refused unrun."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SegCoreError("no checkpoint file here" if not path.exists() else "a folder, not a checkpoint file",
                           path=path, fix="pass a .pt file written by segcore train (RUN/best.pt or RUN/last.pt)")
    try:
        data = torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise SegCoreError(f"refused: the checkpoint holds a pickled Python object ({found.group(1)}), whose "
                               "loading could run code", path=path,
                               fix="use a checkpoint written by segcore train; never load untrusted pickles") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", str(error))
        raise SegCoreError("not a readable PyTorch checkpoint: the weights-only loader refuses its content"
                           f"{f' ({detail.group(1)})' if detail else ''}; it is damaged or holds pickled objects",
                           path=path, fix="use another checkpoint (RUN/last.pt or RUN/best.pt)") from None
    except OSError as error:
        raise os_error(error, path, what="checkpoint") from None
    except Exception as error:  # torch's readers fail on damaged bytes with many types (KeyError, RuntimeError, ...)
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SegCoreError(f"not a readable PyTorch checkpoint (damaged or truncated?): {first}", path=path,
                           fix="use another checkpoint (RUN/last.pt or RUN/best.pt)") from None
    check_layout(data, path)
    fields = {key: data[key] for key in FIELDS if key not in ("format", "format_version")}
    return Checkpoint(path=path, **fields)
