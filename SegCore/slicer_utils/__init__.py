"""The Slicer side of SegCore: the only code that imports `slicer` and `vtk` (docs/architecture.md).

Every function here works on MRML classes (a `vtkMRMLScene` passed in, nodes, `vtkSlicerSegmentationsModuleLogic`'s
static methods), never on `slicer.app`, `slicer.modules` or the application's `slicer.util` helpers, so it runs
inside 3D Slicer and under the `slicer-core` wheel (Slicer's MRML without Qt) that the tests use:

    import slicer
    from SegCore.slicer_utils.volumes import volume_from_node
    from SegCore.slicer_utils.segmentations import labels_to_segmentation_node

    image = volume_from_node(input_node)                     # SegCore Volume, LPS, (Z, Y, X)
    seg_node = labels_to_segmentation_node(labels, segments, slicer.mrmlScene, reference_node=input_node)

MRML conversions: `volumes` (volume nodes <-> `Volume`), `segmentations` (label `Volume` <-> segmentation node),
`tables` (metric rows -> table node), `plots` (curves and box plots as plot chart nodes).
Logic, without Qt: `runner` (`segcore --progress json ...` as a subprocess: events, Cancel kills the process
tree), `segment`, `train`, `review` (re-exported by `logic`), `models` (the per-user model folder),
`dependencies` (torch through PyTorchUtils, the rest with pip, never Slicer's numpy or SimpleITK).
GUI, Qt: `widget` (the shared study widget), `segment_panel`, `train_panel`, `review_panel`, `display` (their
texts, Qt-free), `module` (the logic and self-test classes every study module subclasses), `sample_data`,
`selftest`. The only exception to the MRML-classes rule is the GUI, which needs the application.
Nothing is imported here, so `import SegCore.slicer_utils` costs nothing when a module loads.
"""
