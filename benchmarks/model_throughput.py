"""YOLO11n throughput per batch size: bare model vs the ``detect`` stage, ONNX and PyTorch.

Builds YOLO11n from ``yolo11n.yaml`` offline (random weights: speed does not depend on
them), exports a dynamic-batch ONNX at ``--imgsz``, and runs :mod:`engine.cli.bench.model` on
each requested format at each batch size. Every run writes ``model_bench.json`` and
``model_bench.png`` under ``--out/<format>/``; a Markdown table of images/s is printed.

CPU (this project's CI machines)::

    python benchmarks/model_throughput.py --out out/model_bench --imgsz 320 --batch 1,8,32

GPU (the numbers the README asks for: FP16 PyTorch, frames already on the GPU)::

    python benchmarks/model_throughput.py --out out/model_bench_gpu --device cuda --half \\
        --imgsz 640 --batch 1,2,4,8,16,32,64 --formats pt --frames-on-device
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts the repository root on sys.path)
from common import DEFAULT_VIDEO, default_shared, offline_ultralytics


def main() -> int:
    """Export the model, benchmark every format, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true", help="FP16 (PyTorch on CUDA)")
    parser.add_argument("--formats", default="onnx,pt", help="comma-separated: onnx, pt")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--frames-on-device", action="store_true")
    args = parser.parse_args()
    offline_ultralytics()

    from engine.cli.bench.model import ModelBenchOptions, bench_model, parse_batches, render_table
    from engine.cli.export.model import export_onnx, load_yolo

    video = default_shared() / DEFAULT_VIDEO
    source = video if video.is_file() else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="model-throughput-") as scratch:
        yolo = load_yolo(Path("yolo11n.yaml"))
        models = {"pt": Path(scratch) / "yolo11n.pt"}
        yolo.save(models["pt"])
        if "onnx" in args.formats:
            models["onnx"] = export_onnx(
                load_yolo(models["pt"]),
                Path(scratch) / "yolo11n.onnx",
                imgsz=args.imgsz,
                dynamic=True,
                batch=1,
            )
        for name in args.formats.split(","):
            report = bench_model(
                ModelBenchOptions(
                    model=models[name],
                    out_dir=args.out / name,
                    batches=parse_batches(args.batch),
                    device=args.device,
                    imgsz=args.imgsz,
                    iterations=args.iterations,
                    source=source,
                    threads=args.threads,
                    half=args.half and name == "pt",
                    frames_on_device=args.frames_on_device,
                )
            )
            print(render_table(report))
            for entry in report["results"]:
                rows.append(
                    (
                        name,
                        entry["batch"],
                        entry["model"]["images_per_s"],
                        entry["stage"]["images_per_s"],
                        entry["stage_over_model"],
                    )
                )
    print("\n| format | batch | model images/s | detect images/s | detect / model |")
    print("|---|---:|---:|---:|---:|")
    for name, batch, model, stage, ratio in rows:
        print(f"| {name} | {batch} | {model:.1f} | {stage:.1f} | {ratio:.2f} |")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
