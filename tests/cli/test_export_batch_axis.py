"""The OpenVINO export frees the batch axis of a model exported with a batch of 1."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.cli.export.batch_axis import free_batch_axis
from tests.conftest import shared_path

pytestmark = pytest.mark.openvino


def _read(path: str) -> Any:
    import openvino as ov

    return ov.Core().read_model(str(shared_path(path)))


def _outputs(model: Any, blob: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled.create_infer_request().infer({0: blob})[0]


def test_a_fixed_batch_yolo_takes_any_batch_with_the_same_outputs() -> None:
    model = _read("models/yolo11n_fp32_320.onnx")
    with pytest.raises(RuntimeError):  # the attention block's Reshape pins the batch at 1
        model.clone().reshape([3, 3, 320, 320])
    blobs = list(np.random.default_rng(1).random((3, 1, 3, 320, 320), dtype=np.float32))

    freed = free_batch_axis(model, blobs)

    assert freed is not model and freed.inputs[0].get_partial_shape()[0].is_dynamic
    assert model.inputs[0].get_partial_shape()[0].get_length() == 1  # the original is untouched
    together = _outputs(freed, np.concatenate(blobs))
    assert together.shape == (3, 84, 2100)
    for i, blob in enumerate(blobs):
        np.testing.assert_allclose(together[i], _outputs(model, blob)[0], atol=1e-3)


def test_a_free_or_unusable_batch_is_left_alone() -> None:
    model = _read("models/yolo11n_fp32_320.onnx")
    blobs = list(np.random.default_rng(2).random((2, 1, 3, 320, 320), dtype=np.float32))
    freed = free_batch_axis(model, blobs)
    assert free_batch_axis(freed, blobs) is freed  # already free
    assert free_batch_axis(model, blobs[:1]) is model  # nothing to check the change with
