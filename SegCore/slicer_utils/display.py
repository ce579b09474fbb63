"""What the study panels show, as plain text and numbers: Qt-free, so it is tested headless against real runs.

    fraction, text = event_progress({"event": "progress", "stage": "predict", "step": 3, "total": 8})
    # (0.375, 'predict 3/8')
    device_choices(list_devices(free_memory=False))
    # [('Auto (a GPU if there is one, else the CPU)', 'auto'), ('CPU', 'cpu'),
    #  ('GPU 0: NVIDIA A10 (22.0 GiB)', 'cuda:0')]
    train_summary(TrainLogic.status("runs/la"), best_metric="dice_mean")
    # {'state': 'training', 'epoch': '3 / 200', 'loss': '0.4123', 'best': '0.8123 (dice_mean)', 'fraction': 0.015}

The widget (widget.py and the *_panel.py files) puts these strings into its labels and progress bars; the JSON
events are SegCore/cli.py's `--progress json` stream (progress events, then one result or error event) and the
status is the run folder's status.json (SegCore/training/run_folder.py), as SegCore.slicer_utils.train reads it.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

AUTO_LABEL = "Auto (a GPU if there is one, else the CPU)"
ENDED_STATES = ("finished", "stopped", "failed", "interrupted")


def _number(value, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def _metrics_text(metrics: dict) -> str:
    return " ".join(f"{key} {_number(value)}" for key, value in (metrics or {}).items()
                    if isinstance(value, int | float) and not isinstance(value, bool) and key != "eta_s")


def _duration(seconds) -> str:
    """'1 h 05 min', '4 min 10 s', '12 s'."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def event_progress(event: dict) -> tuple[float | None, str]:
    """(fraction done in [0, 1], or None when the stage has no known total; a one-line text) of one JSON event.

    progress: 'STAGE STEP/TOTAL MESSAGE METRICS, about T left' (what is known of it); result: (1.0, 'done');
    error: (None, its message: the one line the CLI wrote, never a traceback); anything else: (None, '').
    """
    kind = event.get("event")
    if kind == "result":
        return 1.0, "done"
    if kind == "error":
        return None, str(event.get("message") or "failed")
    if kind != "progress":
        return None, ""
    step, total = event.get("step"), event.get("total")
    known = isinstance(total, int | float) and total > 0 and isinstance(step, int | float)
    fraction = min(max(float(step) / float(total), 0.0), 1.0) if known else None
    parts = [str(event.get("stage") or "working")]
    if known:
        parts.append(f"{int(step)}/{int(total)}")
    elif isinstance(step, int | float):
        parts.append(str(int(step)))
    message = str(event.get("message") or "").strip()
    if message:
        parts.append(message)
    metrics = event.get("metrics") or {}
    if _metrics_text(metrics):
        parts.append(_metrics_text(metrics))
    left = _duration(metrics.get("eta_s"))
    text = " ".join(parts)
    return fraction, f"{text}, about {left} left" if left and fraction is not None and fraction < 1 else text


def torch_available() -> bool:
    """Whether torch can be imported here, without importing it."""
    return importlib.util.find_spec("torch") is not None


def available_devices() -> list:
    """SegCore.devices.list_devices() without reading free GPU memory (no CUDA context on every GPU); [] when
    torch is not installed yet (the combo then offers Auto and CPU, and torch is installed on the first run)."""
    if not torch_available():
        return []
    from SegCore.devices import list_devices

    return list_devices(free_memory=False)


def _gib(n_bytes) -> str:
    return f"{n_bytes / 2 ** 30:.1f} GiB" if isinstance(n_bytes, int | float) and n_bytes > 0 else "memory unknown"


def device_choices(devices: Sequence) -> list[tuple[str, str]]:
    """(label, --device value) for the device combo: Auto, CPU, then each GPU with its name and memory
    ('GPU 0: NVIDIA A10 (22.0 GiB)') and the Apple GPU when present. devices: SegCore.devices.DeviceInfo's."""
    choices = [(AUTO_LABEL, "auto"), ("CPU", "cpu")]
    for device in devices:
        if device.kind == "cuda":
            choices.append((f"GPU {device.index}: {device.description} ({_gib(device.total_memory_bytes)})",
                            device.name))
        elif device.kind == "mps":
            choices.append((f"Apple GPU (MPS, {_gib(device.total_memory_bytes)} shared)", device.name))
    return choices


def train_summary(status: dict, best_metric: str | None = None) -> dict:
    """The Train panel's labels for one status (TrainLogic.status or find_run): {'state', 'epoch', 'loss',
    'best', 'fraction' (steps done / steps, None when unknown), 'message'}; '-' for what is not known yet.
    best_metric: the plan's training.best_metric name, shown after the value."""
    state = str(status.get("state") or "no run")
    epoch, epochs = status.get("epoch"), status.get("epochs")
    epoch_text = f"{epoch} / {epochs}" if epoch is not None and epochs else "-" if epoch is None else str(epoch)
    step, steps = status.get("step"), status.get("steps")
    fraction = (min(max(step / steps, 0.0), 1.0) if isinstance(step, int | float) and isinstance(steps, int | float)
                and steps > 0 else None)
    if state == "finished":
        fraction = 1.0
    best = _number(status.get("best_metric"))
    if best != "-" and best_metric:
        best = f"{best} ({best_metric})"
    left = _duration(status.get("eta_s")) if state not in ENDED_STATES else ""
    return {"state": f"{state}, about {left} left" if left else state, "epoch": epoch_text,
            "loss": _number(status.get("loss")), "best": best, "fraction": fraction,
            "message": str(status.get("message") or "")}
