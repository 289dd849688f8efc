"""The detect stage (YoloDetector) and YOLO decoding: synthetic outputs with known boxes,
tiny ONNX models with known predictions, and the real YOLO11n models on highway frames."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import supervision as sv
from onnx import TensorProto, helper, numpy_helper

from engine.errors import ConfigError, ModelError
from engine.frame import Batch, Frame
from engine.stage import Context
from plugins import yolo_decode
from plugins.detect import YoloDetector
from plugins.yolo_decode import decode_batch, decode_predictions, nms, nms_numpy
from tests.conftest import shared_path

VEHICLES = {"car", "truck", "bus"}

# --------------------------------------------------------------------------- synthetic outputs


def _raw(boxes_cxcywh: list[tuple[float, float, float, float]], scores: list[dict[int, float]], nc: int = 3):
    """A raw (4 + nc, anchors) prediction: one anchor per box, given class scores."""
    prediction = np.zeros((4 + nc, len(boxes_cxcywh)), np.float32)
    for anchor, (box, class_scores) in enumerate(zip(boxes_cxcywh, scores, strict=True)):
        prediction[:4, anchor] = box
        for class_id, score in class_scores.items():
            prediction[4 + class_id, anchor] = score
    return prediction


# Anchor layout of the scene used below (cx, cy, w, h in model pixels):
SCENE_BOXES = [
    (100, 100, 50, 40),  # 0: object A, class 0, best
    (102, 101, 50, 40),  # 1: duplicate of A (IoU ~0.9), class 0 -> suppressed
    (100, 100, 50, 40),  # 2: same place as A but class 1 -> kept unless agnostic
    (250, 60, 30, 30),  # 3: object C, class 2
    (300, 200, 20, 20),  # 4: below the confidence threshold -> dropped
    (115, 100, 50, 40),  # 5: overlaps A with IoU 35/65 = 0.54, class 0
]
SCENE_SCORES = [{0: 0.9, 1: 0.1}, {0: 0.8}, {1: 0.7, 0: 0.05}, {2: 0.6}, {0: 0.2}, {0: 0.5}]


def _xyxy(box: tuple[float, float, float, float]) -> list[float]:
    cx, cy, w, h = box
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_decode_threshold_per_class_nms_and_order() -> None:
    xyxy, conf, class_id = decode_predictions(
        _raw(SCENE_BOXES, SCENE_SCORES), confidence=0.25, iou=0.7, max_detections=300
    )
    # IoU(A, anchor 5) = 0.54 <= 0.7, so anchor 5 survives; sorted by confidence.
    np.testing.assert_allclose(xyxy, [_xyxy(SCENE_BOXES[i]) for i in (0, 2, 3, 5)])
    np.testing.assert_allclose(conf, [0.9, 0.7, 0.6, 0.5])
    np.testing.assert_array_equal(class_id, [0, 1, 2, 0])
    assert xyxy.dtype == np.float32 and conf.dtype == np.float32 and class_id.dtype == np.int64


def test_decode_lower_iou_suppresses_more() -> None:
    _, conf, class_id = decode_predictions(
        _raw(SCENE_BOXES, SCENE_SCORES), confidence=0.25, iou=0.45, max_detections=300
    )
    np.testing.assert_allclose(conf, [0.9, 0.7, 0.6])
    np.testing.assert_array_equal(class_id, [0, 1, 2])


def test_decode_agnostic_nms_suppresses_across_classes() -> None:
    _, conf, class_id = decode_predictions(
        _raw(SCENE_BOXES, SCENE_SCORES), confidence=0.25, iou=0.7, max_detections=300, agnostic=True
    )
    np.testing.assert_allclose(conf, [0.9, 0.6, 0.5])
    np.testing.assert_array_equal(class_id, [0, 2, 0])


def test_decode_class_filter_does_not_relabel() -> None:
    allowed = np.array([False, True, False])
    _, conf, class_id = decode_predictions(
        _raw(SCENE_BOXES, SCENE_SCORES),
        confidence=0.25,
        iou=0.7,
        max_detections=300,
        allowed_classes=allowed,
    )
    # Anchor 0 also scores 0.1 for class 1, but its best class is 0: it is dropped, not relabelled.
    np.testing.assert_allclose(conf, [0.7])
    np.testing.assert_array_equal(class_id, [1])


def test_decode_max_detections_and_empty() -> None:
    _, conf, _ = decode_predictions(
        _raw(SCENE_BOXES, SCENE_SCORES), confidence=0.25, iou=0.7, max_detections=2
    )
    np.testing.assert_allclose(conf, [0.9, 0.7])
    xyxy, conf, class_id = decode_predictions(
        _raw(SCENE_BOXES, SCENE_SCORES), confidence=0.95, iou=0.7, max_detections=10
    )
    assert xyxy.shape == (0, 4) and conf.shape == (0,) and class_id.shape == (0,)


def test_decode_max_candidates_caps_boxes_before_nms() -> None:
    _, conf, _ = decode_predictions(
        _raw(SCENE_BOXES, SCENE_SCORES), confidence=0.25, iou=0.7, max_detections=10, max_candidates=2
    )
    # The two best candidates are A and its duplicate: NMS leaves A alone.
    np.testing.assert_allclose(conf, [0.9])


def _scene_batch() -> np.ndarray:
    """Three images: the scene, the scene with its boxes moved, and the scene again."""
    moved = [(cx + 40, cy + 30, w, h) for cx, cy, w, h in SCENE_BOXES]
    return np.stack(
        [_raw(SCENE_BOXES, SCENE_SCORES), _raw(moved, SCENE_SCORES), _raw(SCENE_BOXES, SCENE_SCORES)]
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"iou": 0.45},
        {"agnostic": True},
        {"max_detections": 2},
        {"max_candidates": 2},
        {"allowed_classes": np.array([True, False, True])},
    ],
)
def test_decode_batch_equals_image_by_image(options: dict[str, object]) -> None:
    settings: dict[str, object] = {"confidence": 0.25, "iou": 0.7, "max_detections": 300, **options}
    batch = _scene_batch()
    together = decode_batch(batch, **settings)  # type: ignore[arg-type]
    in_chunks = decode_batch([batch[:1], batch[1:]], **settings)  # type: ignore[arg-type]
    assert len(together) == len(in_chunks) == 3
    for position, image in enumerate(batch):
        alone = decode_predictions(image, **settings)  # type: ignore[arg-type]
        for got in (together[position], in_chunks[position]):
            for mine, expected in zip(got, alone, strict=True):
                np.testing.assert_array_equal(mine, expected)
    # Identical boxes in images 0 and 2 never suppress each other.
    np.testing.assert_array_equal(together[0][0], together[2][0])
    np.testing.assert_allclose(together[1][0], together[0][0] + np.float32([40, 30, 40, 30]))


def test_decode_batch_with_nothing_above_threshold() -> None:
    decoded = decode_batch(_scene_batch(), confidence=0.99, iou=0.7, max_detections=300)
    assert [len(conf) for _, conf, _ in decoded] == [0, 0, 0]
    assert all(xyxy.shape == (0, 4) and xyxy.dtype == np.float32 for xyxy, _, _ in decoded)


def test_opencv_nms_equals_numpy_nms_on_random_boxes() -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 300, size=(400, 2))
    boxes = np.concatenate((xy, xy + rng.uniform(5, 80, size=(400, 2))), axis=1).astype(np.float32)
    scores = rng.uniform(0.01, 1, size=400).astype(np.float32)
    classes = rng.integers(0, 4, size=400)
    for iou in (0.3, 0.5, 0.7):
        for agnostic in (False, True):
            kept = nms(boxes, scores, classes, iou_threshold=iou, agnostic=agnostic)
            if agnostic:
                reference = nms_numpy(boxes, scores, iou)
            else:
                reference = np.concatenate(
                    [
                        np.flatnonzero(classes == c)[
                            nms_numpy(boxes[classes == c], scores[classes == c], iou)
                        ]
                        for c in range(4)
                    ]
                )
                reference = reference[np.argsort(-scores[reference], kind="stable")]
            np.testing.assert_array_equal(kept, reference)
    assert nms(np.empty((0, 4)), np.empty(0), np.empty(0), iou_threshold=0.5).shape == (0,)


@pytest.mark.parametrize("opencv", [True, False])
def test_nms_classes_never_suppress_each_other(monkeypatch: pytest.MonkeyPatch, opencv: bool) -> None:
    monkeypatch.setattr(yolo_decode, "_HAS_CV2_BATCHED_NMS", opencv)
    # A naive class_id * (max + 1) offset would move the class-1 box, which sticks out of the
    # picture, exactly onto the class-0 box.
    boxes = np.array([[280, 280, 300, 300], [-21, -21, -1, -1], [282, 282, 300, 300]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    kept = nms(boxes, scores, np.array([0, 1, 0]), iou_threshold=0.5)
    np.testing.assert_array_equal(kept, [0, 1])
    kept = nms(boxes, scores, np.array([0, 1, 1]), iou_threshold=0.5)
    np.testing.assert_array_equal(kept, [0, 1, 2])


def test_numpy_fallback_equals_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    xy = rng.uniform(-30, 300, size=(300, 2))
    boxes = np.concatenate((xy, xy + rng.uniform(5, 80, size=(300, 2))), axis=1).astype(np.float32)
    scores = rng.uniform(0.01, 1, size=300).astype(np.float32)
    classes = rng.integers(0, 5, size=300)
    with_opencv = nms(boxes, scores, classes, iou_threshold=0.5)
    monkeypatch.setattr(yolo_decode, "_HAS_CV2_BATCHED_NMS", False)
    np.testing.assert_array_equal(nms(boxes, scores, classes, iou_threshold=0.5), with_opencv)


# --------------------------------------------------------------------------- tiny ONNX models


def _tiny_yolo(
    tmp_path: Path,
    prediction: np.ndarray,
    names: dict[int, str] | None,
    *,
    batch: int | str = "batch",
    input_hw: tuple[int, int] = (320, 320),
    brightness_slot: tuple[int, int] | None = None,
    metadata: dict[str, str] | None = None,
    name: str = "tiny.onnx",
    dynamic_hw: bool = False,
) -> Path:
    """An ONNX model shaped like an Ultralytics detector that outputs ``prediction`` for
    every image; with ``brightness_slot`` (row, anchor) that entry is the image's mean
    value instead, so each image gets its own output."""
    channels, anchors = prediction.shape
    mask = np.zeros((1, channels, anchors), np.float32)
    constant = prediction[None].astype(np.float32)
    if brightness_slot is not None:
        mask[0, brightness_slot[0], brightness_slot[1]] = 1.0
        constant[0, brightness_slot[0], brightness_slot[1]] = 0.0
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean4d"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4d", "mean_shape"], ["mean"]),  # (N, 1, 1)
        helper.make_node("Mul", ["mean", "mask"], ["varying"]),
        helper.make_node("Add", ["varying", "constant"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, [batch, 3, *(("height", "width") if dynamic_hw else input_hw)]
            )
        ],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, channels, anchors])],
        initializer=[
            numpy_helper.from_array(mask, "mask"),
            numpy_helper.from_array(constant, "constant"),
            numpy_helper.from_array(np.array([0, 1, 1], np.int64), "mean_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    props = {"task": "detect", "stride": "32", "imgsz": str(list(input_hw))}
    if names is not None:
        props["names"] = str(names)
    props.update(metadata or {})
    helper.set_model_props(model, props)
    path = tmp_path / name
    onnx.save(model, path)
    return path


TINY_NAMES = {0: "car", 1: "truck"}
# Model-pixel boxes: one well inside, one reaching into the top padding.
TINY_PREDICTION = _raw([(160, 100, 100, 40), (60, 40, 40, 40)], [{0: 0.9}, {1: 0.8}], nc=2)


def _frame(image: np.ndarray, index: int = 0) -> Frame:
    return Frame(source_id="cam", index=index, pts_ns=index * 1_000_000, image=image)


def _opened(path: Path, **kwargs: object) -> YoloDetector:
    detector = YoloDetector(model=path, **kwargs)  # type: ignore[arg-type]
    detector.open(Context())
    return detector


def test_boxes_are_mapped_back_to_each_frame(tmp_path: Path) -> None:
    detector = _opened(_tiny_yolo(tmp_path, TINY_PREDICTION, TINY_NAMES))
    assert detector.names == ["car", "truck"] and detector.input_hw == (320, 320)
    big = _frame(np.zeros((480, 640, 3), np.uint8))  # scale 0.5, 40 px bars top and bottom
    small = _frame(np.zeros((240, 320, 3), np.uint8), 1)  # scale 1, 40 px bars
    detector(Batch.of([big, small]))

    objects = big.layers["objects"]
    assert isinstance(objects, sv.Detections)
    np.testing.assert_allclose(objects.xyxy, [[220, 80, 420, 160], [80, 0, 160, 40]])
    np.testing.assert_allclose(objects.confidence, [0.9, 0.8])
    np.testing.assert_array_equal(objects.class_id, [0, 1])
    assert objects.data["class_name"].tolist() == ["car", "truck"]
    assert objects.xyxy.dtype == np.float32 and objects.confidence.dtype == np.float32
    assert objects.class_id.dtype == np.int64

    np.testing.assert_allclose(small.layers["objects"].xyxy, [[110, 40, 210, 80], [40, 0, 80, 20]])
    detector.close()


def test_layer_name_and_class_filter(tmp_path: Path) -> None:
    detector = _opened(_tiny_yolo(tmp_path, TINY_PREDICTION, TINY_NAMES), classes=["truck"], layer="vehicles")
    frame = _frame(np.zeros((320, 320, 3), np.uint8))
    detector(Batch.of([frame]))
    assert list(frame.layers) == ["vehicles"]
    assert frame.layers["vehicles"].data["class_name"].tolist() == ["truck"]


def test_no_detections_gives_an_empty_layer(tmp_path: Path) -> None:
    detector = _opened(_tiny_yolo(tmp_path, TINY_PREDICTION, TINY_NAMES), confidence=0.95)
    frame = _frame(np.zeros((100, 100, 3), np.uint8))
    detector(Batch.of([frame]))
    objects = frame.layers["objects"]
    assert len(objects) == 0 and objects.xyxy.shape == (0, 4)
    assert objects.data["class_name"].shape == (0,)
    assert detector(Batch.of([])).frames == []


@pytest.mark.parametrize("batch", ["batch", 1, 2])
def test_each_frame_gets_its_own_output(tmp_path: Path, batch: int | str) -> None:
    """Dynamic batch (one call), fixed batch 1 and fixed batch 2 (a padded last chunk)."""
    path = _tiny_yolo(tmp_path, TINY_PREDICTION, TINY_NAMES, batch=batch, brightness_slot=(4, 0))
    detector = _opened(path)
    calls = []
    backend = detector._backend
    assert backend is not None
    original_run = backend.run
    backend.run = lambda inputs: calls.append(len(inputs["images"])) or original_run(inputs)  # type: ignore[method-assign]
    levels = [200, 150, 100]
    frames = [_frame(np.full((320, 320, 3), level, np.uint8), i) for i, level in enumerate(levels)]
    detector(Batch.of(frames))
    for frame, level in zip(frames, levels, strict=True):
        cars = frame.layers["objects"][frame.layers["objects"].data["class_name"] == "car"]
        # ORT sums 307,200 float32 values for the mean: allow its rounding.
        np.testing.assert_allclose(cars.confidence, [level / 255], rtol=1e-3)
    assert calls == {"batch": [3], 1: [1, 1, 1], 2: [2, 2]}[batch]


@pytest.mark.parametrize(
    ("names", "prediction", "metadata", "match"),
    [
        (None, TINY_PREDICTION, {}, "metadata has no 'names'"),
        ({0: "car"}, TINY_PREDICTION, {}, r"6 channels but 4 \+ 1 classes"),
        (TINY_NAMES, TINY_PREDICTION, {"task": "segment"}, "task 'segment'"),
        (TINY_NAMES, TINY_PREDICTION, {"end2end": "True"}, "end-to-end"),
        ("not a literal", TINY_PREDICTION, {}, "cannot read its 'names'"),
    ],
)
def test_models_that_are_not_yolo_detectors(tmp_path: Path, names, prediction, metadata, match) -> None:  # noqa: ANN001
    if isinstance(names, str):
        path = _tiny_yolo(tmp_path, prediction, None, metadata={"names": names})
    else:
        path = _tiny_yolo(tmp_path, prediction, names, metadata=metadata)
    with pytest.raises(ModelError, match=f"{path} is not an Ultralytics YOLO detector: .*{match}"):
        _opened(path)


def test_dynamic_size_model_uses_imgsz_metadata(tmp_path: Path) -> None:
    path = _tiny_yolo(tmp_path, TINY_PREDICTION, TINY_NAMES, input_hw=(256, 320), dynamic_hw=True)
    detector = _opened(path)
    assert detector.input_hw == (256, 320)
    frame = _frame(np.zeros((480, 640, 3), np.uint8))  # scale 0.5, 8 px bars top and bottom
    detector(Batch.of([frame]))
    np.testing.assert_allclose(frame.layers["objects"].xyxy[0], [220, 144, 420, 224])


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"imgsz": "[250, 320]"}, "imgsz 250x320 is not a multiple of its stride 32"),
        ({"imgsz": "three hundred"}, "'imgsz'/'stride' metadata is missing or unreadable"),
    ],
)
def test_dynamic_size_model_needs_usable_imgsz(tmp_path: Path, metadata: dict[str, str], match: str) -> None:
    path = _tiny_yolo(tmp_path, TINY_PREDICTION, TINY_NAMES, dynamic_hw=True, metadata=metadata)
    with pytest.raises(ModelError, match=match):
        _opened(path)


# --------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"confidence": 1.5}, "confidence: expected a number >= 0 and <= 1"),
        ({"iou": -0.1}, "iou: expected a number >= 0 and <= 1"),
        ({"iou": "high"}, "iou: expected a number"),
        ({"max_detections": 0}, "max_detections: expected a positive integer"),
        ({"classes": "car"}, "classes must be a non-empty list"),
        ({"classes": []}, "classes must be a non-empty list"),
        ({"threads": 0}, "threads: expected a positive integer"),
        ({"layer": ""}, "layer must be a non-empty string"),
        ({"agnostic_nms": "yes"}, "agnostic_nms: expected true or false"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        YoloDetector(model=Path("m.onnx"), **kwargs)  # type: ignore[arg-type]


def test_constructor_is_cheap_and_defaults_match_ultralytics_predict() -> None:
    detector = YoloDetector(model=Path("does/not/exist.onnx"))  # nothing is loaded yet
    assert (detector.confidence, detector.iou, detector.max_detections) == (0.25, 0.7, 300)
    assert detector.layer == "objects" and detector.classes is None and not detector.agnostic_nms
    with pytest.raises(ModelError, match="model file not found"):
        detector.open(Context())
    with pytest.raises(ModelError, match="before open"):
        detector(Batch.of([_frame(np.zeros((8, 8, 3), np.uint8))]))
    detector.close()  # closing an unopened stage is harmless


def test_registered_as_detect() -> None:
    (entry,) = [e for e in entry_points(group="vistream.stages") if e.name == "detect"]
    assert entry.load() is YoloDetector


# --------------------------------------------------------------------------- real models


HIGHWAY_INDICES = [0, 100, 200, 300, 700, 1350]


@pytest.fixture(scope="module")
def highway_frames() -> list[Frame]:
    capture = cv2.VideoCapture(str(shared_path("media/traffic/highway_overpass_320x240_60fps.avi")))
    frames = []
    for index in range(max(HIGHWAY_INDICES) + 1):
        ok, image = capture.read()
        if not ok:
            break
        if index in HIGHWAY_INDICES:
            frames.append(_frame(image, index))
    capture.release()
    assert len(frames) == len(HIGHWAY_INDICES)
    return frames


def _fresh(frames: list[Frame]) -> list[Frame]:
    return [_frame(frame.image, frame.index) for frame in frames]


@pytest.fixture(scope="module")
def yolo_fp32() -> YoloDetector:
    detector = _opened(shared_path("models/yolo11n_fp32_320.onnx"))
    yield detector
    detector.close()


def _same_detections(a: sv.Detections, b: sv.Detections, atol: float = 0.0) -> None:
    np.testing.assert_array_equal(a.class_id, b.class_id)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=atol)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=atol / 100)


@pytest.mark.parametrize("model", ["yolo11n_fp32_320.onnx", "yolo11n_int8_320.onnx"])
def test_finds_cars_on_the_highway(highway_frames: list[Frame], model: str) -> None:
    detector = _opened(shared_path(f"models/{model}"))
    frames = _fresh(highway_frames)
    detector(Batch.of(frames))
    detector.close()
    for frame in frames:
        objects = frame.layers["objects"]
        names = set(objects.data["class_name"].tolist())
        assert "car" in names, f"no car in frame {frame.index}: {names}"
        assert names <= VEHICLES, f"frame {frame.index}: unexpected classes {names - VEHICLES}"
        assert (objects.confidence > 0.25).all() and (np.diff(objects.confidence) <= 0).all()
        x1, y1, x2, y2 = objects.xyxy.T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 320).all() and (y2 <= 240).all()
        widths, heights = x2 - x1, y2 - y1
        # Cars on this 320x240 view are roughly 15 to 110 px wide, never slivers.
        assert ((widths > 8) & (widths < 160) & (heights > 8) & (heights < 160)).all()
        assert ((widths / heights > 0.4) & (widths / heights < 3.0)).all()
    # The frame the team inspected: three cars, all clearly detected.
    frame_300 = next(frame for frame in frames if frame.index == 300).layers["objects"]
    assert (frame_300.data["class_name"] == "car").sum() >= 3


def test_class_filter_on_real_frames(highway_frames: list[Frame], yolo_fp32: YoloDetector) -> None:
    everything = _fresh(highway_frames)
    yolo_fp32(Batch.of(everything))
    trucks_only = _opened(shared_path("models/yolo11n_fp32_320.onnx"), classes=["truck"])
    filtered = _fresh(highway_frames)
    trucks_only(Batch.of(filtered))
    trucks_only.close()
    truck_count = 0
    for full, only in zip(everything, filtered, strict=True):
        expected = full.layers["objects"][full.layers["objects"].data["class_name"] == "truck"]
        _same_detections(only.layers["objects"], expected)
        truck_count += len(expected)
    assert truck_count >= 1, "the sampled frames were chosen to contain a truck"


def test_unknown_class_name_lists_valid_names() -> None:
    detector = YoloDetector(model=shared_path("models/yolo11n_fp32_320.onnx"), classes=["car", "lorry"])
    with pytest.raises(
        ConfigError, match=r"\['lorry'\] are not classes of yolo11n_fp32_320.onnx; valid: person, .*car"
    ):
        detector.open(Context())


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("emotion_mini_xception_fer2013_7cls.onnx", "its metadata has no 'names'"),
        ("face_detection_yunet_2023mar.onnx", "its metadata has no 'names'"),
    ],
)
def test_other_shared_models_are_rejected(model: str, match: str) -> None:
    path = shared_path(f"models/{model}")
    with pytest.raises(ModelError, match=f"{path} is not an Ultralytics YOLO detector: {match}"):
        _opened(path)


def test_fixed_batch_model_batch_equals_one_by_one(
    highway_frames: list[Frame], yolo_fp32: YoloDetector
) -> None:
    batched = _fresh(highway_frames)
    yolo_fp32(Batch.of(batched))
    for frame in batched:
        single = _fresh([frame])
        yolo_fp32(Batch.of(single))
        _same_detections(frame.layers["objects"], single[0].layers["objects"])


def _dynamic_batch_copy(source: Path, target: Path) -> Path:
    """Rewrite a fixed-batch Ultralytics export so its batch axis is dynamic: the batch dim
    of the graph input/output becomes symbolic and activation Reshapes copy dim 0 (0 means
    "keep" in ONNX Reshape) instead of hard-coding 1."""
    model = onnx.load(source)
    graph = model.graph
    from_input = {value.name for value in graph.input}
    for node in graph.node:
        if any(name in from_input for name in node.input):
            from_input.update(node.output)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[0] in from_input:
            tensor = initializers[node.input[1]]
            shape = numpy_helper.to_array(tensor).copy()
            if shape[0] == 1:
                shape[0] = 0
                tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.value_info[:]
    onnx.save(model, target)
    return target


def test_dynamic_batch_model_runs_one_inference_per_batch(
    tmp_path: Path, highway_frames: list[Frame], yolo_fp32: YoloDetector
) -> None:
    path = _dynamic_batch_copy(shared_path("models/yolo11n_fp32_320.onnx"), tmp_path / "yolo_dynamic.onnx")
    detector = _opened(path)
    backend = detector._backend
    assert backend is not None and backend.inputs[0].dynamic_batch
    calls = []
    original_run = backend.run
    backend.run = lambda inputs: calls.append(len(inputs["images"])) or original_run(inputs)  # type: ignore[method-assign]
    batched = _fresh(highway_frames)
    detector(Batch.of(batched))
    detector.close()
    assert calls == [len(highway_frames)]
    reference = _fresh(highway_frames)
    yolo_fp32(Batch.of(reference))  # the original fixed-batch model, frame by frame
    for frame, expected in zip(batched, reference, strict=True):
        _same_detections(frame.layers["objects"], expected.layers["objects"], atol=1e-2)


# --------------------------------------------------------------------------- torch decode


def _random_raw(images: int, anchors: int, nc: int, seed: int) -> np.ndarray:
    """Raw outputs with overlapping boxes, many classes and distinct scores."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((images, 4 + nc, anchors), np.float32)
    raw[:, 0:2] = rng.uniform(0, 320, (images, 2, anchors))
    raw[:, 2:4] = rng.uniform(8, 90, (images, 2, anchors))
    raw[:, 4:] = rng.uniform(0, 1, (images, nc, anchors)) ** 3
    return raw


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"agnostic": True},
        {"iou": 0.45},
        {"max_detections": 5},
        {"max_candidates": 40},
        {"allowed_classes": np.array([True, False, True, False, True])},
        {"confidence": 0.99},
    ],
)
def test_torch_decode_equals_numpy_decode(options: dict[str, object]) -> None:
    torch = pytest.importorskip("torch")
    from plugins.yolo_decode import decode_batch_torch

    raw = _random_raw(3, 600, 5, seed=5)
    kwargs = {"confidence": 0.25, "iou": 0.7, "max_detections": 300, **options}
    expected = decode_batch(raw, **kwargs)  # type: ignore[arg-type]
    chunks = [torch.from_numpy(raw[:2]), torch.from_numpy(raw[2:])]  # a fixed-batch model's chunks
    for ours in (decode_batch_torch(torch.from_numpy(raw), **kwargs), decode_batch_torch(chunks, **kwargs)):  # type: ignore[arg-type]
        assert len(ours) == 3
        for (xyxy, conf, cls), (exp_xyxy, exp_conf, exp_cls) in zip(ours, expected, strict=True):
            assert xyxy.dtype == np.float32 and conf.dtype == np.float32 and cls.dtype == np.int64
            np.testing.assert_allclose(xyxy, exp_xyxy, rtol=1e-6)
            np.testing.assert_array_equal(conf, exp_conf)
            np.testing.assert_array_equal(cls, exp_cls)


def test_torch_decode_of_the_synthetic_scene() -> None:
    torch = pytest.importorskip("torch")
    from plugins.yolo_decode import decode_batch_torch

    ((xyxy, conf, class_id),) = decode_batch_torch(
        torch.from_numpy(_raw(SCENE_BOXES, SCENE_SCORES)[None]), confidence=0.25, iou=0.7, max_detections=300
    )
    np.testing.assert_allclose(xyxy, [_xyxy(SCENE_BOXES[i]) for i in (0, 2, 3, 5)])
    np.testing.assert_allclose(conf, [0.9, 0.7, 0.6, 0.5])
    np.testing.assert_array_equal(class_id, [0, 1, 2, 0])


def test_match_detections() -> None:
    from plugins.yolo_decode import match_detections

    reference = (
        np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32),
        np.array([0.9, 0.8, 0.7], np.float32),
        np.array([0, 1, 2]),
    )
    candidate = (
        np.array([[21, 20, 41, 40], [0, 0, 10, 10.2], [50, 50, 60, 60]], np.float32),
        np.array([0.81, 0.9, 0.7], np.float32),
        np.array([1, 0, 3]),  # the third box changed class: no match
    )
    rows, cols, ious = match_detections(reference, candidate, iou_threshold=0.9)
    np.testing.assert_array_equal(rows, [0, 1])
    np.testing.assert_array_equal(cols, [1, 0])
    np.testing.assert_allclose(ious, [100 / 102, 380 / 420])
    empty = (np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int64))
    assert all(len(part) == 0 for part in match_detections(reference, empty, iou_threshold=0.5))


# --------------------------------------------------------------------------- other backends


@pytest.fixture(scope="module")
def yolo_export(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from tests.backends.helpers_yolo import exported_yolo

    return exported_yolo(tmp_path_factory)


def _detections_close(
    a: sv.Detections, b: sv.Detections, *, iou: float = 0.95, conf: float = 0.01, threshold: float = 0.25
) -> None:
    """Matched one to one (same class, IoU, confidence), except boxes near the threshold."""
    from plugins.yolo_decode import match_detections

    ref = (a.xyxy, a.confidence, a.class_id)
    cand = (b.xyxy, b.confidence, b.class_id)
    rows, cols, _ = match_detections(ref, cand, iou_threshold=iou)
    assert np.abs(a.confidence[rows] - b.confidence[cols]).max(initial=0) <= conf
    unmatched_a = np.setdiff1d(np.arange(len(a)), rows)
    unmatched_b = np.setdiff1d(np.arange(len(b)), cols)
    assert (a.confidence[unmatched_a] < threshold + conf).all(), a[unmatched_a]
    assert (b.confidence[unmatched_b] < threshold + conf).all(), b[unmatched_b]


def _run(detector: YoloDetector, images: list[np.ndarray]) -> list[Frame]:
    frames = [_frame(image, index) for index, image in enumerate(images)]
    detector(Batch.of(frames))
    return frames


def test_fixed_dynamic_onnx_and_pytorch_agree_in_detect(yolo_export) -> None:  # noqa: ANN001
    """The same exported model as dynamic-batch ONNX (one call), fixed-batch ONNX (frame by
    frame) and the PyTorch checkpoint: the same detections on 8 highway frames."""
    results = {}
    calls = {}
    for name, path in (
        ("dynamic", yolo_export.onnx_dynamic),
        ("fixed", yolo_export.onnx_fixed),
        ("pt", yolo_export.pt),
    ):
        detector = _opened(path, imgsz=320)
        backend = detector.backend
        calls[name] = []
        original_run = backend.run
        backend.run = lambda inputs, o=original_run, c=calls[name]: (
            c.append(len(inputs["images"])) or o(inputs)
        )  # type: ignore[method-assign]
        results[name] = _run(detector, yolo_export.frames)
        detector.close()
    assert calls == {"dynamic": [8], "fixed": [1] * 8, "pt": [8]}
    counts = [len(frame.layers["objects"]) for frame in results["dynamic"]]
    assert min(counts) >= 1 and sum(counts) >= 20, counts
    for name in ("fixed", "pt"):
        for ours, reference in zip(results[name], results["dynamic"], strict=True):
            _detections_close(ours.layers["objects"], reference.layers["objects"])


def test_torch_frames_take_the_torch_path(yolo_export) -> None:  # noqa: ANN001
    """3×H×W uint8 tensors (GPU frames, here on the CPU): kornia letterbox, tensors through
    the backend, torchvision NMS. 320x240 frames into 320x320 need no resize, so both paths
    see bit-identical inputs and must give identical detections."""
    torch = pytest.importorskip("torch")
    for path in (yolo_export.onnx_dynamic, yolo_export.pt):
        detector = _opened(path, imgsz=320)
        seen: list[type] = []
        original_run = detector.backend.run

        def spy(inputs, original_run=original_run, seen=seen):  # noqa: ANN001, ANN202
            seen.append(type(inputs["images"]))
            return original_run(inputs)

        detector.backend.run = spy  # type: ignore[method-assign]
        numpy_frames = _run(detector, yolo_export.frames)
        tensor_frames = _run(
            detector, [torch.from_numpy(image).permute(2, 0, 1) for image in yolo_export.frames]
        )
        detector.close()
        assert seen == [np.ndarray, torch.Tensor]
        for ours, reference in zip(tensor_frames, numpy_frames, strict=True):
            _same_detections(ours.layers["objects"], reference.layers["objects"])
            assert isinstance(ours.layers["objects"].xyxy, np.ndarray)
            assert (
                ours.layers["objects"].data["class_name"].tolist()
                == reference.layers["objects"].data["class_name"].tolist()
            )


@pytest.mark.parametrize(
    "video", ["media/people/pedestrians_768x576_10fps.avi", "media/faces/carphone_176x144.mp4"]
)
def test_torch_path_with_resizing_on_a_trained_model(video: str) -> None:
    """Downscaled (768x576) and upscaled (176x144) frames: kornia and OpenCV resize differ by
    at most one grey level; the trained YOLO11n's detections do not move."""
    torch = pytest.importorskip("torch")
    capture = cv2.VideoCapture(str(shared_path(video)))
    images = [capture.read()[1] for _ in range(40)][::10]
    capture.release()
    detector = _opened(shared_path("models/yolo11n_fp32_320.onnx"), confidence=0.2)
    numpy_frames = _run(detector, images)
    tensor_frames = _run(detector, [torch.from_numpy(image).permute(2, 0, 1) for image in images])
    detector.close()
    assert sum(len(frame.layers["objects"]) for frame in numpy_frames) >= 4
    for ours, reference in zip(tensor_frames, numpy_frames, strict=True):
        _detections_close(
            ours.layers["objects"], reference.layers["objects"], iou=0.95, conf=0.02, threshold=0.2
        )


def test_imgsz_and_backend_options(yolo_export, tmp_path: Path) -> None:  # noqa: ANN001
    detector = _opened(yolo_export.pt, imgsz=256)
    assert detector.input_hw == (256, 256)
    frames = _run(detector, yolo_export.frames[:2])
    assert all(isinstance(frame.layers["objects"], sv.Detections) for frame in frames)
    with pytest.raises(
        ConfigError, match="imgsz 256 does not match yolo11n_fixed.onnx's fixed input size 320x320"
    ):
        _opened(yolo_export.onnx_fixed, imgsz=256)
    with pytest.raises(ConfigError, match="half and cuda_graph need a CUDA device"):
        _opened(yolo_export.pt, half=True)
    with pytest.raises(ConfigError, match="does not accept option"):
        _opened(yolo_export.onnx_fixed, backend_options={"cuda_graph": True})
    for kwargs, match in (
        ({"imgsz": 16}, "imgsz: expected"),
        ({"half": "no"}, "half: expected"),
        ({"backend_options": ["x"]}, "backend_options must be"),
    ):
        with pytest.raises(ConfigError, match=match):
            YoloDetector(model=Path("m.pt"), **kwargs)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True])
def test_cuda_run_keeps_everything_on_the_gpu(yolo_export, half: bool) -> None:  # noqa: ANN001
    torch = pytest.importorskip("torch")
    detector = YoloDetector(model=yolo_export.pt, half=half)
    detector.open(Context(device="cuda"))
    seen = []
    original_run = detector.backend.run
    detector.backend.run = lambda inputs, o=original_run: (
        seen.append(inputs["images"].device.type) or o(inputs)
    )  # type: ignore[method-assign]
    gpu_frames = _run(
        detector, [torch.from_numpy(image).permute(2, 0, 1).cuda() for image in yolo_export.frames]
    )
    cpu_frames = _run(detector, yolo_export.frames)  # numpy frames are uploaded, then the same path
    assert seen == ["cuda", "cuda"]
    reference = _opened(yolo_export.pt)
    expected = _run(reference, yolo_export.frames)
    for ours, theirs, cpu in zip(gpu_frames, expected, cpu_frames, strict=True):
        _detections_close(
            ours.layers["objects"], theirs.layers["objects"], iou=0.9, conf=0.03 if half else 0.02
        )
        _detections_close(cpu.layers["objects"], ours.layers["objects"])
