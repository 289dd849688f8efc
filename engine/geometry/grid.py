"""The metric grid of a calibration: where its lines fall in the image, and how they are drawn.

Pure functions over a :class:`~engine.geometry.calibration.Calibration`, shared by the ``grid``
stage (every frame's canvas), ``vistream calibrate --check`` and the service's calibration
editor (which draws the same segments in the browser).

Convention:
    - Grid lines are straight lines of the road plane at a fixed spacing in metres, laid out
      from the calibration's origin so that they run through the rectangle's edges; they
      cover the calibrated area (the mask polygon, else the rectangle) and are clipped to it.
    - The number of cells is set along one axis (``cells_x`` across the rectangle's width or
      ``cells_y`` along its length); the other follows from the rectangle's proportions, so
      cells are as close to square (in metres) as whole numbers allow. On a good calibration
      they look square on the road and lane marks fall on grid lines.
    - The marked rectangle is outlined in a second colour, the mask polygon in a thin line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from engine.checks import check_optional_int
from engine.errors import ConfigError
from engine.geometry.calibration import Calibration

#: Grid colour (BGR): yellow-green, visible on grey asphalt.
GRID_COLOR = (0, 255, 180)
#: Outline colour (BGR) of the marked rectangle.
RECTANGLE_COLOR = (0, 0, 255)
# Lines further than this many rectangle sizes from it are not drawn (near-horizon masks).
_MAX_EXTENT_FACTOR = 20.0
_MAX_LINES = 400
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates carry 4 fractional bits


@dataclass(frozen=True)
class GridSpacing:
    """Cell size of a grid in metres and the number of cells across the rectangle.

    Attributes:
        cell_x_m: Cell size along world x (across the rectangle's width).
        cell_y_m: Cell size along world y (along the rectangle's length).
        cells_x: Cells across the rectangle's width.
        cells_y: Cells along the rectangle's length.
    """

    cell_x_m: float
    cell_y_m: float
    cells_x: int
    cells_y: int


def grid_spacing(
    calibration: Calibration, cells_x: int | None = None, cells_y: int | None = None
) -> GridSpacing:
    """Return the grid's cell size: one axis' count is given, the other follows the proportions.

    Args:
        calibration: The calibration whose rectangle the grid divides.
        cells_x: Cells across the width; None to derive it (default: 2 when neither is given).
        cells_y: Cells along the length; None to derive it.

    Raises:
        ConfigError: Both counts given, or a count below 1.
    """
    check_optional_int("grid: cells_x", cells_x, low=1)
    check_optional_int("grid: cells_y", cells_y, low=1)
    if cells_x is not None and cells_y is not None:
        raise ConfigError("grid: set cells_x or cells_y, not both (the other follows the rectangle)")
    width, length = calibration.width_m, calibration.length_m
    if cells_y is None:
        cells_x = cells_x or 2
        cells_y = max(1, round(length / (width / cells_x)))
    else:
        cells_x = max(1, round(width / (length / cells_y)))
    return GridSpacing(width / cells_x, length / cells_y, cells_x, cells_y)


def grid_segments(calibration: Calibration, spacing: GridSpacing) -> np.ndarray:
    """Return the grid lines as ``(n, 2, 2)`` image-pixel segments (before clipping).

    The lines span the world bounding box of the calibrated area, so clipping to the zone
    polygon afterwards leaves exactly the grid inside it.
    """
    world_zone = calibration.image_to_world(calibration.zone)
    world_zone = world_zone[np.isfinite(world_zone).all(axis=1)]
    if len(world_zone) == 0:
        return np.zeros((0, 2, 2))
    width, length = calibration.width_m, calibration.length_m
    limit = _MAX_EXTENT_FACTOR * max(width, length)
    x_lo, y_lo = np.maximum(world_zone.min(axis=0), [-limit, -limit])
    x_hi, y_hi = np.minimum(world_zone.max(axis=0), [width + limit, length + limit])
    xs = _ticks(x_lo, x_hi, spacing.cell_x_m)
    ys = _ticks(y_lo, y_hi, spacing.cell_y_m)
    segments = [((x, y_lo), (x, y_hi)) for x in xs] + [((x_lo, y), (x_hi, y)) for y in ys]
    if not segments:
        return np.zeros((0, 2, 2))
    world = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    image = calibration.world_to_image(world).reshape(-1, 2, 2)
    return image[np.isfinite(image).all(axis=(1, 2))]


def _ticks(low: float, high: float, step: float) -> np.ndarray:
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    if last - first + 1 > _MAX_LINES:
        last = first + _MAX_LINES - 1
    return np.arange(first, last + 1, dtype=np.float64) * step


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def render_grid_layer(
    calibration: Calibration,
    size: tuple[int, int],
    *,
    cells_x: int | None = None,
    cells_y: int | None = None,
    color: Sequence[int] = GRID_COLOR,
    thickness: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Render the grid once into a BGR layer and its coverage (anti-aliased alpha).

    Args:
        calibration: The calibration to draw.
        size: ``(width, height)`` of the images it will go on (the calibration is scaled).
        cells_x: See :func:`grid_spacing`.
        cells_y: See :func:`grid_spacing`.
        color: BGR grid colour.
        thickness: Line width in pixels.

    Returns:
        ``(layer, alpha)``: an H×W×3 uint8 image with the drawing, and an H×W float32 array
        in [0, 1] of how much of each pixel it covers.
    """
    width, height = size
    scale = np.array([width / calibration.image_width, height / calibration.image_height])
    layer = np.zeros((height, width, 3), dtype=np.uint8)
    alpha = np.zeros((height, width), dtype=np.float32)

    def paint(strokes: np.ndarray, stroke_color: Sequence[int]) -> None:
        # Later strokes (outlines) win wherever they cover at least half a pixel.
        coverage = strokes.astype(np.float32) / 255.0
        on = (coverage > alpha) | (coverage >= 0.5)
        layer[on] = np.asarray(stroke_color, dtype=np.uint8)
        np.maximum(alpha, coverage, out=alpha)

    lines = np.zeros((height, width), dtype=np.uint8)
    spacing = grid_spacing(calibration, cells_x, cells_y)
    for start, end in grid_segments(calibration, spacing) * scale:
        cv2.line(lines, tuple(_fixed(start)), tuple(_fixed(end)), 255, thickness, cv2.LINE_AA, _SHIFT)
    zone = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(zone, [_fixed(calibration.zone * scale)], 255, cv2.LINE_8, _SHIFT)
    paint(np.where(zone > 0, lines, 0), color)
    if calibration.mask is not None:
        outline = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(outline, [_fixed(calibration.mask * scale)], True, 255, 1, cv2.LINE_AA, _SHIFT)
        paint(outline, color)
    outline = np.zeros((height, width), dtype=np.uint8)
    cv2.polylines(
        outline, [_fixed(calibration.image_points * scale)], True, 255, thickness, cv2.LINE_AA, _SHIFT
    )
    paint(outline, RECTANGLE_COLOR)
    return layer, alpha


def draw_grid(
    image: np.ndarray,
    calibration: Calibration,
    *,
    cells_x: int | None = None,
    cells_y: int | None = None,
    color: Sequence[int] = GRID_COLOR,
    thickness: int = 1,
    opacity: float = 0.8,
    label: bool = True,
) -> np.ndarray:
    """Draw the calibration grid on a BGR image in place and return it.

    Args:
        image: H×W×3 uint8 BGR image (any size: the calibration is scaled to it).
        calibration: The calibration to draw.
        cells_x: See :func:`grid_spacing`.
        cells_y: See :func:`grid_spacing`.
        color: BGR grid colour.
        thickness: Line width in pixels.
        opacity: 0 (invisible) to 1 (opaque lines).
        label: Write the cell size and the rectangle's size along the bottom edge.
    """
    height, width = image.shape[:2]
    layer, alpha = render_grid_layer(
        calibration, (width, height), cells_x=cells_x, cells_y=cells_y, color=color, thickness=thickness
    )
    blend_layer(image, layer, alpha, opacity)
    if label:
        spacing = grid_spacing(calibration, cells_x, cells_y)
        text = (
            f"{calibration.camera}: cell {spacing.cell_x_m:.2f} x {spacing.cell_y_m:.2f} m, "
            f"rect {calibration.width_m:.2f} x {calibration.length_m:.2f} m"
        )
        font = cv2.FONT_HERSHEY_SIMPLEX
        (text_width, _), _ = cv2.getTextSize(text, font, 1.0, 1)
        scale = min(1.0, 0.95 * width / max(text_width, 1))
        (text_width, text_height), baseline = cv2.getTextSize(text, font, scale, 1)
        # A dark box behind the text: OpenCV 5 draws thick text in a bold face of another
        # width, so the usual thick-outline trick does not line up.
        top = height - text_height - baseline - 6
        cv2.rectangle(image, (0, top), (text_width + 8, height), (0, 0, 0), -1)
        cv2.putText(image, text, (4, height - baseline - 3), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def blend_layer(image: np.ndarray, layer: np.ndarray, alpha: np.ndarray, opacity: float) -> None:
    """Blend ``layer`` over ``image`` with per-pixel ``alpha`` times ``opacity`` (in place)."""
    covered = alpha > 0
    weight = (alpha[covered] * opacity)[:, None]
    mixed = image[covered].astype(np.float32) * (1.0 - weight) + layer[covered].astype(np.float32) * weight
    image[covered] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
