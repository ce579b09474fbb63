"""The logic of the study modules' Segment, Train and Review panels, in one import for the widget.

    from SegCore.slicer_utils.logic import ReviewLogic, SegmentLogic, TrainLogic, checkpoint_info

    node = SegmentLogic(slicer.mrmlScene, study="atrium").run_blocking([volume_node], "best.pt", device="cpu")
    table = ReviewLogic(slicer.mrmlScene).compute(node, reference_node)

Each lives in its own file: `segment` (input nodes -> `segcore predict` subprocess -> segmentation node),
`train` (`segcore train` subprocess, status.json, stop and resume), `review` (metrics tables, evaluation folders
as box plots); `models` describes and imports checkpoints, `runner` runs the subprocesses. All of them work on
MRML classes only, so they run in Slicer and under the slicer-core wheel; nothing heavy is imported here.
"""

from SegCore.slicer_utils.models import checkpoint_info, import_model, list_models, user_model_folder
from SegCore.slicer_utils.review import ReviewLogic, show_in_layout, table_node_rows
from SegCore.slicer_utils.runner import ProcessRunner, python_executable
from SegCore.slicer_utils.segment import SegmentLogic, input_grid, predict_options
from SegCore.slicer_utils.train import TrainLogic, train_arguments

__all__ = ["ProcessRunner", "ReviewLogic", "SegmentLogic", "TrainLogic", "checkpoint_info", "import_model",
           "input_grid", "list_models", "predict_options", "python_executable", "show_in_layout",
           "table_node_rows", "train_arguments", "user_model_folder"]
