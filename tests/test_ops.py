"""engine.ops: letterbox (bit-exact with Ultralytics), box mapping, model-input batching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.ops import LetterboxInfo, letterbox, letterbox_batch, letterbox_params, to_model_input


def ultralytics_letterbox(
    img: np.ndarray,
    new_shape: tuple[int, int],
    auto: bool = False,
    scaleup: bool = True,
    center: bool = True,
    stride: int = 32,
    padding_value: int = 114,
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Independent re-statement of Ultralytics' ``LetterBox.__call__`` for 3-channel images.

    Written from ultralytics/ultralytics ``ultralytics/data/augment.py`` class ``LetterBox``
    (8.3.x; commit 359f87dc), scale_fill branch omitted. Returns (image, ratio, (left, top)).
    """
    shape = img.shape[:2]
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = round(shape[1] * r), round(shape[0] * r)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    if center:
        dw /= 2
        dh /= 2
    if shape[::-1] != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1) if center else 0, round(dh + 0.1)
    left, right = round(dw - 0.1) if center else 0, round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(padding_value,) * 3)
    return img, r, (left, top)


def ultralytics_scale_boxes(img1_shape, boxes, img0_shape, ratio_pad=None):  # noqa: ANN001, ANN201
    """``scale_boxes`` from ultralytics/utils/ops.py (padding=True), restated for numpy."""
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (
            round((img1_shape[1] - img0_shape[1] * gain) / 2 - 0.1),
            round((img1_shape[0] - img0_shape[0] * gain) / 2 - 0.1),
        )
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    boxes = boxes.copy()
    boxes[..., 0] -= pad[0]
    boxes[..., 1] -= pad[1]
    boxes[..., 2] -= pad[0]
    boxes[..., 3] -= pad[1]
    boxes[..., :4] /= gain
    boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, img0_shape[1])
    boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, img0_shape[0])
    return boxes


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise, so interpolation differences would show.
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack(((xs * 7) % 256, (ys * 5) % 256, ((xs + ys) * 3) % 256), axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return ((base + noise) % 256).astype(np.uint8)


CASES = [
    # source_hw, new_shape_hw, options
    ((240, 320), (320, 320), {}),
    ((480, 640), (320, 320), {}),
    ((101, 177), (320, 320), {}),
    ((333, 111), (320, 256), {}),
    ((17, 29), (320, 320), {}),
    ((719, 1281), (384, 640), {}),
    ((99, 151), (640, 640), {"scaleup": False}),
    ((481, 641), (640, 640), {"scaleup": False}),
    ((375, 500), (640, 640), {"auto": True}),
    ((123, 457), (320, 320), {"auto": True, "stride": 64}),
    ((241, 319), (320, 320), {"center": False}),
    ((500, 375), (320, 320), {"center": False, "auto": True}),
]


@pytest.mark.parametrize(("source_hw", "new_shape_hw", "options"), CASES)
def test_letterbox_matches_ultralytics(source_hw, new_shape_hw, options) -> None:
    image = _image(*source_hw)
    expected, ratio, (left, top) = ultralytics_letterbox(image, new_shape_hw, **options)
    ours, info = letterbox(
        image,
        new_shape_hw,
        stride=options.get("stride", 32),
        auto=options.get("auto", False),
        scale_up=options.get("scaleup", True),
        center=options.get("center", True),
    )
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected)
    assert info.scale == ratio
    assert (info.pad_left_px, info.pad_top_px) == (left, top)
    assert info.output_hw == expected.shape[:2]
    assert info.source_hw == source_hw


def test_letterbox_writes_into_out_and_reuses_it() -> None:
    image = _image(101, 177)
    out = np.zeros((320, 320, 3), np.uint8)
    padded, _ = letterbox(image, 320, out=out)
    assert padded is out
    expected, _, _ = ultralytics_letterbox(image, (320, 320))
    assert np.array_equal(out, expected)
    # A second, differently shaped image into the same buffer leaves nothing stale behind.
    other = _image(300, 120, seed=3)
    letterbox(other, 320, out=out)
    assert np.array_equal(out, ultralytics_letterbox(other, (320, 320))[0])


def test_letterbox_pad_value() -> None:
    padded, info = letterbox(np.zeros((100, 200, 3), np.uint8), 200, pad_value=7)
    assert info.pad_top_px == 50 and info.pad_bottom_px == 50
    assert (padded[:50] == 7).all() and (padded[150:] == 7).all() and (padded[50:150] == 0).all()


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)],
)
def test_letterbox_rejects_non_bgr_images(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        letterbox(bad, 32)


def test_letterbox_rejects_wrong_out() -> None:
    with pytest.raises(ValueError, match=r"\(320, 320, 3\)"):
        letterbox(_image(10, 10), 320, out=np.zeros((320, 321, 3), np.uint8))


def _random_boxes(info: LetterboxInfo, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out_h, out_w = info.output_hw
    # Boxes inside and partly outside the picture, so clipping is exercised.
    xy1 = rng.uniform(-20, [out_w, out_h], size=(50, 2))
    return np.concatenate((xy1, xy1 + rng.uniform(1, 200, size=(50, 2))), axis=1).astype(np.float32)


@pytest.mark.parametrize(("source_hw", "new_shape_hw", "options"), CASES)
def test_boxes_to_source_matches_ultralytics_scale_boxes(source_hw, new_shape_hw, options) -> None:
    info = letterbox_params(
        source_hw,
        new_shape_hw,
        stride=options.get("stride", 32),
        auto=options.get("auto", False),
        scale_up=options.get("scaleup", True),
        center=options.get("center", True),
    )
    boxes = _random_boxes(info)
    # The exact inverse: scale_boxes given the letterbox's own ratio and pad (as Ultralytics'
    # validator does).
    ratio_pad = ((info.scale, info.scale), (info.pad_left_px, info.pad_top_px))
    expected = ultralytics_scale_boxes(info.output_hw, boxes, source_hw, ratio_pad)
    np.testing.assert_allclose(info.boxes_to_source(boxes), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(("source_hw", "new_shape_hw"), [c[:2] for c in CASES if not c[2]])
def test_boxes_to_source_vs_ultralytics_predictor(source_hw, new_shape_hw) -> None:
    """Ultralytics' predictor calls scale_boxes without ratio_pad: it recomputes the pad from
    the unrounded resized size, which can be one letterbox pixel off the pad LetterBox used.
    We use the pad that was applied; the two agree within that one pixel."""
    info = letterbox_params(source_hw, new_shape_hw)
    boxes = _random_boxes(info)
    theirs = ultralytics_scale_boxes(info.output_hw, boxes, source_hw)
    np.testing.assert_allclose(info.boxes_to_source(boxes), theirs, atol=1.0 / info.scale + 1e-4)


def test_boxes_round_trip_and_clip() -> None:
    info = letterbox_params((480, 640), (320, 320))
    assert (info.scale, info.pad_left_px, info.pad_top_px) == (0.5, 0, 40)
    source = np.array([[100, 50, 300, 250], [0, 0, 640, 480]], np.float32)
    model = source * info.scale + np.array([0, 40, 0, 40], np.float32)
    np.testing.assert_allclose(info.boxes_to_source(model), source)
    # A box reaching into the padding is clipped to the frame.
    clipped = info.boxes_to_source(np.array([[-10, 0, 330, 300]], np.float32))
    np.testing.assert_allclose(clipped, [[0, 0, 640, 480]])
    assert info.boxes_to_source(np.empty((0, 4), np.float32)).shape == (0, 4)


def test_points_to_source() -> None:
    info = LetterboxInfo(2.0, 10, 20, 10, 20, (200, 300), (100, 150))
    points = np.array([[[30, 40], [310, 60]]], np.float32)
    np.testing.assert_allclose(info.points_to_source(points), [[[10, 10], [150, 20]]])


def test_to_model_input_is_rgb_nchw_divided_by_255() -> None:
    images = [_image(64, 96, seed) for seed in range(3)]
    blob = to_model_input(images)
    assert blob.shape == (3, 3, 64, 96) and blob.dtype == np.float32
    # What Ultralytics' predictor does: BGR->RGB, HWC->CHW, float, then /= 255.
    expected = np.stack([img[..., ::-1].transpose(2, 0, 1) for img in images]).astype(
        np.float32
    ) / np.float32(255)
    assert np.array_equal(blob, expected)


def test_to_model_input_fills_a_preallocated_buffer() -> None:
    out = np.full((4, 3, 32, 32), -1, np.float32)
    blob = to_model_input([_image(32, 32), _image(32, 32, 1)], out=out)
    assert blob.shape == (2, 3, 32, 32) and np.shares_memory(blob, out)
    assert (out[2:] == -1).all()
    with pytest.raises(ValueError, match="same size"):
        to_model_input([_image(32, 32), _image(32, 33)])
    with pytest.raises(ValueError, match="float32 array of shape"):
        to_model_input([_image(32, 32)] * 5, out=out)


@pytest.mark.parametrize(
    "options", [{}, {"center": False}, {"scale_up": False}, {"pad_value": 0, "center": False}]
)
def test_letterbox_batch_equals_letterbox_then_to_model_input(options: dict[str, object]) -> None:
    images = [_image(240, 320), _image(101, 177, 1), _image(333, 111, 2), _image(500, 700, 3)]
    out = np.full((5, 3, 320, 320), -1, np.float32)  # garbage must not survive in the bars
    blob, infos = letterbox_batch(images, 320, out=out, **options)  # type: ignore[arg-type]
    expected = [letterbox(image, 320, **options) for image in images]  # type: ignore[arg-type]
    assert blob.shape == (4, 3, 320, 320) and np.shares_memory(blob, out)
    assert np.array_equal(blob, to_model_input([padded for padded, _ in expected]))
    assert infos == [info for _, info in expected]
