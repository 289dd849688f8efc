"""The data model: frame sizes for both pixel layouts, layers, the canvas, batches."""

from __future__ import annotations

import numpy as np
import pytest

from engine.frame import NO_TRACK_ID, Batch, Frame
from tests.helpers import make_detections, make_frame


@pytest.mark.parametrize(
    ("shape", "height", "width"),
    [
        ((48, 64, 3), 48, 64),  # H×W×3 numpy (CPU)
        ((3, 48, 64), 48, 64),  # 3×H×W (a GPU frame's layout)
    ],
)
def test_frame_size_reads_either_pixel_layout(shape: tuple[int, ...], height: int, width: int) -> None:
    frame = Frame(source_id="cam", index=0, pts_ns=0, image=np.zeros(shape, dtype=np.uint8))
    assert (frame.height, frame.width) == (height, width)


def test_a_missing_layer_reads_as_empty_and_written_layers_come_back() -> None:
    frame = make_frame()
    assert len(frame.layer("objects")) == 0
    frame.layers["objects"] = make_detections([[0, 0, 10, 10]])
    assert len(frame.layer("objects")) == 1


def test_the_canvas_is_a_copy_made_once() -> None:
    frame = make_frame(value=7)
    canvas = frame.draw_target()
    canvas[:] = 255
    assert frame.image.max() == 7  # drawing never touches the decoded picture
    assert frame.draw_target() is canvas


def test_batch_is_a_sequence_of_frames() -> None:
    frames = [make_frame(index) for index in range(3)]
    batch = Batch.of(frames)
    assert len(batch) == 3 and batch[1] is frames[1] and list(batch) == frames


def test_no_track_id_is_negative_so_it_is_never_a_real_id() -> None:
    assert NO_TRACK_ID < 0
