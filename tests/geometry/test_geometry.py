"""engine.geometry.plane: homography fit and round trips, polygons, box anchors — float math."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.errors import CalibrationError
from engine.geometry import plane as geometry

# A perspective view of a 3.66 m x 36.576 m road rectangle (the overpass calibration).
IMAGE_QUAD = np.array([[127.56, 216.2], [252.24, 217.71], [263.06, 98.62], [192.43, 98.14]])
WORLD_RECT = np.array([[0.0, 0.0], [3.66, 0.0], [3.66, 36.576], [0.0, 36.576]])


def test_fit_maps_the_four_points_exactly_and_round_trips() -> None:
    to_world = geometry.fit_homography(IMAGE_QUAD, WORLD_RECT)
    to_image = np.linalg.inv(to_world)
    np.testing.assert_allclose(geometry.apply_homography(to_world, IMAGE_QUAD), WORLD_RECT, atol=1e-4)
    rng = np.random.default_rng(0)
    pixels = np.column_stack([rng.uniform(0, 320, 500), rng.uniform(90, 240, 500)])
    back = geometry.apply_homography(to_image, geometry.apply_homography(to_world, pixels))
    np.testing.assert_allclose(back, pixels, atol=1e-7)
    world = np.column_stack([rng.uniform(-5, 8, 500), rng.uniform(-3, 45, 500)])
    again = geometry.apply_homography(to_world, geometry.apply_homography(to_image, world))
    np.testing.assert_allclose(again, world, atol=1e-9)


def test_apply_agrees_with_opencv_and_keeps_sub_pixel_precision() -> None:
    matrix = geometry.fit_homography(IMAGE_QUAD, WORLD_RECT)
    pixels = np.array([[150.25, 200.75], [200.5, 120.125], [10.0, 230.0]])
    expected = cv2.perspectiveTransform(pixels[None].astype(np.float64), matrix)[0]
    np.testing.assert_allclose(geometry.apply_homography(matrix, pixels), expected, rtol=1e-12)
    # A quarter pixel moves the world point: nothing is rounded to integers, both axes kept.
    moved = geometry.apply_homography(matrix, pixels + [0.0, 0.25])
    assert (np.abs(moved[:, 1] - expected[:, 1]) > 1e-3).all()
    assert (np.abs(moved[:, 0] - expected[:, 0]) > 0).all()


def test_points_beyond_the_horizon_are_nan() -> None:
    matrix = geometry.fit_homography(IMAGE_QUAD, WORLD_RECT)
    sign = geometry.front_sign_of(matrix, IMAGE_QUAD)
    # The lane lines meet near (277, -56): the rows above it are sky for this plane.
    mapped = geometry.apply_homography(matrix, np.array([[160.0, -200.0], [160.0, 150.0]]), front_sign=sign)
    assert np.isnan(mapped[0]).all()
    assert np.isfinite(mapped[1]).all()


def test_fit_needs_four_distinct_pairs() -> None:
    with pytest.raises(CalibrationError, match="exactly 4"):
        geometry.fit_homography(IMAGE_QUAD[:3], WORLD_RECT[:3])
    with pytest.raises(CalibrationError, match="finite"):
        geometry.fit_homography(np.where(IMAGE_QUAD == 127.56, np.nan, IMAGE_QUAD), WORLD_RECT)


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        ("bottom_center", (15.0, 40.0)),
        ("center", (15.0, 30.0)),
        ("top_center", (15.0, 20.0)),
        ("top_left", (10.0, 20.0)),
        ("bottom_right", (20.0, 40.0)),
        ("center_left", (10.0, 30.0)),
    ],
)
def test_box_anchors(anchor: str, expected: tuple[float, float]) -> None:
    boxes = np.array([[10.0, 20.0, 20.0, 40.0], [0.5, 0.25, 1.5, 1.25]])
    points = geometry.box_anchors(boxes, anchor)
    assert points.shape == (2, 2)
    np.testing.assert_allclose(points[0], expected)
    assert points.dtype == np.float64


def test_unknown_anchor_is_refused() -> None:
    with pytest.raises(ValueError, match="bottom_center"):
        geometry.box_anchors(np.zeros((1, 4)), "feet")


def test_points_in_polygon_matches_opencv_on_a_concave_polygon() -> None:
    polygon = np.array([[0, 0], [100, 0], [100, 100], [50, 40], [0, 100]], dtype=np.float64)
    rng = np.random.default_rng(1)
    points = rng.uniform(-10, 110, size=(2000, 2))
    inside = geometry.points_in_polygon(points, polygon)
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    expected = np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in points])
    decided = np.abs(expected) > 1e-6  # points on an edge may fall either way
    assert (inside[decided] == (expected[decided] > 0)).all()
    assert not geometry.points_in_polygon(np.array([[np.nan, 5.0]]), polygon)[0]


def test_polygon_checks() -> None:
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)
    bow_tie = square[[0, 2, 1, 3]]
    assert geometry.self_intersections(square) == []
    assert geometry.self_intersections(bow_tie)
    assert geometry.is_convex(square)
    assert not geometry.is_convex(np.array([[0, 0], [10, 0], [3, 3], [0, 10]], dtype=float))
    assert geometry.collinear_triples(np.array([[0, 0], [5, 0.5], [10, 0], [0, 10]]), 1.0) == [(0, 1, 2)]
    assert geometry.collinear_triples(square, 1.0) == []
    assert geometry.polygon_area(square) == pytest.approx(100.0)
