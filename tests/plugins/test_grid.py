"""CalibrationGrid and draw_grid: spacing from proportions, lines through the rectangle, clipping."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import CalibrationError, ConfigError
from engine.frame import Batch, Frame
from engine.geometry.calibration import Calibration
from plugins.grid import CalibrationGrid, draw_grid, grid_segments, grid_spacing, render_grid_layer
from tests.conftest import REPO_ROOT
from tests.plugins.helpers_speed import context, write_top_down_calibration

HIGHWAY = REPO_ROOT / "calibrations" / "highway_overpass.yaml"


@pytest.mark.parametrize(
    ("cells_x", "cells_y", "expected"),
    [
        (None, None, (2, 13)),  # default: two cells across (1.83 m), 24.19 m / 1.83 m -> 13 along
        (1, None, (1, 7)),  # 3.66 m cells along 24.19 m: 7 of 3.456 m
        (None, 6, (1, 6)),  # 4.03 m cells: one across
        (None, 30, (5, 30)),  # 0.806 m cells: 3.66 / 0.806 = 4.5 -> 5 across
    ],
)
def test_spacing_follows_the_rectangle_proportions(
    cells_x: int | None, cells_y: int | None, expected: tuple[int, int]
) -> None:
    calibration = Calibration.load(HIGHWAY)
    spacing = grid_spacing(calibration, cells_x, cells_y)
    assert (spacing.cells_x, spacing.cells_y) == expected
    assert spacing.cell_x_m * spacing.cells_x == pytest.approx(calibration.width_m)
    assert spacing.cell_y_m * spacing.cells_y == pytest.approx(calibration.length_m)


def test_both_counts_or_bad_counts_are_refused() -> None:
    calibration = Calibration.load(HIGHWAY)
    with pytest.raises(ConfigError, match="not both"):
        grid_spacing(calibration, 2, 6)
    with pytest.raises(ConfigError, match="cells_x: expected a positive integer"):
        grid_spacing(calibration, 0, None)


def test_grid_lines_run_through_the_rectangle_edges() -> None:
    calibration = Calibration.load(HIGHWAY)
    spacing = grid_spacing(calibration, None, 3)
    segments = grid_segments(calibration, spacing)
    world = calibration.image_to_world(segments.reshape(-1, 2)).reshape(-1, 2, 2)
    along = np.isclose(world[:, 0, 0], world[:, 1, 0], atol=1e-3)  # constant-x lines
    xs = np.unique(np.round(world[along, 0, 0], 3))
    ys = np.unique(np.round(world[~along, 0, 1], 3))
    assert {0.0, 3.66} <= set(xs.tolist())
    cycle_m = calibration.length_m / 3  # the rectangle spans three dash cycles
    # The grid carries on past the rectangle (up to the mask) with the same spacing.
    assert np.allclose(ys[:4], np.arange(4) * cycle_m, atol=2e-3)
    assert np.allclose(np.diff(ys), cycle_m, atol=2e-3)


def test_drawing_stays_inside_the_mask(tmp_path: Path) -> None:
    mask = [[120, 440], [240, 440], [240, 60], [120, 60]]
    calibration = Calibration.load(write_top_down_calibration(tmp_path / "m.yaml", mask=mask))
    layer, alpha = render_grid_layer(calibration, (400, 480), cells_x=5)
    inside = np.zeros((480, 400), dtype=np.uint8)
    cv2.fillPoly(inside, [np.array(mask, dtype=np.int32)], 1)
    inside = cv2.dilate(inside, np.ones((5, 5), np.uint8)) > 0
    rectangle = np.zeros((480, 400), dtype=np.uint8)  # the marked rectangle's outline is drawn too
    cv2.polylines(rectangle, [calibration.image_points.astype(np.int32)], True, 1, 3)
    drawn = alpha > 0
    assert drawn[inside].sum() > 1000
    assert not (drawn & ~inside & ~(rectangle > 0)).any()
    # Grid lines every 2 m (cells_x=5 on 10 m): x = 0, 2, ... 10 m at 20 px/m, clipped to x <= 240 px.
    row = alpha[250]
    columns = [x for x in range(400) if row[x] > 0.5]
    assert {140, 180, 220} <= set(columns)


def test_draw_grid_scales_to_the_image_and_labels(tmp_path: Path) -> None:
    calibration = Calibration.load(HIGHWAY)
    image = np.full((720, 960, 3), 100, dtype=np.uint8)
    draw_grid(image, calibration, cells_y=6)
    changed = (image != 100).any(axis=2)
    assert changed.sum() > 3000
    assert changed[700:, :200].any()  # the label along the bottom edge


def test_stage_paints_the_canvas_only(tmp_path: Path) -> None:
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    stage = CalibrationGrid(calibration=calibration, cells_x=2, opacity=1.0)
    assert stage.draws is True
    stage.open(context("cam"))
    image = np.zeros((480, 400, 3), dtype=np.uint8)
    frames = [Frame(source_id="cam", index=i, pts_ns=i, image=image) for i in range(2)]
    stage(Batch(frames))
    assert not image.any()
    for frame in frames:
        assert frame.canvas is not None and frame.canvas.any()
    np.testing.assert_array_equal(frames[0].canvas, frames[1].canvas)  # one cached layer
    stage.close()


def test_stage_validates_and_checks_sizes(tmp_path: Path) -> None:
    calibration = write_top_down_calibration(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not both"):
        CalibrationGrid(calibration=calibration, cells_x=1, cells_y=1)
    with pytest.raises(ConfigError, match="color"):
        CalibrationGrid(calibration=calibration, color=[0, 300, 0])
    with pytest.raises(ConfigError, match="opacity"):
        CalibrationGrid(calibration=calibration, opacity=2)
    with pytest.raises(CalibrationError, match="delivers 640x480"):
        CalibrationGrid(calibration=calibration).open(context("cam", width=640))
