"""EmotionClassifier: labels and preprocessing from metadata/config, one call per batch,
the unknown threshold, and per-track smoothing."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from engine.errors import ConfigError, ModelError, StageError
from engine.frame import Batch, Frame, SourceInfo
from engine.registry import resolve_stage
from engine.stage import Context
from plugins.align import FaceAligner
from plugins.emotion import UNKNOWN, EmotionClassifier, EmotionSmoother
from plugins.faces import FaceDetector
from plugins.track import ByteTrackStage
from tests.conftest import shared_path
from tests.plugins.helpers_faces import (
    FERPLUS,
    MINI_XCEPTION,
    YUNET,
    astronaut,
    build_classifier,
    carphone_frames,
    reference_scores,
)

GRAY_META = {
    "labels": ",".join(FERPLUS),
    "color": "gray",
    "scale": "0.00392156862745098",
    "mean": "0.5",
    "std": "0.5",
}
RGB_META = {
    "labels": ",".join(FERPLUS),
    "color": "rgb",
    "scale": str(1 / 255),
    "mean": "0.485,0.456,0.406",
    "std": "0.229,0.224,0.225",
    "output": "logits",
}


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _crops(count: int, seed: int = 0, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Textured crops with a different dominant colour each."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(count, 1, 1, 3))
    noise = rng.integers(-40, 40, size=(count, size[1], size[0], 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _frame(
    crops: np.ndarray,
    *,
    index: int = 0,
    source: str = "cam",
    ok: np.ndarray | None = None,
    track_ids: np.ndarray | None = None,
) -> Frame:
    count = len(crops)
    faces = sv.Detections(
        xyxy=np.tile(np.array([[10.0, 10.0, 74.0, 74.0]], dtype=np.float32), (count, 1)),
        confidence=np.full(count, 0.9, dtype=np.float32),
        class_id=np.zeros(count, dtype=np.int64),
        tracker_id=track_ids,
        data={"aligned_crop": crops, "align_ok": np.ones(count, bool) if ok is None else ok},
    )
    frame = Frame(source_id=source, index=index, pts_ns=index, image=np.zeros((100, 100, 3), np.uint8))
    frame.layers["faces"] = faces
    return frame


def _stage(model: Path, **kwargs: object) -> EmotionClassifier:
    stage = EmotionClassifier(model=model, **kwargs)  # type: ignore[arg-type]
    stage.open(Context())
    return stage


@pytest.mark.parametrize(
    ("color", "classes", "layout", "metadata"),
    [
        ("gray", 8, "NCHW", GRAY_META),
        ("rgb", 8, "NCHW", RGB_META),
        ("rgb", 8, "NHWC", RGB_META),
        (
            "bgr",
            7,
            "NCHW",
            {
                "names": "{0: 'a', 1: 'b', 2: 'c', 3: 'd', 4: 'e', 5: 'f', 6: 'g'}",
                "color": "bgr",
                "preprocess": "x=x/255",
            },
        ),
    ],
)
def test_answers_equal_an_independent_reference(
    tmp_path: Path, color: str, classes: int, layout: str, metadata: dict[str, str]
) -> None:
    rng = np.random.default_rng(3)
    channels = 1 if color == "gray" else 3
    weights, bias = rng.normal(0, 3, size=(channels, classes)), rng.normal(0, 0.5, size=classes)
    model = build_classifier(
        tmp_path / "m.onnx",
        weights,
        bias,
        layout=layout,
        softmax=metadata.get("output") != "logits",
        metadata=metadata,
    )
    stage = _stage(model, output_probs=True)
    assert stage.spec is not None and stage.spec.layout == layout and len(stage.labels) == classes
    crops = _crops(12)
    frames = [_frame(crops[:5]), _frame(crops[5:], index=1)]
    stage(Batch.of(frames))
    spec = stage.spec
    expected = _softmax(
        reference_scores(
            crops, weights, bias, color=spec.color, scale=spec.scale, mean=spec.mean, std=spec.std
        )
    )
    got = np.concatenate([f.layers["faces"].data["emotion_probs"] for f in frames])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    labels = np.concatenate([f.layers["faces"].data["emotion"] for f in frames])
    assert labels.tolist() == [stage.labels[i] for i in expected.argmax(axis=1)]
    assert stage.summary()["inference_calls"] == 1  # all faces of the batch in one call
    assert "aligned_crop" not in frames[0].layers["faces"].data  # dropped: sinks never see pixels


def test_the_shared_seven_class_model_reads_its_own_metadata() -> None:
    stage = _stage(shared_path(MINI_XCEPTION))
    assert stage.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    spec = stage.spec
    assert spec is not None and (spec.color, spec.width, spec.height) == ("gray", 64, 64)
    assert spec.scale == pytest.approx(1 / 255) and spec.mean == (0.5,) and spec.std == (0.5,)
    detector = FaceDetector(model=shared_path(YUNET))
    detector.open(Context())
    image = astronaut()
    frames = [
        Frame(source_id="cam", index=i, pts_ns=i, image=img)
        for i, img in enumerate([image, image[:, ::-1].copy(), np.hstack([image, image])])
    ]
    stage(FaceAligner()(detector(Batch.of(frames))))
    answers = [f.layers["faces"].data["emotion"].tolist() for f in frames]
    assert answers == [["happy"], ["happy"], ["happy", "happy"]]  # she smiles broadly
    assert stage.summary()["inference_calls"] == 1


def test_a_fixed_batch_model_is_fed_in_padded_chunks(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    weights, bias = rng.normal(0, 3, size=(1, 8)), rng.normal(0, 0.5, size=8)
    dynamic = _stage(
        build_classifier(tmp_path / "d.onnx", weights, bias, metadata=GRAY_META), output_probs=True
    )
    fixed = _stage(
        build_classifier(tmp_path / "f.onnx", weights, bias, batch=4, metadata=GRAY_META), output_probs=True
    )
    crops = _crops(10, seed=5)
    a, b = _frame(crops), _frame(crops)
    dynamic(Batch.of([a]))
    fixed(Batch.of([b]))
    np.testing.assert_allclose(
        a.layers["faces"].data["emotion_probs"], b.layers["faces"].data["emotion_probs"], atol=1e-6
    )
    assert fixed.summary()["inference_calls"] == 3


def test_unknown_below_the_threshold_and_for_faces_not_aligned(tmp_path: Path) -> None:
    weights, bias = np.zeros((1, 8)), np.zeros(8)
    weights[0, 1] = 4.0  # happiness rises with brightness
    model = build_classifier(tmp_path / "m.onnx", weights, bias, metadata=GRAY_META)
    probe = _stage(model, output_probs=True)
    crops = np.stack([np.full((64, 64, 3), value, np.uint8) for value in (255, 200, 150, 255)])
    frame = _frame(crops.copy())
    probe(Batch.of([frame]))
    confidence = frame.layers["faces"].data["emotion_confidence"]
    assert confidence[0] > confidence[1] > confidence[2]
    threshold = float((confidence[0] + confidence[1]) / 2)
    stage = _stage(model, threshold=threshold)
    frame = _frame(crops, ok=np.array([True, True, True, False]))
    stage(Batch.of([frame]))
    faces = frame.layers["faces"]
    assert faces.data["emotion"].tolist() == ["happiness", UNKNOWN, UNKNOWN, UNKNOWN]
    np.testing.assert_allclose(faces.data["emotion_confidence"][:3], confidence[:3], atol=1e-6)
    assert faces.data["emotion_confidence"][3] == 0.0  # not aligned: no answer at all
    assert stage.summary()["answers"] == {"happiness": 1, UNKNOWN: 3}


def test_config_overrides_and_clear_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    weights, bias = rng.normal(size=(3, 8)), rng.normal(size=8)
    bare = build_classifier(tmp_path / "bare.onnx", weights, bias, output_name="scores", softmax=False)
    with pytest.raises(ConfigError, match="class list"):
        _stage(bare)
    with pytest.raises(ConfigError, match="rgb' or 'bgr"):
        _stage(bare, labels=list(FERPLUS))
    with pytest.raises(ConfigError, match="scaling"):
        _stage(bare, labels=list(FERPLUS), color="rgb")
    with pytest.raises(ModelError, match="8 classes but 7 labels"):
        _stage(bare, labels=list(FERPLUS[:7]), color="rgb", scale=1 / 255)
    stage = _stage(
        bare, labels=list(FERPLUS), color="bgr", scale=1 / 255, mean=[0.5], std=[0.25], output_probs=True
    )
    frame = _frame(_crops(3))
    stage(Batch.of([frame]))
    expected = _softmax(
        reference_scores(_crops(3), weights, bias, color="bgr", scale=1 / 255, mean=[0.5], std=[0.25])
    )  # raw scores: softmax decided from the values
    np.testing.assert_allclose(frame.layers["faces"].data["emotion_probs"], expected, atol=1e-4)


def test_missing_crops_is_a_stage_error(tmp_path: Path) -> None:
    stage = _stage(build_classifier(tmp_path / "m.onnx", np.ones((1, 8)), np.zeros(8), metadata=GRAY_META))
    frame = _frame(_crops(1))
    del frame.layers["faces"].data["aligned_crop"]
    with pytest.raises(StageError, match="align stage"):
        stage(Batch.of([frame]))


def test_smoother_is_an_exponential_average_per_source_and_track() -> None:
    smoother = EmotionSmoother(alpha=0.5, max_age_frames=2)
    first = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
    second = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    ids = np.array([7, 3, -1])
    ok = np.ones(3, bool)
    out, answered = smoother.update("a", 0, ids, first, ok)
    np.testing.assert_allclose(out, first)
    out, answered = smoother.update("a", 1, ids, second, ok)
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])  # untracked: raw
    # Another source has its own state.
    out, _ = smoother.update("b", 1, np.array([7]), second[:1], ok[:1])
    np.testing.assert_allclose(out, second[:1])
    # A tracked face without an answer keeps its track's last smoothed probabilities.
    out, answered = smoother.update("a", 2, np.array([7, 9]), np.zeros((2, 2), np.float32), np.zeros(2, bool))
    np.testing.assert_allclose(out[0], [0.5, 0.5])
    assert answered.tolist() == [True, False]
    # Track 3 was last updated at frame 1: forgotten after max_age_frames.
    out, _ = smoother.update("a", 4, np.array([3]), first[:1], ok[:1])
    np.testing.assert_allclose(out, first[:1])
    smoother.reset("a")
    out, _ = smoother.update("a", 5, np.array([7]), first[:1], ok[:1])
    np.testing.assert_allclose(out, first[:1])


def test_smoothing_reduces_label_changes_on_the_carphone_video() -> None:
    frames = carphone_frames()
    context = Context(sources={"car": SourceInfo("car", "carphone", 176, 144, 30.0, False, 120)})
    detector = FaceDetector(model=shared_path(YUNET))
    tracker = ByteTrackStage(layer="faces")
    aligner = FaceAligner()
    for stage in (detector, tracker, aligner):
        stage.open(context)
    for start in range(0, len(frames), 8):
        aligner(tracker(detector(Batch.of(frames[start : start + 8]))))
    changes = {}
    for alpha in (None, 0.3):
        stage = EmotionClassifier(model=shared_path(MINI_XCEPTION), smoothing_alpha=alpha)
        stage.open(context)
        copies = [copy.copy(frame) for frame in frames]
        for frame, original in zip(copies, frames, strict=True):
            frame.layers = {"faces": copy.deepcopy(original.layers["faces"])}
        for start in range(0, len(copies), 8):
            stage(Batch.of(copies[start : start + 8]))
        stage.end_of_stream("car")
        labels = [f.layers["faces"].data["emotion"][0] if len(f.layers["faces"]) else "-" for f in copies]
        changes[alpha] = sum(a != b for a, b in zip(labels, labels[1:], strict=False))
    tracked = sum(int((f.layers["faces"].tracker_id != -1).any()) for f in frames)
    assert tracked > 100  # the face is tracked nearly all the time
    assert changes[0.3] < changes[None] / 2, changes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"smoothing_alpha": 0.0}, "smoothing_alpha"),
        ({"labels": ["a", "unknown"]}, "unknown"),
        ({"track_max_age_frames": -1}, "track_max_age_frames"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EmotionClassifier(model=Path("m.onnx"), **kwargs)  # type: ignore[arg-type]


def test_registered_under_its_entry_point_name() -> None:
    assert resolve_stage("emotion") is EmotionClassifier


def test_the_shipped_faces_pipeline_writes_emotions_and_landmarks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from engine.cli.main import main

    video = shared_path("media/faces/carphone_176x144.mp4")
    monkeypatch.setenv("VISTREAM_MODELS", str(shared_path("models")))
    code = main(
        [
            "run",
            str(video),
            "--pipeline",
            "faces",
            "--out",
            str(tmp_path),
            "--no-video",
            "--max-frames",
            "40",
            "--quiet",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    faces = [face for line in lines for face in line["layers"].get("faces", [])]
    assert len(lines) == 40 and len(faces) >= 38
    assert all(len(face["landmarks"]) == 5 and "aligned_crop" not in face for face in faces)
    assert {face["emotion"] for face in faces} <= {
        "angry",
        "disgust",
        "fear",
        "happy",
        "sad",
        "surprise",
        "neutral",
        UNKNOWN,
    }
    assert sum(face["track_id"] is not None for face in faces) >= 35
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["emotion"]["inference_calls"] == 5  # batch_size 8: one call per batch


def test_empty_face_layers_get_empty_columns(tmp_path: Path) -> None:
    stage = _stage(build_classifier(tmp_path / "m.onnx", np.ones((1, 8)), np.zeros(8), metadata=GRAY_META))
    empty = _frame(np.zeros((0, 64, 64, 3), np.uint8))
    del empty.layers["faces"].data["aligned_crop"]  # an empty layer may lack every column
    full = _frame(_crops(2), index=1)
    stage(Batch.of([empty, full]))
    assert empty.layers["faces"].data["emotion"].shape == (0,)
    assert empty.layers["faces"].data["emotion_confidence"].shape == (0,)
    assert len(full.layers["faces"].data["emotion"]) == 2
