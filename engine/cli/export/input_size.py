"""A YOLO ONNX model's input fitted to the cameras' frames: less letterbox padding, less work.

A fixed-shape Ultralytics export is square (320x320 for ``yolo11n_fp32_320.onnx``). A 4:3
camera letterboxed into it is a quarter grey bars: 320x240 pictures become 320x320 inputs,
and every convolution also runs over the bars. Ultralytics' own predictor does not do that
with a PyTorch model: its ``LetterBox(auto=True)`` pads each side only up to a multiple of
the stride (320x240 -> 320x256), which is also how its validation (``rect=True``) measures
the published accuracy. A fixed-shape ONNX file cannot take that smaller input, because the
export baked the square into a few constants:

- the anchor points and strides of the detection head (``make_anchors`` of each level's grid:
  2100 anchors for 320x320, 1680 for 256x320);
- the Reshapes that count them (the DFL's ``[1, 4, 16, 2100]``) and those of an attention
  block on the last level's grid (YOLO11's C2PSA: ``[1, 2, 128, 100]`` tokens and
  ``[1, 128, 10, 10]`` back to a grid).

:func:`resize_yolo_input` rewrites exactly those constants for a new ``(height, width)``, after
checking that they are what the square export computes (the anchors must equal
``make_anchors`` of the square grid, point for point), and refuses a graph it does not
recognise. The model-only gain on this project's 2-core CPU (OpenVINO, 320x256 against
320x320): about 1.2x fps, the share of pixels saved (README "CPU inference").

Ultralytics could export the rectangle itself from the ``.pt`` checkpoint; an ONNX file (the
shared models, or any model shipped without its checkpoint) has only its graph, hence this.

The resized model is a different input geometry, not a different network: its detections
differ from the square run's only where the grey bars changed a feature, like two valid
letterboxes (YOLO11n on the traffic videos: precision and recall 0.95-0.97 against the
square). ``vistream export`` measures that agreement next to the int8 gate and refuses a
resized model below ``engine.cli.export.quantize.INPUT_AGREEMENT_MIN``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from engine.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

#: Ultralytics detection levels (P3, P4, P5).
STRIDES = (8, 16, 32)
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_input_size(text: str) -> str | tuple[int, int]:
    """``square``, ``auto`` or ``HxW`` (height by width, multiples of 32) from the command line.

    Raises:
        ConfigError: Anything else, or sides that are not positive multiples of 32.
    """
    if text in ("square", "auto"):
        return text
    match = _SIZE.match(text)
    if match is None:
        raise ConfigError(f"--input-size must be square, auto or HEIGHTxWIDTH (e.g. 256x320), got {text!r}")
    height, width = int(match.group(1)), int(match.group(2))
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise ConfigError(f"--input-size sides must be positive multiples of 32, got {height}x{width}")
    return height, width


def fitted_hw(frame_shapes: Iterable[Sequence[int]], square: int, stride: int = 32) -> tuple[int, int]:
    """The smallest input that holds every frame letterboxed as into ``square``, in strides.

    Each frame is letterboxed as into the square, with the padding only up to a multiple of
    ``stride`` (Ultralytics' ``LetterBox(auto=True)``, :func:`engine.ops.cpu.letterbox_params`);
    for frames of several shapes the largest height and width are taken, so none is scaled
    down further than the square input would.

    Raises:
        ModelError: No frames.
    """
    from engine.ops.cpu import letterbox_params

    height = width = 0
    for shape in frame_shapes:
        fitted = letterbox_params((int(shape[0]), int(shape[1])), square, stride=stride, auto=True)
        height, width = max(height, fitted.output_hw[0]), max(width, fitted.output_hw[1])
    if height == 0:
        raise ModelError("--input-size auto needs frames (--calib or --check-source)")
    return min(height, square), min(width, square)


def make_anchors(height: int, width: int, strides: Sequence[int] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Ultralytics' ``make_anchors`` for an input of ``height`` x ``width``.

    Returns:
        ``(points, strides)``: (2, N) cell centres in grid units (x first, row by row,
        level by level) and (N,) the stride of each.
    """
    points, stride_of = [], []
    for stride in strides:
        rows, cols = height // stride, width // stride
        y, x = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
        points.append(np.stack([x.ravel(), y.ravel()]))
        stride_of.append(np.full(rows * cols, stride))
    return np.concatenate(points, axis=1).astype(np.float32), np.concatenate(stride_of).astype(np.float32)


def _reshape_targets(graph: Any) -> set[str]:
    """Names of the constant tensors used as the shape input of a Reshape."""
    return {node.input[1] for node in graph.node if node.op_type == "Reshape" and len(node.input) > 1}


def _constants(graph: Any) -> Iterator[tuple[str, Any]]:
    """``(name, TensorProto)`` of every constant: initializers and ``Constant`` nodes."""
    for tensor in graph.initializer:
        yield tensor.name, tensor
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    yield node.output[0], attribute.t


def _new_target(target: list[int], square: int, hw: tuple[int, int]) -> list[int] | None:
    """The Reshape target for the new input, or None when it does not depend on the grid.

    Recognised: a trailing anchor count (all levels), a trailing token count of one level
    (``rows * cols``), a trailing ``rows, cols`` pair of one level.
    """
    old_anchors = make_anchors(square, square)[1].size
    new_anchors = make_anchors(*hw)[1].size
    if len(target) >= 2 and target[-1] == old_anchors:
        return [*target[:-1], new_anchors]
    for stride in STRIDES:
        cells, rows, cols = square // stride, hw[0] // stride, hw[1] // stride
        if len(target) >= 3 and target[-2:] == [cells, cells] and target[-3] > 1:
            return [*target[:-2], rows, cols]
        if len(target) >= 3 and target[-1] == cells * cells and cells > 1:
            return [*target[:-1], rows * cols]
    return None


def resize_yolo_input(model: Any, hw: tuple[int, int]) -> Any:
    """Rewrite a fixed-shape square Ultralytics YOLO detect export for an input of ``hw``.

    Args:
        model: An ``onnx.ModelProto`` (changed in place and returned): one NCHW input with a
            static square size, the head's anchors and strides as constants.
        hw: New (height, width), multiples of 32 (the largest stride).

    Returns:
        The model, its input, output, constants and ``imgsz`` metadata set for ``hw``.

    Raises:
        ModelError: The graph is not one this rewrite knows (the message says what differs).
    """
    from onnx import numpy_helper

    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    sides = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
    if len(sides) != 4 or sides[2] is None or sides[2] != sides[3]:
        raise ModelError(f"cannot resize the input: it must be a static square NCHW input, got {sides}")
    square = int(sides[2])
    if square % STRIDES[-1] or hw[0] % STRIDES[-1] or hw[1] % STRIDES[-1]:
        raise ModelError(
            f"cannot resize a {square}x{square} input to {hw[0]}x{hw[1]}: sides must be multiples of 32"
        )
    old_points, old_strides = make_anchors(square, square)
    new_points, new_strides = make_anchors(*hw)
    targets = _reshape_targets(graph)
    found = {"points": 0, "strides": 0, "reshapes": 0}
    for name, tensor in _constants(graph):
        value = numpy_helper.to_array(tensor)
        new: np.ndarray | None = None
        if value.dtype == np.float32 and value.shape == (1, 2, old_points.shape[1]):
            if not np.array_equal(value[0], old_points):
                raise ModelError(
                    f"cannot resize the input: {tensor.name} is not the anchor grid of {square}x{square}"
                )
            new, found["points"] = new_points[None], found["points"] + 1
        elif value.dtype == np.float32 and value.shape == (1, old_strides.size):
            if not np.array_equal(value[0], old_strides):
                raise ModelError(
                    f"cannot resize the input: {tensor.name} is not the strides of {square}x{square}"
                )
            new, found["strides"] = new_strides[None], found["strides"] + 1
        elif name in targets and value.dtype == np.int64 and value.ndim == 1:
            target = _new_target(value.tolist(), square, hw)
            if target is not None:
                new, found["reshapes"] = np.array(target, np.int64), found["reshapes"] + 1
        if new is not None:
            tensor.CopyFrom(numpy_helper.from_array(new.astype(value.dtype), tensor.name))
    if not found["points"] or not found["strides"]:
        raise ModelError(
            f"cannot resize the input: no anchor grid of {square}x{square} found "
            "(not an Ultralytics detect export with a static shape?)"
        )
    logger.debug("resized %dx%d -> %dx%d: %s constants rewritten", square, square, *hw, found)
    dims[2].dim_value, dims[3].dim_value = hw
    output_dims = graph.output[0].type.tensor_type.shape.dim
    if len(output_dims) == 3 and output_dims[2].dim_value == old_points.shape[1]:
        output_dims[2].dim_value = new_points.shape[1]
    for entry in model.metadata_props:
        if entry.key == "imgsz":
            entry.value = f"[{hw[0]}, {hw[1]}]"
    return model
