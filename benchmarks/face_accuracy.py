"""Face pipeline benchmark: expression accuracy with and without alignment, and cost per face.

Accuracy, on ``shared/media/expressions`` (79 labelled web photos, 8 FER+ classes), of the
classifier fed with:

- ``box``: the detector box, squared, no rotation (no alignment);
- ``eyes``: eye-based similarity alignment (the ``align`` stage's default template);
- ``eyes+roll_search``: the same, with YuNet re-run on ±30° views for rolled heads.

Classes the model lacks are handled explicitly: model labels are renamed to the data set's
(``angry`` → ``anger``, ``happy`` → ``happiness``, ``sad`` → ``sadness``); images whose label
the model cannot produce (``contempt`` for the 7-class FER2013 model) are DROPPED from the
main accuracy and counted; ``accuracy_counting_dropped_as_wrong`` keeps them as errors.
A 95% Wilson interval is given: with ~70 images it is about ±11 points.

Cost per face on the CPU of detect (``faces`` stage, one face per photo), align (OpenCV;
kornia on CPU too when installed) and classify (one inference call) at batch sizes 1, 8, 32:
median and p95 over repeats, in milliseconds per face.

Writes ``face_accuracy.json`` and ``face_accuracy.png`` to ``--out`` and prints tables.

    python benchmarks/face_accuracy.py --shared ../shared --out out/bench [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.cli.emotion_threshold import model_to_dataset_names, parse_label_map, read_labels  # noqa: E402
from engine.frame import Batch, Frame  # noqa: E402
from engine.stage import Context  # noqa: E402
from plugins.align import FaceAligner  # noqa: E402
from plugins.emotion import EmotionClassifier  # noqa: E402
from plugins.faces import FaceDetector  # noqa: E402

BATCH_SIZES = (1, 8, 32)
ALIGNMENTS = {
    "box": ({"method": "box"}, None),
    "eyes": ({"method": "eyes"}, None),
    "eyes+roll_search": ({"method": "eyes"}, [-30.0, 30.0]),
}


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (centre - half, centre + half)


def load_photos(shared: Path) -> list[tuple[str, str, np.ndarray]]:
    """(file, label, BGR image) of every labelled expression photo."""
    import cv2

    images = shared / "media" / "expressions" / "images"
    rows = read_labels(shared / "media" / "expressions" / "labels.csv")
    return [(name, label, cv2.imread(str(images / name))) for name, label in rows]


def best_face_frames(detector: FaceDetector, photos: list[tuple[str, str, np.ndarray]]) -> list[Frame]:
    """One frame per photo, its faces layer reduced to the most confident face."""
    frames = [Frame(source_id="photos", index=i, pts_ns=0, image=photo[2]) for i, photo in enumerate(photos)]
    detector(Batch.of(frames))
    for frame in frames:
        faces = frame.layers["faces"]
        if len(faces) > 1:
            frame.layers["faces"] = faces[[int(np.argmax(faces.confidence))]]
    return frames


def accuracy(shared: Path, model: Path, detector_model: Path, label_map: dict[str, str]) -> dict[str, Any]:
    """Accuracy of each alignment on the expressions set (see the module docstring)."""
    photos = load_photos(shared)
    classifier = EmotionClassifier(model=model, smoothing_alpha=None)
    classifier.open(Context())
    spec = classifier.spec
    assert spec is not None
    names = model_to_dataset_names(classifier.labels, label_map)
    truth = np.array([label for _, label, _ in photos])
    known = np.isin(truth, names)
    results: dict[str, Any] = {
        "images": len(photos),
        "model_labels": list(classifier.labels),
        "model_labels_as_dataset": names,
        "dropped_labels": {
            str(k): int(v) for k, v in zip(*np.unique(truth[~known], return_counts=True), strict=True)
        },
        "alignments": {},
    }
    for name, (align_options, roll_search) in ALIGNMENTS.items():
        detector = FaceDetector(model=detector_model, confidence=0.5, roll_search_deg=roll_search)
        detector.open(Context())
        frames = best_face_frames(detector, photos)
        aligner = FaceAligner(size=(spec.width, spec.height), **align_options)  # type: ignore[arg-type]
        aligner(Batch.of(frames))
        classifier(Batch.of(frames))
        predicted = np.full(len(frames), "", dtype=object)
        for position, frame in enumerate(frames):
            faces = frame.layers["faces"]
            if len(faces) and bool(faces.data["align_ok"][0]):
                predicted[position] = names[classifier.labels.index(str(faces.data["emotion"][0]))]
        answered = predicted != ""
        evaluated = known & answered
        correct = evaluated & (predicted == truth)
        low, high = wilson_interval(int(correct.sum()), int(evaluated.sum()))
        per_class = {}
        for label in sorted(set(truth[known])):
            rows = evaluated & (truth == label)
            per_class[label] = round(float(correct[rows].sum() / max(rows.sum(), 1)), 3)
        results["alignments"][name] = {
            "evaluated": int(evaluated.sum()),
            "no_face_or_not_aligned": int((known & ~answered).sum()),
            "accuracy": round(float(correct.sum() / max(evaluated.sum(), 1)), 4),
            "accuracy_ci95": [round(low, 4), round(high, 4)],
            "accuracy_counting_dropped_as_wrong": round(float(correct.sum() / max((answered).sum(), 1)), 4),
            "per_class": per_class,
        }
    classifier.close()
    return results


def _per_face_ms(function: Any, batches: list[Any], batch_size: int, repeats: int) -> dict[str, float]:
    """Median and p95 of (call time / batch size) over every batch, ``repeats`` times."""
    function(batches[0])  # warm-up
    samples = []
    for _ in range(repeats):
        for batch in batches:
            started = time.perf_counter()
            function(batch)
            samples.append((time.perf_counter() - started) * 1000 / batch_size)
    return {
        "median_ms_per_face": round(float(np.median(samples)), 4),
        "p95_ms_per_face": round(float(np.percentile(samples, 95)), 4),
    }


def cost(shared: Path, model: Path, detector_model: Path, repeats: int) -> dict[str, Any]:
    """Milliseconds per face of detect / align / classify at each batch size.

    The same 32 one-face photos are processed at every batch size, in batches of that size.
    """
    photos = load_photos(shared)
    detector = FaceDetector(model=detector_model, confidence=0.5)
    detector.open(Context())
    frames = [f for f in best_face_frames(detector, photos) if len(f.layers["faces"]) == 1]
    frames = frames[: max(BATCH_SIZES)]
    classifier = EmotionClassifier(model=model, smoothing_alpha=None, drop_crops=False)
    classifier.open(Context())
    spec = classifier.spec
    assert spec is not None
    aligners = {"align_opencv": FaceAligner(size=(spec.width, spec.height), backend="opencv")}
    try:
        import kornia  # noqa: F401

        aligners["align_kornia_cpu"] = FaceAligner(size=(spec.width, spec.height), backend="torch")
    except ImportError:
        pass
    aligners["align_opencv"](Batch.of(frames))
    crops = np.concatenate([f.layers["faces"].data["aligned_crop"] for f in frames])

    def fresh(chunk: list[Frame]) -> Batch:
        batch = []
        for frame in chunk:
            copy = Frame(source_id="b", index=frame.index, pts_ns=0, image=frame.image)
            copy.layers["faces"] = frame.layers["faces"]
            batch.append(copy)
        return Batch.of(batch)

    table: dict[str, Any] = {}
    for size in BATCH_SIZES:
        chunks = [frames[start : start + size] for start in range(0, len(frames), size)]
        crop_chunks = [crops[start : start + size] for start in range(0, len(crops), size)]
        table.setdefault("detect", {})[str(size)] = _per_face_ms(
            lambda chunk: detector(fresh(chunk)), chunks, size, repeats
        )
        table.setdefault("classify", {})[str(size)] = _per_face_ms(
            classifier.classify, crop_chunks, size, repeats
        )
        for name, aligner in aligners.items():
            table.setdefault(name, {})[str(size)] = _per_face_ms(
                lambda chunk, a=aligner: a(fresh(chunk)), chunks, size, repeats
            )
    sizes = np.array([frame.image.shape[:2] for frame in frames])
    return {
        "photos": len(frames),
        "faces_per_photo": 1,
        "photo_median_hw": np.median(sizes, axis=0).astype(int).tolist(),
        "repeats": repeats,
        "per_stage": table,
    }


def machine() -> dict[str, Any]:
    """Facts that make timings comparable."""
    import cv2
    import onnxruntime

    facts = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "device": "cpu",
        "opencv": cv2.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return facts


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy per alignment (with CI) and cost per face against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(report["accuracy"]["alignments"])
    values = [report["accuracy"]["alignments"][n]["accuracy"] for n in names]
    bounds = np.array([report["accuracy"]["alignments"][n]["accuracy_ci95"] for n in names])
    errors = [np.array(values) - bounds[:, 0], bounds[:, 1] - np.array(values)]
    left.bar(names, values, yerr=errors, capsize=6)
    left.set_ylim(0, 1)
    left.set_ylabel("accuracy (contempt dropped)")
    left.set_title("Expression accuracy, 95% CI")
    for stage, rows in report["cost"]["per_stage"].items():
        sizes = [int(b) for b in rows]
        right.plot(sizes, [rows[str(b)]["median_ms_per_face"] for b in sizes], marker="o", label=stage)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("batch size (faces)")
    right.set_ylabel("ms per face (median)")
    right.set_title("CPU cost per face")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("VISTREAM_SHARED", "../shared")))
    parser.add_argument("--model", type=Path, default=None, help="classifier (default: shared 7-class)")
    parser.add_argument("--label-map", default=None, help="model=dataset label pairs, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--repeats", type=int, default=20, help="passes over the photos per batch size")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch CPU threads for the kornia path (default 1: stable on shared machines)",
    )
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(args.torch_threads)
    except ImportError:
        pass
    model = args.model or args.shared / "models" / "emotion_mini_xception_fer2013_7cls.onnx"
    detector_model = args.shared / "models" / "face_detection_yunet_2023mar.onnx"
    report = {
        "machine": machine(),
        "model": str(model),
        "accuracy": accuracy(args.shared, model, detector_model, parse_label_map(args.label_map)),
        "cost": cost(args.shared, model, detector_model, args.repeats),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "face_accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "face_accuracy.png")
    acc = report["accuracy"]
    print(f"{acc['images']} photos; dropped (label not in model): {acc['dropped_labels']}")
    print("| alignment | evaluated | accuracy | 95% CI | dropped counted wrong |")
    print("|---|---|---|---|---|")
    for name, row in acc["alignments"].items():
        low, high = row["accuracy_ci95"]
        print(
            f"| {name} | {row['evaluated']} | {row['accuracy']:.3f} | {low:.2f}-{high:.2f} "
            f"| {row['accuracy_counting_dropped_as_wrong']:.3f} |"
        )
    print("\n| stage | " + " | ".join(f"batch {b} ms/face (median, p95)" for b in BATCH_SIZES) + " |")
    print("|---|" + "---|" * len(BATCH_SIZES))
    for stage, rows in report["cost"]["per_stage"].items():
        cells = [
            f"{rows[str(b)]['median_ms_per_face']:.3f}, {rows[str(b)]['p95_ms_per_face']:.3f}"
            for b in BATCH_SIZES
        ]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print(f"\nwrote {args.out / 'face_accuracy.json'} and {args.out / 'face_accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
