"""The CPU configurations of ``compare.py``: vistream on ONNX Runtime / OpenVINO, their ceilings.

Tools (each run in its own process by ``compare.py``, alternating, medians of the rounds):

- ``vs_ort`` / ``vs_ov`` / ``vs_ov_int8``: the shipped ``default`` pipeline (detect + ByteTrack,
  every class, as ``vistream run VIDEO --no-video``) with the shared fp32 ONNX on ONNX Runtime,
  the same ONNX on OpenVINO (``backend: openvino``, precision ``auto``: bf16 on a CPU with
  AVX-512 BF16 or AMX, f32 otherwise), and the NNCF int8 IR from ``vistream export --format
  openvino --int8`` (its input fitted to the video's frames, the export's default);
  ``vs_ov_int8_square``: the int8 IR at the model's square input (``--input-size square``);
- ``ceiling_ort`` / ``ceiling_ov`` / ``ceiling_ov_int8``: the same backend alone, one thread
  per call, on the same frames, letterbox included, decoding not (frames are decoded before
  the clock starts); with 2 and 3 one-frame calls at once, and (for a model that takes any
  batch, as the int8 export does) 2 and 3 calls of 3 frames (the shipped ``default`` runs
  ``batch_size: 3``, ``workers: 3``): the fastest is the ceiling;
- ``ul_onnx``: Ultralytics ``YOLO(onnx).track(video, stream=True, tracker="bytetrack.yaml")``
  with the pipeline's thresholds (confidence 0.25, NMS IoU 0.7, every class);
- ``ul_openvino``: the same on Ultralytics' own OpenVINO layout (``*_openvino_model/`` with
  ``metadata.yaml``), which Ultralytics runs through its OpenVINO backend (precision chosen
  as for ``vs_ov``).
  Ultralytics' exporter needs the ``.pt`` checkpoint, which does not exist offline for these
  weights, so the directory is written here exactly as the exporter writes it (IR converted
  by OpenVINO, fp32 weights, the model's metadata as YAML) from the shared ONNX.
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CPU_TOOLS = (
    "vs_ort",
    "vs_ov",
    "vs_ov_int8",
    "vs_ov_int8_square",
    "ceiling_ort",
    "ceiling_ov",
    "ceiling_ov_int8",
    "ceiling_ov_int8_square",
    "ul_onnx",
    "ul_openvino",
)
DESCRIPTIONS = {
    "vs_ort": "vistream `default` (detect + track), ONNX Runtime fp32",
    "vs_ov": "vistream `default`, OpenVINO auto (bf16 where the CPU has it, else f32)",
    "vs_ov_int8": "vistream `default`, OpenVINO NNCF int8 (input fitted to the video: 256x320)",
    "vs_ov_int8_square": "vistream `default`, OpenVINO NNCF int8 at the model's square 320x320",
    "ceiling_ort": "model only, ONNX Runtime fp32 (best of 2 or 3 calls of 1 or 3 frames; letterbox incl.)",
    "ceiling_ov": "model only, OpenVINO auto (bf16 or f32, as above)",
    "ceiling_ov_int8": "model only, OpenVINO int8 (256x320)",
    "ceiling_ov_int8_square": "model only, OpenVINO int8 (320x320)",
    "ul_onnx": "Ultralytics `track()` on the same ONNX",
    "ul_openvino": "Ultralytics `track()` on its OpenVINO model",
}
CONFIDENCE = 0.25
IOU = 0.7


def prepare_models(onnx: Path, video: Path, folder: Path) -> dict[str, Path]:
    """The int8 IRs (through ``vistream export``, gate included) and Ultralytics' OpenVINO folder.

    ``int8`` is the export's default, its input fitted to the video's frames (256x320 for the
    320x240 traffic videos); ``int8_square`` keeps the model's square input. Both are exported
    with ``vistream export``'s own defaults (256 calibration frames, 48 held-out frames for the
    gate), so the benchmark runs the model a user gets; an export that fails its gate raises
    (ModelError) and is renamed ``*.refused``, so no run times a refused model.
    """
    from engine.cli.export.model import ExportOptions, export_model

    folder.mkdir(parents=True, exist_ok=True)
    models = {"ul_openvino": ultralytics_openvino_folder(onnx, folder)}
    for name, input_size in (("int8", None), ("int8_square", "square")):
        models[name] = folder / name / f"{onnx.stem}.xml"
        if not models[name].is_file():
            options = ExportOptions(
                source=onnx,
                format="openvino",
                int8=True,
                calib=video,
                output=models[name],
                input_size=input_size,
            )
            export_model(options)
    return models


def ultralytics_openvino_folder(onnx: Path, folder: Path) -> Path:
    """``<stem>_openvino_model/`` as Ultralytics' exporter lays it out (IR + metadata.yaml)."""
    target = folder / f"{onnx.stem}_openvino_model"
    xml = target / f"{onnx.stem}.xml"
    if xml.is_file():
        return target
    import openvino as ov
    import yaml

    from engine.cli.export.model import onnx_metadata

    target.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)
    metadata: dict[str, Any] = {}
    for key, value in onnx_metadata(onnx).items():
        try:
            metadata[key] = (
                ast.literal_eval(value)
                if key in ("names", "imgsz", "stride", "batch", "channels", "args", "end2end")
                else value
            )
        except (ValueError, SyntaxError):
            metadata[key] = value
    (target / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    return target


def pipeline_yaml(model: Path, out: Path, *, backend: str | None) -> Path:
    """The ``default`` pipeline on ``model`` (no drawing: the run is ``--no-video``)."""
    lines = [
        "device: cpu",
        "batch_size: 3",
        "workers: 3",
        "on_error: fail",
        "stages:",
        "  - stage: detect",
        f"    model: {model}",
        f"    confidence: {CONFIDENCE}",
    ]
    if backend is not None:
        lines.append(f"    backend: {backend}")
    lines.append("  - stage: track")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def child_ceiling(
    video: Path,
    model: Path,
    frames: int,
    warmup: int,
    *,
    backend: str | None,
    shapes: tuple[tuple[int, int], ...] = ((2, 1), (3, 1), (2, 3), (3, 3)),
) -> dict[str, Any]:
    """The backend alone, one thread per call, letterbox included; the best of ``shapes``.

    Each shape is (calls at once, frames per call). Every way the pipeline could keep the
    cores busy is tried on the same loaded model: two one-thread calls on two cores, three
    so one waits its turn, and two or three calls of three frames (the shipped ``default``
    runs ``batch_size: 3, workers: 3``; only for a model that takes any batch). The fastest
    is the ceiling: a pipeline figure is never compared with a ceiling set lower than it
    could be.
    """
    import common

    from engine.backends import load_backend
    from engine.ops.cpu import letterbox_batch

    pictures = common.decode_all(video, limit=frames)
    runner = load_backend(model, backend=backend, intra_op_num_threads=1)
    spec = runner.inputs[0]
    size_hw = (int(spec.shape[2] or 320), int(spec.shape[3] or 320))
    any_batch = spec.shape[0] is None

    def run_all(indices: range, workers: int, per_call: int) -> tuple[float, list[float]]:
        latency_ms: list[list[float]] = [[] for _ in range(workers)]

        def work(worker: int) -> None:
            buffer = np.empty((per_call, 3, *size_hw), np.float32)
            mine = list(indices[worker::workers])
            for start in range(0, len(mine), per_call):
                begin = time.perf_counter()
                batch = [pictures[index] for index in mine[start : start + per_call]]
                blob, _ = letterbox_batch(batch, size_hw, out=buffer)
                runner.run({spec.name: blob})
                latency_ms[worker].extend([(time.perf_counter() - begin) * 1e3] * len(batch))

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(workers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started, [value for values in latency_ms for value in values]

    best: dict[str, Any] = {}
    for workers, per_call in shapes:
        if per_call > 1 and not any_batch:
            continue
        run_all(range(min(warmup, len(pictures))), workers, per_call)
        seconds, timed = run_all(range(warmup, len(pictures)), workers, per_call)
        if not best or len(timed) / seconds > best["frames"] / best["seconds"]:
            best = {
                "frames": len(timed),
                "seconds": seconds,
                "latency_ms": timed,
                "unique_ids": None,
                "calls_at_once": workers,
                "frames_per_call": per_call,
            }
    runner.close()
    return best


def run_cpu_tool(tool: str, args: Any, child_vistream: Any) -> dict[str, Any]:
    """One tool of :data:`CPU_TOOLS` in this (child) process."""
    import common

    models = prepare_models(args.model.resolve(), args.video, (args.out.parent.parent / "models").resolve())
    model, backend = {
        "ort": (args.model, None),
        "ov": (args.model, "openvino"),
        "ov_int8": (models["int8"], None),
        "ov_int8_square": (models["int8_square"], None),
    }.get(tool.split("_", 1)[1], (args.model, None))
    if tool.startswith("vs_"):
        yaml_path = pipeline_yaml(model, args.out, backend=backend)
        return child_vistream(args.video, args.frames, args.warmup, args.out, False, pipeline=str(yaml_path))  # type: ignore[no-any-return]
    if tool.startswith("ceiling_"):
        return child_ceiling(args.video, model, args.frames, args.warmup, backend=backend)
    target = models["ul_openvino"] if tool == "ul_openvino" else args.model
    return common.time_ultralytics_track(
        args.video, target, frames=args.frames, warmup=args.warmup, confidence=CONFIDENCE, iou=IOU, imgsz=320
    )
