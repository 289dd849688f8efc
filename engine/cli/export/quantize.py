"""CPU exports of an ONNX detector: OpenVINO IR (fp32 or NNCF int8) and ONNX Runtime static int8.

- ``--format openvino``: the ONNX model read by OpenVINO and saved as an IR (``.xml`` +
  ``.bin``) in fp32; the precision is chosen when it runs (bf16 on a CPU that has it, see
  :mod:`engine.backends.openvino`).
- ``--format openvino --int8 --calib SOURCE``: NNCF post-training quantization on frames of
  SOURCE, letterboxed exactly like inference (:func:`engine.ops.cpu.letterbox_batch`); a
  model with attention (YOLO11's C2PSA) is quantized with NNCF's transformer scheme.
- Either IR takes any batch: a model exported with a fixed batch of 1 gets its batch axis
  freed (:mod:`engine.cli.export.batch_axis`, checked against single runs), so a pipeline
  can give it several frames per call.
- An int8 export (or any with ``--input-size auto|HxW``) first fits a square model's input to
  the frames (:mod:`engine.cli.export.input_size`: 320x240 video into a 320 model gives
  256x320, about 1.2x the fps); ``--input-size square`` keeps the model's own.
- ``--format onnx --int8 --calib SOURCE`` on an ``.onnx`` model: ONNX Runtime static int8
  (QDQ, per-channel weights), after raising the opset to 13+ (per-channel QDQ needs it).

Both int8 paths keep the detection head (the last ``/model.N/`` module of an Ultralytics
export: box regression, DFL and class scores) in float: quantizing it collapses the box
distribution and the class scores (ONNX Runtime with the head quantized: recall 0.32).

Then the gate (:func:`engine.cli.export.parity.detection_agreement`): detections of the
export against the fp32 ONNX model under ONNX Runtime, on held-out frames (never used for
calibration), precision and recall of matched boxes at IoU >= 0.5 both >= 0.95, or the
export fails showing the numbers. An fp32 IR is gated in the precision it will run in.
The reference runs at the export's own input size, so the gate measures the precision alone;
a resized input is measured apart, against the square input in frame pixels, reported, and
refused below :data:`INPUT_AGREEMENT_MIN` (a broken rewrite, which the gate cannot see).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.cli.export.batch_axis import free_batch_axis
from engine.errors import ModelError
from engine.ops.cpu import letterbox_batch

logger = logging.getLogger(__name__)

#: The smallest opset whose QuantizeLinear/DequantizeLinear take per-channel scales.
QDQ_MIN_OPSET = 13
#: The opset an older model is converted to for ONNX Runtime static int8.
QDQ_OPSET = 17
_MODULE = re.compile(r"/model\.(\d+)/")
#: Least precision and recall of a resized input's fp32 detections against the square input's.
INPUT_AGREEMENT_MIN = 0.85


def split_frames(
    calib: Path, calib_count: int, check_count: int, check_source: Path | None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration frames and held-out check frames, never the same ones.

    Without ``check_source`` both come from ``calib``, evenly spread over it and
    interleaved; with it, the held-out frames come from there.
    """
    from engine.backends.trt_calibration import calibration_frames

    if check_source is not None:
        return calibration_frames(calib, limit=calib_count), calibration_frames(
            check_source, limit=check_count, role="check source"
        )
    frames = calibration_frames(calib, limit=calib_count + check_count)
    if len(frames) < 2:
        raise ModelError(f"{calib} has {len(frames)} frame(s): calibration and the check need 2 or more")
    held = min(check_count, len(frames) // 2)
    picks = set(np.linspace(1, len(frames) - 1, held).round().astype(int).tolist())
    return (
        [frame for index, frame in enumerate(frames) if index not in picks],
        [frames[index] for index in sorted(picks)],
    )


def head_prefix(node_names: Sequence[str]) -> str | None:
    """``/model.N/`` of the last module of an Ultralytics export (its Detect head), if any."""
    indices = [int(match.group(1)) for name in node_names if (match := _MODULE.search(name))]
    return f"/model.{max(indices)}/" if indices else None


def _blobs(frames: Sequence[np.ndarray], imgsz: tuple[int, int]) -> Iterator[np.ndarray]:
    for frame in frames:
        blob, _ = letterbox_batch([frame], imgsz)
        yield blob.copy()


def quantize_openvino(
    onnx_path: Path, output_xml: Path, calib_frames: Sequence[np.ndarray] | None, imgsz: tuple[int, int]
) -> Path:
    """Write ``output_xml`` (+ ``.bin``): the ONNX model as an fp32 IR, or NNCF int8 with frames.

    Raises:
        ModelError: OpenVINO cannot read the model, or NNCF fails.
    """
    from engine.backends.openvino import import_openvino

    ov = import_openvino()
    try:
        model = ov.Core().read_model(str(onnx_path))
    except RuntimeError as error:
        raise ModelError(f"OpenVINO cannot read {onnx_path}: {str(error).splitlines()[0]}") from error
    # Two different inputs (seeded noise: the check compares graph arithmetic, not detections).
    noise = np.random.default_rng(0).random((2, 1, 3, *imgsz), dtype=np.float32)
    model = free_batch_axis(model, list(noise))
    if calib_frames is not None:
        try:
            import nncf
        except ImportError as error:
            raise ModelError("int8 OpenVINO export needs NNCF: pip install 'vistream[openvino]'") from error

        blobs = list(_blobs(calib_frames, imgsz))
        prefix = head_prefix([op.get_friendly_name() for op in model.get_ordered_ops()])
        ignored = nncf.IgnoredScope(patterns=[f".*{re.escape(prefix)}.*"], validate=False) if prefix else None
        if prefix is None:
            logger.warning("%s has no /model.N/ node names: the detection head is quantized too", onnx_path)
        # YOLO11's C2PSA block is attention (MatMul, Softmax). NNCF's transformer scheme
        # quantizes such blocks the way they tolerate (SmoothQuant on the MatMuls, their
        # surrounding elementwise ops kept in float). Measured with YOLO11n, calibrated on
        # 256 overpass frames (P, R against fp32 on 48 held-out frames): overpass 0.967,
        # 0.978 -> 0.972, 0.967; motorway 0.929, 0.907 -> 0.957, 0.949, at the gate's edge
        # (README "CPU inference"); and about 10 % more model-only fps.
        attention = any(op.get_type_name() == "MatMul" for op in model.get_ordered_ops())
        extra: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER} if attention else {}
        logger.info(
            "NNCF int8 on %d frames, keeping %s in float%s",
            len(blobs),
            prefix or "nothing",
            " (attention found: transformer scheme)" if attention else "",
        )
        try:
            model = nncf.quantize(
                model,
                nncf.Dataset(blobs),
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(blobs),
                ignored_scope=ignored,
                **extra,
            )
        except Exception as error:  # NNCF wraps failures in many types
            raise ModelError(
                f"NNCF quantization of {onnx_path} failed: {type(error).__name__}: {error}"
            ) from error
    output_xml.parent.mkdir(parents=True, exist_ok=True)
    # fp32 weights: the precision is the runtime's choice (bf16 where the CPU has it).
    ov.save_model(model, str(output_xml), compress_to_fp16=False)
    return output_xml


class _Reader:
    """ONNX Runtime's CalibrationDataReader over letterboxed frames."""

    def __init__(self, input_name: str, blobs: list[np.ndarray]) -> None:
        self._items = iter([{input_name: blob} for blob in blobs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - not called for MinMax calibration
        pass


def _load_onnx(onnx_path: Path) -> Any:
    """``onnx.load`` with a one-line ModelError for a file that is not ONNX."""
    import onnx

    try:
        return onnx.load(str(onnx_path))
    except Exception as error:  # onnx raises DecodeError and others
        raise ModelError(f"cannot read {onnx_path} as ONNX: {error}") from error


def quantize_onnxruntime(
    onnx_path: Path, output: Path, calib_frames: Sequence[np.ndarray], imgsz: tuple[int, int]
) -> Path:
    """Write ``output``: ONNX Runtime static int8 (QDQ, per-channel), the head left in float.

    Raises:
        ModelError: The model cannot be read, converted or quantized.
    """
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = _load_onnx(onnx_path)
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_MIN_OPSET:
        logger.info("converting %s from opset %d to %d for per-channel QDQ", onnx_path.name, opset, QDQ_OPSET)
        model = version_converter.convert_version(model, QDQ_OPSET)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    prefix = head_prefix([node.name for node in model.graph.node])
    excluded = [node.name for node in model.graph.node if prefix and node.name.startswith(prefix)]
    input_name = model.graph.input[0].name
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vistream-qdq-") as scratch:
        converted = Path(scratch) / "opset.onnx"
        onnx.save(model, str(converted))
        try:
            quantize_static(
                str(converted),
                str(output),
                _Reader(input_name, list(_blobs(calib_frames, imgsz))),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=excluded,
            )
        except Exception as error:  # the quantizer raises many types
            raise ModelError(
                f"ONNX Runtime quantization of {onnx_path} failed: {type(error).__name__}: {error}"
            ) from error
    # The quantizer drops metadata_props: put back what the detect stage reads.
    quantized = onnx.load(str(output))
    onnx.helper.set_model_props(quantized, {**metadata, "quantization": "static int8 qdq"})
    onnx.save(quantized, str(output))
    return output


def openvino_output(source: Path, output: Path | None, int8: bool) -> Path:
    """The ``.xml`` path for ``-o`` (a directory or an ``.xml`` file) or its default."""
    if output is not None and output.suffix.lower() == ".xml":
        return output
    folder = output or source.parent / f"{source.stem}{'_int8' if int8 else ''}_openvino"
    return folder / f"{source.stem}.xml"


@dataclass
class CpuExport:
    """What :func:`export_cpu` wrote and measured.

    Attributes:
        output: The IR's ``.xml`` or the int8 ``.onnx``.
        gate: The :class:`~engine.cli.export.parity.AgreementReport` of the export against
            the fp32 model at the same input size (None with ``--no-check``).
        input_hw: The exported model's input (height, width).
        input_agreement: For a resized input only: the fp32 model at ``input_hw`` against
            the square source, compared in frame pixels (refused below
            :data:`INPUT_AGREEMENT_MIN`).
    """

    output: Path
    gate: Any
    input_hw: tuple[int, int]
    input_agreement: Any = None


def _resized_onnx(onnx_path: Path, hw: tuple[int, int], folder: Path) -> Path:
    """``onnx_path`` rewritten for an input of ``hw`` (:mod:`engine.cli.export.input_size`)."""
    import onnx

    from engine.cli.export.input_size import resize_yolo_input

    model = resize_yolo_input(_load_onnx(onnx_path), hw)
    resized = folder / f"{onnx_path.stem}_{hw[0]}x{hw[1]}.onnx"
    onnx.save(model, str(resized))
    logger.info(
        "input resized to %dx%d (height x width) from the square %s: letterbox padding only up "
        "to a multiple of 32, as Ultralytics' predictor does",
        hw[0],
        hw[1],
        onnx_path.name,
    )
    return resized


def _check_input_agreement(report: Any) -> None:
    """Refuse a resized input whose detections stray from the square input's.

    Two letterboxes of one network agree closely (YOLO11n, 320x256 against 320x320: 0.96 /
    0.95 on both traffic videos), so a lower agreement means the rewrite broke the model,
    which the int8 gate (against the fp32 model at the same, resized input) cannot see.
    """
    if report.reference_detections and min(report.precision, report.recall) < INPUT_AGREEMENT_MIN:
        raise ModelError(
            f"the resized input ({report.precision_name}) agrees with the square input only at "
            f"precision {report.precision:.3f} recall {report.recall:.3f} (< {INPUT_AGREEMENT_MIN}); "
            "export with --input-size square"
        )


def export_cpu(options: Any, onnx_path: Path, imgsz: int) -> CpuExport:
    """Run the OpenVINO or ONNX Runtime int8 export of ``options`` and its gate.

    Args:
        options: The :class:`engine.cli.export.model.ExportOptions`.
        onnx_path: The fp32 ONNX model (the source, or exported from it).
        imgsz: Its square input size.
    """
    from engine.backends.onnxruntime import OnnxRuntimeBackend
    from engine.cli.export.input_size import fitted_hw
    from engine.cli.export.model import check_frames
    from engine.cli.export.parity import detection_agreement

    check_source, check_role = options.check_source_role
    calib, held_out = None, None
    if options.int8:
        calib, held_out = split_frames(
            options.calib, options.calib_frames, options.gate_frames, options.check_source
        )
    elif (options.check or options.input_hw == "auto") and check_source is not None:
        held_out = check_frames(check_source, options.gate_frames, role=check_role)
    elif options.check:
        # Synthetic scenes hold no objects a trained detector finds: nothing to gate on.
        logger.warning("no frames to check %s on: give --check-source VIDEO", options.source.name)
    size = options.input_hw
    if size == "auto":
        hw = fitted_hw((frame.shape for frame in [*(calib or []), *(held_out or [])]), imgsz)
    else:
        hw = (imgsz, imgsz) if size == "square" else size
    with tempfile.TemporaryDirectory(prefix="vistream-input-") as scratch:
        model_path = onnx_path if hw == (imgsz, imgsz) else _resized_onnx(onnx_path, hw, Path(scratch))
        candidate: Any
        if options.format == "openvino":
            from engine.backends.openvino import OpenVinoBackend

            output = quantize_openvino(
                model_path, openvino_output(options.source, options.output, options.int8), calib, hw
            )
            candidate = OpenVinoBackend(output)
        else:
            if calib is None:  # pragma: no cover - validate() demands --calib with --int8
                raise ModelError("ONNX Runtime int8 needs calibration frames (--calib)")
            default = options.source.parent / f"{options.source.stem}_int8_qdq.onnx"
            output = quantize_onnxruntime(model_path, options.output or default, calib, hw)
            candidate = OnnxRuntimeBackend(output, intra_op_num_threads=1)
        logger.info("wrote %s", output)
        result = CpuExport(output=output, gate=None, input_hw=hw)
        if not options.check or held_out is None:
            return result
        reference = OnnxRuntimeBackend(model_path)
        try:
            candidate.load()
            name = "int8" if options.int8 else getattr(candidate, "inference_precision", "fp32")
            # The gate holds the export to the fp32 model at the same input: what it checks
            # is the precision. A resized input is a different letterbox, measured apart.
            result.gate = detection_agreement(
                reference,
                candidate,
                held_out,
                imgsz=hw,
                precision_name=name,
                confidence=options.check_confidence,
            )
            if model_path != onnx_path:
                square = OnnxRuntimeBackend(onnx_path)
                try:
                    result.input_agreement = detection_agreement(
                        square,
                        reference,
                        held_out,
                        imgsz=(imgsz, imgsz),
                        candidate_imgsz=hw,
                        precision_name=f"fp32 {hw[0]}x{hw[1]}",
                        confidence=options.check_confidence,
                    )
                finally:
                    square.close()
                _check_input_agreement(result.input_agreement)
        finally:
            reference.close()
            candidate.close()
    return result
