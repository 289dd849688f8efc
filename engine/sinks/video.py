"""Annotated video output: H.264 in fragmented MP4 with PyAV, one file per source.

Convention:
    - Writes ``Frame.canvas`` when a drawing stage made one, else ``Frame.image``.
    - Constant frame rate: the fps is the source's (``SourceInfo.fps``) unless given, and each
      frame's pts is its index since the source's first frame, so the file has the input's
      frame count and fps (a gap in the indices, frames dropped upstream, is kept as a gap).
    - The frame size is the first frame's. yuv420p needs even dimensions: an odd width or
      height is padded by one pixel (the last column or row repeated). A later frame of
      another size is resized to the first one's, with a warning.
    - ``.mp4``/``.mov``/``.m4v`` files are fragmented (``frag_keyframe+empty_moov``), with a
      keyframe every ``keyframe_interval_s`` and the muxer flushed after every packet, so a
      killed process leaves a playable file. What a crash loses is the open fragment (at
      most one keyframe interval) and the encoder's lookahead (about 10 frames with
      ``veryfast``); a clean ``close`` or ``end_of_stream`` loses nothing.
    - One source per file: put ``{source_id}`` in the path (``out/{source_id}.mp4``) to write
      several. A source that restarts after its end of stream starts ``name-2.mp4``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import cv2
import numpy as np
from av.container import OutputContainer
from av.video.stream import VideoStream

from engine.errors import SinkError
from engine.frame import Batch, Frame
from engine.sinks.base import next_source_path
from engine.stage import Context

logger = logging.getLogger(__name__)

#: Frame rate used when neither the sink nor the source gives one.
FALLBACK_FPS = 30.0

_FRAGMENTED_SUFFIXES = frozenset({".mp4", ".m4v", ".mov"})
_X26X_CODECS = frozenset({"libx264", "libx265"})


@dataclass
class _VideoFile:
    path: Path
    container: OutputContainer
    stream: VideoStream
    time_base: Fraction
    width: int  # the first frame's size
    height: int
    pad_right: int  # 1 when the width is odd
    pad_bottom: int
    first_index: int
    last_pts: int = -1
    frames: int = 0
    encode_s: float = 0.0
    warned_resize: bool = False


def _bgr_array(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):  # a 3xHxW BGR torch tensor (GPU frames)
        image = image.permute(1, 2, 0).contiguous().cpu().numpy()
    return image


class VideoSink:
    """Encodes each source's frames (with drawings) to a video file.

    Args:
        path: The video file to create (overwritten; parent folders are created); may contain
            ``{source_id}``. The container follows the extension (``.mp4`` recommended).
        fps: Output frame rate; None takes the source's, or 30 when the source has none.
        codec: FFmpeg encoder name.
        crf: Constant rate factor (quality, 0-51, lower is better); libx264/libx265 only.
        preset: Encoder speed preset; libx264/libx265 only.
        keyframe_interval_s: Seconds between keyframes, which also bounds what a crash loses.

    Raises:
        SinkError: An argument is out of range.
    """

    def __init__(
        self,
        path: Path,
        *,
        fps: float | None = None,
        codec: str = "libx264",
        crf: int = 23,
        preset: str = "veryfast",
        keyframe_interval_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        if fps is not None and (
            isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0
        ):
            raise SinkError(f"video output {self.path}: fps must be a positive number or null, got {fps!r}")
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise SinkError(f"video output {self.path}: crf must be an integer in [0, 51], got {crf!r}")
        if not isinstance(codec, str) or not codec:
            raise SinkError(f"video output {self.path}: codec must be an encoder name, got {codec!r}")
        if not isinstance(preset, str) or not preset:
            raise SinkError(f"video output {self.path}: preset must be a preset name, got {preset!r}")
        if (
            isinstance(keyframe_interval_s, bool)
            or not isinstance(keyframe_interval_s, (int, float))
            or not keyframe_interval_s > 0
        ):
            raise SinkError(
                f"video output {self.path}: keyframe_interval_s must be > 0, got {keyframe_interval_s!r}"
            )
        self.fps = None if fps is None else float(fps)
        self.codec = codec
        self.crf = crf
        self.preset = preset
        self.keyframe_interval_s = float(keyframe_interval_s)
        self._context: Context | None = None
        self._files: dict[str, _VideoFile] = {}
        self._runs: dict[str, int] = {}  # files started per source
        #: Paths of the files finished so far, in order.
        self.written: list[Path] = []

    def open(self, context: Context) -> None:
        """Check the encoder exists; files are created on each source's first frame."""
        try:
            av.codec.Codec(self.codec, "w")
        except Exception as error:  # PyAV raises its own lookup errors
            raise SinkError(
                f"video output {self.path}: encoder {self.codec!r} is not available in this FFmpeg ({error})"
            ) from error
        self._context = context

    def write(self, batch: Batch) -> None:
        """Encode every frame of the batch into its source's file."""
        if self._context is None:
            raise SinkError(f"video output {self.path} is not open (call open() before write())")
        for frame in batch:
            video = self._files.get(frame.source_id) or self._start(frame)
            self._encode(video, frame)

    def end_of_stream(self, source_id: str) -> None:
        """Finish the source's file; if the source comes back, it gets a new file."""
        video = self._files.pop(source_id, None)
        if video is not None:
            self._finish(video)

    def close(self) -> None:
        """Finish every file; safe to call twice."""
        videos, self._files = list(self._files.values()), {}
        self._runs.clear()
        self._context = None
        failure: SinkError | None = None
        for video in videos:  # finish them all, even after one failed
            try:
                self._finish(video)
            except SinkError as error:
                failure = failure or error
        if failure is not None:
            raise failure

    def _source_fps(self, source_id: str) -> float:
        if self.fps is not None:
            return self.fps
        info = self._context.sources.get(source_id) if self._context is not None else None
        fps = info.fps if info is not None else None
        if fps is None or not math.isfinite(fps) or fps <= 0:
            logger.warning(
                "video output %s: source %r reports no frame rate; writing %.0f fps (set fps to choose)",
                self.path,
                source_id,
                FALLBACK_FPS,
            )
            return FALLBACK_FPS
        return float(fps)

    def _start(self, frame: Frame) -> _VideoFile:
        source_id = frame.source_id
        run = self._runs.get(source_id, 0) + 1
        path = next_source_path(self.path, source_id, run, self._runs, what="video output")
        height, width = _bgr_array(frame.canvas if frame.canvas is not None else frame.image).shape[:2]
        rate = Fraction(self._source_fps(source_id)).limit_denominator(1001)
        fragmented = path.suffix.lower() in _FRAGMENTED_SUFFIXES
        # flush_packets: hand every packet to the OS at once, or a killed process leaves
        # nothing but the file header.
        container_options = {"flush_packets": "1"}
        if fragmented:
            container_options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
        codec_options = {"crf": str(self.crf), "preset": self.preset} if self.codec in _X26X_CODECS else {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            container = av.open(str(path), mode="w", options=container_options)
            stream = cast(VideoStream, container.add_stream(self.codec, rate=rate, options=codec_options))
            stream.width = width + width % 2
            stream.height = height + height % 2
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = 1 / rate
            stream.codec_context.gop_size = max(1, round(float(rate) * self.keyframe_interval_s))
        except (OSError, av.FFmpegError, ValueError) as error:
            raise SinkError(f"cannot create video output {path}: {error}") from error
        if width % 2 or height % 2:
            logger.info(
                "video output %s: %dx%d is odd, padded to %dx%d for yuv420p",
                path,
                width,
                height,
                width + width % 2,
                height + height % 2,
            )
        logger.debug("writing %s at %s fps to %s", source_id, rate, path)
        video = _VideoFile(
            path=path,
            container=container,
            stream=stream,
            time_base=1 / rate,
            width=width,
            height=height,
            pad_right=width % 2,
            pad_bottom=height % 2,
            first_index=frame.index,
        )
        self._runs[source_id] = run
        self._files[source_id] = video
        return video

    def _picture(self, video: _VideoFile, frame: Frame) -> np.ndarray:
        image = _bgr_array(frame.canvas if frame.canvas is not None else frame.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise SinkError(
                f"video output {video.path}: frame {frame.index} of {frame.source_id!r} must be "
                f"HxWx3 uint8 BGR, got {image.dtype} {image.shape}"
            )
        if image.shape[:2] != (video.height, video.width):
            if not video.warned_resize:
                logger.warning(
                    "video output %s: frame %d is %dx%d, resized to the first frame's %dx%d",
                    video.path,
                    frame.index,
                    image.shape[1],
                    image.shape[0],
                    video.width,
                    video.height,
                )
                video.warned_resize = True
            image = cv2.resize(image, (video.width, video.height), interpolation=cv2.INTER_AREA)
        if video.pad_right or video.pad_bottom:
            image = cv2.copyMakeBorder(image, 0, video.pad_bottom, 0, video.pad_right, cv2.BORDER_REPLICATE)
        # OpenCV's BGR -> I420 is about twice as fast as letting swscale convert bgr24.
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2YUV_I420)

    def _encode(self, video: _VideoFile, frame: Frame) -> None:
        started = time.perf_counter()
        picture = av.VideoFrame.from_ndarray(self._picture(video, frame), format="yuv420p")
        # Index-derived pts (constant frame rate); never repeat or go back, which the
        # muxer refuses.
        pts = max(frame.index - video.first_index, video.last_pts + 1)
        picture.pts = pts
        picture.time_base = video.time_base
        try:
            for packet in video.stream.encode(picture):
                video.container.mux(packet)
        except (OSError, av.FFmpegError) as error:
            raise SinkError(f"cannot write video output {video.path}: {error}") from error
        video.last_pts = pts
        video.frames += 1
        video.encode_s += time.perf_counter() - started

    def _finish(self, video: _VideoFile) -> None:
        try:
            for packet in video.stream.encode(None):  # drain the encoder's delayed frames
                video.container.mux(packet)
        except (OSError, av.FFmpegError) as error:
            raise SinkError(f"cannot finish video output {video.path}: {error}") from error
        finally:
            try:
                video.container.close()
            except (OSError, av.FFmpegError) as error:
                raise SinkError(f"cannot close video output {video.path}: {error}") from error
        self.written.append(video.path)
        logger.debug(
            "wrote %d frames to %s (%.0f fps encode)",
            video.frames,
            video.path,
            video.frames / video.encode_s if video.encode_s > 0 else 0.0,
        )
