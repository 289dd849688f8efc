"""ByteTrackStage: stable ids on a synthetic scene, per-source state, columns preserved."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

import numpy as np
import pytest
import supervision as sv

from engine.errors import ConfigError
from engine.frame import NO_TRACK_ID, Batch, Frame
from engine.stage import Context
from plugins.track import ByteTrackStage
from tests.plugins.helpers_track import FRAME_PERIOD_NS, OBJECTS, scene_frame, source_info


def _stage(**kwargs: object) -> ByteTrackStage:
    stage = ByteTrackStage(**kwargs)  # type: ignore[arg-type]
    stage.open(Context(sources={"cam": source_info("cam"), "b": source_info("b", fps=None)}))
    return stage


def _ids_by_gt(frames: list[Frame]) -> dict[int, list[tuple[int, int]]]:
    """gt id -> [(frame index, track id)] over the frames."""
    seen: dict[int, list[tuple[int, int]]] = {}
    for frame in frames:
        objects = frame.layers["objects"]
        for gt_id, track_id in zip(objects.data["gt_id"].tolist(), objects.tracker_id.tolist(), strict=True):
            seen.setdefault(gt_id, []).append((frame.index, track_id))
    return seen


def test_ids_stay_stable_through_jitter_misses_and_a_frame_gap() -> None:
    rng = np.random.default_rng(1)
    stage = _stage()
    # Six frames are never delivered (positions 30-35): the objects jump 24-36 px, close to
    # a box width, and only the timestamps tell the Kalman filter how far.
    positions = [*range(30), *range(36, 60)]
    missing = {10: {7}, 15: {8}, 16: {8}, 40: {9}}
    frames = [
        scene_frame(index, rng, frame_position=position, missing=missing.get(index, ()))
        for index, position in enumerate(positions)
    ]
    for start in range(0, len(frames), 4):  # batches of 4 frames
        stage(Batch.of(frames[start : start + 4]))

    seen = _ids_by_gt(frames)
    assert all(track_id == NO_TRACK_ID for _, track_id in seen[-1])  # faint clutter
    track_ids = {}
    for gt_id in OBJECTS:
        first, *rest = seen[gt_id]
        assert first == (0, NO_TRACK_ID)  # confirmed on its second match, not before
        ids = {track_id for _, track_id in rest}
        assert len(ids) == 1 and NO_TRACK_ID not in ids, (gt_id, seen[gt_id])
        track_ids[gt_id] = ids.pop()
    assert sorted(track_ids.values()) == [1, 2, 3]  # one id per object, counted from 1


def test_the_frame_gap_needs_the_timestamps() -> None:
    """Control for the test above: with a clock that hides the gap, the ids are lost."""
    rng = np.random.default_rng(1)
    stage = _stage()
    positions = [*range(30), *range(36, 60)]
    frames = [scene_frame(index, rng, frame_position=p) for index, p in enumerate(positions)]
    for frame in frames:
        frame.pts_ns = frame.index * FRAME_PERIOD_NS
    stage(Batch.of(frames))
    assert max(frames[-1].layers["objects"].tracker_id) > 3


def test_end_of_stream_restarts_tracks_without_reusing_ids() -> None:
    rng = np.random.default_rng(2)
    stage = _stage()
    before = [scene_frame(i, rng) for i in range(5)]
    stage(Batch.of(before))
    assert set(before[-1].layers["objects"].tracker_id.tolist()) == {NO_TRACK_ID, 1, 2, 3}
    stage.end_of_stream("cam")
    # The same objects at the same places after a restart: a tracker that was kept would
    # still call them 1, 2, 3. A fresh one makes new tracks, numbered after the old ids so
    # the source's MOT file never gives one id to two objects.
    after = [scene_frame(i, rng) for i in range(5)]
    stage(Batch.of(after))
    assert set(after[-1].layers["objects"].tracker_id.tolist()) == {NO_TRACK_ID, 4, 5, 6}
    # A segment that saw nothing keeps the numbering where it was.
    stage.end_of_stream("cam")
    stage(Batch.of([scene_frame(0, rng, missing=range(len(OBJECTS)))]))
    stage.end_of_stream("cam")
    again = [scene_frame(i, rng) for i in range(5)]
    stage(Batch.of(again))
    assert set(again[-1].layers["objects"].tracker_id.tolist()) == {NO_TRACK_ID, 7, 8, 9}
    # A new run (open) numbers from 1 again.
    stage.open(Context())
    fresh = [scene_frame(i, rng) for i in range(5)]
    stage(Batch.of(fresh))
    assert set(fresh[-1].layers["objects"].tracker_id.tolist()) == {NO_TRACK_ID, 1, 2, 3}


def test_sources_get_independent_trackers() -> None:
    rng = np.random.default_rng(3)
    stage = _stage()
    for index in range(12):  # both sources in every batch, b's objects elsewhere
        batch = Batch.of(
            [
                scene_frame(index, rng, source_id="cam"),
                scene_frame(index, rng, source_id="b", frame_position=50 + index),
            ]
        )
        stage(batch)
        if index >= 1:
            for frame in batch:
                ids = frame.layers["objects"].tracker_id
                assert set(ids.tolist()) == {NO_TRACK_ID, 1, 2, 3}, frame.source_id


def test_every_detection_and_column_survives_in_input_order() -> None:
    rng = np.random.default_rng(4)
    stage = _stage()
    for index in range(3):
        frame = scene_frame(index, rng)
        original = frame.layers["objects"]
        mask = np.zeros((len(original), 4, 4), dtype=bool)
        original.mask = mask
        stage(Batch.of([frame]))
        out = frame.layers["objects"]
        assert out is not original and original.tracker_id is None  # input not mutated
        assert len(out) == len(original)
        np.testing.assert_array_equal(out.xyxy, original.xyxy)
        np.testing.assert_array_equal(out.confidence, original.confidence)
        np.testing.assert_array_equal(out.data["detector_class_id"], original.class_id)
        assert out.mask is mask
        assert set(out.data) == {
            "gt_id",
            "class_name",
            "speed_kmh",
            "detector_class_id",
            "detector_class_name",
        }
        untracked = out.tracker_id == NO_TRACK_ID
        np.testing.assert_array_equal(out.class_id[untracked], original.class_id[untracked])
        for key, values in original.data.items():
            if key != "class_name":
                np.testing.assert_array_equal(out.data[key], values)
        np.testing.assert_array_equal(out.data["detector_class_name"], original.data["class_name"])
        assert out.tracker_id.dtype.kind == "i"
        assert (out.tracker_id[out.data["gt_id"] == -1] == NO_TRACK_ID).all()


def test_detections_without_confidence_are_tracked() -> None:
    stage = _stage()
    boxes = np.array([[10, 10, 50, 50], [200, 10, 240, 50]], dtype=np.float32)
    for index in range(3):
        frame = Frame(
            source_id="cam",
            index=index,
            pts_ns=index * 40_000_000,
            image=None,
            layers={"objects": sv.Detections(xyxy=boxes + 3 * index)},
        )
        stage(Batch.of([frame]))
    assert sorted(frame.layers["objects"].tracker_id.tolist()) == [1, 2]


def test_tracks_outlive_empty_and_missing_layers() -> None:
    rng = np.random.default_rng(5)
    stage = _stage()
    for index in range(4):
        stage(Batch.of([scene_frame(index, rng)]))
    for index in range(4, 7):  # nothing detected: one empty layer, two frames without it
        layers = {"objects": sv.Detections.empty()} if index == 4 else {}
        frame = Frame(source_id="cam", index=index, pts_ns=index * 40_000_000, image=None, layers=layers)
        stage(Batch.of([frame]))
        assert len(frame.layers["objects"]) == 0
        assert frame.layers["objects"].tracker_id is not None
    frame = scene_frame(7, rng)
    stage(Batch.of([frame]))
    assert set(frame.layers["objects"].tracker_id.tolist()) == {NO_TRACK_ID, 1, 2, 3}


def test_repeated_or_backwards_pts_keep_tracking_without_warnings() -> None:
    rng = np.random.default_rng(6)
    stage = _stage()
    frames = [scene_frame(i, rng) for i in range(6)]
    frames[3].pts_ns = frames[2].pts_ns  # repeated
    frames[5].pts_ns = 0  # backwards (a camera clock jump)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stage(Batch.of(frames))
    assert set(frames[-1].layers["objects"].tracker_id.tolist()) == {NO_TRACK_ID, 1, 2, 3}


def test_low_confidence_detections_are_kept_untracked() -> None:
    stage = _stage(low_conf_det_threshold=0.5, high_conf_det_threshold=0.6)
    boxes = np.array([[10, 10, 50, 50]], dtype=np.float32)
    for index in range(4):
        frame = Frame(
            source_id="cam",
            index=index,
            pts_ns=index * 40_000_000,
            image=None,
            layers={"objects": sv.Detections(xyxy=boxes + index, confidence=np.array([0.3]))},
        )
        stage(Batch.of([frame]))
        assert frame.layers["objects"].tracker_id.tolist() == [NO_TRACK_ID]


def _classified(index: int, classes: list[tuple[int, str, float]]) -> Frame:
    """Two still boxes whose detector classes and confidences are given per frame."""
    boxes = np.array([[10, 10, 50, 50], [200, 10, 240, 50]], dtype=np.float32)
    return Frame(
        source_id="cam",
        index=index,
        pts_ns=index * FRAME_PERIOD_NS,
        image=None,
        layers={
            "objects": sv.Detections(
                xyxy=boxes,
                confidence=np.array([c[2] for c in classes], dtype=np.float32),
                class_id=np.array([c[0] for c in classes]),
                data={"class_name": np.array([c[1] for c in classes])},
            )
        },
    )


def test_one_class_per_track_by_confidence_weighted_vote() -> None:
    """Box 1: car 0.9 then truck 0.5 flickers: stays car. Box 2: bus 0.3 at first, then
    truck 0.8 for good: the truck tally passes twice the bus one and takes over, once."""
    stage = _stage()
    names_by_track: dict[int, list[str]] = {}
    detector: list[str] = []
    for index in range(12):
        first = (2, "car", 0.9) if index % 3 else (7, "truck", 0.5)
        second = (5, "bus", 0.3) if index < 3 else (7, "truck", 0.8)
        frame = _classified(index, [first, second])
        stage(Batch.of([frame]))
        out = frame.layers["objects"]
        detector.extend(out.data["detector_class_name"].tolist())
        for track_id, name, class_id in zip(
            out.tracker_id.tolist(), out.data["class_name"].tolist(), out.class_id.tolist(), strict=True
        ):
            if track_id != NO_TRACK_ID:
                names_by_track.setdefault(track_id, []).append(name)
                assert class_id == {"car": 2, "truck": 7, "bus": 5}[name]
    first_track, second_track = sorted(names_by_track)
    assert set(names_by_track[first_track]) == {"car"}
    second = names_by_track[second_track]
    assert second[0] == "bus" and second[-1] == "truck"
    assert sum(a != b for a, b in zip(second, second[1:], strict=False)) == 1  # one switch
    assert "truck" in detector and "bus" in detector  # the detector's classes are kept


def test_class_vote_can_be_off() -> None:
    stage = _stage(vote_classes=False)
    for index in range(4):
        frame = _classified(index, [(2, "car", 0.9), (7, "truck", 0.8) if index % 2 else (5, "bus", 0.9)])
        stage(Batch.of([frame]))
    out = frame.layers["objects"]
    assert out.data["class_name"].tolist() == ["car", "truck"] and "detector_class_name" not in out.data


@pytest.mark.parametrize(
    "kwargs",
    [
        {"layer": ""},
        {"class_switch_ratio": 0.5},
        {"vote_classes": "yes"},
        {"lost_track_buffer": -1},
        {"lost_track_buffer": 2.5},
        {"minimum_consecutive_frames": 0},
        {"minimum_iou_threshold": 1.5},
        {"track_activation_threshold": True},
        {"high_conf_det_threshold": 0.2, "low_conf_det_threshold": 0.3},
    ],
)
def test_invalid_arguments_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ByteTrackStage(**kwargs)  # type: ignore[arg-type]


def test_registered_as_track() -> None:
    (entry,) = entry_points(group="vistream.stages", name="track")
    assert entry.load() is ByteTrackStage


def test_cached_step_kalman_filter_matches_the_library_filter() -> None:
    """The stage's estimator (plugins/track_kalman.py) gives the library's ids and states."""
    from trackers import ByteTrackTracker
    from trackers.utils.state_representations import XYXYStateEstimator

    from plugins.track_kalman import CachedStepXYXYEstimator

    def run(estimator: type) -> list[tuple[np.ndarray, np.ndarray]]:
        tracker = ByteTrackTracker(frame_rate=60.0, state_estimator_class=estimator)
        start = np.array([[10.0 + 40 * i, 10, 35 + 40 * i, 40] for i in range(6)])
        timestamp_s, out = 0.0, []
        for k in range(300):
            boxes = start + k * np.array([0.8, 0.5, 0.9, 0.6]) + np.sin(k * np.arange(24.0).reshape(6, 4))
            seen = (np.arange(6) + k) % 5 != 0  # every box missed now and then
            # Steps near one frame (the nominal band), a gap (DWNA noise) and a repeat.
            timestamp_s += {100: 0.1, 200: 0.0}.get(k, 1 / 60 + 1e-5 * np.sin(k))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the repeated timestamp warns
                result = tracker.update(
                    sv.Detections(xyxy=boxes[seen], confidence=np.full(int(seen.sum()), 0.9)),
                    timestamp=timestamp_s,
                )
            states = np.array([track.get_state_bbox() for track in tracker.tracks])
            out.append((np.asarray(result.tracker_id), states))
        return out

    library, cached = run(XYXYStateEstimator), run(CachedStepXYXYEstimator)
    assert len(library) == len(cached) == 300
    for (ids_a, states_a), (ids_b, states_b) in zip(library, cached, strict=True):
        assert np.array_equal(ids_a, ids_b)
        np.testing.assert_allclose(states_b, states_a, rtol=1e-9, atol=1e-9)
    assert max(int(ids.max(initial=-1)) for ids, _ in cached) >= 5  # every object got an id
