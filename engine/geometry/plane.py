"""Plane geometry in numpy: homographies, polygons and box anchor points.

Convention:
    - Image points are ``(x, y)`` float pixels, x to the right, y down, origin at the top-left
      corner of the top-left pixel. World points on the road plane are ``(x, y)`` float
      metres in the calibration's frame (see :mod:`engine.geometry.calibration`).
    - Point arrays are ``(n, 2)``; a single point may be given as ``(2,)``. Homographies are
      ``(3, 3)`` float64 arrays mapping homogeneous column vectors: ``p' ~ H @ [x, y, 1]``.
    - Everything is float64 and vectorised over the n points; nothing is rounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import cv2
import numpy as np

from engine.errors import CalibrationError

#: Box anchor names → (fraction of the width from x1, fraction of the height from y1).
#: The names are supervision's ``sv.Position`` values, lower-cased.
ANCHORS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "center_left": (0.0, 0.5),
    "center_right": (1.0, 0.5),
    "top_center": (0.5, 0.0),
    "top_left": (0.0, 0.0),
    "top_right": (1.0, 0.0),
    "bottom_center": (0.5, 1.0),
    "bottom_left": (0.0, 1.0),
    "bottom_right": (1.0, 1.0),
}

# |w| below this (relative to the largest |w| of the fitted points) is "at the horizon".
_HORIZON_EPS = 1e-9


def as_points(points: np.ndarray | Sequence[Sequence[float]], name: str = "points") -> np.ndarray:
    """Return ``points`` as an ``(n, 2)`` float64 array.

    Raises:
        CalibrationError: The array is not of shape (n, 2) or (2,), or holds non-finite values.
    """
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 2:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != 2:
        raise CalibrationError(f"{name}: expected (n, 2) points, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise CalibrationError(f"{name}: points must be finite numbers, got {array.tolist()}")
    return array


def fit_homography(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Return the homography that maps four source points exactly onto four target points.

    Args:
        source: ``(4, 2)`` points, e.g. image pixels.
        target: ``(4, 2)`` points, e.g. road-plane metres.

    Returns:
        ``(3, 3)`` float64 matrix normalised so that ``H[2, 2] == 1``.

    Raises:
        CalibrationError: Not four points each, or a degenerate configuration.
    """
    src = as_points(source, "source")
    dst = as_points(target, "target")
    if src.shape != (4, 2) or dst.shape != (4, 2):
        raise CalibrationError(f"a homography needs exactly 4 point pairs, got {len(src)} and {len(dst)}")
    # OpenCV wants float32 input; the solve itself is done in double precision.
    matrix = cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32))
    matrix = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix)) < 1e-15:
        raise CalibrationError(f"degenerate point configuration: {src.tolist()}")
    return matrix / matrix[2, 2]


def apply_homography(matrix: np.ndarray, points: np.ndarray, *, front_sign: float = 0.0) -> np.ndarray:
    """Map points through a homography (perspective division included).

    Args:
        matrix: ``(3, 3)`` homography.
        points: ``(n, 2)`` or ``(2,)`` points.
        front_sign: When non-zero, the sign that the homogeneous ``w`` of a valid point has
            (see :func:`front_sign_of`); points with the other sign lie beyond the horizon of
            the plane and come back as NaN instead of a mirrored, meaningless position.

    Returns:
        ``(n, 2)`` float64 mapped points; rows are NaN where the point maps to infinity or
        beyond the horizon.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    homogeneous = pts @ matrix[:, :2].T + matrix[:, 2]
    w = homogeneous[:, 2]
    scale = np.max(np.abs(matrix)) if matrix.size else 1.0
    valid = np.abs(w) > _HORIZON_EPS * scale
    if front_sign:
        valid &= np.sign(w) == np.sign(front_sign)
    out = np.full((len(pts), 2), np.nan)
    out[valid] = homogeneous[valid, :2] / w[valid, None]
    return out


def front_sign_of(matrix: np.ndarray, points: np.ndarray) -> float:
    """Return the sign (+1 or -1) of the homogeneous ``w`` of points known to be valid.

    A plane homography fitted on points in view gives every point on the camera's side of the
    horizon the same sign of ``w``; points with the other sign are beyond the horizon.
    """
    pts = as_points(points)
    w = pts @ matrix[2, :2] + matrix[2, 2]
    return 1.0 if float(np.median(w)) > 0 else -1.0


def box_anchors(xyxy: np.ndarray, anchor: str = "bottom_center") -> np.ndarray:
    """Return one reference point per box.

    Args:
        xyxy: ``(n, 4)`` boxes ``x1, y1, x2, y2`` in pixels.
        anchor: One of :data:`ANCHORS` (``bottom_center`` is where a vehicle touches the road).

    Returns:
        ``(n, 2)`` float64 points.

    Raises:
        ValueError: Unknown anchor name.
    """
    try:
        fx, fy = ANCHORS[anchor]
    except KeyError:
        raise ValueError(f"unknown anchor {anchor!r}; expected one of {', '.join(ANCHORS)}") from None
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    x = boxes[:, 0] + fx * (boxes[:, 2] - boxes[:, 0])
    y = boxes[:, 1] + fy * (boxes[:, 3] - boxes[:, 1])
    return np.stack([x, y], axis=1)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Return which points lie inside a polygon (even-odd rule, vectorised).

    Points exactly on an edge may fall either way; NaN points are outside.

    Args:
        points: ``(n, 2)`` points.
        polygon: ``(m, 2)`` vertices in order (either orientation), m >= 3.

    Returns:
        ``(n,)`` bool array.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x = pts[:, 0:1]
    y = pts[:, 1:2]
    x1, y1 = poly[:, 0][None, :], poly[:, 1][None, :]
    x2, y2 = np.roll(poly[:, 0], -1)[None, :], np.roll(poly[:, 1], -1)[None, :]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    crossings = straddles & (x < x_cross)
    return (np.count_nonzero(crossings, axis=1) % 2 == 1) & np.isfinite(pts).all(axis=1)


def polygon_area(polygon: np.ndarray) -> float:
    """Return the signed area of a polygon (shoelace; positive when counter-clockwise in y-up)."""
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Return True when segments p1-p2 and q1-q2 intersect at a point inside both."""
    d1 = _cross(q1, q2, p1)
    d2 = _cross(q1, q2, p2)
    d3 = _cross(p1, p2, q1)
    d4 = _cross(p1, p2, q2)
    return d1 * d2 < 0 and d3 * d4 < 0


def self_intersections(polygon: np.ndarray) -> list[tuple[int, int]]:
    """Return the pairs of non-adjacent edges (by start-vertex index) that cross each other."""
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    m = len(poly)
    pairs = []
    for i, j in combinations(range(m), 2):
        if j == i + 1 or (i == 0 and j == m - 1):
            continue  # adjacent edges share a vertex
        if segments_cross(poly[i], poly[(i + 1) % m], poly[j], poly[(j + 1) % m]):
            pairs.append((i, j))
    return pairs


def collinear_triples(points: np.ndarray, tolerance_px: float = 1.0) -> list[tuple[int, int, int]]:
    """Return index triples whose middle-most point lies within ``tolerance_px`` of the line
    through the other two (including exact duplicates' triples)."""
    pts = as_points(points)
    triples = []
    for i, j, k in combinations(range(len(pts)), 3):
        a, b, c = pts[i], pts[j], pts[k]
        twice_area = abs(_cross(a, b, c))
        longest = max(np.linalg.norm(b - a), np.linalg.norm(c - b), np.linalg.norm(a - c))
        if longest == 0 or twice_area / longest < tolerance_px:
            triples.append((i, j, k))
    return triples


def is_convex(polygon: np.ndarray) -> bool:
    """Return True when a simple polygon turns the same way at every vertex."""
    poly = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    m = len(poly)
    turns = [_cross(poly[i], poly[(i + 1) % m], poly[(i + 2) % m]) for i in range(m)]
    return all(t > 0 for t in turns) or all(t < 0 for t in turns)


def homography_jacobian(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Return the derivative of a homography at each point: how far a 1-pixel move goes.

    Args:
        matrix: ``(3, 3)`` homography (for a calibration, image pixels → road metres).
        points: ``(n, 2)`` points where to take the derivative.

    Returns:
        ``(n, 2, 2)`` float64: row i is ``d(mapped_i) / d(point)``, so a pixel covariance
        ``S`` becomes ``J @ S @ J.T`` in the mapped plane. NaN where ``w`` is 0.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    homogeneous = pts @ matrix[:, :2].T + matrix[:, 2]
    w = homogeneous[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        mapped = homogeneous[:, :2] / w[:, None]
        # d(a/w)/du = (h_a,u - h_w,u * a/w) / w, for each output a and input u.
        jacobian = (matrix[None, :2, :2] - mapped[:, :, None] * matrix[None, 2, :2][:, None, :]) / w[
            :, None, None
        ]
    return jacobian
