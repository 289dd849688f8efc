"""Shared fixtures: where the real models and media are, and marker handling."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.sources.gst import prefer_gnu_unwinder

# Test helpers import GStreamer directly (RTSP servers, raw pipelines): the C++ unwinder must
# be global before any of them does, as the engine makes sure for itself.
prefer_gnu_unwinder()
# And OpenVINO, when installed, must be loaded before GStreamer's plugins, as the detect stage
# does for a run (engine.backends.preload_runtime): tests that export or run OpenVINO models
# share this process with tests that started GStreamer earlier.
with contextlib.suppress(ImportError):
    import openvino  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("VISTREAM_SHARED", REPO_ROOT.parent / "shared")).resolve()


def shared_path(relative: str) -> Path:
    """Return a file of ../shared, or skip the test with a reason when it is absent."""
    path = SHARED_DIR / relative
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (set VISTREAM_SHARED)")
    return path


@pytest.fixture
def highway_video() -> Path:
    """The 1,700-frame 320x240 60 fps highway overpass video."""
    return shared_path("media/traffic/highway_overpass_320x240_60fps.avi")


@pytest.fixture
def yolo_model() -> Path:
    """YOLO11n float32 ONNX, 320x320, fixed batch 1."""
    return shared_path("models/yolo11n_fp32_320.onnx")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip `gst`-marked tests where GStreamer does not import (checked lazily: it loads
    GStreamer, which only tests that need it should pay for)."""
    if item.get_closest_marker("gst") is not None:
        from engine.sources import gstreamer_available

        if not gstreamer_available():
            pytest.skip("GStreamer is not available through PyGObject (install the 'gst' extra)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` and `tensorrt` tests where those are missing (`gst` is checked per test)."""
    skip_gpu = None if _cuda_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    skip_trt = (
        None
        if _tensorrt_available()
        else pytest.mark.skip(reason="needs TensorRT (not installable on these machines)")
    )
    for item in items:
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_trt is not None and "tensorrt" in item.keywords:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def _forget_registered_secrets() -> Iterator[None]:
    """Each test starts with the secrets registered before it, and leaves none behind.

    Parsing a URI registers its password for masking process-wide (on purpose: a service
    must mask it everywhere). The fuzz tests parse thousands of random URIs, and a random
    "password" such as ``ive`` would otherwise mask words in later tests' messages.
    """
    from engine.sources import uri

    with uri._secrets_lock:
        before = set(uri._secrets)
    yield
    with uri._secrets_lock:
        uri._secrets.clear()
        uri._secrets.update(before)
