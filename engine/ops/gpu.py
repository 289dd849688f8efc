"""Batched preprocessing on a torch device (kornia): the GPU twin of :mod:`engine.ops.cpu`.

The geometry is :func:`engine.ops.cpu.letterbox_params` (Ultralytics' ``LetterBox``), so both
paths return the same :class:`~engine.ops.cpu.LetterboxInfo` and boxes map back identically.

Convention:
    - Frames are 3×H×W ``uint8`` BGR torch tensors (``Frame.image`` on a GPU) or H×W×3
      ``uint8`` BGR numpy arrays (moved to the target device; sizes may differ).
    - Model input is an N×3×H×W floating tensor, RGB, scaled to 0..1 by dividing by 255,
      optionally normalised by per-channel ``mean``/``std`` (given in 0..1 RGB units).
    - Boxes are ``xyxy`` float pixels with pixel centres on integer coordinates.

How the resize matches OpenCV: ``cv2.resize(..., INTER_LINEAR)`` samples source pixel
``(dst + 0.5) * src / dst - 0.5`` with edge clamping and no antialiasing, for upscaling and
downscaling alike; that is ``F.interpolate(mode="bilinear", align_corners=False,
antialias=False)``, which kornia's ``resize`` wraps. OpenCV then rounds to ``uint8`` (with
11-bit fixed-point weights); we round too, so both give whole grey levels and differ by at
most one level where the fixed-point weights tip a value over a .5 boundary (measured on
the shared videos in ``tests/test_ops.py``).

Frames are grouped by size: one kornia call resizes every frame of a size (a camera's
frames all share one), so a batch from several cameras costs one call per distinct size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.ops.cpu import LetterboxInfo, _shape_hw, box_crop_matrices, letterbox_params
from engine.ops.warp import warp_crops_torch

if TYPE_CHECKING:
    import torch

__all__ = ["as_chw_uint8", "crop_resize_torch", "letterbox_batch_torch", "normalize_torch"]


def as_chw_uint8(image: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """One frame as a 3×H×W uint8 BGR tensor on ``device`` (the frame's own by default).

    Args:
        image: A 3×H×W uint8 tensor, or an H×W×3 uint8 numpy array.
        device: Target device; None keeps a tensor where it is and puts arrays on the CPU.

    Raises:
        ValueError: The frame is not 3-channel uint8 in one of those layouts.
    """
    import torch

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"expected an H×W×3 uint8 BGR image, got {image.dtype} array of shape {image.shape}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"expected a 3×H×W uint8 BGR tensor, got {image.dtype} tensor of shape {tuple(image.shape)}"
            )
        tensor = image
    else:
        raise ValueError(f"expected a numpy array or a torch tensor, got {type(image).__name__}")
    if device is not None:
        tensor = tensor.to(device, non_blocking=True)
    return tensor


def _image_hw(image: Any) -> tuple[int, int]:
    shape = tuple(image.shape)
    return (int(shape[0]), int(shape[1])) if isinstance(image, np.ndarray) else (int(shape[1]), int(shape[2]))


def _target_device(images: Sequence[Any], device: torch.device | str | None) -> torch.device:
    import torch

    if device is not None:
        return torch.device(device)
    first = images[0]
    return first.device if isinstance(first, torch.Tensor) else torch.device("cpu")


def _stack_group(images: Sequence[Any], device: torch.device) -> torch.Tensor:
    """Stack same-size frames into one B×3×H×W uint8 tensor on ``device``."""
    import torch

    if all(isinstance(image, np.ndarray) for image in images):
        # One host->device copy for the whole group, then a free permute.
        stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        return stacked.to(device, non_blocking=True)
    return torch.stack([as_chw_uint8(image, device) for image in images])


def normalize_torch(
    batch: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    """Normalise an N×3×H×W 0..1 batch in place: ``(x - mean) / std`` per channel."""
    import torch

    if mean is not None:
        batch.sub_(torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1))
    if std is not None:
        batch.div_(torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1))
    return batch


def letterbox_batch_torch(
    images: Sequence[Any],
    new_shape_hw: int | Sequence[int],
    *,
    device: torch.device | str | None = None,
    scale_up: bool = True,
    center: bool = True,
    pad_value: int = 114,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[LetterboxInfo]]:
    """Letterbox frames of any sizes into one model-input batch on a torch device.

    Resize (bilinear, like ``cv2.INTER_LINEAR``) + pad with ``pad_value`` + BGR→RGB +
    HWC→CHW + /255 (+ ``mean``/``std``), equal to :func:`engine.ops.cpu.letterbox_batch` within
    one grey level (see the module docstring).

    Args:
        images: Frames (see the module convention); sizes may differ.
        new_shape_hw: Target size, or one int for a square.
        device: Where to compute; None uses the first frame's device (CPU for numpy).
        scale_up: See :func:`engine.ops.cpu.letterbox_params`.
        center: See :func:`engine.ops.cpu.letterbox_params`.
        pad_value: Grey level of the padding (0..255).
        mean: Optional per-channel RGB mean (0..1 units) subtracted after /255.
        std: Optional per-channel RGB standard deviation divided after the mean.
        dtype: Floating dtype of the batch (``torch.float16`` for FP16 models); default float32.
        out: Optional preallocated (M, 3, H, W) tensor with M >= len(images), on ``device``.

    Returns:
        The N×3×H×W batch (a view of ``out`` when given) and one geometry per frame.

    Raises:
        ValueError: No frames, a frame of the wrong layout, or an ``out`` that does not fit.
    """
    import torch
    from kornia.geometry.transform import resize

    if len(images) == 0:
        raise ValueError("letterbox_batch_torch needs at least one image")
    height, width = _shape_hw(new_shape_hw)
    target = _target_device(images, device)
    dtype = dtype or torch.float32
    count = len(images)
    if out is None:
        out = torch.empty((count, 3, height, width), dtype=dtype, device=target)
    elif out.ndim != 4 or out.shape[0] < count or tuple(out.shape[1:]) != (3, height, width):
        raise ValueError(f"out must have shape (>={count}, 3, {height}, {width}), got {tuple(out.shape)}")
    batch = out[:count]
    batch.fill_(pad_value / 255.0)

    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for position, image in enumerate(images):
        groups[_image_hw(image)].append(position)
    infos: list[LetterboxInfo | None] = [None] * count
    for source_hw, positions in groups.items():
        info = letterbox_params(source_hw, (height, width), scale_up=scale_up, center=center)
        pixels = _stack_group([images[p] for p in positions], target).float()
        if info.resized_hw != source_hw:
            pixels = resize(
                pixels, info.resized_hw, interpolation="bilinear", align_corners=False, antialias=False
            )
            # cv2 writes uint8: round half away from zero like its saturate_cast.
            pixels = pixels.add_(0.5).floor_().clamp_(0, 255)
        pixels = pixels.flip(1).div_(255.0)  # BGR -> RGB, then 0..1
        top, left = info.pad_top_px, info.pad_left_px
        rows = slice(top, top + info.resized_hw[0])
        cols = slice(left, left + info.resized_hw[1])
        if len(positions) == count:
            batch[:, :, rows, cols] = pixels
        else:
            index = torch.as_tensor(positions, device=target)
            batch[index, :, rows, cols] = pixels.to(dtype)
        for position in positions:
            infos[position] = info
    normalize_torch(batch, mean, std)
    return batch, [info for info in infos if info is not None]


def crop_resize_torch(
    images: Sequence[Any] | Any,
    image_index: np.ndarray,
    boxes_xyxy: np.ndarray,
    size_wh: tuple[int, int],
) -> torch.Tensor:
    """Cut many boxes out of many frames and resize each to one size, on the frames' device.

    One batched kornia ``warp_affine`` per frame (no per-box copy of a frame); the twin of
    :func:`engine.ops.cpu.crop_resize` (OpenCV), equal to it within a grey level or two (OpenCV
    warps with 1/32-pixel fixed-point interpolation).

    Args:
        images: Frames (see the module convention).
        image_index: (n,) int, which frame each box comes from.
        boxes_xyxy: (n, 4) boxes in frame pixels.
        size_wh: ``(width, height)`` of every crop.

    Returns:
        (n, 3, height, width) uint8 BGR crops on the frames' device.
    """

    matrices = box_crop_matrices(boxes_xyxy, size_wh)
    return warp_crops_torch(images, np.asarray(image_index), matrices, size_wh, border="replicate")
