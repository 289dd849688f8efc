"""``vistream emotion-threshold``: choose the ``unknown`` threshold of an expression classifier.

Runs faces → align → emotion (the pipeline's own stages) on a labelled image set and, for
thresholds from 0 to 1, reports the share of faces still answered and the share of the
original (threshold 0) errors still present; writes the table as JSON and CSV, a bar chart
(two bars per threshold) as PNG, and proposes a threshold for a target reject rate and/or a
target error rate among the answered faces.

Domain gap: a threshold picked on photos may reject far more faces on a real camera (other
light, resolution, pose). With ``--video`` the tool also measures the reject rate of the
proposed threshold on unlabelled video frames, and with ``--target-reject-on-video`` proposes
the threshold that rejects that share of the video's faces instead.

Label matching: model labels and data set labels are compared after
:func:`plugins.emotion_model.canonical_emotion` (``angry`` = ``anger``, ``happy`` =
``happiness``...) and ``--label-map model=dataset`` pairs. Images whose label the model
cannot produce (``contempt`` for a 7-class FER2013 model) are dropped and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import ConfigError
from engine.frame import Batch, Frame
from engine.locations import default_variables
from engine.stage import Context
from plugins.align import FaceAligner
from plugins.emotion import EmotionClassifier
from plugins.emotion_model import canonical_emotion
from plugins.faces import FaceDetector

logger = logging.getLogger(__name__)

_IMAGE_COLUMNS = ("image", "file", "filename", "path")
_LABEL_COLUMNS = ("emotion", "label", "expression", "class")
_BATCH_FRAMES = 16

#: YuNet file name under ``$VISTREAM_MODELS`` used when ``--detector`` is not given.
DEFAULT_DETECTOR = "face_detection_yunet_2023mar.onnx"


@dataclass
class LabelledPredictions:
    """The classifier's answers on a labelled set (one row per image with a usable face).

    Attributes:
        images: Image file names.
        truth: Data set labels.
        predicted: Model labels mapped to data set names.
        confidence: Top probability of each answer.
        model_labels: The classifier's own labels.
        no_face: Images where no face was found or aligned.
        dropped: Images whose label the model cannot produce, per label.
    """

    images: list[str]
    truth: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    model_labels: tuple[str, ...]
    no_face: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def correct(self) -> np.ndarray:
        """``(n,)`` bool: the top answer matches the label."""
        return self.truth == self.predicted  # type: ignore[no-any-return]


def read_labels(csv_path: Path) -> list[tuple[str, str]]:
    """Read ``(image file, label)`` pairs from a CSV (columns image/file + emotion/label)."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise ConfigError(f"cannot read labels CSV {csv_path}: {error.strerror}") from error
    if len(rows) < 2:
        raise ConfigError(f"labels CSV {csv_path} has no rows")
    header = [cell.strip().lower() for cell in rows[0]]
    image_col = next((header.index(c) for c in _IMAGE_COLUMNS if c in header), None)
    label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    if image_col is None or label_col is None:
        raise ConfigError(
            f"labels CSV {csv_path} needs an image column ({'/'.join(_IMAGE_COLUMNS)}) and a label "
            f"column ({'/'.join(_LABEL_COLUMNS)}); header is {rows[0]}"
        )
    return [(row[image_col].strip(), row[label_col].strip()) for row in rows[1:] if row]


def parse_label_map(text: str | None) -> dict[str, str]:
    """Parse ``"angry=anger,happy=happiness"`` into a model→data set label dict."""
    if not text:
        return {}
    mapping = {}
    for pair in text.split(","):
        model_label, sep, dataset_label = pair.partition("=")
        if not sep or not model_label.strip() or not dataset_label.strip():
            raise ConfigError(f"--label-map entries must be model=dataset, got {pair!r}")
        mapping[model_label.strip()] = dataset_label.strip()
    return mapping


def model_to_dataset_names(model_labels: Sequence[str], label_map: dict[str, str]) -> list[str]:
    """Name each model label as the data set does (explicit map first, then synonyms)."""

    return [label_map.get(label, canonical_emotion(label)) for label in model_labels]


class FacePipeline:
    """faces → align → emotion built from the stages, for offline evaluation.

    Args:
        model: Classifier file.
        detector: YuNet ONNX file.
        method: Alignment method (``eyes`` or ``box``).
        margin: Alignment margin.
        detector_confidence: Minimum face score.
    """

    def __init__(
        self,
        *,
        model: Path,
        detector: Path,
        method: str = "eyes",
        margin: float = 0.0,
        detector_confidence: float = 0.5,
    ) -> None:
        self.faces = FaceDetector(model=detector, confidence=detector_confidence)
        self.emotion = EmotionClassifier(model=model, smoothing_alpha=None)
        context = Context()
        self.faces.open(context)
        self.emotion.open(context)
        spec = self.emotion.spec
        if spec is None:  # pragma: no cover - open() sets it or raises
            raise ConfigError("classifier did not open")
        self.align = FaceAligner(size=(spec.width, spec.height), method=method, margin=margin)  # type: ignore[arg-type]
        self.align.open(context)

    def run(self, frames: list[Frame], *, best_face_only: bool) -> list[Frame]:
        """Run the three stages on frames in batches (one classifier call per batch)."""
        for start in range(0, len(frames), _BATCH_FRAMES):
            batch = self.faces(Batch.of(frames[start : start + _BATCH_FRAMES]))
            if best_face_only:
                for frame in batch:
                    faces = frame.layers["faces"]
                    if len(faces) > 1 and faces.confidence is not None:
                        best = np.arange(len(faces)) == int(np.argmax(faces.confidence))
                        frame.layers["faces"] = faces[best]  # type: ignore[assignment]
            self.emotion(self.align(batch))
        return frames

    def close(self) -> None:
        """Release the models."""
        self.faces.close()
        self.emotion.close()


def classify_labelled_images(
    pipeline: FacePipeline, images_dir: Path, labels: list[tuple[str, str]], label_map: dict[str, str]
) -> LabelledPredictions:
    """Run the face pipeline on every labelled image and pair answers with labels."""
    model_labels = pipeline.emotion.labels
    names = model_to_dataset_names(model_labels, label_map)
    frames: list[Frame] = []
    truth: list[str] = []
    files: list[str] = []
    no_face: list[str] = []
    dropped: dict[str, int] = {}
    for index, (name, label) in enumerate(labels):
        if label not in names:
            dropped[label] = dropped.get(label, 0) + 1
            continue
        image = cv2.imread(str(images_dir / name))
        if image is None:
            raise ConfigError(f"cannot read image {images_dir / name}")
        frames.append(Frame(source_id="images", index=index, pts_ns=0, image=image))
        truth.append(label)
        files.append(name)
    pipeline.emotion.threshold = 0.0
    pipeline.run(frames, best_face_only=True)
    keep, predicted, confidence = [], [], []
    name_of = dict(zip(model_labels, names, strict=True))
    for position, frame in enumerate(frames):
        faces = frame.layer("faces")
        if len(faces) == 0 or not bool(faces.data["align_ok"][0]):
            no_face.append(files[position])
            continue
        keep.append(position)
        predicted.append(name_of[str(faces.data["emotion"][0])])
        confidence.append(float(faces.data["emotion_confidence"][0]))
    return LabelledPredictions(
        images=[files[i] for i in keep],
        truth=np.array([truth[i] for i in keep]),
        predicted=np.array(predicted),
        confidence=np.array(confidence, dtype=np.float64),
        model_labels=model_labels,
        no_face=no_face,
        dropped=dropped,
    )


def video_confidences(pipeline: FacePipeline, video: Path, *, max_frames: int, stride: int) -> np.ndarray:
    """Top probabilities of every aligned face in (a subsample of) a video's frames."""
    pipeline.emotion.threshold = 0.0
    frames = list(_video_frames(video, max_frames=max_frames, stride=stride))
    pipeline.run(frames, best_face_only=False)
    values = []
    for frame in frames:
        faces = frame.layer("faces")
        if len(faces) > 0:
            ok = np.asarray(faces.data["align_ok"], dtype=bool)
            values.append(np.asarray(faces.data["emotion_confidence"])[ok])
    return np.concatenate(values) if values else np.zeros(0)


def _video_frames(video: Path, *, max_frames: int, stride: int) -> Iterator[Frame]:
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ConfigError(f"cannot open video {video}")
    try:
        index = 0
        kept = 0
        while kept < max_frames:
            ok, image = capture.read()
            if not ok:
                break
            if index % stride == 0:
                yield Frame(source_id="video", index=index, pts_ns=0, image=image)
                kept += 1
            index += 1
    finally:
        capture.release()


def rejection_curve(
    confidence: np.ndarray, correct: np.ndarray, thresholds: np.ndarray
) -> list[dict[str, float]]:
    """For each threshold: share answered, share of the threshold-0 errors left, accuracy.

    A face is answered when its top probability is ``>= threshold``.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    total = max(len(confidence), 1)
    errors = max(int((~correct).sum()), 1)
    rows = []
    for threshold in thresholds:
        answered = confidence >= threshold
        count = int(answered.sum())
        wrong = int((answered & ~correct).sum())
        rows.append(
            {
                "threshold": round(float(threshold), 4),
                "answered": count / total,
                "errors_remaining": wrong / errors,
                "accuracy_answered": (count - wrong) / count if count else math.nan,
                "error_rate_answered": wrong / count if count else math.nan,
            }
        )
    return rows


def threshold_for_reject(confidence: np.ndarray, target_reject: float) -> float:
    """The threshold that rejects (``confidence < t``) about ``target_reject`` of the faces."""
    values = np.sort(np.asarray(confidence, dtype=np.float64))
    if len(values) == 0:
        return 0.0
    count = int(math.ceil(target_reject * len(values) - 1e-9))
    if count <= 0:
        return 0.0
    if count >= len(values):
        return float(np.nextafter(values[-1], np.inf))
    # Halfway between the last rejected and the first kept answer: robust to ties.
    return float((values[count - 1] + values[count]) / 2.0)


def threshold_for_error(confidence: np.ndarray, correct: np.ndarray, target_error: float) -> float | None:
    """The lowest threshold whose error rate among answered faces is ``<= target_error``."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    for threshold in np.concatenate([[0.0], np.unique(confidence)]):
        answered = confidence >= threshold
        if answered.any() and (~correct[answered]).mean() <= target_error:
            return float(threshold)
    return None


def write_outputs(out_dir: Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write ``threshold_curve.json``, ``.csv`` and ``.png`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "threshold_curve.json",
        "csv": out_dir / "threshold_curve.csv",
        "png": out_dir / "threshold_curve.png",
    }
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n")
    rows = report["curve"]
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_curve(rows, paths["png"], proposed=report["proposal"].get("threshold"))
    return paths


def plot_curve(rows: list[dict[str, Any]], path: Path, *, proposed: float | None = None) -> None:
    """Bar chart: threshold on x, two bars per threshold (answered, errors remaining)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = np.array([row["threshold"] for row in rows])
    positions = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(max(8.0, 0.45 * len(rows)), 4.5))
    axes.bar(positions - 0.2, [row["answered"] for row in rows], 0.4, label="share of faces answered")
    axes.bar(
        positions + 0.2,
        [row["errors_remaining"] for row in rows],
        0.4,
        label="share of original errors remaining",
    )
    if proposed is not None:
        axes.axvline(
            float(np.interp(proposed, thresholds, positions)),
            color="black",
            linestyle="--",
            label=f"proposed threshold {proposed:.2f}",
        )
    axes.set_xticks(positions, [f"{t:.2f}" for t in thresholds], rotation=90)
    axes.set_xlabel("unknown threshold (top probability)")
    axes.set_ylabel("share")
    axes.set_ylim(0, 1.05)
    axes.legend(loc="upper right")
    axes.set_title("Emotion classifier: answers kept vs errors kept")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(rows: list[dict[str, float]]) -> list[dict[str, float | None]]:
    def clean(value: float) -> float | None:
        return None if isinstance(value, float) and math.isnan(value) else value

    return [{key: clean(value) for key, value in row.items()} for row in rows]


def run(args: argparse.Namespace) -> int:
    """Handler of ``vistream emotion-threshold``."""

    for name in ("target_reject", "target_error", "target_reject_on_video"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value < 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
    if not 0.0 < args.step <= 0.5:
        raise ConfigError(f"--step must be in (0, 0.5], got {args.step}")
    if args.max_video_frames < 1 or args.video_stride < 1:
        raise ConfigError("--max-video-frames and --video-stride must be positive integers")
    if args.target_reject_on_video is not None and args.video is None:
        raise ConfigError("--target-reject-on-video needs --video")
    if not args.images.is_dir():
        raise ConfigError(f"--images {args.images} is not a directory")
    detector = args.detector or Path(default_variables()["VISTREAM_MODELS"]) / DEFAULT_DETECTOR
    pipeline = FacePipeline(model=args.model, detector=detector, method=args.method, margin=args.margin)
    try:
        predictions = classify_labelled_images(
            pipeline, args.images, read_labels(args.labels), parse_label_map(args.label_map)
        )
        if len(predictions.images) == 0:
            raise ConfigError("no labelled face could be classified (check --labels and --label-map)")
        thresholds = np.round(np.arange(0.0, 1.0 + 1e-9, args.step), 4)
        curve = rejection_curve(predictions.confidence, predictions.correct, thresholds)
        proposal: dict[str, Any] = {}
        if args.target_error is not None:
            proposal["for_target_error"] = threshold_for_error(
                predictions.confidence, predictions.correct, args.target_error
            )
        proposal["for_target_reject"] = threshold_for_reject(predictions.confidence, args.target_reject)
        by_error = proposal.get("for_target_error")
        proposal["threshold"] = by_error if by_error is not None else proposal["for_target_reject"]
        video: dict[str, Any] | None = None
        if args.video is not None:
            confidences = video_confidences(
                pipeline, args.video, max_frames=args.max_video_frames, stride=args.video_stride
            )
            video = {
                "path": str(args.video),
                "faces": int(len(confidences)),
                "reject_at_proposed": float((confidences < proposal["threshold"]).mean())
                if len(confidences)
                else None,
            }
            if args.target_reject_on_video is not None and len(confidences):
                proposal["for_target_reject_on_video"] = threshold_for_reject(
                    confidences, args.target_reject_on_video
                )
                proposal["threshold"] = proposal["for_target_reject_on_video"]
    finally:
        pipeline.close()
    report = {
        "model": str(args.model),
        "model_labels": list(predictions.model_labels),
        "images": len(predictions.images),
        "no_face": predictions.no_face,
        "dropped_labels": predictions.dropped,
        "accuracy_at_0": float(predictions.correct.mean()),
        "targets": {
            "reject": args.target_reject,
            "error": args.target_error,
            "reject_on_video": args.target_reject_on_video,
        },
        "proposal": proposal,
        "video": video,
        "curve": _finite(curve),
        "predictions": [
            {"image": i, "label": t, "predicted": p, "confidence": round(float(c), 4)}
            for i, t, p, c in zip(
                predictions.images,
                predictions.truth.tolist(),
                predictions.predicted.tolist(),
                predictions.confidence,
                strict=True,
            )
        ],
    }
    paths = write_outputs(args.output, report)
    print(
        f"{len(predictions.images)} faces, accuracy at threshold 0: {report['accuracy_at_0']:.3f}; "
        f"dropped labels the model lacks: {predictions.dropped or 'none'}; "
        f"no face: {len(predictions.no_face)}"
    )
    print(f"{'threshold':>9} {'answered':>9} {'errors left':>11} {'acc(answered)':>13}")
    for row in curve:
        print(
            f"{row['threshold']:9.2f} {row['answered']:9.3f} {row['errors_remaining']:11.3f} "
            f"{row['accuracy_answered']:13.3f}"
        )
    if video is not None:
        print(
            f"video {args.video.name}: {video['faces']} faces, reject rate at the proposed threshold "
            f"{video['reject_at_proposed']}"
        )
    details = ", ".join(f"{key}={value}" for key, value in proposal.items() if key != "threshold")
    print(f"proposed threshold: {proposal['threshold']:.3f} ({details})")
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    return 0


def add_subcommand(subparsers: Any) -> None:
    """Add ``emotion-threshold`` to the ``vistream`` command line."""
    parser = subparsers.add_parser(
        "emotion-threshold",
        help="choose the 'unknown' threshold of an emotion classifier on a labelled set",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--model", type=Path, required=True, help="classifier model file")
    parser.add_argument("--images", type=Path, required=True, help="directory of labelled face images")
    parser.add_argument("--labels", type=Path, required=True, help="CSV with image and emotion columns")
    parser.add_argument("--label-map", default=None, help="model=dataset label pairs, comma-separated")
    parser.add_argument(
        "--target-reject", type=float, default=0.2, help="share of faces to answer 'unknown' (default 0.2)"
    )
    parser.add_argument(
        "--target-error",
        type=float,
        default=None,
        help="largest error rate among answered faces (wins over --target-reject)",
    )
    parser.add_argument("--video", type=Path, default=None, help="unlabelled video to measure the domain gap")
    parser.add_argument(
        "--target-reject-on-video",
        type=float,
        default=None,
        help="propose the threshold that rejects this share of the video's faces",
    )
    parser.add_argument("--max-video-frames", type=int, default=300, help="video frames to use (default 300)")
    parser.add_argument("--video-stride", type=int, default=1, help="use every Nth video frame")
    parser.add_argument(
        "--detector",
        type=Path,
        default=None,
        help="YuNet model (default $VISTREAM_MODELS/face_detection_yunet_2023mar.onnx)",
    )
    parser.add_argument("--method", choices=("eyes", "box"), default="eyes", help="alignment method")
    parser.add_argument("--margin", type=float, default=0.0, help="alignment margin")
    parser.add_argument("--step", type=float, default=0.05, help="threshold step (default 0.05)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    parser.set_defaults(handler=run)
