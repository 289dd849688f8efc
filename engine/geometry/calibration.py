"""Camera calibrations for speed: four image points of a road rectangle plus its size.

Convention:
    - A person marks four image points of a rectangle lying on the road, in order; they map
      to the world points ``(0, 0)``, ``(W, 0)``, ``(W, L)``, ``(0, L)`` in metres, where
      ``W = width_m`` and ``L = length_m``. World x runs along the first edge (usually across
      the road), world y along the last edge (usually along the road). The road is assumed
      flat and the camera free of lens distortion.
    - ``image → world`` is the homography of ``cv2.getPerspectiveTransform`` on those points.
    - The *zone* (the calibrated area) is the optional mask polygon (image pixels), else the
      rectangle itself. Positions outside it are not used for speeds.

File format (YAML; see ``calibrations/README.md``)::

    version: 1                       # optional, only 1 exists
    camera: highway_overpass         # a name for the view
    image_size: {width: 320, height: 240}
    points: [[127.6, 216.2], [252.2, 217.7], [263.1, 98.6], [192.4, 98.1]]
    width_m: 3.66
    length_m: 36.576
    mask: [[x, y], ...]              # optional polygon, >= 3 image points
    notes: how it was measured       # optional free text
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from engine.checks import read_yaml, shown
from engine.errors import CalibrationError
from engine.geometry import plane as geometry
from engine.locations import describe_lookup

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_KEYS = {"version", "camera", "image_size", "points", "width_m", "length_m", "mask", "notes"}
_REQUIRED = ("camera", "image_size", "points", "width_m", "length_m")
# Two marked points closer than this (pixels) are the same point for every practical purpose.
_DUPLICATE_PX = 0.5
# A point within this distance (pixels) of the line through two others makes them collinear.
_COLLINEAR_PX = 1.0


@dataclass(frozen=True, eq=False)
class Calibration:
    """A validated calibration of one camera view (see the module convention).

    Attributes:
        camera: Name of the camera view.
        image_width: Width in pixels of the frames the points were marked on.
        image_height: Height in pixels of those frames.
        image_points: ``(4, 2)`` float64 pixels, in the order of :attr:`world_points`.
        width_m: Real length in metres of the edge from point 1 to point 2.
        length_m: Real length in metres of the edge from point 1 to point 4.
        mask: Optional ``(m, 2)`` float64 polygon in pixels bounding the calibrated area.
        notes: How the calibration was measured.
        path: File it was loaded from, if any.

    Raises:
        CalibrationError: Any value is invalid (the message names it).
    """

    camera: str
    image_width: int
    image_height: int
    image_points: np.ndarray
    width_m: float
    length_m: float
    mask: np.ndarray | None = None
    notes: str = ""
    path: Path | None = None
    homography: np.ndarray = field(init=False, repr=False)
    inverse_homography: np.ndarray = field(init=False, repr=False)
    _front_sign: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        where = self._where()
        if not isinstance(self.camera, str) or not self.camera.strip():
            raise CalibrationError(f"{where}: 'camera' must be a non-empty name, got {shown(self.camera)}")
        for name in ("image_width", "image_height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CalibrationError(f"{where}: {name} must be a positive integer, got {shown(value)}")
        for name in ("width_m", "length_m"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise CalibrationError(
                    f"{where}: {name} must be a positive number of metres, got {shown(value)}"
                )
            object.__setattr__(self, name, float(value))
        if not isinstance(self.notes, str):
            raise CalibrationError(f"{where}: 'notes' must be text, got {self.notes!r}")
        points = _points(self.image_points, f"{where}: points")
        _check_rectangle_points(points, where)
        object.__setattr__(self, "image_points", points)
        outside = ~(
            (points[:, 0] >= 0)
            & (points[:, 0] <= self.image_width)
            & (points[:, 1] >= 0)
            & (points[:, 1] <= self.image_height)
        )
        if outside.any():
            logger.warning(
                "%s: points %s lie outside the %dx%d image",
                where,
                (np.flatnonzero(outside) + 1).tolist(),
                self.image_width,
                self.image_height,
            )
        homography = geometry.fit_homography(points, self.world_points)
        object.__setattr__(self, "homography", homography)
        object.__setattr__(self, "inverse_homography", np.linalg.inv(homography))
        object.__setattr__(self, "_front_sign", geometry.front_sign_of(homography, points))
        if self.mask is not None:
            mask = _points(self.mask, f"{where}: mask")
            _check_mask(mask, where)
            if np.isnan(self.image_to_world(mask)).any():
                raise CalibrationError(
                    f"{where}: the mask polygon reaches above the horizon of the calibrated road "
                    "plane; keep it on the road"
                )
            object.__setattr__(self, "mask", mask)

    # -- geometry ---------------------------------------------------------------------------

    @property
    def world_points(self) -> np.ndarray:
        """``(4, 2)`` world metres of the four points: (0,0), (W,0), (W,L), (0,L)."""
        w, length = self.width_m, self.length_m
        return np.array([[0.0, 0.0], [w, 0.0], [w, length], [0.0, length]])

    @property
    def zone(self) -> np.ndarray:
        """The calibrated area in pixels: the mask polygon, else the rectangle."""
        return self.mask if self.mask is not None else self.image_points

    def image_to_world(self, points: np.ndarray) -> np.ndarray:
        """Map ``(n, 2)`` pixels to road-plane metres; NaN beyond the horizon."""
        return geometry.apply_homography(self.homography, points, front_sign=self._front_sign)

    def world_to_image(self, points: np.ndarray) -> np.ndarray:
        """Map ``(n, 2)`` road-plane metres to pixels."""
        return geometry.apply_homography(self.inverse_homography, points)

    def in_zone(self, points: np.ndarray) -> np.ndarray:
        """Return ``(n,)`` bools: which pixels lie in the calibrated area (mask or rectangle)."""
        return geometry.points_in_polygon(points, self.zone)

    def check_image_size(self, width: int, height: int, source_id: str) -> None:
        """Raise CalibrationError when a source's frame size differs from the calibration's.

        A size of 0 (not known before the first frame) is not checked.
        """
        if width <= 0 or height <= 0:
            return
        if (width, height) != (self.image_width, self.image_height):
            raise CalibrationError(
                f"{self._where()}: calibrated on {self.image_width}x{self.image_height} images, "
                f"but source '{source_id}' delivers {width}x{height}"
            )

    # -- files ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, document: Any, *, path: Path | None = None) -> Calibration:
        """Build a calibration from a parsed YAML document.

        Raises:
            CalibrationError: Missing or unknown keys, or invalid values.
        """
        where = str(path) if path is not None else "calibration"
        if not isinstance(document, dict):
            raise CalibrationError(
                f"{where}: expected a mapping of calibration keys, got {type(document).__name__}"
            )
        unknown = sorted(set(document) - _KEYS)
        if unknown:
            raise CalibrationError(
                f"{where}: unknown key '{unknown[0]}' (expected {', '.join(sorted(_KEYS))})"
            )
        missing = [key for key in _REQUIRED if key not in document]
        if missing:
            raise CalibrationError(f"{where}: missing key '{missing[0]}'")
        version = document.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise CalibrationError(f"{where}: unsupported version {version!r} (expected {FORMAT_VERSION})")
        size = document["image_size"]
        if not isinstance(size, dict) or set(size) != {"width", "height"}:
            raise CalibrationError(f"{where}: image_size must be {{width: W, height: H}}, got {size!r}")
        return cls(
            camera=document["camera"],
            image_width=size["width"],
            image_height=size["height"],
            image_points=document["points"],
            width_m=document["width_m"],
            length_m=document["length_m"],
            mask=document.get("mask"),
            notes=document.get("notes") or "",
            path=path,
        )

    @classmethod
    def load(cls, path: Path | str) -> Calibration:
        """Read and validate a calibration YAML file.

        Raises:
            CalibrationError: The file is missing, unreadable, malformed or invalid.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            hint = f" ({describe_lookup('calibrations')})" if isinstance(error, FileNotFoundError) else ""
            raise CalibrationError(f"{path}: cannot read calibration: {error.strerror}{hint}") from error
        except UnicodeDecodeError:
            raise CalibrationError(f"{path}: cannot read calibration: not UTF-8 text") from None
        document = read_yaml(text, str(path), error=CalibrationError)
        return cls.from_dict(document, path=path)

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML document of this calibration."""
        document: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "camera": self.camera,
            "image_size": {"width": self.image_width, "height": self.image_height},
            "points": [[_short(x), _short(y)] for x, y in self.image_points.tolist()],
            "width_m": self.width_m,
            "length_m": self.length_m,
        }
        if self.mask is not None:
            document["mask"] = [[_short(x), _short(y)] for x, y in self.mask.tolist()]
        if self.notes:
            document["notes"] = self.notes
        return document

    def save(self, path: Path | str) -> None:
        """Write the calibration as YAML (points in flow style, notes as a block)."""
        path = Path(path)
        header = "# vistream camera calibration; format: calibrations/README.md\n"
        text = header + yaml.dump(
            self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100
        )
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            raise CalibrationError(f"{path}: cannot write calibration: {error.strerror}") from error

    def _where(self) -> str:
        name = self.camera if isinstance(self.camera, str) and self.camera else "?"
        return str(self.path) if self.path is not None else f"calibration '{name}'"


def _short(value: float) -> float:
    # Sub-pixel precision beyond 1/1000 px is noise; keep the YAML readable.
    return round(float(value), 3)


def _points(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) and not _number_pairs(value):
        # np.asarray would take True for 1.0 and "216" for 216.0: a typo becomes a corner.
        raise CalibrationError(
            f"{where}: expected a list of [x, y] pixel pairs (numbers), got {shown(value)}"
        )
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(
            f"{where}: expected a list of [x, y] pixel pairs, got {shown(value)}"
        ) from None
    if array.ndim != 2 or array.shape[1] != 2:
        raise CalibrationError(f"{where}: expected a list of [x, y] pixel pairs, got {shown(value)}")
    if not np.isfinite(array).all():
        raise CalibrationError(f"{where}: points must be finite numbers, got {shown(value)}")
    return array


def _number_pairs(value: Any) -> bool:
    """``value`` is a list of ``[x, y]`` lists of real numbers (no bools, no strings)."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
        for pair in value
    )


def _check_rectangle_points(points: np.ndarray, where: str) -> None:
    if len(points) != 4:
        raise CalibrationError(
            f"{where}: expected exactly 4 points (the road rectangle's corners), got {len(points)}"
        )
    for i in range(4):
        for j in range(i + 1, 4):
            if np.linalg.norm(points[i] - points[j]) < _DUPLICATE_PX:
                raise CalibrationError(
                    f"{where}: points {i + 1} and {j + 1} are the same ({points[i].tolist()}); "
                    "mark four distinct corners"
                )
    triples = geometry.collinear_triples(points, _COLLINEAR_PX)
    if triples:
        i, j, k = triples[0]
        raise CalibrationError(
            f"{where}: points {i + 1}, {j + 1} and {k + 1} lie on one line; "
            "no three corners of a rectangle do"
        )
    if geometry.self_intersections(points):
        raise CalibrationError(
            f"{where}: the quadrilateral {points.tolist()} crosses itself; list the corners in "
            "order around the rectangle (0,0), (W,0), (W,L), (0,L)"
        )
    if not geometry.is_convex(points):
        raise CalibrationError(
            f"{where}: the quadrilateral {points.tolist()} is not convex; a road rectangle in "
            "view of the camera always is"
        )


def _check_mask(mask: np.ndarray, where: str) -> None:
    if len(mask) < 3:
        raise CalibrationError(f"{where}: mask needs at least 3 points, got {len(mask)}")
    if geometry.self_intersections(mask):
        raise CalibrationError(f"{where}: the mask polygon crosses itself")
    if abs(geometry.polygon_area(mask)) < 1.0:
        raise CalibrationError(f"{where}: the mask polygon has no area")


class _Dumper(yaml.SafeDumper):
    """Writes point pairs in flow style (``[x, y]``) and multi-line notes as a block."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = len(data) == 2 and all(isinstance(v, (int, float)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flow = all(isinstance(v, (int, float)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(str, _represent_str)
