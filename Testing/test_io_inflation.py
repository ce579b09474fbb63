"""Compressed NRRD/MetaImage voxels are inflated once (by ITK) and still checked against their checksum."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from SegCore.errors import SegCoreError
from SegCore.io import read_image, read_segmentation, write_image, write_segmentation
from SegCore.io.segmentation import Segment
from SegCore.volume import Volume


class CountingInflater:
    """Stands in for zlib.decompressobj and counts how often the voxels are inflated in Python."""

    def __init__(self):
        self.calls = 0
        self._real = zlib.decompressobj

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._real(*args, **kwargs)


@pytest.fixture
def inflater(monkeypatch) -> CountingInflater:
    counting = CountingInflater()
    monkeypatch.setattr("SegCore.io.checks.zlib.decompressobj", counting)
    return counting


@pytest.mark.parametrize(("suffix", "dtype"), [(".nrrd", np.uint8), (".nrrd", np.int16), (".mha", np.float32)])
def test_intact_payload_is_not_inflated_a_second_time(tmp_path, rng, inflater, suffix, dtype):
    array = (rng.random((7, 9, 11)) * 100).astype(dtype)
    path = write_image(Volume.create(array, (0.5, 0.7, 2.0)), tmp_path / f"image{suffix}")
    assert np.array_equal(read_image(path).array, array)
    assert inflater.calls == 0


def test_multi_layer_segmentation_is_not_inflated_a_second_time(tmp_path, inflater):
    labels = np.zeros((2, 6, 8, 8), np.uint8)  # two layers: the segments overlap
    labels[0, 1:4, 1:5, 1:5] = 1
    labels[1, 2:5, 3:7, 3:7] = 1
    segments = [Segment("a", 1, (1.0, 0.0, 0.0), layer=0), Segment("b", 1, (0.0, 1.0, 0.0), layer=1)]
    path = write_segmentation(Volume.create(labels, (1.0, 1.0, 1.0)), segments, tmp_path / "s.seg.nrrd")
    volume, _ = read_segmentation(path)
    assert np.array_equal(volume.array, labels) and inflater.calls == 0


def big_endian_nrrd(path, array: np.ndarray, payload: bytes | None = None) -> None:
    """A NRRD written by hand: int16 voxels in big-endian byte order, gzip-encoded."""
    header = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: {array.shape[2]} {array.shape[1]} {array.shape[0]}\n"
              "endian: big\nencoding: gzip\nspace: left-posterior-superior\n"
              "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n")
    payload = gzip.compress(array.astype(">i2").tobytes()) if payload is None else payload
    path.write_bytes(header.encode() + payload)


def test_voxels_in_another_byte_order_are_checked_by_inflating(tmp_path, rng, inflater):
    array = rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    path = tmp_path / "big.nrrd"
    big_endian_nrrd(path, array)
    assert np.array_equal(read_image(path).array, array)
    assert inflater.calls == 1  # ITK's voxels are native-endian, so their checksum cannot match: inflate to check
    damaged = bytearray(gzip.compress(array.astype(">i2").tobytes()))
    damaged[-8] ^= 0xFF  # the stored CRC-32: ITK reads the voxels, the check must refuse them
    big_endian_nrrd(path, array, bytes(damaged))
    with pytest.raises(SegCoreError, match="corrupt"):
        read_image(path)
