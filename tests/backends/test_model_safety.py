"""Model files are untrusted input: checked before a native runtime or a pickle sees them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.backends.model_check import check_onnx_file
from engine.errors import ModelError
from engine.sources import gstreamer_available
from tests.conftest import REPO_ROOT, shared_path

YOLO = "models/yolo11n_fp32_320.onnx"


@pytest.mark.parametrize(
    "name",
    [
        "yolo11n_fp32_320.onnx",
        "yolo11n_int8_320.onnx",
        "face_detection_yunet_2023mar.onnx",
        "emotion_mini_xception_fer2013_7cls.onnx",
    ],
)
def test_real_models_pass_the_structure_check(name: str) -> None:
    check_onnx_file(shared_path(f"models/{name}"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda model: model[:5_000_000], "field 7 runs"),
        (lambda model: model[:100], "runs"),
        (lambda model: b"", "is empty"),
        (lambda model: bytes(range(256)) * 100, "is not a valid ONNX model"),
        (lambda model: b"\x08\x07", "no graph"),  # just an IR version
        (lambda model: b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "longer than 10 bytes"),
    ],
)
def test_damaged_onnx_files_are_one_model_error(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content(shared_path(YOLO).read_bytes()))  # type: ignore[operator]
    with pytest.raises(ModelError, match=message):
        check_onnx_file(path)


_LOAD_AFTER_GSTREAMER = """
import sys
{prelude}
import onnxruntime as ort
try:
    ort.InferenceSession(sys.argv[1])
except Exception as error:
    print("raised", type(error).__name__)
"""

_ENGINE_PRELUDE = """
from engine.sources.gst import GstSource
source = GstSource("test://?frames=5")
source.open()
"""

_RAW_PRELUDE = """
import engine.sources.gst as gst
gst.prefer_gnu_unwinder = lambda: False  # the fix, switched off
source = gst.GstSource("test://?frames=5")
source.open()
"""


def _load_after_gstreamer(prelude: str, model: Path) -> subprocess.CompletedProcess[str]:
    code = _LOAD_AFTER_GSTREAMER.format(prelude=prelude)
    return subprocess.run(
        [sys.executable, "-c", code, str(model)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.gst
@pytest.mark.fault(
    "ONNX Runtime raises (a corrupt model) in a process where GStreamer runs",
    "The C++ exception reaches Python as an error (no abort): libgcc's unwinder is made global "
    "before GStreamer loads libunwind, whose `_Unwind_RaiseException` would otherwise take "
    "over libstdc++'s throws",
)
def test_onnx_runtime_errors_survive_gstreamer(tmp_path: Path) -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    model = tmp_path / "truncated.onnx"
    model.write_bytes(shared_path(YOLO).read_bytes()[:5_000_000])
    result = _load_after_gstreamer(_ENGINE_PRELUDE, model)  # no pre-check: straight to C++
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "raised InvalidProtobuf" in result.stdout


@pytest.mark.gst
def test_the_root_cause_still_exists_without_the_fix(tmp_path: Path) -> None:
    """The control: the same process without the engine's fix crashes (where the clash exists)."""
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    model = tmp_path / "truncated.onnx"
    model.write_bytes(shared_path(YOLO).read_bytes()[:5_000_000])
    result = _load_after_gstreamer(_RAW_PRELUDE, model)
    if result.returncode == 0:
        pytest.skip("this system's GStreamer does not clash with libstdc++'s unwinder")
    assert result.returncode in (-6, -11, 134, 139), result.returncode


@pytest.mark.fault(
    "A malicious pickle as a `.pt` model (`os.system` on load), or a `.pt` that is not a torch checkpoint",
    "Refused before unpickling: every global the pickle names must be a `torch.nn.Module` "
    "class or a plain container (listed by torch without loading); nothing runs",
)
def test_a_malicious_checkpoint_is_refused_without_running(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from engine.backends.torch import check_checkpoint_globals

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(
        ModelError, match=r"its pickle calls '(posix|os)\.system', which is not a model class"
    ):
        check_checkpoint_globals(tmp_path / "evil.pt")
    import pickle

    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="not a checkpoint written by torch.save"):
        check_checkpoint_globals(tmp_path / "raw.pt")
    torch.save({"model": torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))}, tmp_path / "ok.pt")
    check_checkpoint_globals(tmp_path / "ok.pt")
    assert not marker.exists()
