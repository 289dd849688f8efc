"""The `vistream calibrate` subcommand: write a camera calibration, or check one by eye.

Usage::

    vistream calibrate VIDEO --points "x1,y1;x2,y2;x3,y3;x4,y4" --width W --length L \\
        -o calibrations/view.yaml [--name NAME] [--mask "x,y;x,y;..."] [--notes TEXT]
    vistream calibrate --check VIDEO CALIB.yaml -o grid.png [--frame N] [--cells-x N]

The first form validates the points, writes the YAML and, next to it, ``<name>.check.png``:
the grid drawn on a frame of the video. The second draws an existing calibration's grid.
VIDEO may also be a still image (``.png``, ``.jpg``, ...).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import CalibrationError, ConfigError, SourceError
from engine.geometry.calibration import Calibration
from engine.geometry.grid import draw_grid

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def add_subcommand(subparsers: Any) -> None:
    """Add the ``calibrate`` parser to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "calibrate",
        help="write a speed calibration from four road points, or draw one's grid (--check)",
        description=(
            "Mark four image points of a rectangle on the road, in order: they map to world "
            "(0,0), (W,0), (W,L), (0,L) metres. Writes the calibration YAML and a check PNG "
            "with the metric grid; --check draws the grid of an existing calibration."
        ),
    )
    parser.add_argument("video", help="video file (or still image) showing the camera view")
    parser.add_argument("calibration", nargs="?", help="calibration YAML (with --check)")
    parser.add_argument("--check", action="store_true", help="draw CALIBRATION's grid on VIDEO")
    parser.add_argument("--points", help='four image points "x1,y1;x2,y2;x3,y3;x4,y4" (pixels)')
    parser.add_argument("--width", type=float, help="W: real length of edge 1→2 in metres")
    parser.add_argument("--length", type=float, help="L: real length of edge 1→4 in metres")
    parser.add_argument("--mask", help='optional zone polygon "x,y;x,y;x,y;..." (pixels)')
    parser.add_argument("--name", help="camera name (default: the output file's stem)")
    parser.add_argument("--notes", default="", help="how the points and sizes were measured")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output YAML (or PNG with --check)")
    parser.add_argument("--frame", type=int, default=0, help="index of the video frame to draw on")
    parser.add_argument("--cells-x", type=int, default=None, help="grid cells across the width")
    parser.add_argument("--cells-y", type=int, default=None, help="grid cells along the length")
    parser.add_argument(
        "--scale", type=int, default=None, help="enlarge the PNG by this factor (default: to >= 960 px wide)"
    )
    parser.set_defaults(handler=run_calibrate)


def parse_points(text: str, what: str = "--points") -> list[list[float]]:
    """Parse ``"x1,y1;x2,y2;..."`` into ``[[x1, y1], ...]``.

    Raises:
        ConfigError: The text is not a list of number pairs.
    """
    points = []
    for part in text.replace(" ", "").strip(";").split(";"):
        values = part.split(",")
        try:
            if len(values) != 2:
                raise ValueError
            points.append([float(values[0]), float(values[1])])
        except ValueError:
            raise ConfigError(
                f'{what}: expected "x,y;x,y;..." pixel pairs, got {part!r} in {text!r}'
            ) from None
    return points


def read_frame(path: Path, index: int = 0) -> np.ndarray:
    """Return frame ``index`` of a video (or a still image) as an H×W×3 uint8 BGR array.

    Raises:
        SourceError: The file cannot be read or has fewer frames.
    """
    if index < 0:
        raise ConfigError(f"--frame must be >= 0, got {index}")
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"{path}: not a readable image")
        return image
    import av  # PyAV: a dependency of the engine; imported here to keep the CLI start fast

    try:
        with av.open(str(path)) as container:
            for position, frame in enumerate(container.decode(video=0)):
                if position == index:
                    return frame.to_ndarray(format="bgr24")
    except (av.FFmpegError, IndexError) as error:
        raise SourceError(f"{path}: cannot decode video: {error}") from error
    raise SourceError(f"{path}: has no frame {index}")


def render_check(
    video: Path,
    calibration: Calibration,
    *,
    frame_index: int = 0,
    cells_x: int | None = None,
    cells_y: int | None = None,
    scale: int | None = None,
) -> np.ndarray:
    """Return a frame of ``video`` with the calibration's grid drawn on it (enlarged).

    Raises:
        CalibrationError: The frame's size differs from the calibration's.
    """

    image = read_frame(video, frame_index)
    height, width = image.shape[:2]
    calibration.check_image_size(width, height, str(video))
    factor = scale if scale is not None else max(1, -(-960 // width))
    if factor < 1:
        raise ConfigError(f"--scale must be >= 1, got {factor}")
    if factor > 1:
        image = cv2.resize(image, (width * factor, height * factor), interpolation=cv2.INTER_CUBIC)
    return draw_grid(image, calibration, cells_x=cells_x, cells_y=cells_y)


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise CalibrationError(f"{path}: cannot write PNG")


def run_calibrate(args: argparse.Namespace) -> int:
    """Handle ``vistream calibrate``; return the exit code."""
    video = Path(args.video)
    if args.check:
        if args.calibration is None:
            raise ConfigError("calibrate --check needs VIDEO and CALIBRATION.yaml")
        given = [
            flag
            for flag, value in (
                ("--points", args.points),
                ("--width", args.width),
                ("--length", args.length),
                ("--mask", args.mask),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(f"calibrate --check draws an existing calibration; {given[0]} does not apply")
        calibration = Calibration.load(args.calibration)
        image = render_check(
            video,
            calibration,
            frame_index=args.frame,
            cells_x=args.cells_x,
            cells_y=args.cells_y,
            scale=args.scale,
        )
        _write_png(args.output, image)
        print(f"wrote {args.output}")
        return 0
    if args.calibration is not None:
        raise ConfigError(f"unexpected argument {args.calibration!r} (did you mean --check?)")
    missing = [
        flag
        for flag, value in (("--points", args.points), ("--width", args.width), ("--length", args.length))
        if value is None
    ]
    if missing:
        raise ConfigError(f"calibrate: {missing[0]} is required (or use --check)")
    frame = read_frame(video, args.frame)
    height, width = frame.shape[:2]
    output: Path = args.output
    calibration = Calibration(
        camera=args.name or output.stem,
        image_width=width,
        image_height=height,
        image_points=np.asarray(parse_points(args.points)),
        width_m=args.width,
        length_m=args.length,
        mask=None if args.mask is None else np.asarray(parse_points(args.mask, "--mask")),
        notes=args.notes,
        path=output,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    calibration.save(output)
    check_path = output.with_suffix(".check.png")
    image = render_check(
        video,
        calibration,
        frame_index=args.frame,
        cells_x=args.cells_x,
        cells_y=args.cells_y,
        scale=args.scale,
    )
    _write_png(check_path, image)
    print(f"wrote {output} and {check_path}")
    return 0
