"""Calibration files: validation, YAML round trip, the shipped calibrations, `vistream calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from engine.cli.main import main as cli_main
from engine.errors import CalibrationError
from engine.geometry.calibration import Calibration
from tests.conftest import REPO_ROOT

CALIBRATIONS = REPO_ROOT / "calibrations"

VALID: dict[str, Any] = {
    "camera": "test_view",
    "image_size": {"width": 320, "height": 240},
    "points": [[127.56, 216.2], [252.24, 217.71], [263.06, 98.62], [192.43, 98.14]],
    "width_m": 3.66,
    "length_m": 36.576,
}


def _with(**changes: Any) -> dict[str, Any]:
    document = {**VALID, **changes}
    return {key: value for key, value in document.items() if value is not ...}


@pytest.mark.fault(
    "Malformed calibration (3 points, collinear, self-crossing, …)",
    "User error naming the problem",
)
@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_with(points=VALID["points"][:3]), "exactly 4 points"),
        (_with(points=[*VALID["points"], [10.0, 10.0]]), "exactly 4 points"),
        (_with(points=[[10, 10], [10, 10], [100, 200], [0, 200]]), "points 1 and 2 are the same"),
        (_with(points=[[0, 100], [50, 100.3], [100, 100], [50, 200]]), "lie on one line"),
        (_with(points=[[0, 0], [100, 100], [100, 0], [0, 100]]), "crosses itself"),
        (_with(points=[[0, 0], [100, 0], [30, 30], [0, 100]]), "not convex"),
        (_with(points=[[0, 0], [100, "a"], [100, 100], [0, 100]]), "pixel pairs"),
        (_with(points=[[0, 0], [100, float("nan")], [100, 100], [0, 100]]), "finite"),
        (_with(width_m=0), "width_m must be a positive"),
        (_with(length_m=-3.0), "length_m must be a positive"),
        (_with(width_m="wide"), "width_m must be a positive"),
        (_with(camera=""), "'camera' must be a non-empty"),
        (_with(image_size=[320, 240]), "image_size must be"),
        (_with(image_size={"width": 320.5, "height": 240}), "image_width must be a positive integer"),
        (_with(length_m=...), "missing key 'length_m'"),
        (_with(widht_m=3.0), "unknown key 'widht_m'"),
        (_with(version=2), "unsupported version"),
        (_with(mask=[[0, 0], [10, 0]]), "at least 3 points"),
        (_with(mask=[[0, 100], [300, 240], [300, 100], [0, 240]]), "mask polygon crosses itself"),
        (_with(mask=[[0, 100], [100, 120], [200, 140]]), "no area"),
        (_with(mask=[[0, -400], [320, -400], [320, 240], [0, 240]]), "above the horizon"),
    ],
)
def test_invalid_calibrations_fail_with_a_clear_message(document: dict[str, Any], message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        Calibration.from_dict(document)


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("camera: x\npoints: [[1, 2], [3, 4]\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match="malformed YAML at line"):
        Calibration.load(broken)
    with pytest.raises(CalibrationError, match="cannot read"):
        Calibration.load(tmp_path / "nope.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match="expected a mapping"):
        Calibration.load(listed)


def test_world_points_map_exactly_and_zone_defaults_to_the_rectangle() -> None:
    calibration = Calibration.from_dict(VALID)
    np.testing.assert_allclose(
        calibration.image_to_world(calibration.image_points), calibration.world_points, atol=1e-4
    )
    np.testing.assert_allclose(
        calibration.world_to_image(calibration.world_points), calibration.image_points, atol=1e-3
    )
    inside = calibration.image_points.mean(axis=0)
    assert calibration.in_zone(np.array([inside, [5.0, 5.0]])).tolist() == [True, False]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    original = Calibration.from_dict(
        _with(mask=[[0, 230], [120, 90], [270, 90], [260, 230]], notes="line one\nline two")
    )
    path = tmp_path / "view.yaml"
    original.save(path)
    text = path.read_text(encoding="utf-8")
    assert "- [127.56, 216.2]" in text and "notes: |" in text  # readable: flow pairs, block notes
    loaded = Calibration.load(path)
    np.testing.assert_array_equal(loaded.image_points, original.image_points)
    np.testing.assert_array_equal(loaded.mask, original.mask)
    assert (loaded.camera, loaded.width_m, loaded.length_m, loaded.notes) == (
        "test_view",
        3.66,
        36.576,
        "line one\nline two",
    )
    np.testing.assert_allclose(loaded.homography, original.homography)


def test_image_size_must_match_the_source() -> None:
    calibration = Calibration.from_dict(VALID)
    calibration.check_image_size(320, 240, "cam")
    calibration.check_image_size(0, 0, "cam")  # not known yet: checked on the first frame
    with pytest.raises(CalibrationError, match="320x240 images, but source 'cam' delivers 640x480"):
        calibration.check_image_size(640, 480, "cam")


@pytest.mark.parametrize("name", ["highway_overpass", "motorway_cctv"])
def test_shipped_calibrations_are_valid_and_documented(name: str) -> None:
    calibration = Calibration.load(CALIBRATIONS / f"{name}.yaml")
    assert calibration.camera == name
    assert (calibration.image_width, calibration.image_height) == (320, 240)
    assert calibration.mask is not None
    assert len(calibration.notes) > 500  # how it was measured is written down
    # The mask lies in the image and contains the whole marked rectangle's centre.
    assert calibration.in_zone(calibration.image_points.mean(axis=0)[None])[0]


def test_highway_calibration_puts_dash_starts_on_whole_cycles() -> None:
    """The near ends of the two intermediate dashes (measured in the video) are 1 and 2 cycles."""
    calibration = Calibration.load(CALIBRATIONS / "highway_overpass.yaml")
    cycle_m = calibration.length_m / 3  # the rectangle spans three dash cycles
    measured_dash_starts = np.array([[158.23, 160.41], [177.97, 124.45]])
    world = calibration.image_to_world(measured_dash_starts)
    np.testing.assert_allclose(world[:, 1], [cycle_m, 2 * cycle_m], atol=0.15 * cycle_m / 12.192)
    np.testing.assert_allclose(world[:, 0], 0.0, atol=0.05)


def _still_image(tmp_path: Path) -> Path:
    image = np.full((240, 320, 3), 120, dtype=np.uint8)
    path = tmp_path / "view.png"
    cv2.imwrite(str(path), image)
    return path


def test_calibrate_command_writes_yaml_and_check_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    still = _still_image(tmp_path)
    output = tmp_path / "out" / "view.yaml"
    points = "127.56,216.2; 252.24,217.71; 263.06,98.62; 192.43,98.14"
    code = cli_main(
        [
            "calibrate",
            str(still),
            "--points",
            points,
            "--width",
            "3.66",
            "--length",
            "36.576",
            "-o",
            str(output),
            "--name",
            "gate",
            "--notes",
            "measured by hand",
        ]
    )
    assert code == 0
    calibration = Calibration.load(output)
    assert calibration.camera == "gate" and calibration.notes == "measured by hand"
    check = cv2.imread(str(output.with_suffix(".check.png")))
    assert check is not None and check.shape[1] >= 960  # enlarged for the eye
    assert (check != 120).any()  # the grid is drawn
    assert "wrote" in capsys.readouterr().out


def test_calibrate_check_draws_an_existing_calibration(tmp_path: Path) -> None:
    still = _still_image(tmp_path)
    png = tmp_path / "grid.png"
    code = cli_main(
        [
            "calibrate",
            "--check",
            str(still),
            str(CALIBRATIONS / "highway_overpass.yaml"),
            "-o",
            str(png),
            "--cells-y",
            "6",
            "--scale",
            "1",
        ]
    )
    assert code == 0
    image = cv2.imread(str(png))
    assert image.shape == (240, 320, 3)
    assert (image != 120).any(axis=2).sum() > 500


def test_calibrate_reports_user_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    still = _still_image(tmp_path)
    code = cli_main(
        [
            "calibrate",
            str(still),
            "--points",
            "1,2;3,4;5,6",
            "--width",
            "3",
            "--length",
            "9",
            "-o",
            str(tmp_path / "x.yaml"),
        ]
    )
    assert code == 2
    assert "exactly 4 points" in capsys.readouterr().err
    code = cli_main(
        [
            "calibrate",
            str(still),
            "--points",
            "1,2;3",
            "--width",
            "3",
            "--length",
            "9",
            "-o",
            str(tmp_path / "x.yaml"),
        ]
    )
    assert code == 2
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((48, 64, 3), dtype=np.uint8))
    code = cli_main(
        [
            "calibrate",
            "--check",
            str(small),
            str(CALIBRATIONS / "highway_overpass.yaml"),
            "-o",
            str(tmp_path / "g.png"),
        ]
    )
    assert code == 2
    assert "delivers 64x48" in capsys.readouterr().err


def test_calibrate_check_on_the_real_video(tmp_path: Path, highway_video: Path) -> None:
    png = tmp_path / "grid.png"
    code = cli_main(
        [
            "calibrate",
            "--check",
            str(highway_video),
            str(CALIBRATIONS / "highway_overpass.yaml"),
            "-o",
            str(png),
            "--frame",
            "5",
        ]
    )
    assert code == 0
    assert cv2.imread(str(png)).shape == (720, 960, 3)


def test_readme_documents_every_key() -> None:
    readme = (CALIBRATIONS / "README.md").read_text(encoding="utf-8")
    document = yaml.safe_load((CALIBRATIONS / "highway_overpass.yaml").read_text(encoding="utf-8"))
    for key in document:
        assert f"`{key}`" in readme
