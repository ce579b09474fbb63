"""The per-user model folder and what a checkpoint says about itself, for the Segment panel's model chooser.

    info = checkpoint_info("runs/la/best.pt", study="atrium")   # refuses another study's checkpoint
    info["summary"]                        # "atrium, unet3d, 1 channel (LGE-MRI), labels: left atrium; fold 0, ..."
    path = import_model("Downloads/la_best.pt")     # copied into user_model_folder()/atrium/la_best.pt
    [m["path"] for m in list_models("atrium")]

The folder lies outside the Slicer install (an extension update or a reinstall keeps it) and can be filled
offline: SEGSTUDIES_MODELS, else the platform's per-user data folder (~/.local/share/SegStudies/models on Linux,
~/Library/Application Support/SegStudies/models on macOS, %LOCALAPPDATA%\\SegStudies\\models on Windows), one
sub-folder per study ('other' for checkpoints that name none). Importing checks the file with load_checkpoint
(torch.load(weights_only=True): a pickle that would run code is refused unrun) and writes the checkpoint's
description beside it as NAME.json, so listing the models reads no weights and imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from SegCore.atomic import atomic_file
from SegCore.errors import SegCoreError

MODELS_ENV = "SEGSTUDIES_MODELS"
NO_STUDY_FOLDER = "other"
CHECKPOINT_SUFFIX = ".pt"


def user_model_folder() -> Path:
    """The per-user model folder (see the module docstring); not created here."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "SegStudies" / "models"


def _describe(meta: dict, channels: list[str], labels: list[dict]) -> str:
    provenance = meta.get("provenance") or {}
    names = ", ".join(str(label["name"]) for label in labels if int(label["value"]) != 0) or "none"
    channel_text = f"{len(channels)} channel{'s' if len(channels) != 1 else ''}" + (
        f" ({', '.join(channels)})" if channels else "")
    made = ", ".join(f"{key} {provenance[key]}" for key in ("fold", "date", "segstudies")
                     if provenance.get(key) is not None)
    return (f"{meta.get('study') or 'no study'}, {meta['model']['name']} {meta.get('spatial_dims', '?')}D, "
            f"{channel_text}, labels: {names}" + (f"; {made}" if made else ""))


def checkpoint_info(path: str | os.PathLike, study: str | None = None) -> dict:
    """What a checkpoint says about itself, checked with load_checkpoint (weights-only; SegCoreError for any
    file that is not a readable SegStudies checkpoint).

    study: the module's study: a checkpoint trained for another one is refused (SegCoreError naming both); a
    checkpoint that names no study is accepted, with a warning. Returns {"path", "study", "labels" ([{"value",
    "name", "colour_rgb" 0..255, "terminology"}], background included), "channels" (names, in order), "model"
    (name), "spatial_dims", "epoch", "best_metric", "provenance" (fold, date, git revision, versions),
    "summary" (one line for the panel), "warnings"}.
    """
    from SegCore.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    meta = checkpoint.meta
    trained_for = meta.get("study")
    if study is not None and trained_for is not None and trained_for != study:
        raise SegCoreError(f"this checkpoint was trained for the {trained_for!r} study, not {study!r}", path=path,
                           fix=f"choose a {study} checkpoint, or open the module of the {trained_for} study")
    warnings = []
    if study is not None and trained_for is None:
        warnings.append(f"the checkpoint names no study; check that it segments the {study} study's labels")
    channels = [str(c) for c in meta.get("channels") or []]
    labels = [dict(label) for label in meta.get("labels") or []]
    return {"path": str(Path(path).resolve()), "study": trained_for, "labels": labels, "channels": channels,
            "model": meta["model"]["name"], "spatial_dims": meta.get("spatial_dims"), "epoch": checkpoint.epoch,
            "best_metric": checkpoint.best_metric, "provenance": dict(meta.get("provenance") or {}),
            "summary": _describe(meta, channels, labels), "warnings": warnings}


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    digests = []
    for path in (a, b):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
        digests.append(digest.digest())
    return digests[0] == digests[1]


def import_model(path: str | os.PathLike, *, folder: str | os.PathLike | None = None, study: str | None = None,
                 name: str | None = None) -> Path:
    """Copy a checkpoint into the model folder (default user_model_folder()) under its study's sub-folder, with
    its description as NAME.json beside it; returns the copy's path.

    The file is checked first (checkpoint_info: weights-only loading, and `study` when given). name: the file
    name to use (default: the source's). The same file imported twice is not copied again; another file of the
    same name gets a numbered name (NAME-2.pt) rather than replacing the first.
    """
    source = Path(path)
    info = checkpoint_info(source, study=study)
    target_folder = Path(folder) if folder is not None else user_model_folder()
    target_folder = target_folder / (info["study"] or NO_STUDY_FOLDER)
    stem = Path(name or source.name).name
    stem = stem[:-len(CHECKPOINT_SUFFIX)] if stem.endswith(CHECKPOINT_SUFFIX) else stem
    target = target_folder / f"{stem}{CHECKPOINT_SUFFIX}"
    number = 1
    while target.exists() and not _same_bytes(source, target):
        number += 1
        target = target_folder / f"{stem}-{number}{CHECKPOINT_SUFFIX}"
    if target.exists() and target.resolve() == source.resolve():
        return target
    if not target.exists():
        with atomic_file(target) as tmp:  # never half a checkpoint in the folder, even if the copy fails
            shutil.copyfile(source, tmp)
    info = {**info, "path": str(target.resolve()), "imported_from": str(source.resolve())}
    with atomic_file(target.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return target


def list_models(study: str | None = None, *, folder: str | os.PathLike | None = None) -> list[dict]:
    """The checkpoints in the model folder (`study`'s sub-folder, or all), newest first: each its NAME.json
    description (see checkpoint_info) with "path"; a .pt without one (copied by hand) is listed with only
    "path", "study" (its folder) and "summary" ("not described: import it to check it")."""
    root = Path(folder) if folder is not None else user_model_folder()
    folders = [root / study] if study is not None else sorted(p for p in root.glob("*") if p.is_dir())
    models = []
    for sub in folders:
        for checkpoint in sub.glob(f"*{CHECKPOINT_SUFFIX}"):
            description = checkpoint.with_suffix(".json")
            try:
                info = json.loads(description.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {"study": sub.name, "summary": "not described: import it to check it"}
            models.append({**info, "path": str(checkpoint), "name": checkpoint.stem,
                           "modified": checkpoint.stat().st_mtime})
    return sorted(models, key=lambda m: -m["modified"])
