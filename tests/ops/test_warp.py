"""engine.ops.warp: eye similarity transforms (vectorised) and the OpenCV / kornia crop paths."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.ops.warp import (
    FaceTemplate,
    box_transforms,
    similarity_from_eyes,
    transform_points,
    warp_crops_cv2,
    warp_crops_torch,
)


def _random_eyes(rng: np.random.Generator, count: int) -> np.ndarray:
    right = rng.uniform(50, 400, size=(count, 2))
    angle = rng.uniform(-np.pi / 3, np.pi / 3, size=count)
    distance = rng.uniform(10, 120, size=count)
    left = right + np.stack([np.cos(angle), np.sin(angle)], axis=1) * distance[:, None]
    return np.stack([right, left], axis=1)


@pytest.mark.parametrize("margin", [0.0, 0.25])
def test_similarity_puts_every_face_eyes_on_the_template(margin: float) -> None:
    rng = np.random.default_rng(0)
    eyes = _random_eyes(rng, 50)
    template = FaceTemplate(width=64, height=48, margin=margin)
    matrices = similarity_from_eyes(eyes, template)
    mapped = transform_points(matrices, eyes)
    np.testing.assert_allclose(mapped, np.broadcast_to(template.eye_points_px(), mapped.shape), atol=1e-9)
    # A similarity: rotation and uniform scale, no shear.
    a, b = matrices[:, 0, 0], matrices[:, 1, 0]
    np.testing.assert_allclose(matrices[:, 1, 1], a)
    np.testing.assert_allclose(matrices[:, 0, 1], -b)


def test_margin_shrinks_the_face_towards_the_centre() -> None:
    tight = FaceTemplate(width=64, height=64).eye_points_px()
    loose = FaceTemplate(width=64, height=64, margin=0.5).eye_points_px()
    assert np.ptp(loose[:, 0]) == pytest.approx(np.ptp(tight[:, 0]) / 2)
    assert loose[:, 1].mean() > tight[:, 1].mean()  # eyes move towards the centre row 31.5


def test_coincident_eyes_give_nan_matrices_not_an_error() -> None:
    eyes = np.array([[[10.0, 10.0], [10.0, 10.0]], [[10.0, 10.0], [30.0, 10.0]]])
    matrices = similarity_from_eyes(eyes, FaceTemplate())
    assert np.isnan(matrices[0]).all() and np.isfinite(matrices[1]).all()


def test_box_transform_maps_the_box_square_onto_the_crop() -> None:
    matrices = box_transforms(np.array([[100.0, 50.0, 140.0, 130.0]]), FaceTemplate(width=33, height=33))
    corners = transform_points(matrices, np.array([[[80.0, 50.0], [160.0, 130.0]]]))
    np.testing.assert_allclose(corners[0], [[0, 0], [32, 32]], atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 1}, "at least 2x2"),
        ({"margin": -0.1}, "margin"),
        ({"right_eye": (0.7, 0.3), "left_eye": (0.3, 0.3)}, "right of right_eye"),
        ({"right_eye": (0.3, 1.3)}, "fractions"),
    ],
)
def test_template_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FaceTemplate(**kwargs)  # type: ignore[arg-type]


def test_cv2_crop_moves_a_known_pixel_where_the_matrix_says() -> None:
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[117:124, 207:214] = (255, 128, 64)  # a 7x7 square centred on (210, 120)
    eyes = np.array([[[190.0, 110.0], [230.0, 130.0]]])
    template = FaceTemplate(width=64, height=64)
    matrices = similarity_from_eyes(eyes, template)
    crop = warp_crops_cv2([image], np.array([0]), matrices, template.size)[0]
    x, y = transform_points(matrices, np.array([[[210.0, 120.0]]]))[0, 0]
    weights = crop[..., 0].astype(np.float64)
    rows, cols = np.indices(weights.shape)
    centroid = (cols * weights).sum() / weights.sum(), (rows * weights).sum() / weights.sum()
    assert centroid == pytest.approx((x, y), abs=0.3)


@pytest.mark.parametrize("border", ["replicate", "constant"])
def test_kornia_and_opencv_give_the_same_crops(border: str) -> None:
    pytest.importorskip("kornia")
    rng = np.random.default_rng(1)
    # Smooth random images (bilinear sampling of noise amplifies fixed-point differences).
    import cv2

    images = [
        cv2.GaussianBlur(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), (0, 0), 2.0)
        for h, w in ((240, 320), (180, 200))
    ]
    eyes = _random_eyes(rng, 12)
    eyes[:, :, 0] *= 0.5  # keep most faces inside the smaller frame; some cross the border
    image_index = rng.integers(0, 2, size=12)
    template = FaceTemplate(width=48, height=56, margin=0.2)
    matrices = similarity_from_eyes(eyes, template)
    expected = warp_crops_cv2(images, image_index, matrices, template.size, border=border)  # type: ignore[arg-type]
    crops = warp_crops_torch(images, image_index, matrices, template.size, border=border)  # type: ignore[arg-type]
    got = crops.permute(0, 2, 3, 1).numpy()
    difference = np.abs(got.astype(int) - expected.astype(int))
    # OpenCV interpolates with 1/32-pixel fixed-point weights: a grey level or two at most.
    assert difference.max() <= 2
    assert difference.mean() < 0.1


def test_torch_frames_in_chw_layout_are_accepted() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("kornia")
    image = np.random.default_rng(2).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    matrices = box_transforms(np.array([[10.0, 10.0, 50.0, 50.0]]), FaceTemplate(width=20, height=20))
    crops = warp_crops_torch([torch.from_numpy(image).permute(2, 0, 1)], np.array([0]), matrices, (20, 20))
    assert crops.shape == (1, 3, 20, 20) and crops.dtype == torch.uint8
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        warp_crops_torch([torch.zeros(4, 10, 10)], np.array([0]), matrices, (20, 20))
