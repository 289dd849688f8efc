"""The conventions both readers share: I420→BGR, frame rates, timestamps, declared length."""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pytest

from engine.errors import SourceError
from engine.sources.decoding import (
    DeclaredLength,
    FileClock,
    check_length,
    frames_to_ns,
    i420_buffer_to_bgr,
    i420_to_bgr,
    nominal_rate,
)
from tests.sources.helpers_sources import known_planes


def reference_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YCbCr → BGR, each 2×2 block sharing one chroma sample."""
    height, width = y.shape
    up_u = np.repeat(np.repeat(u, 2, 0), 2, 1)[:height, :width].astype(float) - 128
    up_v = np.repeat(np.repeat(v, 2, 0), 2, 1)[:height, :width].astype(float) - 128
    luma = (y.astype(float) - 16) * 255 / 219
    scale = 255 / 224
    red = luma + 1.402 * scale * up_v
    green = luma - 0.344136 * scale * up_u - 0.714136 * scale * up_v
    blue = luma + 1.772 * scale * up_u
    return np.clip(np.round(np.stack([blue, green, red], -1)), 0, 255)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 2), (3, 5), (4, 6), (121, 161), (240, 320)])
def test_i420_to_bgr_matches_bt601_reference(height: int, width: int) -> None:
    y, u, v = known_planes(7, width, height)
    image = i420_to_bgr(y, u, v)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert image.flags["C_CONTIGUOUS"]
    # OpenCV's fixed-point arithmetic rounds differently from the float formula by ≤ 1.
    assert np.abs(image - reference_bgr(y, u, v)).max() <= 1


def test_i420_to_bgr_reads_padded_rows() -> None:
    y, u, v = known_planes(3, 161, 121)
    padded = [np.zeros((p.shape[0], p.shape[1] + 11), np.uint8) for p in (y, u, v)]
    for target, plane in zip(padded, (y, u, v), strict=True):
        target[:, : plane.shape[1]] = plane
        target[:, plane.shape[1] :] = 255  # padding garbage that must not leak in
    views = [target[:, : plane.shape[1]] for target, plane in zip(padded, (y, u, v), strict=True)]
    np.testing.assert_array_equal(i420_to_bgr(*views), i420_to_bgr(y, u, v))


def _buffer(
    planes: tuple[np.ndarray, ...], strides: tuple[int, ...], offsets: tuple[int, ...], size: int
) -> np.ndarray:
    data = np.full(size, 255, np.uint8)  # padding garbage that must not leak in
    for plane, stride, offset in zip(planes, strides, offsets, strict=True):
        rows, cols = plane.shape
        for row in range(rows):
            data[offset + row * stride : offset + row * stride + cols] = plane[row]
    return data


@pytest.mark.parametrize(
    ("width", "height", "strides", "offsets", "size"),
    [
        (161, 121, (164, 84, 84), (0, 20008, 25132), 30256),  # GStreamer's default I420 layout
        (320, 240, (320, 160, 160), (0, 76800, 96000), 115200),  # packed: the no-copy path
        (320, 240, (384, 192, 192), (0, 92160, 115200), 138240),  # a decoder's padded rows
    ],
)
def test_i420_buffer_to_bgr_follows_the_layout(
    width: int, height: int, strides: tuple[int, ...], offsets: tuple[int, ...], size: int
) -> None:
    planes = known_planes(5, width, height)
    data = _buffer(planes, strides, offsets, size)
    np.testing.assert_array_equal(
        i420_buffer_to_bgr(data, width, height, strides, offsets), i420_to_bgr(*planes)
    )


def test_i420_buffer_to_bgr_rejects_a_short_buffer() -> None:
    with pytest.raises(SourceError, match="does not hold"):
        i420_buffer_to_bgr(np.zeros(100, np.uint8), 16, 16, (16, 8, 8), (0, 256, 320))


def test_i420_to_bgr_rejects_wrong_chroma_size() -> None:
    y, u, v = known_planes(0, 8, 8)
    with pytest.raises(SourceError, match="chroma"):
        i420_to_bgr(y, u[:, :3], v)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (Fraction(214748359, 3579125), Fraction(60)),  # the highway AVI's header
        (Fraction(30000, 1001), Fraction(30000, 1001)),
        (Fraction(5994, 100), Fraction(60000, 1001)),
        (Fraction(25), Fraction(25)),
        (Fraction(25, 2), Fraction(25, 2)),
        (Fraction(2997, 100), Fraction(30000, 1001)),  # "29.97" is 1 ppm from NTSC
        (Fraction(24001, 1000), Fraction(24001, 1000)),  # 42 ppm: a real rate, kept
        (Fraction(0), None),
        (None, None),
    ],
)
def test_nominal_rate(rate: Fraction | None, expected: Fraction | None) -> None:
    assert nominal_rate(rate) == expected


@pytest.mark.parametrize(
    ("index", "rate", "expected_ns"),
    [
        (0, Fraction(30), 0),
        (1, Fraction(30), 33_333_333),
        (2, Fraction(30), 66_666_667),
        (3, Fraction(30000, 1001), 100_100_000),
        (1699, Fraction(60), 28_316_666_667),
    ],
)
def test_frames_to_ns_rounds_to_nearest(index: int, rate: Fraction, expected_ns: int) -> None:
    assert frames_to_ns(index, rate) == expected_ns


def test_file_clock_index_based_ignores_decoder_times() -> None:
    clock = FileClock(rate=Fraction(60), index_based=True, display="x.avi")
    assert [clock.pts_ns(i, t) for i, t in enumerate([5, 3, None, 3])] == [
        0,
        16_666_667,
        33_333_333,
        50_000_000,
    ]


def test_file_clock_repairs_non_increasing_times_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FileClock(rate=Fraction(25), index_based=False, display="x.mkv")
    with caplog.at_level(logging.WARNING):
        times = [clock.pts_ns(i, t) for i, t in enumerate([0, 40_000_000, 40_000_000, None, 200_000_000])]
    assert times == [0, 40_000_000, 80_000_000, 120_000_000, 200_000_000]
    assert len([r for r in caplog.records if "x.mkv" in r.getMessage()]) == 1


def test_file_clock_without_rate_still_increases() -> None:
    clock = FileClock(rate=None, index_based=True, display="x.avi")
    assert [clock.pts_ns(i, t) for i, t in enumerate([10, 10, 5])] == [10, 11, 12]


def test_check_length_raises_on_truncation() -> None:
    with pytest.raises(SourceError, match=r"truncated.*decoded 850 of 1700 declared frames: cut\.avi"):
        check_length(850, DeclaredLength(frames=1700, exact=True), "cut.avi")


@pytest.mark.parametrize(
    ("decoded", "declared"),
    [
        (1699, DeclaredLength(1700, exact=True)),  # B-frame delay of a packed-bitstream AVI
        (1700, DeclaredLength(1700, exact=True)),
        (1800, DeclaredLength(1700, exact=True)),
        (10, DeclaredLength(1700, exact=False)),  # estimates from duration are only logged
        (10, None),
    ],
)
def test_check_length_tolerates(decoded: int, declared: DeclaredLength | None) -> None:
    check_length(decoded, declared, "clip")
