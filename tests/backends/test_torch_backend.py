"""The PyTorch backend (.pt, .torchscript) against ONNX Runtime on the same exported YOLO11n,
and ONNX Runtime's torch (IO binding) path."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from engine.backends import load_backend
from engine.backends.base import TensorSpec
from engine.backends.onnxruntime import OnnxRuntimeBackend
from engine.backends.torch import TorchBackend
from engine.errors import ConfigError, ModelError
from engine.ops.cpu import letterbox_batch
from tests.backends.helpers_yolo import IMGSZ, ExportedYolo, exported_yolo

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory) -> ExportedYolo:
    return exported_yolo(tmp_path_factory)


@pytest.fixture(scope="module")
def blob(yolo: ExportedYolo) -> np.ndarray:
    batch, _ = letterbox_batch(yolo.frames, IMGSZ)
    return batch.copy()


def test_pt_checkpoint_loads_with_ultralytics_metadata(yolo: ExportedYolo) -> None:
    backend = load_backend(yolo.pt)
    assert isinstance(backend, TorchBackend) and str(backend.device) == "cpu"
    metadata = backend.metadata
    assert len(ast.literal_eval(metadata["names"])) == 80
    assert metadata["stride"] == "32" and metadata["task"] == "detect"
    assert backend.inputs == [TensorSpec("images", (None, 3, None, None), "float32")]
    assert backend.outputs == [TensorSpec("output0", (None, 84, None), "float32")]
    assert TorchBackend(yolo.pt, imgsz=320).metadata["imgsz"] == "[320, 320]"


def test_onnx_runtime_and_pytorch_agree_on_eight_real_frames(yolo: ExportedYolo, blob: np.ndarray) -> None:
    onnx = load_backend(yolo.onnx_dynamic)
    pt = load_backend(yolo.pt)
    assert onnx.inputs[0].dynamic_batch
    ours = pt.run({"images": blob})["output0"]
    theirs = onnx.run({"images": blob})["output0"]
    assert ours.shape == theirs.shape == (8, 84, 2100) and isinstance(ours, np.ndarray)
    # Same weights, two runtimes: float32 rounding only.
    np.testing.assert_allclose(ours[:, :4], theirs[:, :4], atol=2e-2)  # box pixels
    np.testing.assert_allclose(ours[:, 4:], theirs[:, 4:], atol=1e-4)  # class scores
    # The model is responsive: its outputs depend on the frame and some scores are confident.
    assert np.abs(ours[0, 4:] - ours[1, 4:]).max() > 0.05
    assert (ours[:, 4:].max(axis=1) > 0.25).sum(axis=1).min() >= 1


def test_torchscript_equals_the_checkpoint(yolo: ExportedYolo, blob: np.ndarray) -> None:
    script = load_backend(yolo.torchscript)
    assert isinstance(script, TorchBackend)
    assert ast.literal_eval(script.metadata["imgsz"]) == [IMGSZ, IMGSZ]
    expected = load_backend(yolo.pt).run({"images": blob[:1]})["output0"]
    np.testing.assert_allclose(script.run({"images": blob[:1]})["output0"], expected, atol=2e-2)


def test_tensor_in_tensor_out(yolo: ExportedYolo, blob: np.ndarray) -> None:
    backend = load_backend(yolo.pt)
    out = backend.run({"images": torch.from_numpy(blob[:2])})["output0"]
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu" and out.shape == (2, 84, 2100)
    np.testing.assert_allclose(out.numpy(), backend.run({"images": blob[:2]})["output0"], atol=1e-5)


def test_from_module_wraps_an_in_memory_model(yolo: ExportedYolo, blob: np.ndarray) -> None:
    loaded = load_backend(yolo.pt)
    wrapped = TorchBackend.from_module(loaded._module, metadata={"names": "{0: 'a'}", "imgsz": "[320, 320]"})
    assert wrapped.metadata["imgsz"] == "[320, 320]"
    np.testing.assert_allclose(
        wrapped.run({"images": blob[:1]})["output0"], loaded.run({"images": blob[:1]})["output0"]
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"device": "gpu"}, ConfigError, "expected 'cpu', 'cuda' or 'cuda:N'"),
        ({"half": True}, ConfigError, "half and cuda_graph need a CUDA device"),
        ({"cuda_graph": True}, ConfigError, "half and cuda_graph need a CUDA device"),
        ({"compile": "yes"}, ConfigError, "compile: expected true or false"),
        ({"imgsz": 10}, ConfigError, "imgsz: expected an integer >= 32"),
    ],
)
def test_constructor_validates(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TorchBackend(Path("m.pt"), **kwargs)  # type: ignore[arg-type]


def test_bad_inputs_and_files(tmp_path: Path, yolo: ExportedYolo) -> None:
    backend = load_backend(yolo.pt)
    with pytest.raises(ModelError, match="takes one input named 'images'"):
        backend.run({"x": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(ModelError, match="must be an N×3×H×W"):
        backend.run({"images": np.zeros((3, 32, 32), np.float32)})
    with pytest.raises(ModelError, match="model file not found"):
        TorchBackend(tmp_path / "missing.pt").load()
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="torch sees no CUDA GPU"):
            TorchBackend(yolo.pt, device="cuda").load()


def test_onnx_runtime_io_binding_with_torch_tensors(yolo: ExportedYolo, blob: np.ndarray) -> None:
    """Tensors in, tensors out (DLPack, no copy) — the CUDA path's code, run here on the CPU."""
    backend = OnnxRuntimeBackend(yolo.onnx_dynamic)
    tensor_out = backend.run({"images": torch.from_numpy(blob[:3])})["output0"]
    numpy_out = backend.run({"images": blob[:3]})["output0"]
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.shape == (3, 84, 2100)
    np.testing.assert_array_equal(tensor_out.numpy(), numpy_out)
    # A non-contiguous view is made contiguous before binding.
    strided = torch.from_numpy(blob[:4])[::2]
    np.testing.assert_array_equal(backend.run({"images": strided})["output0"].numpy(), numpy_out[[0, 2]])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "options", [{}, {"half": True}, {"cuda_graph": True}, {"half": True, "cuda_graph": True}]
)
def test_cuda_matches_cpu(yolo: ExportedYolo, blob: np.ndarray, options: dict[str, bool]) -> None:
    cpu = load_backend(yolo.pt).run({"images": blob})["output0"]
    cuda = load_backend(yolo.pt, device="cuda", **options)
    images = torch.from_numpy(blob).cuda()
    for _ in range(2):  # the second call replays the captured graph
        out = cuda.run({"images": images})["output0"]
    assert out.is_cuda
    tolerance = 0.5 if options.get("half") else 2e-2
    np.testing.assert_allclose(out.float().cpu().numpy()[:, :4], cpu[:, :4], atol=tolerance)
    np.testing.assert_allclose(out.float().cpu().numpy()[:, 4:], cpu[:, 4:], atol=tolerance / 50)


@pytest.mark.gpu
def test_onnx_runtime_cuda_io_binding(yolo: ExportedYolo, blob: np.ndarray) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    backend = OnnxRuntimeBackend(yolo.onnx_dynamic, device="cuda")
    out = backend.run({"images": torch.from_numpy(blob).cuda()})["output0"]
    assert out.is_cuda
    np.testing.assert_allclose(
        out.cpu().numpy(), OnnxRuntimeBackend(yolo.onnx_dynamic).run({"images": blob})["output0"], atol=2e-2
    )
