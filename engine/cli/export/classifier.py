"""Training-side export check: PyTorch classifier → ONNX (dynamic batch) → verified against PyTorch.

For people who train their own expression classifier (for example a torchvision ResNet-18
with 8 FER+ classes at 64×64 or 48×48) and want to run it in the ``emotion`` stage::

    report = export_and_verify(model, Path("fer8.onnx"), crops, height=64, width=64,
                               labels=FERPLUS_LABELS, color="rgb", scale=1 / 255,
                               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

1. :func:`check_exportable` runs the model once on the target size and fails with a clear
   :class:`~engine.errors.ModelError` on layers that cannot be exported at that size — an
   ``AdaptiveAvgPool2d``/``AdaptiveMaxPool2d`` whose output is neither 1×1 nor a divisor of
   its input (ONNX has no adaptive pooling; exporters lower it to a fixed pooling that only
   exists in those two cases).
2. :func:`export_classifier` exports with a dynamic batch axis and writes the metadata the
   ``emotion`` stage reads (``labels``, ``color``, ``scale``, ``mean``, ``std``, ``output``).
3. :func:`verify_export` feeds the same real face crops, preprocessed exactly as the stage
   will (from the exported metadata), to ONNX Runtime and PyTorch, at the full batch and at
   batch 1, and fails unless top-1 answers agree and the largest output difference is small.

torch is imported only inside the functions (it is an optional extra).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends import load_backend
from engine.errors import ModelError
from plugins.emotion_model import resolve_spec

logger = logging.getLogger(__name__)

#: The FER+ class list, in the order of the FER+ data set's columns.
FERPLUS_LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


@dataclass(frozen=True)
class ExportReport:
    """Result of comparing an exported model with its PyTorch original.

    Attributes:
        onnx_path: The exported file.
        faces: Number of crops compared.
        top1_agreement: Share of crops with the same top class in both runtimes.
        max_abs_diff: Largest absolute difference between the two runtimes' outputs.
        batch_consistent: ONNX outputs at batch 1 equal those at the full batch.
    """

    onnx_path: Path
    faces: int
    top1_agreement: float
    max_abs_diff: float
    batch_consistent: bool


def check_exportable(model: Any, *, channels: int, height: int, width: int) -> None:
    """Run the model once at the target size and reject layers that cannot be exported.

    Raises:
        ModelError: An adaptive pooling layer has an output that is neither 1×1 nor a divisor
            of its input at this size (the message names the layer and the sizes).
    """
    import torch

    problems: list[str] = []
    handles = []
    pools = (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)
    for name, module in model.named_modules():
        if isinstance(module, pools):
            handles.append(module.register_forward_hook(_pool_checker(name, problems)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, height, width))
    except RuntimeError as error:
        shape = f"1x{channels}x{height}x{width}"
        raise ModelError(f"the model does not run on a {shape} input: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
    if problems:
        raise ModelError(
            f"cannot export at input {height}x{width}: "
            + "; ".join(problems)
            + ". ONNX has no adaptive pooling: use an output of 1x1 (e.g. AdaptiveAvgPool2d(1)) "
            "or an input size whose feature map the output divides"
        )


def _pool_checker(name: str, problems: list[str]) -> Any:
    def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        in_h, in_w = (int(v) for v in inputs[0].shape[-2:])
        out_h, out_w = (int(v) for v in output.shape[-2:])
        if (out_h, out_w) != (1, 1) and (in_h % out_h or in_w % out_w):
            problems.append(
                f"layer '{name}' ({type(module).__name__}) maps a {in_h}x{in_w} feature map to "
                f"{out_h}x{out_w}, which does not divide it"
            )

    return hook


def export_classifier(
    model: Any,
    path: Path,
    *,
    height: int,
    width: int,
    labels: Sequence[str],
    color: str = "rgb",
    scale: float = 1 / 255,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    outputs_logits: bool = True,
    opset: int = 17,
) -> Path:
    """Export a classifier to ONNX with a dynamic batch axis and the emotion stage's metadata.

    Args:
        model: A ``torch.nn.Module`` mapping ``(N, C, H, W)`` float to ``(N, classes)``.
        path: Where to write the ``.onnx`` file.
        height: Input height in pixels.
        width: Input width in pixels.
        labels: Class names, in output order.
        color: ``gray`` (1 channel), ``rgb`` or ``bgr`` (3 channels).
        scale: Factor applied to 0..255 pixels.
        mean: Subtracted after scaling (1 value or 1 per channel).
        std: Divides after the mean (1 value or 1 per channel).
        outputs_logits: The model returns logits (the stage applies softmax) rather than
            probabilities.
        opset: ONNX opset.

    Returns:
        ``path``.

    Raises:
        ModelError: The model cannot be exported at this size (see :func:`check_exportable`)
            or the exporter failed.
    """
    import onnx
    import torch

    channels = 1 if color == "gray" else 3
    check_exportable(model, channels=channels, height=height, width=width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, channels, height, width)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            # The TorchScript-based exporter: the torch.export one needs onnxscript, an
            # extra dependency, and gives the same graph for plain CNN classifiers.
            torch.onnx.export(
                model.eval(),
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits" if outputs_logits else "probs"],
                dynamic_axes={"input": {0: "N"}, ("logits" if outputs_logits else "probs"): {0: "N"}},
            )
    except Exception as error:  # the exporter raises many unrelated types; report one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"ONNX export failed at {height}x{width}: {first_line}") from error
    document = onnx.load(str(path))
    metadata = {
        "labels": ",".join(labels),
        "color": color,
        "scale": repr(float(scale)),
        "mean": ",".join(repr(float(v)) for v in mean),
        "std": ",".join(repr(float(v)) for v in std),
        "output": "logits" if outputs_logits else "probs",
    }
    del document.metadata_props[:]
    for key, value in metadata.items():
        document.metadata_props.add(key=key, value=value)
    onnx.save(document, str(path))
    logger.info("exported %s (%dx%d, %d classes, dynamic batch)", path, width, height, len(labels))
    return path


def verify_export(
    model: Any, onnx_path: Path, crops: np.ndarray, *, max_abs_diff: float = 1e-3, min_agreement: float = 1.0
) -> ExportReport:
    """Compare ONNX Runtime with PyTorch on real face crops, preprocessed as the stage does.

    Args:
        model: The PyTorch original.
        onnx_path: The exported file (with the metadata :func:`export_classifier` writes).
        crops: ``(n, h, w, 3)`` uint8 BGR face crops (for example from the ``align`` stage).
        max_abs_diff: Largest accepted output difference between the runtimes.
        min_agreement: Smallest accepted share of equal top-1 answers.

    Raises:
        ModelError: The runtimes disagree beyond the tolerances, or the batch axis is not
            dynamic.
    """
    import torch

    if len(crops) == 0:
        raise ModelError("verify_export needs at least one face crop")
    backend = load_backend(Path(onnx_path), device="cpu")
    try:
        if not backend.inputs[0].dynamic_batch:
            shape = backend.inputs[0].shape
            raise ModelError(f"{onnx_path}: the batch axis is fixed ({shape}), expected dynamic")
        spec = resolve_spec(backend.inputs, backend.outputs, backend.metadata)
        tensor = spec.preprocess(crops)
        onnx_out = np.asarray(backend.run({spec.input_name: tensor})[spec.output_name])
        single = np.concatenate(
            [
                np.asarray(backend.run({spec.input_name: tensor[i : i + 1]})[spec.output_name])
                for i in range(len(tensor))
            ]
        )
    finally:
        backend.close()
    with torch.no_grad():
        torch_out = model.eval()(torch.from_numpy(tensor)).numpy()
    difference = float(np.abs(onnx_out - torch_out).max())
    agreement = float((onnx_out.argmax(axis=1) == torch_out.argmax(axis=1)).mean())
    consistent = bool(np.allclose(single, onnx_out, atol=max_abs_diff))
    report = ExportReport(Path(onnx_path), len(crops), agreement, difference, consistent)
    if agreement < min_agreement or difference > max_abs_diff or not consistent:
        raise ModelError(
            f"{onnx_path}: ONNX Runtime and PyTorch disagree on {len(crops)} face crops: top-1 agreement "
            f"{agreement:.3f} (need {min_agreement}), max abs diff {difference:.2e} "
            f"(need <= {max_abs_diff:.0e}), "
            f"batch-1 outputs equal full-batch outputs: {consistent}"
        )
    return report


def export_and_verify(model: Any, path: Path, crops: np.ndarray, **options: Any) -> ExportReport:
    """:func:`export_classifier` then :func:`verify_export` (tolerance options go to the latter)."""
    tolerances = {key: options.pop(key) for key in ("max_abs_diff", "min_agreement") if key in options}
    export_classifier(model, path, **options)
    return verify_export(model, path, crops, **tolerances)
