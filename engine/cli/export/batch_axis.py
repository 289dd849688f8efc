"""Freeing the batch axis of a detector exported with a fixed batch of 1, for OpenVINO.

An Ultralytics ONNX export without ``dynamic=True`` (this project's ``yolo11n_fp32_320.onnx``)
fixes the batch at 1 twice: in the input's shape, and inside the graph, where Reshape
nodes carry constant target shapes that start with 1 (YOLO11's attention block and its
detection head). OpenVINO's ``Model.reshape`` to a batch of N then fails on those.

Those Reshapes use ONNX's convention that a 0 in the target shape copies the input's
dimension (OpenVINO's ``special_zero``). So a leading 1 becomes a 0 wherever the Reshape's
input already has the batch as its first dimension, and the model then takes any batch.
Whether that was right is not assumed: :func:`free_batch_axis` runs two different inputs
as one batch of 2 and separately, and keeps the change only when the outputs agree.

Why it matters: several frames per model call run the model faster per frame (YOLO11n int8
at 320 on this 2-core machine: 3-6 % more model-only fps at batch 2-4) and spread the
per-call Python work over the frames, which is what lets many cameras share one CPU
(README "CPU inference").
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engine.backends.openvino import with_batch

logger = logging.getLogger(__name__)

#: Largest difference allowed between a batched output and the same input run alone
#: (float kernels may order their sums differently at another batch).
_TOLERANCE = 1e-3


def _batch_one_reshapes(model: Any, ov: Any) -> list[tuple[Any, np.ndarray]]:
    """The Reshapes whose constant target shape starts with the batch of 1 of their input."""
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Reshape" or not op.get_attributes().get("special_zero", False):
            continue
        shape_source = op.input_value(1).get_node()
        if shape_source.get_type_name() != "Constant":
            continue
        target = np.asarray(shape_source.get_data())
        data_shape = op.input_value(0).get_partial_shape()
        if target.ndim != 1 or target.size == 0 or target[0] != 1:
            continue
        if data_shape.rank.is_dynamic or len(data_shape) == 0 or data_shape[0] != ov.Dimension(1):
            continue
        found.append((op, target))
    return found


def _agrees(batched: Any, single: Any, blobs: list[np.ndarray], ov: Any) -> bool:
    """The batch-of-2 model gives what the batch-of-1 model gives, input by input."""
    core = ov.Core()
    one = core.compile_model(single, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    two = core.compile_model(batched, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    alone = [one.create_infer_request().infer({0: blob})[0] for blob in blobs]
    together = two.create_infer_request().infer({0: np.concatenate(blobs)})[0]
    difference = max(float(np.abs(together[i] - alone[i][0]).max()) for i in range(len(blobs)))
    logger.debug("batch axis check: largest output difference %.2e", difference)
    return difference <= _TOLERANCE


def free_batch_axis(model: Any, blobs: list[np.ndarray]) -> Any:
    """``model`` (an ``openvino.Model`` with one input) taking any batch, if it can.

    Args:
        model: Not changed.
        blobs: Two or more different model inputs of batch 1 to check the change with.

    Returns:
        A changed copy that takes any batch, or ``model`` itself when its batch already is
        free or must stay as it is (the reason is logged).
    """
    import openvino as ov
    from openvino import opset13

    if len(model.inputs) != 1 or len(blobs) < 2:
        return model
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or len(shape) == 0 or shape[0].is_dynamic:
        return model
    if shape[0] != ov.Dimension(1):
        logger.info("the model's batch is fixed at %s: left as it is", shape[0])
        return model
    candidate = model.clone()
    reshapes = _batch_one_reshapes(candidate, ov)
    for op, target in reshapes:
        copied = target.copy()
        copied[0] = 0  # special_zero: take the batch from the input
        op.input(1).replace_source_output(opset13.constant(copied).output(0))
    try:
        candidate = with_batch(candidate, None)
        agrees = _agrees(with_batch(candidate, 2), model, blobs[:2], ov)
    except RuntimeError as error:
        logger.info("the batch stays fixed at 1: %s", str(error).strip().splitlines()[0])
        return model
    if not agrees:
        logger.info("the batch stays fixed at 1: a batch of 2 did not match the inputs run alone")
        return model
    logger.info("batch axis freed (%d Reshape(s) now take the batch from their input)", len(reshapes))
    return candidate
