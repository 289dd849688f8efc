"""ReplayDetector: MOT files, synthetic scenes, seeded jitter, optional true ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.frame import NO_TRACK_ID, Batch, Frame, SourceInfo
from engine.sources.synthetic import SyntheticTrafficSource
from engine.stage import Context
from plugins.replay import ReplayDetector, load_mot

MOT_TEXT = """\
1,-1,10,20,30,40,0.9,-1,-1,-1
1,-1,100,50,20,10,0.3,-1,-1,-1
3,7,12.5,22,30,40,0.8,-1,-1,-1
"""


def _frame(index: int, *, source_id: str = "cam", pts_ns: int | None = None) -> Frame:
    image = np.zeros((240, 320, 3), dtype=np.uint8)
    return Frame(
        source_id=source_id, index=index, pts_ns=index * 40_000_000 if pts_ns is None else pts_ns, image=image
    )


def _context(uri: str = "memory://", source_id: str = "cam") -> Context:
    return Context(sources={source_id: SourceInfo(source_id, uri, 320, 240, 25.0, False, None)})


def test_mot_file_is_replayed_frame_by_frame(tmp_path: Path) -> None:
    path = tmp_path / "det.txt"
    path.write_text(MOT_TEXT, encoding="utf-8")
    stage = ReplayDetector(path=path, track_ids=True)
    stage.open(_context())
    frames = [_frame(i) for i in range(3)]
    stage(Batch(frames))
    first, second, third = (frame.layers["objects"] for frame in frames)
    np.testing.assert_allclose(first.xyxy, [[10, 20, 40, 60], [100, 50, 120, 60]])
    np.testing.assert_allclose(first.confidence, [0.9, 0.3], rtol=1e-6)
    assert first.tracker_id.tolist() == [NO_TRACK_ID, NO_TRACK_ID]  # detection files carry no ids
    assert first.data["class_name"].tolist() == ["car", "car"] and first.class_id.tolist() == [2, 2]
    assert len(second) == 0 and second.tracker_id is not None
    assert third.tracker_id.tolist() == [7]


def test_mot_options(tmp_path: Path) -> None:
    path = tmp_path / "det.txt"
    path.write_text(MOT_TEXT, encoding="utf-8")
    stage = ReplayDetector(path=path, first_frame=0, min_confidence=0.5, class_name="truck", class_id=7)
    stage.open(_context())
    frames = [_frame(i) for i in range(2)]
    stage(Batch(frames))
    assert len(frames[0].layers["objects"]) == 0  # file frame 0 does not exist
    objects = frames[1].layers["objects"]
    assert len(objects) == 1 and objects.tracker_id is None  # no ids unless asked
    assert objects.data["class_name"].tolist() == ["truck"] and objects.class_id.tolist() == [7]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3\n", "expected 'frame,id,x,y,w,h,conf"),
        ("1,-1,a,0,4,5,1\n", "expected 'frame"),
    ],
)
def test_malformed_mot_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_mot(path)


def test_boxes_without_area_are_skipped_and_counted(tmp_path: Path) -> None:
    """One zero-width box at the image border must not cost the whole file."""
    path = tmp_path / "border.txt"
    path.write_text(
        "1,1,10,20,30,40,1\n1,2,0,5,0,30,1\n2,1,12,20,30,40,1\n2,3,5,5,8,-1,1\n", encoding="utf-8"
    )
    by_frame, skipped = load_mot(path)
    assert skipped == 2 and [len(rows) for rows in by_frame.values()] == [1, 1]
    stage = ReplayDetector(path=path, track_ids=True)
    stage.open(_context())
    frame = _frame(0)
    stage(Batch([frame]))
    assert frame.layers["objects"].tracker_id.tolist() == [1]
    assert stage.summary() == {"degenerate_boxes_skipped": 2}


def test_jitter_that_squeezes_a_border_box_to_nothing_skips_it(tmp_path: Path) -> None:
    path = tmp_path / "edge.txt"
    path.write_text("1,1,0,10,0.2,30,1\n1,2,50,50,40,30,1\n", encoding="utf-8")
    stage = ReplayDetector(path=path, jitter_px=3.0, seed=1, track_ids=True)
    stage.open(_context())
    skipped = 0
    for index in range(20):
        frame = _frame(index)
        (frame.index, frame.pts_ns) = (0, 0)  # the same file frame, 20 jitter draws
        stage(Batch([frame]))
        objects = frame.layers["objects"]
        assert ((objects.xyxy[:, 2] > objects.xyxy[:, 0]) & (objects.xyxy[:, 3] > objects.xyxy[:, 1])).all()
        skipped += 2 - len(objects)
    assert skipped > 0 and stage.summary()["degenerate_boxes_skipped"] == skipped


def test_jitter_is_seeded_and_has_the_requested_size(tmp_path: Path) -> None:
    lines = [f"{f},{i},{50 + 10 * i},{60},40,30,1" for f in range(1, 201) for i in range(1, 6)]
    path = tmp_path / "gt.txt"
    path.write_text("\n".join(lines), encoding="utf-8")

    def boxes(seed: int) -> np.ndarray:
        stage = ReplayDetector(path=path, jitter_px=2.0, seed=seed)
        stage.open(_context())
        frames = [_frame(i) for i in range(200)]
        stage(Batch(frames))
        return np.concatenate([frame.layers["objects"].xyxy for frame in frames])

    exact = np.concatenate([[[50 + 10 * i, 60, 90 + 10 * i, 90] for i in range(1, 6)]] * 200)
    noise = boxes(1) - exact
    assert noise.std() == pytest.approx(2.0, rel=0.05) and abs(noise.mean()) < 0.1
    np.testing.assert_array_equal(boxes(1), boxes(1))
    assert not np.array_equal(boxes(1), boxes(2))


def test_synthetic_scene_from_the_source_uri() -> None:
    uri = "synthetic://traffic?frames=60&seed=2&render=0&drop=0.3&width=640&height=360"
    source = SyntheticTrafficSource(uri, source_id="syn")
    info = source.open()
    stage = ReplayDetector(track_ids=True)
    stage.open(Context(sources={"syn": info}))
    frames = list(source.frames())
    stage(Batch(frames))
    assert len(frames) < 60  # frames were dropped; boxes still follow the timestamps
    matched = 0
    for frame in frames:
        truth = source.scene.truth(round(frame.pts_ns * source.scene.fps / 1e9))
        objects = frame.layers["objects"]
        np.testing.assert_allclose(objects.xyxy, truth.xyxy, atol=1e-3)
        assert objects.tracker_id.tolist() == truth.vehicle_id.tolist()
        matched += len(truth.xyxy)
    assert matched > 20


def test_constructor_and_open_validate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        ReplayDetector(path=tmp_path / "x.txt", uri="synthetic://traffic")
    with pytest.raises(ConfigError, match="synthetic://"):
        ReplayDetector(uri="rtsp://camera")
    with pytest.raises(ConfigError, match="jitter_px"):
        ReplayDetector(jitter_px=-1)
    with pytest.raises(ConfigError, match="is not synthetic"):
        ReplayDetector().open(_context("file.mp4"))
    with pytest.raises(ConfigError, match="cannot read MOT file"):
        ReplayDetector(path=tmp_path / "missing.txt").open(_context())
