"""Inference: from checkpoint(s) and a scan to a label map on the scan's own grid (docs/inference.md).

    from SegCore.inference import Predictor, read_input
    prediction = Predictor("RUN/best.pt").predict(read_input(["scan.nii.gz"]))   # .label: a Volume

Files: predictor.py (the Predictor), inputs.py (reading and checking the input), settings.py (the plan's
inference section), windows.py (3D sliding window), slices.py (2D, 2.5D, several views), cascade.py (locate, then
segment), coarse_to_fine.py (RSTN), postprocess.py (components, holes), outputs.py (writing), batch.py
(a folder of cases, `segcore predict`), export.py (TorchScript, ONNX).
"""

from SegCore.inference.inputs import check_input, read_input
from SegCore.inference.predictor import Prediction, Predictor
from SegCore.inference.settings import inference_settings

__all__ = ["Prediction", "Predictor", "check_input", "inference_settings", "read_input"]
