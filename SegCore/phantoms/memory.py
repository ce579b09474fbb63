"""How much memory making one phantom case takes, checked before anything is allocated or written.

A case is made whole in memory: per channel a float32 image and about three float32 work arrays (texture, noise,
blur), plus arrays shared by the channels (slab coordinates, the uint8 tissue map and label, the float64 copy the
DICOM writer makes). Peaks measured with ru_maxrss for one case at --size 256 (2 shared CPU cores) lie below the
estimate: 17.6 bytes per voxel (Spleen, one channel) to 75 (thalamus, five channels); the estimate gives 36 and 100.
"""

from __future__ import annotations

from SegCore.errors import SegCoreError
from SegCore.io.sizes import format_bytes
from SegCore.phantoms.catalog import MIN_SIDE, resolve_shape

BYTES_PER_VOXEL_SHARED = 20
BYTES_PER_VOXEL_PER_CHANNEL = 16
BASE_BYTES = 300 * 2 ** 20  # Python with numpy, scipy, nibabel and SimpleITK loaded


def num_channels(study: str, task: str) -> int:
    """The number of image channels of a phantom of `study` (for the Decathlon: of MSD task `task`)."""
    from SegCore.studies import get_study

    found = get_study(study)
    return len(found.task(task).channels if study == "decathlon" else found.channel_names)


def estimate_case_bytes(study: str, shape_zyx: tuple[int, int, int], task: str) -> int:
    """Peak memory in bytes of making and writing one case of `shape_zyx` (an upper estimate, see above)."""
    voxels = shape_zyx[0] * shape_zyx[1] * shape_zyx[2]
    per_voxel = BYTES_PER_VOXEL_SHARED + BYTES_PER_VOXEL_PER_CHANNEL * num_channels(study, task)
    return BASE_BYTES + voxels * per_voxel


def check_memory(study: str, shape_zyx: tuple[int, int, int], task: str) -> None:
    """Refuse a size whose case would need more memory than this machine has available (nothing is skipped
    where the available memory cannot be read)."""
    from SegCore.devices import ram_bytes  # MemAvailable (Linux), the Win32 API (Windows)

    need = estimate_case_bytes(study, shape_zyx, task)
    available = ram_bytes()[1]
    if available is None or need <= available:
        return

    def fits(n: int) -> bool:
        return estimate_case_bytes(study, resolve_shape(study, n, task), task) <= available

    low, high = MIN_SIDE, max(shape_zyx)  # bisect for the largest --size N that fits (the need grows with N)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    channels = num_channels(study, task)
    problem = (f"a {' x '.join(str(s) for s in shape_zyx)} (z,y,x) {study} phantom needs about {format_bytes(need)} of "
               f"memory per case ({channels} float32 channel{'s' if channels > 1 else ''} and work arrays), more "
               f"than the {format_bytes(available)} this machine has available")
    fix = (f"use a smaller --size, e.g. --size {low} (the largest side; each case is made whole in memory)"
           if fits(low) else "free memory, or use a machine with more")
    raise SegCoreError(problem, fix=fix)
