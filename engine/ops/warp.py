"""Eye-based face alignment: similarity transforms and batched affine warps of many crops.

One similarity transform per face maps frame pixels to crop pixels so that the two eye
centres land on fixed template positions (eyes horizontal, fixed inter-ocular distance).
The transforms are computed for all n faces at once; the crops are cut from many frames at
once, on the CPU with OpenCV (:func:`warp_crops_cv2`) or on a torch device with kornia's
batched ``warp_affine`` (:func:`warp_crops_torch`). Both paths sample the same way (bilinear,
pixel centres on integer coordinates, replicated or zero border) and give the same crops up
to OpenCV's 1/32-pixel fixed-point interpolation (a grey level or two).

Convention:
    - Points are ``(x, y)`` float pixels with pixel centres on integer coordinates (OpenCV's
      and kornia's ``align_corners=True`` convention).
    - ``eyes`` is ``(n, 2, 2)``: ``eyes[:, 0]`` is the subject's **right** eye (on the image's
      left in an upright, frontal face), ``eyes[:, 1]`` the left eye — YuNet's landmark order.
    - Matrices are ``(n, 2, 3)`` float64 and map source (frame) pixels to destination (crop)
      pixels: ``crop_xy = M[:, :, :2] @ frame_xy + M[:, :, 2]``.
    - CPU crops are ``(n, h, w, 3)`` uint8 BGR numpy arrays; torch crops are ``(n, 3, h, w)``
      uint8 tensors on the frames' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Border handling shared by both warp paths: ``replicate`` repeats the edge pixel (OpenCV
#: ``BORDER_REPLICATE`` = kornia ``"border"``), ``constant`` fills with black.
Border = Literal["replicate", "constant"]

_CV2_BORDER = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
_KORNIA_PADDING = {"replicate": "border", "constant": "zeros"}


@dataclass(frozen=True)
class FaceTemplate:
    """Where the eyes go in an aligned crop, and how large the crop is.

    Eye positions are fractions of a *tight* face crop; ``margin`` widens the crop by that
    fraction of its size on every side (the face shrinks towards the centre), so one template
    serves classifiers trained on tight or on loose crops.

    Attributes:
        width: Crop width in pixels.
        height: Crop height in pixels.
        right_eye: ``(x, y)`` of the subject's right eye in the tight crop, as fractions.
        left_eye: ``(x, y)`` of the subject's left eye in the tight crop, as fractions.
        margin: Extra border on each side, as a fraction of the tight crop (0 = tight).
    """

    width: int = 64
    height: int = 64
    right_eye: tuple[float, float] = (0.3, 0.34)
    left_eye: tuple[float, float] = (0.7, 0.34)
    margin: float = 0.0

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2:
            raise ConfigError(f"crop size must be at least 2x2 pixels, got {self.width}x{self.height}")
        if self.margin < 0 or self.margin > 2:
            raise ConfigError(f"margin must be in [0, 2], got {self.margin}")
        if not self.left_eye[0] > self.right_eye[0]:
            raise ConfigError(
                f"template left_eye x ({self.left_eye[0]}) must be right of right_eye x "
                f"({self.right_eye[0]}): the subject's right eye appears on the image's left"
            )
        for name, point in (("right_eye", self.right_eye), ("left_eye", self.left_eye)):
            if not all(0.0 <= value <= 1.0 for value in point):
                raise ConfigError(f"template {name} must be fractions in [0, 1], got {point}")

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the crop in pixels."""
        return self.width, self.height

    def eye_points_px(self) -> np.ndarray:
        """Return the ``(2, 2)`` crop-pixel positions of the right and left eye."""
        tight = np.array([self.right_eye, self.left_eye], dtype=np.float64)
        scale = np.array([self.width - 1, self.height - 1], dtype=np.float64)
        return (tight + self.margin) / (1.0 + 2.0 * self.margin) * scale


def similarity_from_eyes(eyes: np.ndarray, template: FaceTemplate) -> np.ndarray:
    """Compute the similarity transforms that put each face's eyes on the template's eyes.

    A similarity (rotation, uniform scale, translation) is the complex-linear map
    ``z -> a z + t``; with the eye vectors as complex numbers ``a = dst_vec / src_vec``,
    which is the whole computation, vectorised over the n faces.

    Args:
        eyes: ``(n, 2, 2)`` right/left eye centres in frame pixels (see module convention).
        template: Destination eye positions and crop size.

    Returns:
        ``(n, 2, 3)`` float64 frame→crop matrices. Faces whose two eyes coincide get a
        matrix of NaN (callers mark them as not aligned).

    Raises:
        ValueError: ``eyes`` is not ``(n, 2, 2)``.
    """
    eyes = np.asarray(eyes, dtype=np.float64)
    if eyes.ndim != 3 or eyes.shape[1:] != (2, 2):
        raise ValueError(f"eyes must have shape (n, 2, 2), got {eyes.shape}")
    destination = template.eye_points_px()
    src_right = eyes[:, 0, 0] + 1j * eyes[:, 0, 1]
    src_vector = (eyes[:, 1, 0] + 1j * eyes[:, 1, 1]) - src_right
    dst_right = complex(destination[0, 0], destination[0, 1])
    dst_vector = complex(*(destination[1] - destination[0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        rotation_scale = np.where(np.abs(src_vector) > 0, dst_vector / src_vector, complex(np.nan, np.nan))
    translation = dst_right - rotation_scale * src_right
    a, b = rotation_scale.real, rotation_scale.imag
    matrices = np.empty((len(eyes), 2, 3), dtype=np.float64)
    matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2] = a, -b, translation.real
    matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2] = b, a, translation.imag
    return matrices


def box_transforms(xyxy: np.ndarray, template: FaceTemplate) -> np.ndarray:
    """Compute axis-aligned crop transforms from face boxes (no rotation: the unaligned baseline).

    The square around each box centre, with the box's longer side, widened by the
    template's margin, is scaled onto the crop; the eye positions of the template are not used.

    Args:
        xyxy: ``(n, 4)`` boxes in frame pixels.
        template: Crop size and margin.

    Returns:
        ``(n, 2, 3)`` float64 frame→crop matrices (NaN rows for empty boxes).
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2.0
    side = np.max(xyxy[:, 2:] - xyxy[:, :2], axis=1) * (1.0 + 2.0 * template.margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale_x = np.where(side > 0, (template.width - 1) / side, np.nan)
        scale_y = np.where(side > 0, (template.height - 1) / side, np.nan)
    matrices = np.zeros((len(xyxy), 2, 3), dtype=np.float64)
    matrices[:, 0, 0], matrices[:, 1, 1] = scale_x, scale_y
    matrices[:, 0, 2] = (template.width - 1) / 2.0 - scale_x * centre[:, 0]
    matrices[:, 1, 2] = (template.height - 1) / 2.0 - scale_y * centre[:, 1]
    return matrices


def transform_points(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``(n, 2, 3)`` affine matrices to ``(n, k, 2)`` points (one matrix per row)."""
    matrices = np.asarray(matrices, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return np.einsum("nij,nkj->nki", matrices[:, :, :2], points) + matrices[:, None, :, 2]


def warp_crops_cv2(
    images: Sequence[np.ndarray],
    image_index: np.ndarray,
    matrices: np.ndarray,
    size: tuple[int, int],
    *,
    border: Border = "replicate",
) -> np.ndarray:
    """Cut n aligned crops out of several frames on the CPU with OpenCV.

    Args:
        images: Frames, each ``(H, W, 3)`` uint8 BGR (sizes may differ).
        image_index: ``(n,)`` int, which frame each crop comes from.
        matrices: ``(n, 2, 3)`` frame→crop matrices.
        size: ``(width, height)`` of the crops.
        border: How pixels outside the frame are filled.

    Returns:
        ``(n, height, width, 3)`` uint8 crops.
    """
    width, height = size
    count = len(matrices)
    crops = np.empty((count, height, width, 3), dtype=np.uint8)
    flags = cv2.INTER_LINEAR
    # cv2.warpAffine has no batched form; one C call per crop is the cheapest CPU path and
    # it never copies a whole frame.
    for row in range(count):
        cv2.warpAffine(
            images[int(image_index[row])],
            matrices[row],
            (width, height),
            dst=crops[row],
            flags=flags,
            borderMode=_CV2_BORDER[border],
            borderValue=(0, 0, 0),
        )
    return crops


def warp_crops_torch(
    images: Sequence[Any] | Any,
    image_index: np.ndarray,
    matrices: np.ndarray,
    size: tuple[int, int],
    *,
    border: Border = "replicate",
) -> torch.Tensor:
    """Cut n aligned crops out of several frames on their torch device with kornia.

    All crops of one frame come from one batched ``kornia.geometry.transform.warp_affine``
    call on a stride-0 expanded view of that frame, so no frame is copied per face.

    Args:
        images: Frames as ``(3, H, W)`` uint8 tensors (a list, or a ``(B, 3, H, W)`` tensor),
            or ``(H, W, 3)`` uint8 numpy arrays (moved to CPU tensors; for tests).
        image_index: ``(n,)`` int, which frame each crop comes from.
        matrices: ``(n, 2, 3)`` frame→crop matrices.
        size: ``(width, height)`` of the crops.
        border: How pixels outside the frame are filled.

    Returns:
        ``(n, 3, height, width)`` uint8 tensor on the frames' device.
    """
    import torch
    from kornia.geometry.transform import warp_affine

    width, height = size
    frames = [_as_chw_tensor(image) for image in images]
    image_index = np.asarray(image_index, dtype=np.int64)
    device = frames[0].device if frames else torch.device("cpu")
    crops = torch.empty((len(matrices), 3, height, width), dtype=torch.uint8, device=device)
    all_matrices = torch.as_tensor(np.asarray(matrices), dtype=torch.float32, device=device)
    for frame_position in np.unique(image_index):
        rows = np.flatnonzero(image_index == frame_position)
        frame = frames[int(frame_position)].to(torch.float32)
        source = frame.unsqueeze(0).expand(len(rows), -1, -1, -1)
        rows_tensor = torch.as_tensor(rows, device=device)
        warped = warp_affine(
            source,
            all_matrices[rows_tensor],
            (height, width),
            mode="bilinear",
            padding_mode=_KORNIA_PADDING[border],
            align_corners=True,
        )
        # Round like OpenCV's saturate_cast instead of truncating towards zero.
        crops[rows_tensor] = warped.round_().clamp_(0, 255).to(torch.uint8)
    return crops


def _as_chw_tensor(image: Any) -> torch.Tensor:
    import torch

    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"torch frames must be (3, H, W), got {tuple(image.shape)}")
    return image  # type: ignore[no-any-return]
