"""Do two backends give the same detections? The check behind ``vistream export``.

Both models see the same frames through the same letterbox (:func:`engine.ops.cpu.letterbox_batch`).
Two comparisons are made, because each misses what the other sees:

- **Raw outputs, anchor by anchor** (both models share the anchor grid): the IoU of each
  anchor's box and the largest difference of any class score. This holds even when there
  are no confident detections — the case of a model built from a ``.yaml`` with random
  weights, whose scores all sit near 1e-4 — so an export that breaks the box decoding or
  the class scores fails here first.
- **Detections** after thresholding and NMS (the decode of the ``detect`` stage): every
  reference detection must have a candidate of the same class with IoU ≥ ``iou_min`` and a
  confidence within ``confidence_abs``; a detection left unmatched is tolerated only when
  its confidence is within ``confidence_abs`` of the threshold (it may fall on either side).

Tolerances per precision (:data:`TOLERANCES`): FP32 is the issue's bar (IoU ≥ 0.95,
confidence within 0.01); FP16 and INT8 are looser by our choice, INT8 being the roughest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine.backends.base import InferenceBackend
from engine.errors import ModelError
from engine.ops.cpu import letterbox_batch, letterbox_params
from plugins.yolo_decode import box_iou, decode_batch, match_detections


@dataclass(frozen=True)
class Tolerance:
    """How close an exported model must stay to its source.

    Attributes:
        iou_min: Smallest IoU of a matched box (raw anchors and detections alike).
        confidence_abs: Largest absolute difference of a confidence / class score.
    """

    iou_min: float
    confidence_abs: float


TOLERANCES = {
    "fp32": Tolerance(iou_min=0.95, confidence_abs=0.01),
    "fp16": Tolerance(iou_min=0.90, confidence_abs=0.02),
    "int8": Tolerance(iou_min=0.80, confidence_abs=0.10),
}


@dataclass
class ParityReport:
    """The outcome of :func:`compare_backends`; ``passed`` when ``problems`` is empty."""

    frames: int
    precision: str
    tolerance: Tolerance
    confidence: float
    raw_anchors_compared: int = 0
    raw_min_iou: float = 1.0
    raw_max_score_diff: float = 0.0
    raw_max_box_diff_px: float = 0.0
    reference_detections: int = 0
    candidate_detections: int = 0
    matched: int = 0
    min_matched_iou: float | None = None
    max_confidence_diff: float | None = None
    class_mismatches: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no tolerance was exceeded."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        """A few human-readable lines."""
        tol = self.tolerance
        lines = [
            f"parity ({self.precision}, {self.frames} frames): {'PASSED' if self.passed else 'FAILED'}",
            f"  raw outputs: {self.raw_anchors_compared} anchors, min box IoU {self.raw_min_iou:.4f} "
            f"(>= {tol.iou_min}), max score diff {self.raw_max_score_diff:.2e} (<= {tol.confidence_abs}), "
            f"max box diff {self.raw_max_box_diff_px:.3f} px",
            f"  detections @ conf {self.confidence}: source {self.reference_detections}, exported "
            f"{self.candidate_detections}, matched {self.matched}"
            + (
                f", min IoU {self.min_matched_iou:.4f}, max conf diff {self.max_confidence_diff:.2e}"
                if self.matched
                else ""
            )
            + f", class mismatches {self.class_mismatches}",
        ]
        if self.reference_detections == 0:
            lines.append(
                "  (no detections above the threshold: random weights? the raw comparison carries the check)"
            )
        lines += [f"  - {problem}" for problem in self.problems[:10]]
        if len(self.problems) > 10:
            lines.append(f"  ... and {len(self.problems) - 10} more")
        return "\n".join(lines)


def raw_outputs(
    backend: InferenceBackend, frames: Sequence[np.ndarray], imgsz: tuple[int, int]
) -> np.ndarray:
    """Letterbox ``frames`` and run them through ``backend``: (N, 4 + nc, anchors) float64.

    A fixed-batch model is run in chunks of its batch (the last chunk padded with copies).
    """
    spec = backend.inputs[0]
    blob, _ = letterbox_batch(list(frames), imgsz)
    fixed = spec.shape[0]
    dtype = np.dtype(spec.dtype)
    chunk = fixed or len(blob)
    outputs = []
    for start in range(0, len(blob), chunk):
        part = blob[start : start + chunk]
        if len(part) < chunk:
            part = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), axis=0)])
        output = backend.run({spec.name: part.astype(dtype, copy=False)})[backend.outputs[0].name]
        output = output.float().cpu().numpy() if not isinstance(output, np.ndarray) else output
        outputs.append(np.asarray(output, dtype=np.float64)[: len(blob) - start])
    return np.concatenate(outputs)


def _xyxy(raw: np.ndarray) -> np.ndarray:
    """(N, anchors, 4) xyxy boxes from the cx, cy, w, h rows of raw outputs."""
    cx, cy, w, h = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    return np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=-1)


def _compare_raw(
    report: ParityReport, reference: np.ndarray, candidate: np.ndarray, top_anchors: int
) -> None:
    tol = report.tolerance
    if reference.shape != candidate.shape:
        report.problems.append(
            f"raw output shapes differ: source {reference.shape}, exported {candidate.shape}"
        )
        return
    score_diff = np.abs(reference[:, 4:] - candidate[:, 4:])
    report.raw_max_score_diff = float(score_diff.max(initial=0.0))
    # The anchors that matter are the source's best ones; ties among near-equal random
    # scores do not matter here because anchors are compared one to one.
    count = min(top_anchors, reference.shape[2])
    best = np.argsort(-reference[:, 4:].max(axis=1), axis=1, kind="stable")[:, :count]  # (N, count)
    ref_boxes = np.take_along_axis(_xyxy(reference), best[..., None], axis=1)
    cand_boxes = np.take_along_axis(_xyxy(candidate), best[..., None], axis=1)
    inter_wh = np.clip(
        np.minimum(ref_boxes[..., 2:], cand_boxes[..., 2:])
        - np.maximum(ref_boxes[..., :2], cand_boxes[..., :2]),
        0,
        None,
    )
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    areas = [np.prod(b[..., 2:] - b[..., :2], axis=-1) for b in (ref_boxes, cand_boxes)]
    union = areas[0] + areas[1] - inter
    iou = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    report.raw_anchors_compared = int(iou.size)
    report.raw_min_iou = float(iou.min(initial=1.0))
    report.raw_max_box_diff_px = float(np.abs(ref_boxes - cand_boxes).max(initial=0.0))
    if report.raw_min_iou < tol.iou_min:
        frame, anchor = np.unravel_index(int(iou.argmin()), iou.shape)
        report.problems.append(
            f"frame {frame}: anchor {int(best[frame, anchor])} box IoU "
            f"{report.raw_min_iou:.4f} < {tol.iou_min} "
            f"(source {np.round(ref_boxes[frame, anchor], 1).tolist()}, "
            f"exported {np.round(cand_boxes[frame, anchor], 1).tolist()})"
        )
    if report.raw_max_score_diff > tol.confidence_abs:
        frame, channel, anchor = np.unravel_index(int(score_diff.argmax()), score_diff.shape)
        report.problems.append(
            f"frame {frame}: anchor {anchor} class {channel} score differs by "
            f"{report.raw_max_score_diff:.4f} "
            f"> {tol.confidence_abs} (source {reference[frame, 4 + channel, anchor]:.4f}, "
            f"exported {candidate[frame, 4 + channel, anchor]:.4f})"
        )


def _compare_detections(
    report: ParityReport, reference: np.ndarray, candidate: np.ndarray, iou: float
) -> None:
    tol = report.tolerance
    near_threshold = report.confidence + tol.confidence_abs
    ref_all, cand_all = (
        decode_batch(raw.astype(np.float32), confidence=report.confidence, iou=iou, max_detections=300)
        for raw in (reference, candidate)
    )
    ious: list[float] = []
    conf_diffs: list[float] = []
    for frame, (ref, cand) in enumerate(zip(ref_all, cand_all, strict=True)):
        report.reference_detections += len(ref[1])
        report.candidate_detections += len(cand[1])
        rows, cols, pair_iou = match_detections(ref, cand, iou_threshold=tol.iou_min)
        report.matched += len(rows)
        ious += pair_iou.tolist()
        diffs = np.abs(ref[1][rows] - cand[1][cols])
        conf_diffs += diffs.tolist()
        for row, col, diff in zip(rows, cols, diffs, strict=True):
            if diff > tol.confidence_abs:
                report.problems.append(
                    f"frame {frame}: class {ref[2][row]} confidence {ref[1][row]:.4f} vs {cand[1][col]:.4f}"
                )
        overlaps = box_iou(ref[0], cand[0])
        for row in np.setdiff1d(np.arange(len(ref[1])), rows):
            if ref[1][row] < near_threshold:
                continue  # may legitimately fall below the threshold in the other model
            others = np.flatnonzero((overlaps[row] >= tol.iou_min) & (cand[2] != ref[2][row]))
            if others.size:
                report.class_mismatches += 1
                report.problems.append(
                    f"frame {frame}: class {ref[2][row]} ({ref[1][row]:.3f}) "
                    f"became class {cand[2][others[0]]}"
                )
            else:
                best = float(overlaps[row].max(initial=0.0))
                report.problems.append(
                    f"frame {frame}: class {ref[2][row]} ({ref[1][row]:.3f}) at "
                    f"{np.round(ref[0][row], 1).tolist()} has no match (best IoU {best:.3f})"
                )
        for col in np.setdiff1d(np.arange(len(cand[1])), cols):
            if cand[1][col] >= near_threshold and not (overlaps[:, col] >= tol.iou_min).any():
                report.problems.append(
                    f"frame {frame}: exported model adds class {cand[2][col]} ({cand[1][col]:.3f}) at "
                    f"{np.round(cand[0][col], 1).tolist()}"
                )
    report.min_matched_iou = min(ious) if ious else None
    report.max_confidence_diff = max(conf_diffs) if conf_diffs else None


def compare_backends(
    reference: InferenceBackend,
    candidate: InferenceBackend,
    frames: Sequence[np.ndarray],
    *,
    imgsz: tuple[int, int],
    precision: str = "fp32",
    confidence: float = 0.25,
    iou: float = 0.7,
    top_anchors: int = 100,
) -> ParityReport:
    """Run the same frames through two backends and compare raw outputs and detections.

    Args:
        reference: The source model (PyTorch, or ONNX Runtime for ONNX → TensorRT).
        candidate: The exported model.
        frames: BGR uint8 frames.
        imgsz: Letterbox size ``(height, width)``.
        precision: The exported model's precision (picks the :data:`TOLERANCES`).
        confidence: Detection threshold of the detection comparison.
        iou: NMS IoU threshold.
        top_anchors: Anchors per frame compared in the raw comparison (the source's best).

    Raises:
        ModelError: No frames, or an unknown precision.
    """
    if not frames:
        raise ModelError("the parity check needs at least one frame")
    if precision not in TOLERANCES:
        raise ModelError(f"unknown precision {precision!r}; expected one of {', '.join(TOLERANCES)}")
    report = ParityReport(
        frames=len(frames), precision=precision, tolerance=TOLERANCES[precision], confidence=confidence
    )
    ref_raw = raw_outputs(reference, frames, imgsz)
    cand_raw = raw_outputs(candidate, frames, imgsz)
    _compare_raw(report, ref_raw, cand_raw, top_anchors)
    if ref_raw.shape == cand_raw.shape:
        _compare_detections(report, ref_raw, cand_raw, iou)
    return report


@dataclass
class AgreementReport:
    """Detections of a reduced-precision model against its fp32 source, as precision/recall.

    The gate of int8 and bf16 exports: a reference detection is recalled when the candidate
    has one of the same class with IoU >= ``iou_match`` (greedy one-to-one matching, best
    reference boxes first); a candidate detection is precise when it matched one.
    """

    frames: int
    precision_name: str
    confidence: float
    iou_match: float
    minimum: float
    reference_detections: int = 0
    candidate_detections: int = 0
    matched: int = 0

    @property
    def precision(self) -> float:
        """Matched / candidate detections (1.0 when neither model found anything)."""
        return self.matched / self.candidate_detections if self.candidate_detections else 1.0

    @property
    def recall(self) -> float:
        """Matched / reference detections (1.0 when the reference found nothing)."""
        return self.matched / self.reference_detections if self.reference_detections else 1.0

    @property
    def passed(self) -> bool:
        """Both precision and recall reach ``minimum``, on at least one reference detection."""
        return self.reference_detections > 0 and min(self.precision, self.recall) >= self.minimum

    @property
    def problems(self) -> list[str]:
        """What failed, in one line each (empty when passed)."""
        if self.passed:
            return []
        if self.reference_detections == 0:
            return [f"the fp32 model found nothing in {self.frames} frames: use frames with objects"]
        return [
            f"{self.precision_name} detections vs fp32: precision {self.precision:.3f}, recall "
            f"{self.recall:.3f} (want both >= {self.minimum}; matched {self.matched} of "
            f"{self.reference_detections} fp32 / {self.candidate_detections} {self.precision_name} "
            f"at IoU >= {self.iou_match})"
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            **asdict(self),
            "precision": self.precision,
            "recall": self.recall,
            "passed": self.passed,
            "precision_name": self.precision_name,
        }

    def summary(self) -> str:
        """One human-readable line."""
        return (
            f"parity ({self.precision_name} vs fp32, {self.frames} held-out frames, conf {self.confidence}): "
            f"{'PASSED' if self.passed else 'FAILED'} "
            f"precision {self.precision:.3f} recall {self.recall:.3f} "
            f"(>= {self.minimum}; matched {self.matched}, fp32 {self.reference_detections}, "
            f"{self.precision_name} {self.candidate_detections}, IoU >= {self.iou_match})"
        )


def detection_agreement(
    reference: InferenceBackend,
    candidate: InferenceBackend,
    frames: Sequence[np.ndarray],
    *,
    imgsz: tuple[int, int],
    precision_name: str,
    candidate_imgsz: tuple[int, int] | None = None,
    confidence: float = 0.25,
    iou: float = 0.7,
    iou_match: float = 0.5,
    minimum: float = 0.95,
) -> AgreementReport:
    """Precision and recall of ``candidate``'s detections against ``reference``'s.

    Args:
        reference: The fp32 model.
        candidate: The quantized or reduced-precision model.
        frames: BGR uint8 frames not used for calibration.
        imgsz: Letterbox size ``(height, width)``.
        candidate_imgsz: The candidate's letterbox size when it differs (a model resized by
            :mod:`engine.cli.export.input_size`); boxes are then compared in frame pixels.
        precision_name: What the candidate runs in (``int8``, ``bf16``...), for messages.
        confidence: Detection threshold (the ``detect`` stage's default).
        iou: NMS IoU threshold.
        iou_match: Smallest IoU of a matched pair.
        minimum: Smallest precision and recall that pass.

    Raises:
        ModelError: No frames.
    """
    from plugins.yolo_decode import decode_batch, match_detections

    if not frames:
        raise ModelError("the parity check needs at least one frame")
    report = AgreementReport(
        frames=len(frames),
        precision_name=precision_name,
        confidence=confidence,
        iou_match=iou_match,
        minimum=minimum,
    )
    decoded = []
    for backend, size in ((reference, imgsz), (candidate, candidate_imgsz or imgsz)):
        detections = decode_batch(
            raw_outputs(backend, frames, size).astype(np.float32),
            confidence=confidence,
            iou=iou,
            max_detections=300,
        )
        if candidate_imgsz not in (None, imgsz):  # two letterboxes: compare in frame pixels
            detections = [
                (letterbox_params(frame.shape[:2], size).boxes_to_source(boxes), scores, classes)
                for frame, (boxes, scores, classes) in zip(frames, detections, strict=True)
            ]
        decoded.append(detections)
    for ref, cand in zip(*decoded, strict=True):
        rows, _, _ = match_detections(ref, cand, iou_threshold=iou_match)
        report.reference_detections += len(ref[1])
        report.candidate_detections += len(cand[1])
        report.matched += len(rows)
    return report
