"""``synthetic://traffic?...``: rendered traffic with ground truth, as a video source.

Query parameters (all optional)::

    fps=30          frame rate of the scene's timeline
    frames=300      length of the timeline in frames
    seed=1          random traffic (vehicles, speeds, behaviours) and dropped frames
    width=1280      image size in pixels
    height=720
    vehicles=12     how many vehicles enter during the clip
    lanes=3         lanes of the carriageway (1..6)
    hfov=20         horizontal field of view in degrees (the zoom)
    speed_min=20    km/h range of the vehicles' speeds
    speed_max=150
    behaviours=1    1: some vehicles accelerate, brake or change lane; 0: constant speeds
    following=1     1: vehicles follow the one ahead (brake behind slower ones); 0: each
                    keeps its own motion (entries alone keep the gaps)
    drop=0          probability that a frame is dropped (skipped: its timestamp is missing)
    render=1        0: deliver the empty road instead of rendering vehicles (fast; for
                    replayed detections)
    bump_s=-1       time (s) of a camera bump; negative: none
    bump_tilt=0     degrees the bump tilts the camera down (more); the calibration of the
                    first view no longer fits after it
    bump_pan=0      degrees the bump pans it

Frames carry the timeline's timestamps (``frame_number / fps``); ``Frame.index`` counts the
delivered frames, so with ``drop > 0`` timestamps jump where frames are missing, exactly as
with a camera that drops frames. The scene and its ground truth are available as
:attr:`SyntheticTrafficSource.scene` (and the same URI always builds the same scene).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from engine.errors import SourceError
from engine.frame import Frame, SourceInfo
from engine.sources.synthetic_traffic import TrafficScene, highway_scene

SCHEME = "synthetic"
_KINDS = ("traffic",)
# name -> (type, minimum, maximum, default)
_PARAMS: dict[str, tuple[type, float, float, Any]] = {
    "fps": (float, 1.0, 1000.0, 30.0),
    "frames": (int, 1, 1_000_000, 300),
    "seed": (int, 0, 2**32 - 1, 1),
    "width": (int, 16, 8192, 1280),
    "height": (int, 16, 8192, 720),
    "vehicles": (int, 0, 10_000, 12),
    "lanes": (int, 1, 6, 3),
    "hfov": (float, 1.0, 120.0, 20.0),
    "speed_min": (float, 1.0, 400.0, 20.0),
    "speed_max": (float, 1.0, 400.0, 150.0),
    "behaviours": (int, 0, 1, 1),
    "following": (int, 0, 1, 1),
    "drop": (float, 0.0, 0.9, 0.0),
    "render": (int, 0, 1, 1),
    "bump_s": (float, -1.0, 1e6, -1.0),
    "bump_tilt": (float, -20.0, 20.0, 0.0),
    "bump_pan": (float, -20.0, 20.0, 0.0),
}


def parse_synthetic_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """Split ``synthetic://KIND?k=v&...`` into the kind and validated parameters.

    Raises:
        SourceError: Another scheme, an unknown kind or parameter, or a value out of range.
    """
    parts = urlsplit(uri)
    if parts.scheme != SCHEME:
        raise SourceError(f"{uri!r} is not a synthetic:// URI")
    kind = parts.netloc or parts.path.strip("/")
    if kind not in _KINDS:
        raise SourceError(f"{uri}: unknown synthetic scene {kind!r} (expected {', '.join(_KINDS)})")
    values: dict[str, Any] = {name: spec[3] for name, spec in _PARAMS.items()}
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        spec = _PARAMS.get(name)
        if spec is None:
            raise SourceError(f"{uri}: unknown parameter {name!r} (expected {', '.join(_PARAMS)})")
        kind_type, low, high, _ = spec
        try:
            value = kind_type(text)
        except ValueError:
            raise SourceError(f"{uri}: {name} must be {kind_type.__name__}, got {text!r}") from None
        if not low <= value <= high:
            raise SourceError(f"{uri}: {name} must be in [{low}, {high}], got {text}")
        values[name] = value
    if values["speed_min"] > values["speed_max"]:
        raise SourceError(
            f"{uri}: speed_min ({values['speed_min']}) exceeds speed_max ({values['speed_max']})"
        )
    return kind, values


def scene_from_uri(uri: str) -> TrafficScene:
    """Build the (deterministic) scene that a ``synthetic://traffic?...`` URI names."""
    _, values = parse_synthetic_uri(uri)
    return highway_scene(
        fps=values["fps"],
        frames=values["frames"],
        seed=values["seed"],
        width=values["width"],
        height=values["height"],
        vehicles=values["vehicles"],
        lanes=values["lanes"],
        hfov_deg=values["hfov"],
        speed_range_kmh=(values["speed_min"], values["speed_max"]),
        behaviours=bool(values["behaviours"]),
        following=bool(values["following"]),
        bump_s=values["bump_s"] if values["bump_s"] >= 0 else float("inf"),
        bump_tilt_deg=values["bump_tilt"],
        bump_pan_deg=values["bump_pan"],
    )


def kept_frames(uri: str) -> np.ndarray:
    """Return the timeline frame numbers a URI's source delivers (after ``drop``)."""
    _, values = parse_synthetic_uri(uri)
    frames = values["frames"]
    if values["drop"] <= 0:
        return np.arange(frames)
    # Separate stream from the scene's, so dropping frames does not change the traffic.
    rng = np.random.default_rng([values["seed"], 0xD809])
    keep = rng.uniform(size=frames) >= values["drop"]
    keep[0] = True
    return np.flatnonzero(keep)


class SyntheticTrafficSource:
    """A finite, non-live source of rendered traffic frames (see the module docstring).

    Args:
        uri: ``synthetic://traffic?...``.
        source_id: Name of the source in frames and per-source state.

    Raises:
        SourceError: The URI is invalid.
    """

    def __init__(self, uri: str, *, source_id: str) -> None:
        self.uri = uri
        self.source_id = source_id
        _, self._values = parse_synthetic_uri(uri)
        self._scene: TrafficScene | None = None
        self._stop = threading.Event()

    @property
    def scene(self) -> TrafficScene:
        """The scene (built on first use): ground truth via ``scene.truth(frame_number)``."""
        if self._scene is None:
            self._scene = scene_from_uri(self.uri)
        return self._scene

    def open(self) -> SourceInfo:
        """Build the scene and return the source's facts."""
        scene = self.scene
        self._stop.clear()
        return SourceInfo(
            source_id=self.source_id,
            uri=self.uri,
            width=scene.camera.width,
            height=scene.camera.height,
            fps=scene.fps,
            live=False,
            frame_count=len(kept_frames(self.uri)),
        )

    def frames(self) -> Iterator[Frame]:
        """Yield the kept frames in order until the end of the timeline or ``close()``."""
        scene = self.scene
        render = bool(self._values["render"])
        for index, number in enumerate(kept_frames(self.uri).tolist()):
            if self._stop.is_set():
                return
            image = scene.render(number) if render else scene.background().copy()
            yield Frame(source_id=self.source_id, index=index, pts_ns=scene.pts_ns(number), image=image)

    def close(self) -> None:
        """Make ``frames()`` return at its next frame; safe to call twice."""
        self._stop.set()
