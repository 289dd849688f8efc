"""What the GStreamer and PyAV readers must agree on: pixels, timestamps, declared length.

Both readers decode to planar YUV 4:2:0 (I420) and convert it here, with the same OpenCV
call, so the same decoded picture gives the same BGR bytes whichever library decoded it.
File timestamps and the "is this file truncated?" check also live here, so both readers
follow one rule.

Convention:
    - I420 planes are 2-D ``uint8`` arrays: Y is H×W, U and V are ⌈H/2⌉×⌈W/2⌉; rows may be
      strided views (decoders pad rows).
    - Output images are H×W×3 ``uint8`` BGR, C-contiguous. Colour conversion is BT.601
      limited range (OpenCV's ``COLOR_YUV2BGR_I420``), also for full-range (JPEG) sources.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from engine.errors import SourceError

_log = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000


def i420_to_bgr(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Convert I420 planes (possibly with padded rows, odd sizes) to a BGR image.

    Args:
        y: H×W luma plane.
        u: ⌈H/2⌉×⌈W/2⌉ Cb plane.
        v: ⌈H/2⌉×⌈W/2⌉ Cr plane.

    Returns:
        H×W×3 uint8 BGR, C-contiguous.
    """
    height, width = y.shape
    even_h, even_w = height + (height & 1), width + (width & 1)
    if u.shape != (even_h // 2, even_w // 2) or v.shape != u.shape:
        raise SourceError(
            f"I420 chroma planes must be {(even_h // 2, even_w // 2)} for a {width}x{height} "
            f"picture, got {u.shape} and {v.shape}"
        )
    luma_size = even_h * even_w
    chroma_size = luma_size // 4
    packed = np.empty(luma_size + 2 * chroma_size, np.uint8)
    luma = packed[:luma_size].reshape(even_h, even_w)
    luma[:height, :width] = y
    # OpenCV's I420 converter needs even sizes; repeat the last column/row of an odd picture
    # (its chroma already covers the extra pixel) and crop it off afterwards.
    if even_w != width:
        luma[:height, width] = y[:, width - 1]
    if even_h != height:
        luma[height] = luma[height - 1]
    packed[luma_size : luma_size + chroma_size].reshape(u.shape)[:] = u
    packed[luma_size + chroma_size :].reshape(v.shape)[:] = v
    return packed_i420_to_bgr(packed, even_w, even_h, width, height)


def packed_i420_to_bgr(
    packed: np.ndarray, even_width: int, even_height: int, width: int, height: int
) -> np.ndarray:
    """Convert a tightly packed I420 buffer of even size to BGR, cropped to ``width``×``height``.

    Args:
        packed: 1-D uint8 buffer of ``even_width * even_height * 3 // 2`` bytes: Y, then U, then V,
            without row padding.
        even_width: Width of the packed picture (even).
        even_height: Height of the packed picture (even).
        width: Width of the real picture (``even_width`` or one less).
        height: Height of the real picture (``even_height`` or one less).

    Returns:
        H×W×3 uint8 BGR, C-contiguous.
    """
    bgr = cv2.cvtColor(packed.reshape(even_height * 3 // 2, even_width), cv2.COLOR_YUV2BGR_I420)
    if (width, height) != (even_width, even_height):
        bgr = np.ascontiguousarray(bgr[:height, :width])
    return bgr


def i420_buffer_to_bgr(
    data: np.ndarray,
    width: int,
    height: int,
    strides: tuple[int, ...],
    offsets: tuple[int, ...],
) -> np.ndarray:
    """Convert one I420 picture held in a flat buffer with any plane layout to BGR.

    Args:
        data: 1-D uint8 buffer (e.g. a GStreamer buffer's bytes).
        width: Picture width in pixels.
        height: Picture height in pixels.
        strides: Row strides of the Y, U and V planes in bytes.
        offsets: Byte offsets of the Y, U and V planes in ``data``.

    Returns:
        H×W×3 uint8 BGR, C-contiguous.

    Raises:
        SourceError: A plane does not fit in ``data``.
    """
    chroma_w, chroma_h = (width + 1) // 2, (height + 1) // 2
    luma_size = width * height
    if (
        width % 2 == 0
        and height % 2 == 0
        and tuple(strides[:3]) == (width, chroma_w, chroma_w)
        and tuple(offsets[:3]) == (0, luma_size, luma_size + luma_size // 4)
        and data.size >= luma_size * 3 // 2
    ):  # already packed as OpenCV wants it: no copy before the conversion
        return packed_i420_to_bgr(data[: luma_size * 3 // 2], width, height, width, height)
    shapes = ((height, width), (chroma_h, chroma_w), (chroma_h, chroma_w))
    y, u, v = (
        _plane(data, offset, stride, rows, cols)
        for offset, stride, (rows, cols) in zip(offsets[:3], strides[:3], shapes, strict=True)
    )
    return i420_to_bgr(y, u, v)


def _plane(data: np.ndarray, offset: int, stride: int, rows: int, cols: int) -> np.ndarray:
    """A rows×cols view of one plane of a flat buffer, after checking that it fits."""
    if offset < 0 or stride < cols or offset + (rows - 1) * stride + cols > data.size:
        raise SourceError(
            f"decoded buffer of {data.size} bytes does not hold a {cols}x{rows} plane at "
            f"offset {offset} with stride {stride}"
        )
    return np.lib.stride_tricks.as_strided(
        data[offset:], shape=(rows, cols), strides=(stride, 1), writeable=False
    )


def nominal_rate(rate: Fraction | None) -> Fraction | None:
    """Return a frame rate with container rounding noise removed.

    AVI stores the rate as two 32-bit integers and some muxers approximate: the highway sample
    declares 214748359/3579125 = 60.00024 fps. A rate within 10 ppm of an integer or of an
    NTSC rate (N·1000/1001) is snapped to it; other rates are returned as they are.

    Args:
        rate: Frames per second as a fraction, or None; zero or negative means unknown.

    Returns:
        The cleaned rate, or None when unknown.
    """
    if rate is None or rate <= 0:
        return None
    for candidate in (Fraction(round(rate)), Fraction(round(rate * Fraction(1001, 1000)) * 1000, 1001)):
        if candidate > 0 and abs(rate - candidate) <= candidate * Fraction(1, 100_000):
            return candidate
    return rate


def frames_to_ns(index: int, rate: Fraction) -> int:
    """Time of frame ``index`` on a constant-rate clock, rounded to the nearest nanosecond."""
    numerator = index * _NS_PER_S * rate.denominator
    return (2 * numerator + rate.numerator) // (2 * rate.numerator)


class FileClock:
    """Turns the decoder's timestamp of each file frame into ``Frame.pts_ns``.

    The rule both readers follow:

    - AVI files carry no presentation timestamps: time is the frame's position times the
      declared frame period, by the format's definition. Demuxers and decoders that try to
      reconstruct B-frame timestamps from it disagree (GStreamer and FFmpeg give different,
      partly non-monotonic times for the XviD highway sample), so for AVI ``pts_ns`` is
      ``index / fps``.
    - Other containers: the decoder's timestamp in stream time (0 at the start of the file).
      A missing or non-increasing timestamp is replaced by the previous one plus a frame
      period (or 1 ns when the rate is unknown), with one warning, so ``pts_ns`` always
      increases.
    """

    def __init__(self, *, rate: Fraction | None, index_based: bool, display: str) -> None:
        self._rate = rate
        self._index_rate = rate if index_based else None
        self._display = display
        self._last_ns: int | None = None
        self._warned = False

    @property
    def index_based(self) -> bool:
        """True when timestamps come from the frame position alone (decoder times unused)."""
        return self._index_rate is not None

    def pts_ns(self, index: int, stream_time_ns: int | None) -> int:
        """Return the timestamp of frame ``index`` given the decoder's stream time (or None)."""
        if self._index_rate is not None:
            return frames_to_ns(index, self._index_rate)
        last = self._last_ns
        if last is not None and (stream_time_ns is None or stream_time_ns <= last):
            if not self._warned:
                self._warned = True
                _log.warning(
                    "%s: frame %d has timestamp %s after %d ns; using a constant frame period "
                    "where timestamps do not increase",
                    self._display,
                    index,
                    stream_time_ns,
                    last,
                )
            step = frames_to_ns(1, self._rate) if self._rate is not None else 1
            stream_time_ns = last + max(step, 1)
        elif stream_time_ns is None:
            stream_time_ns = 0
        self._last_ns = stream_time_ns
        return stream_time_ns


@dataclass(frozen=True)
class DeclaredLength:
    """How many frames a file says it has.

    Attributes:
        frames: The declared number of video frames.
        exact: True when read from a frame count in the container (AVI header, MP4 sample
            table); False when estimated from duration × frame rate.
    """

    frames: int
    exact: bool


def probe_declared_length(path: str | Path) -> DeclaredLength | None:
    """Read the video frame count a file declares, with PyAV (headers only, no decoding).

    Used by both readers so they report the same ``SourceInfo.frame_count``; GStreamer's own
    duration query reflects an index rebuilt from the data that is there, which hides
    truncation.

    Args:
        path: The video file.

    Returns:
        The declared length, or None when PyAV cannot open the file or it declares nothing.

    Raises:
        SourceError: The file is a media container without a video stream.
    """
    try:
        import av
    except ImportError:
        return None
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        _log.debug("cannot probe %s with PyAV: %s", path, error)
        return None
    with container:
        if not container.streams.video:
            raise SourceError(f"no video stream in {path}")
        return declared_length(container, container.streams.video[0])


def declared_length(container: object, stream: object) -> DeclaredLength | None:
    """Declared frame count of an open PyAV container's video stream (see :func:`probe_declared_length`)."""
    frames = int(getattr(stream, "frames", 0) or 0)
    if frames > 0:
        return DeclaredLength(frames=frames, exact=True)
    rate = nominal_rate(getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None))
    if rate is None:
        return None
    duration_s: Fraction | None = None
    stream_duration = getattr(stream, "duration", None)
    time_base = getattr(stream, "time_base", None)
    if stream_duration and time_base:
        duration_s = stream_duration * time_base
    elif getattr(container, "duration", None):
        duration_s = Fraction(container.duration, 1_000_000)  # type: ignore[attr-defined]
    if not duration_s or duration_s <= 0:
        return None
    return DeclaredLength(frames=round(duration_s * rate), exact=False)


def check_length(decoded: int, declared: DeclaredLength | None, display: str) -> None:
    """Decide what a clean end of stream after ``decoded`` frames means.

    Fewer frames than an exact declared count, by more than a small tolerance
    (``max(2, 0.5 %)``: B-frame delay and damaged frames the decoder skipped), means the file
    was cut: raise, after all decoded frames were delivered, rather than report success on
    half a recording. A smaller shortfall, or one against an estimated count, is logged.

    Args:
        decoded: Frames delivered.
        declared: What the container declared, or None.
        display: The file, for messages.

    Raises:
        SourceError: The file is truncated.
    """
    if declared is None or decoded >= declared.frames:
        return
    missing = declared.frames - decoded
    if declared.exact and missing > max(2, declared.frames // 200):
        raise SourceError(
            f"video file truncated or damaged: decoded {decoded} of {declared.frames} "
            f"declared frames: {display}"
        )
    level = logging.WARNING if missing > 2 else logging.INFO
    _log.log(
        level,
        "%s: decoded %d of %d declared frames (%s count)",
        display,
        decoded,
        declared.frames,
        "exact" if declared.exact else "estimated",
    )


def missing_file_message(path: Path, display: str) -> str:
    """Why ``path`` cannot be opened as a video file, for a source that is not a file."""
    if path.is_dir():
        return f"{display} is a directory, not a video file (give one file per source)"
    if path.exists():
        return f"{display} is not a regular file"
    return f"video file not found: {display}"
