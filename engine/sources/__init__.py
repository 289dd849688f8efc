"""Video sources: files, RTSP cameras, V4L2 devices and test pictures.

Use :func:`open_source` to get a :class:`Source` for a URI, then ``open()`` it::

    source = open_source("rtsp://user:pass@10.0.0.5/stream1", source_id="gate")
    info = source.open()            # SourceInfo: size, fps, live, frame_count
    try:
        for frame in source.frames():  # Frame: H×W×3 uint8 BGR, pts_ns, index from 0
            ...
    finally:
        source.close()              # also from another thread, to stop frames() early

Backends: ``"gst"`` (GStreamer through PyGObject; every kind of source), ``"av"`` (PyAV;
files only) and ``"auto"`` (GStreamer when it imports, else PyAV for files). Both backends
give the same frames, timestamps and ``SourceInfo`` for a file. Without GStreamer, RTSP,
V4L2 and ``test://`` sources raise :class:`~engine.errors.SourceError` naming what to install.
``synthetic://traffic?...`` URIs go to :mod:`engine.sources.synthetic` (rendered scenes with
ground truth, no decoder).
"""

from __future__ import annotations

from engine.errors import ConfigError, SourceError
from engine.sources.av import AvSource
from engine.sources.base import Source
from engine.sources.gst import GstSource, gstreamer_available
from engine.sources.synthetic import SyntheticTrafficSource
from engine.sources.uri import SourceUri, mask_credentials, parse_uri

__all__ = [
    "BACKENDS",
    "Source",
    "SourceUri",
    "gstreamer_available",
    "mask_credentials",
    "open_source",
    "parse_uri",
]

#: Accepted values of ``open_source(backend=...)``.
BACKENDS: tuple[str, ...] = ("auto", "gst", "av")


def open_source(
    uri: str,
    *,
    source_id: str = "cam0",
    backend: str = "auto",
    connect_timeout_s: float = 10.0,
    stall_timeout_s: float | None = 10.0,
    rtsp_latency_ms: int = 200,
    keep_every: int = 1,
) -> Source:
    """Create the source for ``uri``, not yet opened (call ``.open()``).

    Args:
        uri: A file path or ``file://`` URI, ``rtsp://`` URL, ``/dev/videoN``,
            ``test://?width=&height=&fps=&pattern=&frames=&live=`` (see
            :mod:`engine.sources.uri`) or ``synthetic://traffic?...`` (see
            :mod:`engine.sources.synthetic`; ``backend`` does not apply).
        source_id: Name of the source in frames and per-source state.
        backend: ``"auto"``, ``"gst"`` or ``"av"``.
        connect_timeout_s: GStreamer only: how long ``open()`` may wait for the first frame.
        stall_timeout_s: GStreamer only: ``frames()`` fails after this long without a frame.
        rtsp_latency_ms: GStreamer only: RTSP jitter buffer.
        keep_every: Yield every ``keep_every``-th decoded frame only (the others are never
            converted); frame indices keep counting decoded frames.

    Returns:
        An unopened :class:`Source`.

    Raises:
        ConfigError: The URI or an argument is invalid, or ``backend="av"`` for a non-file.
        SourceError: The chosen backend cannot read this kind of source here (GStreamer
            missing).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"source backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if isinstance(uri, str) and uri.strip().lower().startswith("synthetic://"):
        # Rendered scenes with ground truth: generated in numpy, no decoder involved.

        return SyntheticTrafficSource(uri.strip(), source_id=source_id)
    target = parse_uri(uri)
    if backend == "auto":
        backend = "gst" if gstreamer_available() else "av"
        if backend == "av" and target.kind != "file":
            raise SourceError(
                f"reading {target.kind} source {target.display} needs GStreamer through "
                "PyGObject (install the 'gst' extra and the system GStreamer plugins); "
                "without it only video files can be read"
            )
    if backend == "av":
        return AvSource(target, source_id=source_id, keep_every=keep_every)
    if not gstreamer_available():
        raise SourceError(
            f"backend 'gst' requested for {target.display} but GStreamer is not available "
            "through PyGObject (install the 'gst' extra and the system GStreamer plugins)"
        )

    return GstSource(
        target,
        source_id=source_id,
        connect_timeout_s=connect_timeout_s,
        stall_timeout_s=stall_timeout_s,
        rtsp_latency_ms=rtsp_latency_ms,
        keep_every=keep_every,
    )
