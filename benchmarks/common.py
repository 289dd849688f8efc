"""Pieces the benchmark scripts share: paths, offline Ultralytics, decoding, the bare-ONNX
Runtime reference, child processes with a JSON result, medians and Markdown tables.

Import it from a script in this directory as ``from common import ...`` (each script puts
this directory and the repository root on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DIR = Path(__file__).resolve().parent
for _path in (str(REPO_ROOT), str(BENCHMARKS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

#: The video and model every comparison uses unless told otherwise.
DEFAULT_VIDEO = "media/traffic/highway_overpass_320x240_60fps.avi"
DEFAULT_MODEL = "models/yolo11n_fp32_320.onnx"


def default_shared() -> Path:
    """``$VISTREAM_SHARED`` or ``../shared`` next to the repository."""
    return Path(os.environ.get("VISTREAM_SHARED", REPO_ROOT.parent / "shared"))


def offline_ultralytics() -> None:
    """Make Ultralytics run here without ever downloading or installing anything.

    Must run before ``ultralytics`` is imported (it reads these at import time).
    """
    os.environ.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0", YOLO_VERBOSE="False")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))


def importable(module: str) -> bool:
    """True when ``module`` imports."""
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def iter_frames(video: Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """The frames of a video as BGR arrays, decoded with PyAV one at a time."""
    import av

    with av.open(str(video)) as container:
        for count, frame in enumerate(container.decode(video=0), start=1):
            yield frame.to_ndarray(format="bgr24")
            if limit is not None and count >= limit:
                return


def decode_all(video: Path, limit: int | None = None) -> list[np.ndarray]:
    """Decode the frames of a video to BGR arrays with PyAV (outside every timing)."""
    return list(iter_frames(video, limit))


def time_ort_model_only(
    model: Path, frames: Iterable[np.ndarray], *, warmup: int = 10, threads: int | None = None
) -> tuple[float, list[float]]:
    """ONNX Runtime ``session.run`` alone on each frame, letterboxed outside the timing.

    ``threads`` sets ``intra_op_num_threads`` (None: ONNX Runtime's default, every core).

    The first ``warmup`` frames are run untimed. Frames are prepared one at a time, so a
    long video does not have to fit in memory as model inputs.

    Returns:
        Seconds spent in ``session.run`` over the timed frames, and each one's milliseconds.
    """
    import onnxruntime as ort

    from engine.ops.cpu import letterbox, to_model_input

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    input_spec = session.get_inputs()[0]
    size_hw = (int(input_spec.shape[2]), int(input_spec.shape[3]))
    per_frame_ms: list[float] = []
    for position, frame in enumerate(frames):
        tensor = to_model_input([letterbox(frame, size_hw)[0]])
        begin = time.perf_counter()
        session.run(None, {input_spec.name: tensor})
        if position >= warmup:
            per_frame_ms.append((time.perf_counter() - begin) * 1e3)
    return sum(per_frame_ms) / 1e3, per_frame_ms


def time_ultralytics_track(
    video: Path,
    model: Path,
    *,
    frames: int,
    warmup: int,
    confidence: float,
    iou: float,
    imgsz: int,
    class_names: Collection[str] | None = None,
) -> dict[str, Any]:
    """Ultralytics ``track(bytetrack)`` over a video on the CPU, timed frame by frame.

    ``class_names`` keeps only the classes of those names (None: every class). Each frame's
    time covers Ultralytics' own read, preprocessing, inference and tracking of it; the first
    ``warmup`` frames are untimed.

    Returns:
        ``frames`` and ``seconds`` timed, each frame's ``latency_ms`` and the number of
        ``unique_ids`` its tracker gave.
    """
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    classes = None
    if class_names is not None:
        classes = [index for index, name in yolo.names.items() if name in class_names]
    stream = yolo.track(
        source=str(video),
        tracker="bytetrack.yaml",
        stream=True,
        conf=confidence,
        iou=iou,
        imgsz=imgsz,
        classes=classes,
        device="cpu",
        verbose=False,
    )
    latency_ms: list[float] = []
    ids: set[int] = set()
    started = last = time.perf_counter()
    for result in stream:
        now = time.perf_counter()
        latency_ms.append((now - last) * 1e3)  # read + preprocess + infer + track of this frame
        if result.boxes is not None and result.boxes.id is not None:
            ids.update(int(track_id) for track_id in result.boxes.id.tolist())
        last = time.perf_counter()
        if len(latency_ms) == warmup:  # the first frames warm up; timing starts after them
            started = last
        if len(latency_ms) >= frames:
            break
    timed = latency_ms[warmup:]
    return {"frames": len(timed), "seconds": last - started, "latency_ms": timed, "unique_ids": len(ids)}


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark, in MB (see
    :func:`engine.metrics.resources.peak_rss_mb`: not ``ru_maxrss``, which a child inherits from its
    parent across ``exec`` on Linux)."""
    from engine.metrics.resources import peak_rss_mb as peak

    return peak()


def run_child(arguments: Sequence[str], *, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run ``python <arguments> --result FILE`` in a fresh process and return FILE's JSON.

    A fresh process per run makes its peak RSS its own (``ru_maxrss`` of the child).

    Raises:
        RuntimeError: The child failed or wrote no result (its stderr tail is in the message).
    """
    with tempfile.TemporaryDirectory(prefix="bench-child-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, *arguments, "--result", str(result_path)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if completed.returncode != 0 or not result_path.is_file():
            tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{' '.join(arguments[:3])} failed (exit {completed.returncode}):\n{tail}")
        result: dict[str, Any] = json.loads(result_path.read_text())
        return result


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    present = [float(value) for value in values if value is not None]
    return statistics.median(present) if present else None


def spread(values: Iterable[float | None]) -> float | None:
    """Relative run-to-run spread: (max - min) / median, None for fewer than two values."""
    present = [float(value) for value in values if value is not None]
    if len(present) < 2:
        return None
    middle = statistics.median(present)
    return (max(present) - min(present)) / abs(middle) if middle else None


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column (``l`` or ``r``)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if side == "r" else "---" for side in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join("n/a" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    """One line describing the machine (see :func:`engine.metrics.resources.machine_description`)."""
    from engine.metrics.resources import cpu_features_text  # after sys.path has the repo

    memory = f", {machine['memory_gb']} GB RAM" if "memory_gb" in machine else ""
    load = f", load average {machine['load_average'][0]} at the start" if "load_average" in machine else ""
    return (
        f"{machine.get('cpu')}{cpu_features_text(machine)}, {machine.get('cpus')} CPUs{memory}{load}; "
        f"GPU: {machine.get('gpu')}; "
        f"{machine.get('platform')}, Python {machine.get('python')}"
    )


def load_pyplot() -> Any:
    """pyplot for headless use, or None; import it before any GStreamer pipeline runs."""
    from engine.cli.bench.report import load_pyplot as load

    return load()
