"""engine.backends: choosing a backend by suffix, and the ONNX Runtime backend."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from engine.backends import load_backend
from engine.backends.base import TensorSpec
from engine.backends.onnxruntime import OnnxRuntimeBackend
from engine.errors import ConfigError, ModelError
from tests.conftest import shared_path

YOLO_MODELS = ["yolo11n_fp32_320.onnx", "yolo11n_int8_320.onnx"]


def _shared_model(name: str) -> Path:
    return shared_path(f"models/{name}")


def _identity_model(tmp_path: Path, elem_type: int, shape: list[int | str], name: str = "m.onnx") -> Path:
    """A one-node ONNX model (Identity) with the given input type and shape."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"purpose": "test"})
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("name", YOLO_MODELS)
def test_loads_shared_yolo_models(name: str) -> None:
    backend = load_backend(_shared_model(name))
    try:
        assert isinstance(backend, OnnxRuntimeBackend)
        assert str(backend.device) == "cpu"
        assert backend.inputs == [TensorSpec("images", (1, 3, 320, 320), "float32")]
        assert backend.outputs == [TensorSpec("output0", (1, 84, 2100), "float32")]
        assert not backend.inputs[0].dynamic_batch
        names = ast.literal_eval(backend.metadata["names"])
        assert len(names) == 80 and names[2] == "car"
        assert backend.metadata["task"] == "detect"
        out = backend.run({"images": np.full((1, 3, 320, 320), 0.5, np.float32)})
        assert list(out) == ["output0"]
        assert out["output0"].shape == (1, 84, 2100) and out["output0"].dtype == np.float32
    finally:
        backend.close()


def test_dynamic_batch_model_specs() -> None:
    backend = load_backend(_shared_model("emotion_mini_xception_fer2013_7cls.onnx"))
    assert backend.inputs == [TensorSpec("input", (None, 1, 64, 64), "float32")]
    assert backend.inputs[0].dynamic_batch
    assert backend.outputs == [TensorSpec("probs", (None, 7), "float32")]
    probs = backend.run({"input": np.zeros((3, 1, 64, 64), np.float32)})["probs"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("elem_type", "dtype"),
    [
        (TensorProto.FLOAT, "float32"),
        (TensorProto.FLOAT16, "float16"),
        (TensorProto.DOUBLE, "float64"),
        (TensorProto.INT64, "int64"),
        (TensorProto.UINT8, "uint8"),
        (TensorProto.BOOL, "bool"),
    ],
)
def test_dtype_names_and_symbolic_dims(tmp_path: Path, elem_type: int, dtype: str) -> None:
    backend = load_backend(_identity_model(tmp_path, elem_type, ["batch", 3, "width"]))
    assert backend.inputs == [TensorSpec("x", (None, 3, None), dtype)]
    assert backend.metadata == {"purpose": "test"}
    value = np.ones((2, 3, 5), dtype=dtype)
    np.testing.assert_array_equal(backend.run({"x": value})["y"], value)


def test_construction_is_cheap_and_loading_is_lazy(tmp_path: Path) -> None:
    path = tmp_path / "later.onnx"
    backend = OnnxRuntimeBackend(path, device="cpu", intra_op_num_threads=1)  # no file yet: fine
    _identity_model(tmp_path, TensorProto.FLOAT, [2], name="later.onnx")
    assert backend.inputs[0].shape == (2,)  # first use loads
    backend.close()
    np.testing.assert_array_equal(backend.run({"x": np.array([1.0, 2.0], np.float32)})["y"], [1.0, 2.0])


def test_thread_options(tmp_path: Path) -> None:
    path = _identity_model(tmp_path, TensorProto.FLOAT, [2])
    backend = load_backend(path, intra_op_num_threads=1, inter_op_num_threads=1)
    assert backend.run({"x": np.zeros(2, np.float32)})["y"].shape == (2,)
    with pytest.raises(ConfigError, match="intra_op_num_threads: expected a positive integer"):
        load_backend(path, intra_op_num_threads=0)


def test_none_options_are_left_at_defaults(tmp_path: Path) -> None:
    path = _identity_model(tmp_path, TensorProto.FLOAT, [2])
    assert load_backend(path, intra_op_num_threads=None).inputs[0].name == "x"


def test_unknown_option_is_a_config_error(tmp_path: Path) -> None:
    path = _identity_model(tmp_path, TensorProto.FLOAT, [2])
    with pytest.raises(ConfigError, match=r"does not accept option\(s\) fp16; valid: intra_op_num_threads"):
        load_backend(path, fp16=True)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match=f"model file not found: {missing}"):
        load_backend(missing)


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a protobuf \x00\x01\x02")
    with pytest.raises(ModelError) as caught:
        load_backend(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not a valid ONNX model: ")  # found before ONNX Runtime
    assert "\n" not in message


def test_unknown_suffix_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"unsupported model file type '\.tflite'.*supported: .*\.onnx"):
        load_backend(path)


@pytest.mark.parametrize(
    ("suffix", "device", "error", "match"),
    [
        (".engine", "cpu", ConfigError, "the TensorRT backend needs a CUDA device"),
        (".plan", "cpu", ConfigError, "the TensorRT backend needs a CUDA device"),
        (".pt", "cpu", ModelError, "cannot load .*model.pt with PyTorch"),
        (".torchscript", "cpu", ModelError, "cannot load .*model.torchscript with PyTorch"),
    ],
)
def test_other_suffixes_pick_their_backends(
    tmp_path: Path, suffix: str, device: str, error: type[Exception], match: str
) -> None:
    pytest.importorskip("torch")
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"x")
    with pytest.raises(error, match=match):
        load_backend(path, device=device)


def test_cuda_without_the_cuda_provider(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA execution provider")
    path = _identity_model(tmp_path, TensorProto.FLOAT, [2])
    with pytest.raises(
        ModelError, match="needs ONNX Runtime's CUDAExecutionProvider.*available providers: .*CPU"
    ):
        load_backend(path, device="cuda:0")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", ""])
def test_malformed_device(tmp_path: Path, device: str) -> None:
    with pytest.raises(ConfigError, match="expected 'cpu', 'cuda' or 'cuda:N'"):
        OnnxRuntimeBackend(tmp_path / "m.onnx", device=device)


def test_cuda_device_names() -> None:
    assert str(OnnxRuntimeBackend(Path("m.onnx"), device="cuda").device) == "cuda:0"
    assert str(OnnxRuntimeBackend(Path("m.onnx"), device="cuda:1").device) == "cuda:1"


def test_inference_error_is_a_model_error(tmp_path: Path) -> None:
    backend = load_backend(_identity_model(tmp_path, TensorProto.FLOAT, [2]))
    with pytest.raises(ModelError, match="m.onnx: inference failed: .*INVALID_ARGUMENT"):
        backend.run({"x": np.zeros(3, np.float32)})
