"""3D sliding-window inference: overlapping patches through the network, stitched with Gaussian weights.

    window = SlidingWindow([96, 96, 96], overlap=0.5, batch=2)
    probs_kzyx = window(net_fn, image_czyx, device="cuda", divisor=16)   # (K', Z, Y, X) float32, on the CPU
    index_zyx = window(net_fn, image_czyx, device="cpu", argmax=True)      # (Z, Y, X) uint8 class indices
    window.events        # what the memory fallback did, e.g. ["out of GPU memory: stitching moved to the CPU"]

Windows lie on a grid: along each axis `window_starts` (nnU-Net's rule). Each window's probabilities p_w are
weighted by the Gaussian g_w centred on it (`gaussian_importance`), so a voxel gets sum_w g_w p_w / sum_w g_w.
The Gaussian is a product of per-axis factors and the windows form a grid, so the summed weight is a product too
and each window's share g_w / sum g is the outer product of three 1D share vectors: there is no weight volume and
no final division, and a voxel seen by one window only gets that window's probabilities exactly (in float16 too).
Memory: one (K', Z, Y, X) accumulator (float16 on CUDA, float32 elsewhere) plus one batch of windows. With
`argmax=True` (one pass, only the labels wanted) the accumulator is a band of one window's depth along z: the
windows run z-row by z-row, so once a row of windows starts at z, every slice before z has all its windows; those
slices are reduced to class indices (`class_indices`, ties to the lowest class) and the band slides on. Each voxel
sums the same windows in the same order as in the whole accumulator, so for three or more classes the indices are
exactly the argmax of the probabilities that `argmax=False` returns. Two classes (or one sigmoid map) need one
channel in the band: the share-weighted sum of p1 - p0, whose sign is the label (0 on a tie); it differs from
comparing the two sums only where they are equal to float rounding (|p1 - p0| of order 1e-7). With
`discard_image=True` (the caller is done with the image) the image's slices before each new row of windows are
handed back to the system (Linux: madvise; elsewhere the image stays), so the labels grow as the image shrinks.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from SegCore import memory
from SegCore.errors import SegCoreError
from SegCore.inference.network import class_indices, probabilities

STITCH = ("auto", "device", "cpu")
CPU = torch.device("cpu")


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of the windows of length `patch` along an axis of length `size` (both voxels).

    The fewest windows, evenly spread from 0 to `size - patch`, whose neighbour step is at most
    max(1, patch * (1 - overlap)): n = ceil((size - patch) / step) + 1, start i = round(i * (size - patch) / (n - 1))
    (halves to even, exactly). `size <= patch`: one window at 0 (the caller pads the image to the patch).
    """
    if size <= patch:
        return [0]
    step = max(patch * (1.0 - overlap), 1.0)
    # the tolerance keeps a binary overlap such as 0.1 from asking for one window more than the decimal value does
    count = math.ceil((size - patch) / step - 1e-9) + 1
    return [round(Fraction(i * (size - patch), count - 1)) for i in range(count)]


def _gaussian_1d(side: int, sigma_scale: float) -> np.ndarray:
    """(side,) float64 Gaussian centred at (side - 1) / 2, sigma = sigma_scale * side, max 1, no zeros."""
    offsets = np.arange(side) - (side - 1) / 2
    log_g = -0.5 * (offsets / (sigma_scale * side)) ** 2
    g = np.exp(log_g - log_g.max())  # in the log domain, so a tiny sigma still peaks at exactly 1
    g[g == 0] = g[g > 0].min()
    return g


@functools.lru_cache(maxsize=16)
def _gaussian_3d(patch_zyx: tuple[int, int, int], sigma_scale: float) -> Tensor:
    gz, gy, gx = (_gaussian_1d(side, sigma_scale) for side in patch_zyx)
    g = (gz[:, None, None] * gy[None, :, None] * gx[None, None, :]).astype(np.float32)
    g[g == 0] = g[g > 0].min()  # float32 underflow far from the centre (nnU-Net's rule: no zero weight)
    return torch.from_numpy(g)


def gaussian_importance(patch_zyx: Sequence[int], sigma_scale: float = 0.125) -> Tensor:
    """(Z, Y, X) float32 weights of a window: a Gaussian centred on the patch centre ((side - 1) / 2 per axis),
    sigma = sigma_scale * side per axis, scaled to max 1, zeros replaced by the smallest non-zero value.

    Cached per (patch, sigma): the tensor is shared, do not change it in place.
    """
    return _gaussian_3d(tuple(int(n) for n in patch_zyx), float(sigma_scale))


def release_slices(image_czyx: Tensor, z: int) -> bool:
    """`SegCore.memory.release_slices` for a contiguous CPU (C, Z, Y, X) tensor (False for one on another device
    or not contiguous: then nothing changes)."""
    if image_czyx.device.type != "cpu" or not image_czyx.is_contiguous():
        return False
    return memory.release_slices(image_czyx.numpy(), z)


def _axis_shares(size: int, patch: int, starts: list[int], sigma_scale: float) -> np.ndarray:
    """(len(starts), patch) float64: window i's share g / (sum of g over the windows) at each of its positions."""
    g = _gaussian_1d(patch, sigma_scale)
    total = np.zeros(size)
    for start in starts:
        total[start:start + patch] += g
    return np.stack([g / total[start:start + patch] for start in starts])


class _Case:
    """The state of one volume in progress: the windows, how many are stitched, where the accumulator lives.

    The accumulator (K', depth, Y, X) holds z-slices [z0, z0 + depth) of the (padded) volume: all of them
    (depth = Z, z0 = 0), or with `labels` (the (Z, Y, X) class indices being filled, on the CPU) a band of
    depth = patch_z that `advance` slides along z; with labels and two classes (`difference`) the band has one
    channel, the weighted sum of p1 - p0. classes: K' (known after the first batch). released: the image's
    slices before this are handed back (discard_image)."""

    def __init__(self, corners: list[tuple[int, int, int]], starts: list[list[int]], shares: list[np.ndarray],
                 place: torch.device, depth: int, labels: Tensor | None = None):
        self.corners, self.starts, self.done = corners, starts, 0
        self.shares_np = shares
        self.acc: Tensor | None = None
        self.depth, self.z0, self.labels = depth, 0, labels
        self.classes, self.difference, self.released = 0, False, 0
        self.move(place)

    def move(self, place: torch.device) -> None:
        """Stitch on `place` from now on; an accumulator already begun is carried over (per class, no big temp)."""
        self.place = place
        self.shares = [torch.from_numpy(s.astype(np.float32)).to(place) for s in self.shares_np]
        if self.acc is not None and self.acc.device != place:
            moved = torch.empty(self.acc.shape, dtype=self.dtype(), device=place)
            for k in range(self.acc.shape[0]):
                moved[k].copy_(self.acc[k].to(place))
            self.acc = moved

    def dtype(self) -> torch.dtype:
        return torch.float16 if self.place.type == "cuda" else torch.float32  # half the memory where it is scarce

    def share(self, corner: tuple[int, int, int]) -> Tensor:
        iz, iy, ix = corner
        return self.shares[0][iz][:, None, None] * self.shares[1][iy][None, :, None] * self.shares[2][ix][None, None, :]

    def box(self, corner: tuple[int, int, int], patch_zyx: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(s[i], s[i] + p) for s, i, p in zip(self.starts, corner, patch_zyx, strict=True))

    def acc_box(self, corner: tuple[int, int, int], patch_zyx: tuple[int, ...]) -> tuple[slice, ...]:
        """The window's place in the accumulator: its box, z counted from z0."""
        z, y, x = self.box(corner, patch_zyx)
        return slice(None), slice(z.start - self.z0, z.stop - self.z0), y, x

    def advance(self, z: int) -> None:
        """With `labels`: every window starting before slice z is stitched, so slices [z0, z) are final. Reduce
        them to class indices and slide the band to start at z (slice by slice forward, never reading a slice
        already overwritten: no temporary). z - z0 <= depth: neighbouring z-starts are at most a patch apart."""
        if self.labels is None or self.acc is None or z <= self.z0:
            return
        done = z - self.z0
        if self.difference:
            self.labels[self.z0:z].copy_((self.acc[0, :done] > 0).cpu())  # p1 - p0 > 0: class 1; a tie: 0
        else:
            self.labels[self.z0:z].copy_(class_indices(self.acc[:, :done]).cpu())
        keep = self.depth - done
        for i in range(keep):
            self.acc[:, i].copy_(self.acc[:, i + done])
        self.acc[:, keep:].zero_()
        self.z0 = z


class SlidingWindow:
    """Sliding-window inference over (C, Z, Y, X) volumes, remembering its memory fallback between cases.

    patch_zyx: window size (voxels; rounded up to the network's divisor per call). overlap in [0, 1): the
    neighbour step is at most patch * (1 - overlap). sigma_scale: Gaussian sigma per side. batch: windows per
    forward pass. stitch: where the accumulator lives: "auto" (the device where the network runs; the same as
    "device" today), "device", or "cpu". On out-of-GPU-memory the object first moves stitching to the CPU, then
    halves `batch` down to 1, and keeps the new `stitch` and `batch` for the next cases; `events` lists each step.
    """

    def __init__(self, patch_zyx: Sequence[int], *, overlap: float = 0.5, sigma_scale: float = 0.125,
                 batch: int = 1, stitch: str = "auto"):
        if not (len(patch_zyx) == 3 and all(type(n) is int and n > 0 for n in patch_zyx)):
            raise SegCoreError(f"sliding window patch_zyx must be 3 positive whole numbers, got {list(patch_zyx)}",
                               fix="e.g. patch_zyx [96, 96, 96]")
        if not 0 <= overlap < 1:
            raise SegCoreError(f"sliding window overlap must be in [0, 1), got {overlap}", fix="e.g. --overlap 0.5")
        if not sigma_scale > 0:
            raise SegCoreError(f"sliding window sigma_scale must be > 0, got {sigma_scale}", fix="0.125 (nnU-Net's)")
        if not (type(batch) is int and batch >= 1):
            raise SegCoreError(f"sliding window batch must be a whole number >= 1, got {batch!r}", fix="--batch 2")
        if stitch not in STITCH:
            raise SegCoreError(f"sliding window stitch must be one of {', '.join(STITCH)}, got {stitch!r}",
                               fix="use auto")
        self.patch_zyx = tuple(patch_zyx)
        self.overlap, self.sigma_scale, self.batch, self.stitch = float(overlap), float(sigma_scale), batch, stitch
        self.events: list[str] = []
        self.classes: int | None = None  # K' of the last volume (what argmax=True's indices count)

    @torch.no_grad()
    def __call__(self, net_fn: Callable[[Tensor], Tensor], image_czyx: Tensor, *, device: str | torch.device,
                 divisor: int = 1, progress: Callable[[int, int], None] | None = None, argmax: bool = False,
                 discard_image: bool = False) -> Tensor:
        """Probabilities (K', Z, Y, X) float32 on the CPU for one float32 (C, Z, Y, X) volume; argmax=True: their
        class indices instead, (Z, Y, X) uint8 (int32 past 256 classes) on the CPU, stitched in a band (see the
        module docstring).

        net_fn: (B, C, *patch) float32 on `device` -> (B, K, *patch) logits. divisor: the network's side multiple.
        progress(done_windows, total_windows) after each batch. discard_image: the caller never reads
        `image_czyx` again, so its slices behind the windows are released as they move on (`release_slices`:
        Linux; they read as zeros afterwards).
        """
        device = torch.device(device)
        image = torch.as_tensor(image_czyx, dtype=torch.float32)
        if image.ndim != 4:
            raise SegCoreError(f"sliding window takes a (C, Z, Y, X) volume, got shape {tuple(image.shape)}",
                               fix="pass the preprocessed image with its channel axis first")
        shape_zyx = tuple(image.shape[1:])
        patch = tuple(-(-p // divisor) * divisor for p in self.patch_zyx)
        padded_zyx = tuple(max(s, p) for s, p in zip(shape_zyx, patch, strict=True))
        # centred, so the network sees the image in the middle of its patch as in training
        before = tuple((q - s) // 2 for q, s in zip(padded_zyx, shape_zyx, strict=True))
        if padded_zyx != shape_zyx:
            pads = []
            for q, s, b in reversed(list(zip(padded_zyx, shape_zyx, before, strict=True))):
                pads += [b, q - s - b]
            image = torch.nn.functional.pad(image, pads)
        starts = [window_starts(q, p, self.overlap) for q, p in zip(padded_zyx, patch, strict=True)]
        shares = [_axis_shares(q, p, s, self.sigma_scale) for q, p, s in zip(padded_zyx, patch, starts, strict=True)]
        corners = list(itertools.product(*(range(len(s)) for s in starts)))
        labels = torch.empty(padded_zyx, dtype=torch.uint8) if argmax else None  # int32 past 256 classes: _run
        case = _Case(corners, starts, shares, CPU if self.stitch == "cpu" else device,
                     depth=patch[0] if argmax else padded_zyx[0], labels=labels)
        while case.done < len(corners):
            try:
                self._run(net_fn, image, case, patch, device, progress, discard_image)
            except torch.cuda.OutOfMemoryError as error:
                self._fall_back(case, error)
            if case.done < len(corners) and device.type == "cuda":
                torch.cuda.empty_cache()  # hand back what the failed attempt cached before retrying
        crop = (slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, shape_zyx, strict=True))
        self.classes = case.classes
        if discard_image:
            release_slices(image, padded_zyx[0])
        if argmax:
            case.advance(padded_zyx[0])  # the last band
            return case.labels if padded_zyx == shape_zyx else case.labels[crop[1:]].contiguous()
        if case.acc.device == CPU and case.acc.dtype == torch.float32:
            return case.acc if padded_zyx == shape_zyx else case.acc[crop].contiguous()
        out = torch.empty((case.acc.shape[0], *shape_zyx), dtype=torch.float32)
        for k in range(out.shape[0]):  # one class at a time: no second full-volume buffer on the device
            out[k].copy_(case.acc[k][crop[1:]].cpu())
        return out

    def _run(self, net_fn, image: Tensor, case: _Case, patch: tuple[int, ...], device: torch.device,
             progress, discard_image: bool = False) -> None:
        total = len(case.corners)
        while case.done < total:
            todo = case.corners[case.done:case.done + self.batch]
            windows = torch.empty((len(todo), image.shape[0], *patch), dtype=torch.float32,
                                  pin_memory=device.type == "cuda")  # the host allocator waits for its copy
            for j, corner in enumerate(todo):
                windows[j].copy_(image[(slice(None), *case.box(corner, patch))])
            logits = net_fn(windows.to(device, non_blocking=True))
            if not (isinstance(logits, Tensor) and logits.ndim == 5 and logits.shape[0] == len(todo)
                    and tuple(logits.shape[2:]) == patch):
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise SegCoreError(f"the network returned {got} for windows {tuple(windows.shape)}; sliding window "
                                   "needs logits (B, K, *patch)", fix="use a 3D segmentation network")
            probs = probabilities(logits)
            if case.acc is None:
                case.classes = int(probs.shape[1])
                case.difference = case.labels is not None and case.classes == 2
                case.acc = torch.zeros((1 if case.difference else case.classes, case.depth, *image.shape[2:]),
                                       dtype=case.dtype(), device=case.place)
                if case.labels is not None and case.classes > 256:
                    case.labels = torch.empty(case.labels.shape, dtype=torch.int32)
            if case.difference:  # (B, 1, *patch): p1 - p0, where the network ran (less to move)
                probs = torch.sub(probs[:, 1:], probs[:, :1])
            probs = probs.to(case.place)
            for j, corner in enumerate(todo):
                z = case.starts[0][corner[0]]
                case.advance(z)
                if discard_image and z > case.released:  # no later window starts before z
                    release_slices(image, z)
                    case.released = z
                case.acc[case.acc_box(corner, patch)].addcmul_(probs[j], case.share(corner))
                case.done += 1  # per window, so a retry after a failure here never adds a window twice
            if progress is not None:
                progress(case.done, total)

    def _fall_back(self, case: _Case, error: torch.cuda.OutOfMemoryError) -> None:
        """The next step down after an out-of-memory error, remembered for the next cases; or a SegCoreError."""
        if self.stitch != "cpu":
            self.stitch = "cpu"
            case.move(CPU)
            self.events.append("out of GPU memory: stitching moved to the CPU")
        elif self.batch > 1:
            old, self.batch = self.batch, self.batch // 2
            self.events.append(f"out of GPU memory: sliding-window batch {old} -> {self.batch}")
        else:
            raise SegCoreError(f"out of GPU memory even with batch 1 and stitching on the CPU (patch "
                               f"{list(self.patch_zyx)})", fix="run with --device cpu, or a smaller patch_zyx "
                               "or --batch") from error
