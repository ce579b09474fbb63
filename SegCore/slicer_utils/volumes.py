"""Volume nodes <-> SegCore `Volume`s, with exact geometry.

    image = volume_from_node(node)                      # (Z, Y, X), or (C, Z, Y, X) for a vector volume node
    node = volume_to_node(image, scene, name="T1")      # vtkMRMLScalarVolumeNode (vtkMRMLVectorVolumeNode for C > 1)
    labels_node = volume_to_node(labels, scene, label_map=True)

Slicer keeps a volume's geometry in the node (IJK-to-RAS: spacing, origin, directions) and the voxels in a
vtkImageData whose own origin and spacing stay (0, 0, 0) and (1, 1, 1); VTK's x index is the fastest, so the
flat scalars are a C-order (Z, Y, X) array, as in a `Volume`. RAS <-> LPS is `Grid.ijk_to_ras` /
`Grid.from_ijk_to_ras`. Geometry is the node's own (its local coordinates, what its file stores): a parent
transform is not applied, so a result placed under the same transform (as `labels_to_segmentation_node` does)
lines up with the input.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from SegCore.errors import SegCoreError
from SegCore.volume import Grid, Volume

SCALAR_CLASS = "vtkMRMLScalarVolumeNode"
LABEL_MAP_CLASS = "vtkMRMLLabelMapVolumeNode"
VECTOR_CLASS = "vtkMRMLVectorVolumeNode"


def vtk_matrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 numpy array as a vtkMatrix4x4."""
    result = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            result.SetElement(row, column, float(matrix[row, column]))
    return result


def numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a 4x4 float64 numpy array."""
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _node_name(node) -> str:
    return node.GetName() or node.GetID() or node.GetClassName()


def grid_from_node(node) -> Grid:
    """The `Grid` of a volume node (its IJK-to-RAS and its image data's size). SegCoreError without voxels."""
    if node is None or node.GetImageData() is None:
        name = _node_name(node) if node is not None else None
        raise SegCoreError(f"volume node {name!r} holds no image", fix="choose a loaded volume")
    image = node.GetImageData()
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    return _grid_of_image(image, numpy_matrix(ijk_to_ras))


def _grid_of_image(image, ijk_to_ras: np.ndarray) -> Grid:
    # An extent that does not start at 0 (a filter's output) shifts the first voxel to IJK (e0, e2, e4).
    extent = image.GetExtent()
    shifted = ijk_to_ras.copy()
    shifted[:3, 3] = (ijk_to_ras @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    size_xyz = image.GetDimensions()
    return Grid.from_ijk_to_ras(shifted, tuple(int(s) for s in reversed(size_xyz)))


def _array_of_image(image, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """A copy of a vtkImageData's voxels: (Z, Y, X), or (C, Z, Y, X) for C > 1 components."""
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise SegCoreError("the volume's image holds no voxel values", fix="choose a loaded volume")
    components = image.GetNumberOfScalarComponents()
    flat = numpy_support.vtk_to_numpy(scalars)
    if components == 1:
        return np.array(flat.reshape(shape_zyx))
    return np.ascontiguousarray(np.moveaxis(flat.reshape(*shape_zyx, components), -1, 0))


def volume_from_node(node) -> Volume:
    """A copy of a volume node's voxels and geometry as a `Volume` (LPS).

    Scalar and label map nodes give (Z, Y, X); a node with C > 1 components per voxel (a vector volume node)
    gives (C, Z, Y, X). The dtype is the node's. Changing the array later does not change the node.
    """
    grid = grid_from_node(node)
    return Volume(_array_of_image(node.GetImageData(), grid.shape_zyx), grid)


def _vtk_ready(array: np.ndarray, what: str) -> np.ndarray:
    """`array` in a dtype Slicer handles: bool -> uint8, float16 -> float32, 64-bit integers -> int32 when the
    values fit (Slicer does not display `long long` voxels)."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise SegCoreError(f"the {what} has values beyond 32-bit integers ({array.min()}..{array.max()}), "
                               "which Slicer cannot show", fix="rescale the image or store it as float32")
        return array.astype(np.int32)
    if array.dtype.kind not in "iuf":
        raise SegCoreError(f"the {what} has dtype {array.dtype}, which a volume node cannot hold",
                           fix="convert it to an integer or float array")
    return array


def image_data(array: np.ndarray) -> vtk.vtkImageData:
    """A deep-copied vtkImageData of a (Z, Y, X) or (C, Z, Y, X) array (C components per voxel), origin 0, spacing 1."""
    array = _vtk_ready(np.asarray(array), "image")
    image = vtk.vtkImageData()
    image.SetDimensions(*reversed(array.shape[-3:]))
    if array.ndim == 3:
        flat = np.ascontiguousarray(array).reshape(-1)
    else:  # VTK stores a voxel's components together: (C, Z, Y, X) -> (Z, Y, X, C)
        flat = np.ascontiguousarray(np.moveaxis(array, 0, -1)).reshape(-1, array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    return image


def update_node_from_volume(node, volume: Volume) -> None:
    """Replace a volume node's voxels and geometry with `volume`'s (deep copy)."""
    if volume.array.ndim == 4 and not node.IsA(VECTOR_CLASS):
        raise SegCoreError(f"a {volume.num_channels}-channel volume needs a vector volume node, "
                           f"not {node.GetClassName()} {_node_name(node)!r}", fix="pass node=None to make one")
    node.SetAndObserveImageData(image_data(volume.array))
    node.SetIJKToRASMatrix(vtk_matrix(volume.grid.ijk_to_ras()))
    node.Modified()


def volume_to_node(volume: Volume, scene, *, name: str = "", node=None, label_map: bool = False):
    """A volume node holding a copy of `volume`, added to `scene` (or `node` refilled), with display nodes.

    volume.array (Z, Y, X) -> vtkMRMLScalarVolumeNode, or vtkMRMLLabelMapVolumeNode when `label_map`;
    (C, Z, Y, X) -> vtkMRMLVectorVolumeNode with C components. Returns the node.
    """
    if node is None:
        if volume.array.ndim == 4:
            if label_map:
                raise SegCoreError(f"a label map has one channel, got {volume.num_channels}",
                                   fix="pass one (Z, Y, X) label volume")
            node_class = VECTOR_CLASS
        else:
            node_class = LABEL_MAP_CLASS if label_map else SCALAR_CLASS
        node = scene.AddNewNodeByClass(node_class, name or "Volume")
    elif name:
        node.SetName(name)
    update_node_from_volume(node, volume)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def oriented_image(volume: Volume):
    """A vtkOrientedImageData (Slicer's segmentation image: voxels + IJK-to-RAS) of a (Z, Y, X) volume."""
    if volume.array.ndim != 3:
        raise SegCoreError(f"an oriented image holds one channel, got shape {volume.array.shape}")
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(image_data(volume.array))
    image.SetImageToWorldMatrix(vtk_matrix(volume.grid.ijk_to_ras()))
    return image


def volume_from_oriented_image(image) -> Volume:
    """A copy of a vtkOrientedImageData as a (Z, Y, X) `Volume` (its extent's first voxel is the origin)."""
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    grid = _grid_of_image(image, numpy_matrix(matrix))
    return Volume(_array_of_image(image, grid.shape_zyx), grid)


def oriented_image_of_grid(grid: Grid):
    """An empty vtkOrientedImageData with `grid`'s geometry (no voxels allocated): a resampling target."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*reversed(grid.shape_zyx))
    image.SetImageToWorldMatrix(vtk_matrix(grid.ijk_to_ras()))
    return image
