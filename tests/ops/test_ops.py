"""engine.ops.cpu: letterbox (bit-exact with Ultralytics), box mapping, model-input batching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.ops.cpu import LetterboxInfo, letterbox, letterbox_batch, letterbox_params, to_model_input


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


# --------------------------------------------------------------------------- torch / kornia twin

VIDEOS = {
    "320x240": "media/traffic/highway_overpass_320x240_60fps.avi",
    "768x576": "media/people/pedestrians_768x576_10fps.avi",
    "176x144": "media/faces/carphone_176x144.mp4",
}


@pytest.fixture(scope="module")
def video_frames() -> dict[str, list[np.ndarray]]:
    """Three frames (first, 40th, 80th) of each shared video."""
    from tests.conftest import shared_path

    frames: dict[str, list[np.ndarray]] = {}
    for size, relative in VIDEOS.items():
        capture = cv2.VideoCapture(str(shared_path(relative)))
        picked = []
        for index in range(81):
            ok, image = capture.read()
            assert ok, f"{relative} ended at frame {index}"
            if index in (0, 40, 80):
                picked.append(image)
        capture.release()
        assert picked[0].shape[:2][::-1] == tuple(int(side) for side in size.split("x"))
        frames[size] = picked
    return frames


def _ultralytics_blob(images: list[np.ndarray], new_shape_hw: tuple[int, int]) -> np.ndarray:
    """Ultralytics' own LetterBox, then its predictor's BGR->RGB, HWC->CHW, /255."""
    import os
    import tempfile

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="vistream-test-yolo-"))
    augment = pytest.importorskip("ultralytics.data.augment")
    letterbox_op = augment.LetterBox(new_shape=new_shape_hw, auto=False, scaleup=True, center=True, stride=32)
    planes = [letterbox_op(image=image)[..., ::-1].transpose(2, 0, 1) for image in images]
    return np.stack(planes).astype(np.float32) / np.float32(255)


@pytest.mark.parametrize("new_shape_hw", [(320, 320), (640, 640), (384, 640), (160, 160)])
@pytest.mark.parametrize("size", sorted(VIDEOS))
def test_cpu_torch_and_ultralytics_preprocessing_agree(
    video_frames: dict[str, list[np.ndarray]], size: str, new_shape_hw: tuple[int, int]
) -> None:
    """Upscaling (176x144 -> 640), downscaling (768x576 -> 160) and no resize (320x240 -> 320)."""
    torch = pytest.importorskip("torch")
    from engine.ops.gpu import letterbox_batch_torch

    images = video_frames[size]
    reference = _ultralytics_blob(images, new_shape_hw)
    cpu, cpu_infos = letterbox_batch(images, new_shape_hw)
    tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images]  # 3×H×W, as GPU frames
    on_torch, torch_infos = letterbox_batch_torch(tensors, new_shape_hw)
    assert np.array_equal(cpu, reference)  # the CPU path is bit-exact
    assert torch_infos == cpu_infos
    difference = np.abs(on_torch.numpy() - reference)
    # kornia's bilinear vs OpenCV's 11-bit fixed point: at most one grey level, on a few pixels.
    assert difference.max() <= 1 / 255 + 1e-6
    assert (difference > 1e-6).mean() < 0.15


def test_torch_letterbox_mixed_sizes_in_one_call(video_frames: dict[str, list[np.ndarray]]) -> None:
    torch = pytest.importorskip("torch")
    from engine.ops.gpu import letterbox_batch_torch

    images = [
        video_frames["320x240"][0],
        video_frames["176x144"][0],
        video_frames["768x576"][0],
        video_frames["320x240"][1],
    ]
    mixed = [
        torch.from_numpy(images[0]).permute(2, 0, 1),
        images[1],
        images[2],
        images[3],
    ]  # tensors and arrays
    batch, infos = letterbox_batch_torch(mixed, 320)
    assert batch.shape == (4, 3, 320, 320) and batch.dtype == torch.float32
    assert infos == [letterbox_params(image.shape[:2], 320) for image in images]
    for position, image in enumerate(images):
        alone, _ = letterbox_batch_torch([image], 320)
        assert torch.equal(batch[position], alone[0])


def test_torch_letterbox_normalisation_dtype_and_out() -> None:
    torch = pytest.importorskip("torch")
    from engine.ops.gpu import letterbox_batch_torch

    images = [_image(101, 177), _image(240, 320, 1)]
    plain, _ = letterbox_batch_torch(images, 128)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised, _ = letterbox_batch_torch(images, 128, mean=mean, std=std)
    expected = (plain - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised, expected)
    half, _ = letterbox_batch_torch(images, 128, dtype=torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), plain, atol=1e-3, rtol=0)
    out = torch.full((3, 3, 128, 128), -1.0)
    view, _ = letterbox_batch_torch(images, 128, out=out)
    assert view.data_ptr() == out.data_ptr() and torch.equal(view, plain) and (out[2] == -1).all()
    with pytest.raises(ValueError, match="out must have shape"):
        letterbox_batch_torch(images, 128, out=torch.empty(1, 3, 128, 128))
    with pytest.raises(ValueError, match="at least one image"):
        letterbox_batch_torch([], 128)
    with pytest.raises(ValueError, match="3×H×W uint8 BGR tensor"):
        letterbox_batch_torch([torch.zeros(4, 4, 3, dtype=torch.uint8)], 128)


def test_box_crop_matrices_follow_the_resize_convention() -> None:
    from engine.ops.cpu import box_crop_matrices, crop_resize

    image = _image(60, 80)
    # The whole frame as a box is a plain resize.
    crop = crop_resize([image], np.array([0]), np.array([[0, 0, 80, 60]]), (40, 30))
    resized = cv2.resize(image, (40, 30), interpolation=cv2.INTER_LINEAR)
    assert np.abs(crop[0].astype(int) - resized.astype(int)).max() <= 1
    # Crop pixel j samples x1 + (j + 0.5) * w / width - 0.5.
    matrix = box_crop_matrices(np.array([[10, 20, 30, 60]]), (10, 20))[0]
    np.testing.assert_allclose(matrix @ [10 + 0.5 * 2 - 0.5, 20 + 0.5 * 2 - 0.5, 1], [0, 0], atol=1e-9)
    np.testing.assert_allclose(matrix @ [10 + 9.5 * 2 - 0.5, 20 + 19.5 * 2 - 0.5, 1], [9, 19], atol=1e-9)


def test_crop_resize_cpu_and_torch_agree(video_frames: dict[str, list[np.ndarray]]) -> None:
    torch = pytest.importorskip("torch")
    from engine.ops.cpu import crop_resize
    from engine.ops.gpu import crop_resize_torch

    frames = [video_frames["768x576"][0], video_frames["320x240"][0]]
    boxes = np.array(
        [[100.5, 50.2, 300.7, 400.1], [0, 0, 768, 576], [10, 20, 60, 80], [200.2, 100.9, 260.3, 130.4]]
    )
    index = np.array([0, 0, 1, 1])
    cpu = crop_resize(frames, index, boxes, (64, 48))
    tensors = [torch.from_numpy(frame).permute(2, 0, 1) for frame in frames]
    on_torch = crop_resize_torch(tensors, index, boxes, (64, 48))
    assert cpu.shape == (4, 48, 64, 3) and on_torch.shape == (4, 3, 48, 64) and on_torch.dtype == torch.uint8
    difference = np.abs(on_torch.permute(0, 2, 3, 1).numpy().astype(int) - cpu.astype(int))
    # OpenCV warps with 1/32-pixel fixed-point coordinates: a grey level or two.
    assert difference.max() <= 3 and difference.mean() < 0.5
