"""Decoding of raw Ultralytics YOLO detector outputs: boxes, best class, threshold, NMS.

Convention:
    - A raw prediction for one image is a (4 + nc, anchors) float array: rows 0..3 are the
      box centre x, centre y, width and height in model-input pixels, rows 4.. are the
      per-class scores (already sigmoid-ed; no objectness row), as exported by Ultralytics
      for YOLOv8/YOLO11 detectors without embedded NMS.
    - A batch of raw predictions is (N, 4 + nc, anchors), as the model outputs it.
    - Decoded boxes are ``xyxy`` float32 in the same model-input pixels, sorted by
      decreasing confidence.

A whole batch is decoded with a fixed number of numpy calls (one NMS call for all frames,
keyed by frame and class), so the cost per frame shrinks as batches grow.
:func:`decode_batch_torch` is the same on a torch device: threshold, class pick and
``torchvision.ops.batched_nms`` stay on the GPU, and only the kept boxes (a few hundred
numbers) come back to the CPU, in one transfer.

The semantics follow Ultralytics' ``non_max_suppression`` (``ultralytics/utils/nms.py``)
for ``predict``: one label per box (its best class), ``score > confidence``, a class
filter applied after picking the best class, at most ``max_candidates`` boxes into a
per-class NMS that suppresses ``IoU > iou``, then the first ``max_detections``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

#: ``(xyxy (k, 4) float32, confidence (k,) float32, class_id (k,) int64)`` for one image.
Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]

__all__ = [
    "Decoded",
    "box_iou",
    "decode_batch",
    "decode_batch_torch",
    "decode_predictions",
    "match_detections",
    "nms",
    "nms_numpy",
]

#: Boxes fed to NMS at most, highest scores first (Ultralytics' ``max_nms``).
MAX_CANDIDATES = 30000

_HAS_CV2_BATCHED_NMS = hasattr(cv2, "dnn") and hasattr(cv2.dnn, "NMSBoxesBatched")


def nms_numpy(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy class-agnostic NMS in numpy (fallback when OpenCV's DNN module is absent).

    Args:
        boxes_xyxy: (n, 4) boxes.
        scores: (n,) scores.
        iou_threshold: A box is dropped when its IoU with a kept box is above this.

    Returns:
        Indices of the kept boxes, by decreasing score.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    # Greedy NMS is sequential by nature; each step is vectorized over the remaining boxes.
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        height = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = width * height
        union = areas[best] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def nms(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    *,
    iou_threshold: float,
    agnostic: bool = False,
) -> np.ndarray:
    """Per-class (or class-agnostic) non-maximum suppression.

    Uses OpenCV's ``cv2.dnn.NMSBoxesBatched``/``NMSBoxes`` (C++) when available, else
    :func:`nms_numpy` with boxes offset per class so classes never suppress each other.

    Args:
        boxes_xyxy: (n, 4) boxes.
        scores: (n,) scores.
        class_ids: (n,) integer classes.
        iou_threshold: A box is dropped when its IoU with a kept box of the same class
            (any class when ``agnostic``) is above this.
        agnostic: Suppress across classes.

    Returns:
        Indices of the kept boxes, by decreasing score.
    """
    count = len(scores)
    if count == 0:
        return np.empty(0, dtype=np.intp)
    # Moving every box so the smallest coordinate is 0 leaves IoUs unchanged and makes the
    # per-class offsets (class_id * (max_coordinate + 1), as OpenCV and Ultralytics do) safe
    # for boxes that stick out left of or above the picture.
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    if boxes.min() < 0:
        boxes = boxes - boxes.min()
    scores32 = np.asarray(scores, dtype=np.float32)
    lowest = float(scores32.min())
    # OpenCV keeps only scores above a non-negative threshold; rare non-positive scores
    # take the numpy path so no box is silently dropped here.
    if not _HAS_CV2_BATCHED_NMS or lowest <= 0.0:
        if agnostic:
            return nms_numpy(boxes, scores32, iou_threshold)
        # Shift each class into its own region so boxes of different classes never overlap
        # (in float64: offsets reach images * classes * picture size).
        offsets = np.asarray(class_ids, dtype=np.float64) * (float(boxes.max()) + 1.0)
        return nms_numpy(boxes + offsets[:, None], scores32, iou_threshold)
    xywh = np.empty_like(boxes)
    xywh[:, :2] = boxes[:, :2]
    np.subtract(boxes[:, 2:], boxes[:, :2], out=xywh[:, 2:])
    # A score_threshold just below every score: thresholding is the caller's job.
    floor = float(np.nextafter(np.float32(lowest), np.float32(0)))
    if agnostic:
        # OpenCV's stubs name sequences, but numpy arrays are taken without conversion.
        kept = cv2.dnn.NMSBoxes(xywh, scores32, floor, float(iou_threshold))  # type: ignore[arg-type]
    else:
        ids = np.asarray(class_ids, dtype=np.int32)
        kept = cv2.dnn.NMSBoxesBatched(
            xywh,  # type: ignore[arg-type]
            scores32,  # type: ignore[arg-type]
            ids,  # type: ignore[arg-type]
            floor,
            float(iou_threshold),
        )
    return np.asarray(kept, dtype=np.intp).reshape(-1)


def _candidates(
    predictions: np.ndarray, confidence: float, allowed_classes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image index, (k, 4 + nc) columns, class id, confidence) of boxes above threshold."""
    best_score = predictions[:, 4:].max(axis=1)  # (N, anchors)
    image_of, anchor = np.nonzero(best_score > confidence)
    # One gather of the candidate columns serves both the class argmax and the boxes.
    columns = predictions[image_of, :, anchor]  # (k, 4 + nc)
    class_id = columns[:, 4:].argmax(axis=1)
    conf = best_score[image_of, anchor]
    if allowed_classes is not None:
        allowed = allowed_classes[class_id]
        return image_of[allowed], columns[allowed], class_id[allowed], conf[allowed]
    return image_of, columns, class_id, conf


def decode_batch(
    predictions: np.ndarray | Sequence[np.ndarray],
    *,
    confidence: float,
    iou: float,
    max_detections: int,
    agnostic: bool = False,
    allowed_classes: np.ndarray | None = None,
    max_candidates: int = MAX_CANDIDATES,
) -> list[Decoded]:
    """Turn a batch of raw YOLO outputs into boxes, confidences and classes per image.

    Args:
        predictions: (N, 4 + nc, anchors) raw outputs (see the module convention), or a
            sequence of such arrays holding consecutive images (the outputs of a fixed-batch
            model run chunk by chunk; they are not concatenated).
        confidence: Keep boxes whose best class score is above this.
        iou: NMS IoU threshold.
        max_detections: Keep at most this many boxes per image, highest confidence first.
        agnostic: Class-agnostic NMS.
        allowed_classes: Optional boolean (nc,) mask of classes to keep; a box whose best
            class is not allowed is dropped (it is not relabelled with another class).
        max_candidates: At most this many boxes per image, highest scores first, go into NMS.

    Returns:
        One ``(xyxy, confidence, class_id)`` per image: (k, 4) float32 boxes in model-input
        pixels, (k,) float32 and (k,) int64, sorted by decreasing confidence.
    """
    chunks = [predictions] if isinstance(predictions, np.ndarray) else list(predictions)
    count = sum(len(chunk) for chunk in chunks)
    class_count = chunks[0].shape[1] - 4
    parts = []
    first_image = 0
    for chunk in chunks:
        image_of, columns, class_id, conf = _candidates(chunk, confidence, allowed_classes)
        parts.append((image_of + first_image, columns, class_id, conf))
        first_image += len(chunk)
    if len(parts) == 1:
        image_of, columns, class_id, conf = parts[0]
    else:
        image_of, columns, class_id, conf = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    anchors = chunks[0].shape[2]
    if anchors > max_candidates and np.bincount(image_of, minlength=count).max(initial=0) > max_candidates:
        keep = _top_per_image(image_of, conf, max_candidates)
        image_of, columns, class_id, conf = image_of[keep], columns[keep], class_id[keep], conf[keep]

    boxes = np.empty((conf.size, 4), np.float32)
    half_wh = columns[:, 2:4] / 2
    np.subtract(columns[:, :2], half_wh, out=boxes[:, :2])
    np.add(columns[:, :2], half_wh, out=boxes[:, 2:])

    # One NMS for the whole batch: boxes only compete within their image (and class).
    groups = image_of if agnostic else image_of * class_count + class_id
    kept = nms(boxes, conf, groups, iou_threshold=iou)
    if count == 1:
        ends = [kept.size]
    else:
        # `kept` is by decreasing score; a stable sort by image keeps that order per image.
        kept = kept[np.argsort(image_of[kept], kind="stable")]
        ends = np.cumsum(np.bincount(image_of[kept], minlength=count)).tolist()
    conf = conf.astype(np.float32, copy=False)
    class_id = class_id.astype(np.int64, copy=False)
    results: list[Decoded] = []
    start = 0
    for end in ends:
        mine = kept[start : min(end, start + max_detections)]
        results.append((boxes[mine], conf[mine], class_id[mine]))
        start = end
    return results


def _top_per_image(image_of: np.ndarray, conf: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` highest-confidence candidates of each image."""
    order = np.lexsort((-conf, image_of))  # by image, then by decreasing confidence
    sorted_images = image_of[order]
    first_of_image = np.searchsorted(sorted_images, sorted_images, side="left")
    rank = np.arange(order.size) - first_of_image
    return np.sort(order[rank < limit])


def decode_predictions(
    prediction: np.ndarray,
    *,
    confidence: float,
    iou: float,
    max_detections: int,
    agnostic: bool = False,
    allowed_classes: np.ndarray | None = None,
    max_candidates: int = MAX_CANDIDATES,
) -> Decoded:
    """Decode one image's raw (4 + nc, anchors) output; see :func:`decode_batch`."""
    return decode_batch(
        prediction[None],
        confidence=confidence,
        iou=iou,
        max_detections=max_detections,
        agnostic=agnostic,
        allowed_classes=allowed_classes,
        max_candidates=max_candidates,
    )[0]


def decode_batch_torch(
    predictions: torch.Tensor | Sequence[torch.Tensor],
    *,
    confidence: float,
    iou: float,
    max_detections: int,
    agnostic: bool = False,
    allowed_classes: np.ndarray | None = None,
    max_candidates: int = MAX_CANDIDATES,
) -> list[Decoded]:
    """:func:`decode_batch` on the predictions' torch device, with ``batched_nms``.

    Same arguments and results as :func:`decode_batch` (numpy arrays on the CPU); the
    predictions are (N, 4 + nc, anchors) tensors (float16 outputs are decoded in float32).
    """
    import torch
    from torchvision.ops import batched_nms

    chunks = [predictions] if isinstance(predictions, torch.Tensor) else list(predictions)
    raw = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    raw = raw.float()
    count, class_count = raw.shape[0], raw.shape[1] - 4
    scores, class_id = raw[:, 4:].max(dim=1)  # (N, anchors)
    keep_mask = scores > confidence
    if allowed_classes is not None:
        allowed = torch.as_tensor(np.asarray(allowed_classes, dtype=bool), device=raw.device)
        keep_mask &= allowed[class_id]
    image_of, anchor = keep_mask.nonzero(as_tuple=True)
    conf = scores[image_of, anchor]
    class_id = class_id[image_of, anchor]
    if raw.shape[2] > max_candidates:
        top = _top_per_image_torch(image_of, conf, max_candidates)
        image_of, anchor, conf, class_id = image_of[top], anchor[top], conf[top], class_id[top]
    cxcywh = raw[image_of, :4, anchor]  # (k, 4)
    half_wh = cxcywh[:, 2:] / 2
    boxes = torch.cat((cxcywh[:, :2] - half_wh, cxcywh[:, :2] + half_wh), dim=1)
    groups = image_of if agnostic else image_of * class_count + class_id
    kept = batched_nms(boxes, conf, groups, iou)  # by decreasing score
    # A stable sort by image keeps each image's boxes by decreasing score.
    kept = kept[torch.sort(image_of[kept], stable=True).indices]
    kept_images = image_of[kept]
    rank = torch.arange(kept.numel(), device=raw.device) - torch.searchsorted(kept_images, kept_images)
    kept = kept[rank < max_detections]
    # One device->host transfer for everything that is kept.
    packed = torch.cat(
        (boxes[kept], conf[kept, None], class_id[kept, None].float(), image_of[kept, None].float()), 1
    )
    host = packed.cpu().numpy()
    ends = np.searchsorted(host[:, 6], np.arange(count), side="right")
    results: list[Decoded] = []
    start = 0
    for end in ends.tolist():
        rows = host[start:end]
        results.append(
            (
                np.ascontiguousarray(rows[:, :4], dtype=np.float32),
                np.ascontiguousarray(rows[:, 4], dtype=np.float32),
                rows[:, 5].astype(np.int64),
            )
        )
        start = end
    return results


def _top_per_image_torch(image_of: Any, conf: Any, limit: int) -> Any:
    """Indices of at most ``limit`` highest-confidence candidates of each image (torch)."""
    import torch

    order = torch.sort(conf, descending=True, stable=True).indices
    order = order[torch.sort(image_of[order], stable=True).indices]  # by image, then by score
    sorted_images = image_of[order]
    rank = torch.arange(order.numel(), device=conf.device) - torch.searchsorted(sorted_images, sorted_images)
    return torch.sort(order[rank < limit]).values


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(k, m) IoU matrix of two sets of xyxy boxes (float64; 0 where a union is empty)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (
        b[..., 3] - b[..., 1]
    )
    union = union - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(
    reference: Decoded, candidate: Decoded, *, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of same-class detections, best reference boxes first.

    Each reference detection (by decreasing confidence) takes the unmatched candidate of
    its class with the highest IoU, when that IoU is at least ``iou_threshold``.

    Returns:
        ``(reference indices, candidate indices, IoUs)`` of the matched pairs.
    """
    ref_boxes, ref_conf, ref_class = reference
    cand_boxes, _, cand_class = candidate
    iou = box_iou(ref_boxes, cand_boxes)
    iou[np.asarray(ref_class)[:, None] != np.asarray(cand_class)[None, :]] = -1.0
    taken = np.zeros(len(cand_boxes), dtype=bool)
    pairs: list[tuple[int, int, float]] = []
    # A comparison tool, not a hot path: k <= max_detections rows.
    for row in np.argsort(-np.asarray(ref_conf), kind="stable"):
        if not len(cand_boxes):
            break
        scores = np.where(taken, -1.0, iou[row])
        best = int(scores.argmax())
        if scores[best] >= iou_threshold:
            taken[best] = True
            pairs.append((int(row), best, float(scores[best])))
    if not pairs:
        return np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0, np.float64)
    rows, cols, ious = zip(*pairs, strict=True)
    return np.asarray(rows, np.intp), np.asarray(cols, np.intp), np.asarray(ious, np.float64)
