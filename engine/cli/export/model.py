"""``vistream export``: PyTorch/YAML → ONNX → TensorRT / OpenVINO, each export checked against its source.

- ``.pt`` (Ultralytics checkpoint) or ``.yaml`` (architecture, random weights) → ONNX with
  Ultralytics' own exporter (offline: ``YOLO_OFFLINE``/``YOLO_AUTOINSTALL`` default to off,
  see :mod:`engine.backends.ultralytics_env`), so the file carries the metadata the
  ``detect`` stage reads.
- ONNX → TensorRT with :mod:`engine.backends.trt_builder`, through the engine cache (an
  unchanged model on an unchanged GPU is never rebuilt). Not executed on this project's
  development machines (no TensorRT, no GPU).
- ONNX → OpenVINO IR (fp32, or NNCF int8 with ``--int8 --calib``) and ONNX → ONNX Runtime
  static int8 (``--format onnx --int8 --calib`` on an ``.onnx``): :mod:`engine.cli.export.quantize`,
  gated by precision/recall of detections against the fp32 model on held-out frames.
- Then the parity check (:mod:`engine.cli.export.parity`): the same frames through the source
  and the exported model; the command fails, showing the mismatch, when they disagree.

Frames for the check come from ``--check-source`` (a video or an image folder), else
``--calib``, else a synthetic scene generated here (good enough for the raw comparison,
which is what carries the check for random-weight ``.yaml`` models anyway).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.backends.engine_cache import EngineCache
from engine.backends.onnxruntime import OnnxRuntimeBackend
from engine.backends.tensorrt import TensorRTBackend, import_tensorrt
from engine.backends.torch import TorchBackend, ultralytics_metadata
from engine.backends.trt_builder import BuildOptions, batch_profile, build_cached
from engine.backends.trt_calibration import CalibrationBatches, calibration_frames
from engine.backends.ultralytics_env import import_ultralytics
from engine.cli.export.parity import compare_backends
from engine.errors import ConfigError, ModelError
from engine.sources.uri import mask_credentials, parse_uri

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".yaml", ".yml")
FORMATS = ("onnx", "engine", "openvino")
#: Held-out frames of the precision/recall gate of CPU int8/bf16 exports (without --check-frames).
GATE_FRAMES = 48


@dataclass(frozen=True)
class ExportOptions:
    """What ``vistream export`` was asked to do (see ``vistream export --help``)."""

    source: Path
    format: str = "onnx"
    output: Path | None = None
    imgsz: int | None = None
    dynamic: bool = False
    half: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_frames: int = 256
    batch: int = 1
    device: str | None = None
    workspace_gb: float | None = None
    cache_dir: Path | None = None
    check: bool = True
    check_source: Path | None = None
    check_frames: int | None = None  # None: 8 for the parity check, GATE_FRAMES for the gate
    check_confidence: float = 0.25
    # square, auto or HxW (engine.cli.export.input_size); None: auto for CPU int8 exports
    # (fitted to their --calib frames), square otherwise.
    input_size: str | None = None

    @property
    def input_hw(self) -> str | tuple[int, int]:
        """``square``, ``auto`` or (height, width): ``input_size``, or its default.

        Raises:
            ConfigError: ``input_size`` is none of those.
        """
        from engine.cli.export.input_size import parse_input_size

        if self.input_size is None:
            return "auto" if self.int8 and self.cpu_export else "square"
        return parse_input_size(self.input_size)

    @property
    def check_source_role(self) -> tuple[Path | None, str]:
        """The check's frame source and how errors name it.

        ``check_source``, else ``calib``, else None (synthetic frames).
        """
        if self.check_source is not None:
            return self.check_source, "check source"
        return self.calib, "calibration source"

    @property
    def parity_frames(self) -> int:
        """Frames of the anchor-by-anchor parity check (ONNX, TensorRT)."""
        return self.check_frames or 8

    @property
    def gate_frames(self) -> int:
        """Held-out frames of the precision/recall gate (OpenVINO, ONNX Runtime int8)."""
        return self.check_frames or GATE_FRAMES

    @property
    def cpu_export(self) -> bool:
        """True for the exports of :mod:`engine.cli.export.quantize`."""
        return self.format == "openvino" or (self.format == "onnx" and self.int8)

    @property
    def precision(self) -> str:
        """``int8``, ``fp16`` or ``fp32``."""
        return "int8" if self.int8 else "fp16" if self.half else "fp32"

    def validate(self) -> None:
        """Reject impossible combinations with a message naming them.

        Raises:
            ConfigError: An option is out of range or does not fit the others.
        """
        suffix = self.source.suffix.lower()
        if suffix not in (*TORCH_SUFFIXES, ".onnx"):
            raise ConfigError(f"cannot export {self.source}: expected a .pt, .yaml or .onnx model")
        if suffix != ".yaml" and suffix != ".yml" and not self.source.is_file():
            raise ConfigError(f"model file not found: {self.source}")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if suffix == ".onnx" and self.format == "onnx" and not self.int8:
            raise ConfigError(
                f"{self.source} is already ONNX; use --format engine to build a TensorRT engine, "
                f"--format openvino for OpenVINO, or --int8 --calib SOURCE for ONNX Runtime int8"
            )
        if self.int8 and self.half:
            raise ConfigError("choose one of --half and --int8")
        if self.int8 and self.format == "onnx" and suffix != ".onnx":
            raise ConfigError(
                "--int8 with --format onnx quantizes an .onnx model for ONNX Runtime: export to ONNX "
                "first, or use --format engine / openvino --calib SOURCE"
            )
        if self.int8 and self.calib is None:
            raise ConfigError(
                f"--int8 needs calibration frames: --format {self.format} --int8 --calib SOURCE"
            )
        if self.half and self.format == "openvino":
            raise ConfigError("--half does not apply to OpenVINO: the precision is chosen at run time")
        if self.half and self.format == "onnx" and not str(self.device or "cpu").startswith("cuda"):
            raise ConfigError(
                "an FP16 ONNX export runs on the GPU: add --device cuda (or use --format engine)"
            )
        if (
            self.batch < 1
            or (self.check_frames is not None and self.check_frames < 1)
            or self.calib_frames < 1
        ):
            raise ConfigError("--batch, --check-frames and --calib-frames must be positive")
        if self.imgsz is not None and (self.imgsz < 32 or self.imgsz % 32):
            raise ConfigError(f"--imgsz must be a positive multiple of 32, got {self.imgsz}")
        if self.workspace_gb is not None and self.workspace_gb <= 0:
            raise ConfigError(f"--workspace must be positive (GiB), got {self.workspace_gb}")
        if self.input_size is not None and self.input_hw != "square" and not self.cpu_export:
            raise ConfigError("--input-size applies to --format openvino and ONNX Runtime int8 exports")
        if self.input_hw == "auto" and self.calib is None and self.check_source is None:
            raise ConfigError("--input-size auto fits the input to frames: give --calib or --check-source")


@dataclass
class ExportResult:
    """What an export produced."""

    output: Path
    onnx: Path
    imgsz: tuple[int, int]
    built: bool | None = None  # engine exports: False when the engine came from the cache
    parity: Any = None  # ParityReport, or None with --no-check
    # A resized input (--input-size): its fp32 detections against the square source's.
    input_agreement: Any = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "output": str(self.output),
            "onnx": str(self.onnx),
            "imgsz": list(self.imgsz),
            "built": self.built,
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "input_agreement": self.input_agreement.to_dict() if self.input_agreement is not None else None,
        }


def load_yolo(source: Path) -> Any:
    """An Ultralytics ``YOLO`` object for a ``.pt`` checkpoint or a ``.yaml`` architecture."""

    ultralytics = import_ultralytics()
    try:
        return ultralytics.YOLO(str(source))
    except Exception as error:  # Ultralytics raises many types for unreadable models
        raise ModelError(f"Ultralytics cannot load {source}: {type(error).__name__}: {error}") from error


def _ultralytics_device(device: str) -> str:
    return "cpu" if device == "cpu" else device.split(":", 1)[1] if ":" in device else "0"


def export_onnx(
    yolo: Any,
    output: Path,
    *,
    imgsz: int,
    dynamic: bool = False,
    batch: int = 1,
    half: bool = False,
    device: str = "cpu",
) -> Path:
    """Export an Ultralytics model to ONNX at ``output`` with Ultralytics' exporter.

    The exporter writes next to its checkpoint (or into the working directory for a
    ``.yaml``); it is pointed at a temporary directory instead and the file moved after.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vistream-export-") as scratch:
        yolo.model.pt_path = str(Path(scratch) / f"{output.stem}.pt")  # where the exporter writes
        try:
            exported = yolo.export(
                format="onnx",
                imgsz=imgsz,
                dynamic=dynamic,
                batch=batch,
                half=half,
                device=_ultralytics_device(device),
                # onnxslim is optional; without it Ultralytics would try to install it.
                simplify=importlib.util.find_spec("onnxslim") is not None,
                verbose=False,
            )
        except Exception as error:  # the exporter wraps failures in many types
            raise ModelError(f"ONNX export failed: {type(error).__name__}: {error}") from error
        shutil.move(str(exported), output)
    logger.info("exported %s (%s batch, %dx%d)", output, "dynamic" if dynamic else batch, imgsz, imgsz)
    return output


def onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file.

    Raises:
        ModelError: The file is missing or not an ONNX model (one line, before ONNX Runtime
            parses it).
    """
    import onnxruntime as ort

    from engine.backends.model_check import check_onnx_file

    check_onnx_file(path)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def check_frames(source: Path | None, count: int, *, role: str = "check source") -> list[np.ndarray]:
    """BGR frames for the parity check: from a video/image folder, or a synthetic scene.

    ``role`` names ``source`` in errors (see :func:`calibration_frames`).
    """
    if source is not None:
        return calibration_frames(source, limit=count, role=role)
    rng = np.random.default_rng(0)
    frames = []
    for index in range(count):
        # A road-like scene: grey gradient, lane marks, coloured boxes ("vehicles"), noise.
        height, width = (480, 640) if index % 2 == 0 else (360, 640)
        ys = np.linspace(60, 160, height, dtype=np.float32)[:, None, None]
        frame = np.broadcast_to(ys, (height, width, 3)).astype(np.uint8).copy()
        cv2.line(frame, (width // 2, 0), (width // 2, height), (240, 240, 240), 4)
        for _ in range(6):
            x, y = int(rng.integers(0, width - 120)), int(rng.integers(0, height - 80))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.rectangle(
                frame, (x, y), (x + int(rng.integers(40, 120)), y + int(rng.integers(30, 80))), colour, -1
            )
        noise = rng.integers(0, 12, frame.shape, dtype=np.uint8)
        frame = cv2.add(frame, noise)  # type: ignore[assignment]
        frames.append(frame)
    return frames


def frames_path_argument(text: str) -> Path:
    """An argparse type for --calib, --check-source, ``bench model --source``: a video file or
    an image folder (a path or a file:// URI).

    Frames are spread over the whole of a finite source, so a camera or a stream is refused
    here, by name (``Path()`` would fold ``rtsp://host`` into ``rtsp:/host`` and report a
    missing file).
    """
    try:
        uri = parse_uri(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(f"needs a video file or an image folder ({error})") from None
    if uri.kind != "file":
        raise argparse.ArgumentTypeError(
            f"needs a video file or an image folder, not the {uri.kind} source "
            f"{mask_credentials(text)}: record a clip of it first"
        )
    return Path(uri.location)


def _square(imgsz: Any) -> int:
    text = str(imgsz).strip("[]() ")
    return int(text.split(",")[0])


def export_model(options: ExportOptions, *, raise_on_mismatch: bool = True) -> ExportResult:
    """Run one export and its parity check.

    Args:
        options: What to export.
        raise_on_mismatch: Raise when the parity check fails (else return the failed report).

    Raises:
        ConfigError: Invalid options.
        ModelError: The export failed, or the exported model does not match its source.
    """

    options.validate()
    if options.format == "engine":
        import_tensorrt()  # fail before a long ONNX export when TensorRT is missing
    result = _export_cpu(options) if options.cpu_export else _export_checked_by_parity(options)
    if raise_on_mismatch:
        raise_if_mismatch(result)
    return result


def _export_checked_by_parity(options: ExportOptions) -> ExportResult:
    """ONNX or TensorRT, checked anchor by anchor against the source model."""
    source = options.source
    device = options.device or ("cuda" if options.format == "engine" else "cpu")
    from_torch = source.suffix.lower() in TORCH_SUFFIXES
    default_output = (Path.cwd() if source.suffix.lower() != ".pt" else source.parent) / source.stem
    output = options.output or default_output.with_suffix(f".{options.format}")
    if from_torch:
        yolo = load_yolo(source)
        imgsz = options.imgsz or _square(ultralytics_metadata(yolo.model)["imgsz"])
        onnx_path = output if options.format == "onnx" else output.with_suffix(".onnx")
        export_onnx(
            yolo,
            onnx_path,
            imgsz=imgsz,
            dynamic=options.dynamic,
            batch=options.batch,
            half=options.half and options.format == "onnx",
            device=device,
        )
        metadata = ultralytics_metadata(yolo.model, (imgsz, imgsz))
        # The reference is the FP32 source model: the truth an FP16/INT8 export is held to.
        reference_device = device if device.startswith("cuda") else "cpu"
        reference: Any = (
            TorchBackend(source, device=reference_device, imgsz=imgsz)
            if source.suffix.lower() == ".pt"
            else TorchBackend.from_module(yolo.model, metadata=metadata, device=reference_device)
        )
    else:
        onnx_path = source
        imgsz = options.imgsz or _square(onnx_metadata(source).get("imgsz", 640))
        reference = OnnxRuntimeBackend(source)

    result = ExportResult(output=output, onnx=onnx_path, imgsz=(imgsz, imgsz))
    if options.format == "engine":
        result.built = _build_engine(options, onnx_path, output, imgsz, device)

        candidate: Any = TensorRTBackend(output, device=device)
    else:
        candidate = OnnxRuntimeBackend(onnx_path, device="cuda" if options.half else "cpu")

    if options.check:
        check_source, check_role = options.check_source_role
        frames = check_frames(check_source, options.parity_frames, role=check_role)
        try:
            result.parity = compare_backends(
                reference,
                candidate,
                frames,
                imgsz=(imgsz, imgsz),
                precision=options.precision,
                confidence=options.check_confidence,
            )
        finally:
            reference.close()
            candidate.close()
        (logger.debug if result.parity.passed else logger.error)("%s", result.parity.summary())
    return result


def _export_cpu(options: ExportOptions) -> ExportResult:
    """OpenVINO IR or ONNX Runtime int8 (:mod:`engine.cli.export.quantize`), from ONNX."""
    from engine.cli.export.quantize import export_cpu, openvino_output

    source = options.source
    if source.suffix.lower() in TORCH_SUFFIXES:
        from engine.backends.torch import ultralytics_metadata

        yolo = load_yolo(source)
        imgsz = options.imgsz or _square(ultralytics_metadata(yolo.model)["imgsz"])
        onnx_path = openvino_output(source, options.output, options.int8).with_suffix(".onnx")
        export_onnx(yolo, onnx_path, imgsz=imgsz, device="cpu")
    else:
        onnx_path = source
        imgsz = options.imgsz or _square(onnx_metadata(source).get("imgsz", 640))
    export = export_cpu(options, onnx_path, imgsz)
    result = ExportResult(
        output=export.output,
        onnx=onnx_path,
        imgsz=export.input_hw,
        parity=export.gate,
        input_agreement=export.input_agreement,
    )
    if export.gate is not None:
        (logger.info if export.gate.passed else logger.error)("%s", export.gate.summary())
    if export.input_agreement is not None:
        logger.info("%s", input_agreement_line(export.input_agreement))
    return result


def input_agreement_line(report: Any) -> str:
    """One line on a resized input's fp32 detections against the square source's."""
    from engine.cli.export.quantize import INPUT_AGREEMENT_MIN

    return (
        f"input {report.precision_name} against the square input (fp32, in frame pixels; "
        f"refused below {INPUT_AGREEMENT_MIN}): precision {report.precision:.3f} recall {report.recall:.3f} "
        f"(matched {report.matched} of {report.reference_detections}, {report.candidate_detections})"
    )


def raise_if_mismatch(result: ExportResult) -> None:
    """Raise a one-line :class:`ModelError` naming the first mismatch of a failed check.

    The refused model is first renamed aside (``m.xml`` -> ``m.xml.refused``, its ``.bin``
    too), so nothing loads it by the name that was asked for, and nothing that looks for
    ``*.xml`` / ``*.onnx`` / ``*.engine`` finds it; it is kept for inspection, not deleted
    (a TensorRT build can take minutes).
    """
    if result.parity is None or result.parity.passed:
        return
    problems = result.parity.problems
    more = f" (and {len(problems) - 1} more; see the report above)" if len(problems) > 1 else ""
    kept = _rename_refused(result.output)
    where = f"; kept as {kept.name} (rename it back to load it anyway)" if kept is not None else ""
    raise ModelError(f"parity check failed for {result.output}: {problems[0]}{more}{where}")


def _rename_refused(output: Path) -> Path | None:
    """Rename a refused model file (and an IR's weights) to ``<name>.refused``; None if absent."""
    files = [output] + ([output.with_suffix(".bin")] if output.suffix.lower() == ".xml" else [])
    try:
        if not output.is_file():
            return None
        for path in files:
            if path.is_file():
                path.replace(path.with_name(f"{path.name}.refused"))
    except OSError as error:  # the refusal itself must still be raised, with its numbers
        logger.warning("could not rename the refused model %s aside: %s", output, error)
        return None
    return output.with_name(f"{output.name}.refused")


def _build_engine(options: ExportOptions, onnx_path: Path, output: Path, imgsz: int, device: str) -> bool:
    profile = batch_profile(options.batch, dynamic=options.dynamic)
    workspace = int(options.workspace_gb * (1 << 30)) if options.workspace_gb else None
    build = BuildOptions(
        precision=options.precision, profile=profile, imgsz=(imgsz, imgsz), workspace_bytes=workspace
    )
    calibration = None
    if options.int8 and options.calib is not None:
        frames = calibration_frames(options.calib, limit=options.calib_frames)
        calibration = CalibrationBatches(frames, (imgsz, imgsz), batch_size=profile.opt)
    cached, built = build_cached(
        onnx_path,
        build,
        metadata=onnx_metadata(onnx_path),
        cache=EngineCache(options.cache_dir),
        device=device,
        calibration=calibration,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    if cached.resolve() != output.resolve():
        shutil.copyfile(cached, output)
    logger.info("%s engine %s (%s)", "built" if built else "reused cached", output, cached.name)
    return built


def add_subcommand(subparsers: Any) -> None:
    """Add ``vistream export``."""
    parser = subparsers.add_parser(
        "export",
        help="export a YOLO model to ONNX, TensorRT or OpenVINO and check it against its source",
        description="Export a YOLO model (.pt, .yaml) to ONNX, or an ONNX model to a TensorRT engine, "
        "an OpenVINO IR (fp32 or NNCF int8) or ONNX Runtime static int8, then run the same frames "
        "through the source and the export and fail on any mismatch (int8/bf16: precision and recall "
        "of detections >= 0.95 on held-out frames).",
    )
    parser.add_argument("model", type=Path, help="a .pt checkpoint, a .yaml architecture or an .onnx model")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help="onnx (default; with --int8 on an .onnx: ONNX Runtime static int8), engine (TensorRT), "
        "openvino (IR; OUT a directory or an .xml)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="output file (default: beside the model)"
    )
    parser.add_argument("--imgsz", type=int, default=None, help="square input size (default: the model's)")
    parser.add_argument(
        "--input-size",
        default=None,
        help="openvino / ONNX Runtime int8: auto (fit the frames: a 320x240 video into a 320 model -> "
        "256x320, about 1.2x faster; the default with --int8), square (the model's; the default "
        "without --int8) or HEIGHTxWIDTH",
    )
    parser.add_argument(
        "--dynamic", action="store_true", help="dynamic batch axis (engine: profile 1..--batch)"
    )
    parser.add_argument(
        "--half", action="store_true", help="FP16 (engine, or ONNX exported on --device cuda)"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="INT8 (TensorRT, OpenVINO/NNCF or ONNX Runtime), calibrated on --calib",
    )
    parser.add_argument(
        "--calib", type=frames_path_argument, default=None, help="video or image folder for INT8 calibration"
    )
    parser.add_argument("--calib-frames", type=int, default=256, help="calibration frames at most (256)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (the maximum with --dynamic) (1)")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cpu for onnx, cuda for engine)"
    )
    parser.add_argument("--workspace", type=float, default=None, help="TensorRT builder workspace in GiB")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="engine cache (default ~/.cache/vistream)"
    )
    parser.add_argument(
        "--check-source", type=frames_path_argument, default=None, help="video or image folder for the check"
    )
    parser.add_argument(
        "--check-frames",
        type=int,
        default=None,
        help=f"frames compared in the parity check (8; held-out frames of the int8/bf16 gate: {GATE_FRAMES})",
    )
    parser.add_argument(
        "--check-confidence", type=float, default=0.25, help="detection threshold of the check"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")
    parser.add_argument(
        "--report", type=Path, default=None, help="write the result (and parity) as JSON here"
    )
    parser.set_defaults(handler=_export_command)


def _export_command(args: argparse.Namespace) -> int:
    options = ExportOptions(
        source=args.model,
        format=args.format,
        output=args.output,
        imgsz=args.imgsz,
        dynamic=args.dynamic,
        half=args.half,
        int8=args.int8,
        calib=args.calib,
        calib_frames=args.calib_frames,
        batch=args.batch,
        device=args.device,
        workspace_gb=args.workspace,
        cache_dir=args.cache_dir,
        check=not args.no_check,
        check_source=args.check_source,
        check_frames=args.check_frames,
        check_confidence=args.check_confidence,
        input_size=args.input_size,
    )
    result = export_model(options, raise_on_mismatch=False)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result.to_dict(), indent=2))
    raise_if_mismatch(result)
    print(f"exported {result.output}")
    if result.parity is not None:
        print(result.parity.summary())
    if result.input_agreement is not None:
        print(input_agreement_line(result.input_agreement))
    return 0
