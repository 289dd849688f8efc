"""The ``emotion`` stage: classify every aligned face of a batch in one inference call.

Reads the face layer after the ``align`` stage (``data["aligned_crop"]`` and
``data["align_ok"]``) and writes, per face:

- ``emotion``: the label (model's class name), or ``"unknown"`` when the (smoothed)
  top probability is below ``threshold`` or the face could not be aligned;
- ``emotion_confidence``: float32 top probability (0 for faces without an answer);
- ``emotion_probs``: ``(n, classes)`` float32 probabilities in the order of
  :attr:`EmotionClassifier.labels` (only with ``output_probs: true``).

Any classifier loadable by :func:`engine.backends.load_backend` works; its class list and
preprocessing come from its metadata or the config (see :mod:`plugins.emotion_model`).
With a dynamic batch axis all faces of a batch go through ONE ``run`` call; with a fixed one
they go in chunks of that size (the last one padded).

Per-track smoothing: for faces with a track id (``tracker_id`` != -1), the probabilities
are an exponential moving average per (source, track): ``p = a * p_now + (1 - a) * p_prev``
with ``a = smoothing_alpha`` — labels stop flickering from frame to frame. Untracked faces
get their own frame's answer. A tracked face that could not be aligned in this frame keeps
its track's last smoothed answer. Track state older than ``track_max_age_frames`` frames is
dropped, and a source's state is dropped at its end of stream.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends import is_model_uri, load_backend
from engine.errors import ConfigError, StageError
from engine.frame import NO_TRACK_ID, Batch
from engine.stage import BaseStage, Context
from plugins.align import CROP_KEY, OK_KEY
from plugins.emotion_model import ClassifierSpec, resolve_spec

logger = logging.getLogger(__name__)

#: The label of a face without a confident answer.
UNKNOWN = "unknown"


@dataclass
class _TrackStates:
    """Smoothed probabilities of one source's tracks, as sorted parallel arrays."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    last_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class EmotionSmoother:
    """Exponential moving average of class probabilities per (source, track), vectorised.

    Args:
        alpha: Weight of the newest frame, in (0, 1]; 1 means no smoothing.
        max_age_frames: Tracks not updated for more than this many frames are forgotten.
    """

    def __init__(self, *, alpha: float, max_age_frames: int) -> None:
        self.alpha = float(alpha)
        self.max_age_frames = int(max_age_frames)
        self._sources: dict[str, _TrackStates] = {}

    def update(
        self, source_id: str, frame_index: int, track_ids: np.ndarray, probs: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fold one frame's probabilities into the track states.

        Args:
            source_id: Source of the frame.
            frame_index: Index of the frame in its source.
            track_ids: ``(n,)`` track ids (-1 = untracked: passed through unchanged).
            probs: ``(n, classes)`` probabilities of this frame.
            valid: ``(n,)`` bool, False where ``probs`` is meaningless (face not aligned).

        Returns:
            ``(smoothed (n, classes), answered (n,) bool)``: answered is False where there is
            neither a valid probability nor a track history.
        """
        states = self._sources.setdefault(source_id, _TrackStates())
        if states.probs.shape[1:] != probs.shape[1:]:
            states.probs = np.zeros((0, probs.shape[1]), dtype=np.float32)
            states.ids = np.zeros(0, dtype=np.int64)
            states.last_index = np.zeros(0, dtype=np.int64)
        alive = states.last_index >= frame_index - self.max_age_frames
        if not alive.all():
            states.ids, states.probs = states.ids[alive], states.probs[alive]
            states.last_index = states.last_index[alive]
        track_ids = np.asarray(track_ids, dtype=np.int64)
        tracked = track_ids != NO_TRACK_ID
        out = probs.astype(np.float32, copy=True)
        answered = valid.copy()

        if len(states.ids):
            position = np.minimum(np.searchsorted(states.ids, track_ids), len(states.ids) - 1)
            known = tracked & (states.ids[position] == track_ids)
        else:
            position = np.zeros(len(track_ids), dtype=np.int64)
            known = np.zeros(len(track_ids), dtype=bool)
        update = known & valid
        rows = position[update]
        states.probs[rows] = self.alpha * probs[update] + (1.0 - self.alpha) * states.probs[rows]
        states.last_index[rows] = frame_index
        hold = known & ~valid  # keep the last answer of a track through a frame without one
        out[known] = states.probs[position[known]]
        answered |= hold

        new = tracked & ~known & valid
        if new.any():
            new_ids, first = np.unique(track_ids[new], return_index=True)
            ids = np.concatenate([states.ids, new_ids])
            order = np.argsort(ids, kind="stable")
            states.ids = ids[order]
            states.probs = np.concatenate([states.probs, probs[new][first]])[order]
            states.last_index = np.concatenate(
                [states.last_index, np.full(len(new_ids), frame_index, dtype=np.int64)]
            )[order]
        return out, answered

    def reset(self, source_id: str) -> None:
        """Forget every track of a source."""
        self._sources.pop(source_id, None)


class EmotionClassifier(BaseStage):
    """Classify the facial expression of every aligned face, with an honest ``unknown``."""

    def __init__(
        self,
        *,
        model: Path | str,
        layer: str = "faces",
        threshold: float = 0.0,
        labels: list[str] | None = None,
        color: str | None = None,
        scale: float | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        softmax: bool | None = None,
        output_name: str | None = None,
        output_probs: bool = False,
        smoothing_alpha: float | None = 0.3,
        track_max_age_frames: int = 30,
        drop_crops: bool = True,
        device: str | None = None,
    ) -> None:
        """Configure the classifier (cheap; the model is loaded in ``open``).

        Args:
            model: Classifier file (``.onnx``, or any type the backends load), or a
                ``triton://HOST:PORT/MODEL`` URI.
            layer: Face layer to read and annotate.
            threshold: Top probability below which the answer is ``unknown``, in [0, 1].
            labels: Class names in output order (default: from the model's metadata).
            color: ``gray``, ``rgb`` or ``bgr`` (default: from the metadata / input shape).
            scale: Multiplies 0..255 pixels (default: from the metadata).
            mean: Subtracted after scaling, one value or one per channel.
            std: Divides after the mean, one value or one per channel.
            softmax: True if the model outputs logits, False for probabilities, None to
                take it from the metadata or decide from the values.
            output_name: Which output holds the scores, when the model has several.
            output_probs: Also write ``data["emotion_probs"]``.
            smoothing_alpha: Weight of the newest frame in the per-track moving average,
                in (0, 1]; None or 1 turns smoothing off.
            track_max_age_frames: Forget a track's history after this many frames unseen.
            drop_crops: Remove ``data["aligned_crop"]`` once classified, so sinks do not
                write pixels (set False to keep the crops for a later stage).
            device: Where the classifier runs; default: the pipeline's device.
        """
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
        if smoothing_alpha is not None and not 0.0 < smoothing_alpha <= 1.0:
            raise ConfigError(f"smoothing_alpha must be in (0, 1] or null, got {smoothing_alpha}")
        if track_max_age_frames < 0:
            raise ConfigError(f"track_max_age_frames must be >= 0, got {track_max_age_frames}")
        if labels is not None and (not labels or UNKNOWN in labels):
            raise ConfigError(f"labels must be a non-empty list without '{UNKNOWN}', got {labels}")
        self.model: Path | str = model if is_model_uri(model) else Path(model)
        self.layer = layer
        self.threshold = float(threshold)
        self._overrides: dict[str, Any] = {
            "labels": labels,
            "color": color,
            "scale": scale,
            "mean": mean,
            "std": std,
            "softmax": softmax,
            "output_name": output_name,
        }
        self.output_probs = output_probs
        self.smoothing_alpha = None if smoothing_alpha in (None, 1.0) else float(smoothing_alpha)
        self.track_max_age_frames = int(track_max_age_frames)
        self.drop_crops = drop_crops
        self.device = device
        self.spec: ClassifierSpec | None = None
        self._backend: Any = None
        self._smoother: EmotionSmoother | None = None
        self._calls = 0
        self._counts: Counter[str] = Counter()

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names, in the order of ``emotion_probs`` columns (after ``open``)."""
        if self.spec is None:
            raise StageError("the emotion stage is not open yet")
        return self.spec.labels

    def open(self, context: Context) -> None:
        """Load the classifier and work out its preprocessing."""

        self._backend = load_backend(self.model, device=self.device or context.device)
        self.spec = resolve_spec(
            self._backend.inputs, self._backend.outputs, self._backend.metadata, **self._overrides
        )
        if self.smoothing_alpha is not None:
            self._smoother = EmotionSmoother(
                alpha=self.smoothing_alpha, max_age_frames=self.track_max_age_frames
            )
        logger.info(
            "emotion classifier %s: %d classes (%s), %s %dx%d, batch %s",
            self.model.name if isinstance(self.model, Path) else self.model,
            len(self.spec.labels),
            ", ".join(self.spec.labels),
            self.spec.color,
            self.spec.width,
            self.spec.height,
            self.spec.batch or "dynamic",
        )

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Return ``(n, classes)`` probabilities for ``(n, h, w, 3)`` uint8 BGR crops."""
        spec = self.spec
        if spec is None or self._backend is None:
            raise StageError("the emotion stage is not open yet")
        if len(crops) == 0:
            return np.zeros((0, len(spec.labels)), dtype=np.float32)
        tensor = spec.preprocess(crops)
        chunk = spec.batch or len(tensor)
        results = []
        for start in range(0, len(tensor), chunk):
            part = tensor[start : start + chunk]
            padding = chunk - len(part)
            if padding:  # a fixed batch axis: pad the last chunk, drop the padding's answers
                part = np.concatenate([part, np.zeros((padding, *part.shape[1:]), dtype=part.dtype)])
            output = self._backend.run({spec.input_name: part})[spec.output_name]
            if not isinstance(output, np.ndarray):  # a torch tensor from a GPU backend
                output = output.detach().cpu().numpy()
            results.append(np.asarray(output)[: chunk - padding])
            self._calls += 1
        return spec.probabilities(np.concatenate(results))

    def __call__(self, batch: Batch) -> Batch:
        spec = self.spec
        if spec is None:
            raise StageError("the emotion stage is not open yet")
        frames = [frame for frame in batch if self.layer in frame.layers]
        crops_per_frame: list[np.ndarray] = []
        ok_per_frame: list[np.ndarray] = []
        for frame in frames:
            faces = frame.layers[self.layer]
            if CROP_KEY not in faces.data and len(faces) > 0:
                raise StageError(
                    f"layer '{self.layer}' has no data['{CROP_KEY}']: put an align stage before emotion"
                )
            ok = np.asarray(faces.data.get(OK_KEY, np.ones(len(faces), dtype=bool)), dtype=bool)
            if len(faces) > 0:
                crops_per_frame.append(np.asarray(faces.data[CROP_KEY])[ok])
            ok_per_frame.append(ok)
        if not frames:
            return batch
        # Every aligned face of the batch in one inference call (empty layers get empty
        # columns, so every frame's layer has the same keys).
        probs_ok = self.classify(
            np.concatenate(crops_per_frame) if crops_per_frame else np.zeros((0, 1, 1, 3), np.uint8)
        )
        start = 0
        labels = np.array([*spec.labels, UNKNOWN])
        for frame, ok in zip(frames, ok_per_frame, strict=True):
            faces = frame.layers[self.layer]
            probs = np.zeros((len(faces), len(spec.labels)), dtype=np.float32)
            probs[ok] = probs_ok[start : start + int(ok.sum())]
            start += int(ok.sum())
            answered = ok
            if self._smoother is not None and faces.tracker_id is not None:
                probs, answered = self._smoother.update(
                    frame.source_id, frame.index, np.asarray(faces.tracker_id), probs, ok
                )
            best = probs.argmax(axis=1)
            confidence = np.where(answered, probs[np.arange(len(faces)), best], 0.0).astype(np.float32)
            best = np.where(answered & (confidence >= self.threshold), best, len(spec.labels))
            faces.data["emotion"] = labels[best]
            faces.data["emotion_confidence"] = confidence
            if self.output_probs:
                faces.data["emotion_probs"] = probs
            if self.drop_crops:
                faces.data.pop(CROP_KEY, None)
            self._counts.update(labels[best].tolist())
        return batch

    def end_of_stream(self, source_id: str) -> None:
        """Forget the smoothing state of the source."""
        if self._smoother is not None:
            self._smoother.reset(source_id)

    def summary(self) -> dict[str, Any]:
        """Labels, answers per label and inference calls (for ``summary.json``)."""
        return {
            "labels": list(self.spec.labels) if self.spec else [],
            "threshold": self.threshold,
            "inference_calls": self._calls,
            "answers": dict(sorted(self._counts.items())),
        }

    def close(self) -> None:
        """Release the classifier."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
