"""The Segment panel's logic: input volume nodes -> `segcore predict` in a subprocess -> a segmentation node.

    logic = SegmentLogic(slicer.mrmlScene, study="atrium")
    runner = logic.start([lge_node], "models/atrium/best.pt", device="auto", settings={"tta": False},
                         on_progress=lambda event: bar.setValue(...), on_done=lambda node, error: ...)
    timer.timeout.connect(runner.poll)                   # Slicer: a qt.QTimer; Cancel calls runner.cancel()
    node = logic.run_blocking([lge_node], "best.pt")     # tests and scripts; SegCoreError on failure

`start` checks everything it can before a process starts (the checkpoint's study and channels, the input
nodes' geometry), writes the input nodes to NRRD files in a temporary folder (exact geometry, oblique
directions included), runs `PythonSlicer -m SegCore --progress json predict ...` through a `ProcessRunner`
(Slicer stays responsive; Cancel kills the process tree), and on success reads the label map back onto the
first input's grid and makes (or refills) a segmentation node: one segment per label with the study's name,
colour and terminology, the input as reference geometry, next to the input in the subject hierarchy. The
temporary folder is removed however the run ends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from SegCore.errors import SegCoreError
from SegCore.slicer_utils.models import checkpoint_info
from SegCore.slicer_utils.runner import ProcessRunner
from SegCore.slicer_utils.volumes import grid_from_node, volume_from_node

# Settings the panel's Advanced section sets -> predict options (None or absent: the checkpoint's plan decides).
# locator: the coarse localisation checkpoint of a two-stage study (atrium: locate, then segment a crop).
SETTING_KEYS = ("overlap", "tta", "postprocess", "batch", "locator")


def predict_options(device: str = "auto", settings: dict | None = None) -> list[str]:
    """`segcore predict` options for a device and the Advanced settings {"overlap": float in [0, 1), "tta": bool,
    "postprocess": bool, "batch": int, "locator": checkpoint path}; unknown keys are an error (a misspelt setting
    must not be ignored)."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise SegCoreError(f"unknown segment setting(s) {', '.join(unknown)}", fix=f"use {', '.join(SETTING_KEYS)}")
    options = ["--device", str(device or "auto")]
    if settings.get("overlap") is not None:
        options += ["--overlap", repr(float(settings["overlap"]))]
    if settings.get("tta") is not None:
        options.append("--tta" if settings["tta"] else "--no-tta")
    if settings.get("postprocess") is False:
        options.append("--no-postprocess")
    if settings.get("batch") is not None:
        options += ["--batch", str(int(settings["batch"]))]
    if settings.get("locator"):
        options += ["--locator", str(Path(settings["locator"]).resolve())]
    return options


def input_grid(input_nodes: Sequence, channels: Sequence[str]):
    """The common `Grid` of the input volume nodes, after checking that they fit the checkpoint's channels:
    one scalar node per channel, in order (or one vector node holding them all), all on one grid. SegCoreError
    naming the channels and nodes otherwise."""
    nodes = [node for node in input_nodes if node is not None]
    if not nodes or len(nodes) != len(input_nodes):
        raise SegCoreError(f"choose an input volume for every channel ({', '.join(channels) or 'one image'})")
    components = [node.GetImageData().GetNumberOfScalarComponents() if node.GetImageData() else 1 for node in nodes]
    given = sum(components)
    expected = len(channels) or given
    if given != expected:
        raise SegCoreError(f"the model takes {expected} channel(s) ({', '.join(channels)}), the inputs hold {given}",
                           fix=f"choose one volume per channel, in this order: {', '.join(channels)}")
    grids = [grid_from_node(node) for node in nodes]
    for node, grid, name in zip(nodes[1:], grids[1:], list(channels)[1:] or [""] * len(nodes), strict=False):
        problem = grids[0].mismatch(grid)
        if problem is not None:
            raise SegCoreError(f"volume {node.GetName()!r}{f' ({name})' if name else ''} is not on the grid of "
                               f"{nodes[0].GetName()!r}: {problem}",
                               fix="choose volumes of one acquisition, or resample them onto the first one "
                                   "(Resample Image (BRAINS) or the Resample Scalar/Vector/DWI Volume module)")
    return grids[0]


def prediction_segments(info: dict) -> list:
    """SegCore.io Segments for a checkpoint's labels: names and values from the checkpoint (what its network
    predicts); colour and terminology from the checkpoint, else from the study's label of the same name."""
    from SegCore.inference.outputs import segments_from_labels

    segments = segments_from_labels(info["labels"])
    if not info.get("study"):
        return segments
    from dataclasses import replace

    from SegCore.slicer_utils.segmentations import study_segments
    from SegCore.studies import get_study

    known = {segment.name: segment for segment in study_segments(get_study(info["study"]).labels)}
    return [replace(segment, terminology=segment.terminology or known[segment.name].terminology)
            if segment.name in known else segment for segment in segments]


class SegmentLogic:
    """Segment volume nodes of `scene` with a checkpoint; `study` (the module's) refuses other studies' models."""

    def __init__(self, scene, study: str | None = None):
        self.scene, self.study = scene, study
        self.runner: ProcessRunner | None = None
        self.output_node = None
        self.error: str | None = None
        self.warnings: list[str] = []

    def start(self, input_nodes: Sequence, checkpoint, *, device: str = "auto", settings: dict | None = None,
              output_node=None, on_progress: Callable[[dict], None] | None = None,
              on_done: Callable[[object, str | None], None] | None = None, name: str = "") -> ProcessRunner:
        """Check the inputs, then start the prediction; returns the running ProcessRunner (poll it).

        input_nodes: volume nodes in the checkpoint's channel order. checkpoint: a .pt path. device: "auto",
        "cpu", "cuda:N". settings: see `predict_options`. output_node: a segmentation node to refill (None: a
        new one). on_progress(event): each JSON event (progress, then result or error). on_done(node, error):
        at the end: the segmentation node and None, or None and the error's one-line message ("cancelled").
        Raises SegCoreError before anything runs when the checkpoint or the inputs do not fit.
        """
        if self.runner is not None and self.runner.running:
            raise SegCoreError("a segmentation is already running", fix="wait for it or cancel it first")
        info = checkpoint_info(checkpoint, study=self.study)
        input_nodes = list(input_nodes)
        grid = input_grid(input_nodes, info["channels"])
        options = predict_options(device, settings)
        self.output_node, self.error, self.warnings = None, None, list(info["warnings"])
        folder = Path(tempfile.mkdtemp(prefix="segstudies-segment-"))
        try:
            from SegCore.io import write_image

            files = [write_image(volume_from_node(node), folder / f"channel{i}.nrrd")
                     for i, node in enumerate(input_nodes)]
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        output = folder / "prediction.nrrd"
        argv = ["predict", "--model", str(Path(checkpoint).resolve()), "--input", *map(str, files),
                "--output", str(output), *options]
        title = name or f"{input_nodes[0].GetName()} segmentation"

        def finished(returncode: int, last_event: dict | None) -> None:
            node = None
            try:
                if returncode == 0 and last_event is not None and last_event.get("event") == "result":
                    self.warnings += [str(w) for w in last_event.get("warnings") or []]
                    node = self._import(output, grid, info, input_nodes[0], output_node, title)
                else:
                    self.error = self.runner.error_message() or f"segcore predict ended with code {returncode}"
            except SegCoreError as error:
                self.error = str(error)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            self.output_node = node
            if on_done is not None:
                on_done(node, self.error)

        self.runner = ProcessRunner()
        try:
            self.runner.start(argv, on_event=on_progress, on_finished=finished)
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise SegCoreError(f"could not start the segmentation process: {error}",
                               fix="check that PythonSlicer (or this Python) can run") from None
        return self.runner

    def _import(self, output: Path, grid, info: dict, reference_node, output_node, name: str):
        from SegCore.io import read_label
        from SegCore.slicer_utils.segmentations import labels_to_segmentation_node
        from SegCore.volume import Volume

        labels = read_label(output, reference=grid)  # the CLI writes on the input grid; anything else is a bug
        # The input node's own grid, exactly (the file's header went through text and back).
        return labels_to_segmentation_node(Volume(labels.array, grid), prediction_segments(info), self.scene,
                                           reference_node=reference_node, node=output_node, name=name)

    def cancel(self) -> None:
        """Kill the running prediction's process tree (on_done then gets "cancelled")."""
        if self.runner is not None:
            self.runner.cancel()

    def run_blocking(self, input_nodes: Sequence, checkpoint, *, timeout: float | None = None, **options):
        """`start` and wait: returns the segmentation node, or raises SegCoreError with the run's message."""
        runner = self.start(input_nodes, checkpoint, **options)
        try:
            runner.wait(timeout)
        except TimeoutError:
            raise SegCoreError(f"the segmentation did not finish within {timeout} s and was cancelled",
                               fix="allow more time, or choose a GPU device") from None
        if self.error is not None or self.output_node is None:
            raise SegCoreError(self.error or "the segmentation produced no result")
        return self.output_node
