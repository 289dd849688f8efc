"""The TensorRT engine cache: its key covers every input and nothing else; hits, misses, locking."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from engine.backends.engine_cache import EngineCache, EngineKey, default_cache_dir, file_sha256
from engine.backends.trt_builder import BatchProfile, BuildOptions, engine_key
from engine.errors import ConfigError

BASE = EngineKey(
    onnx_sha256="a" * 64,
    tensorrt_version="10.7.0",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    precision="fp16",
    batch_profile=(1, 8, 32),
    imgsz=(640, 640),
    workspace_bytes=4 << 30,
)

# One change per input the key must cover.
CHANGES = {
    "onnx_sha256": "b" * 64,
    "tensorrt_version": "10.8.0",
    "gpu_name": "NVIDIA L4",
    "compute_capability": (8, 9),
    "precision": "int8",
    "batch_profile": (1, 16, 32),
    "imgsz": (640, 384),
    "workspace_bytes": 2 << 30,
    "calibration_sha256": "c" * 64,
}


def test_key_is_stable() -> None:
    same = EngineKey(**{field: getattr(BASE, field) for field in BASE.__dataclass_fields__})
    assert same == BASE and same.digest() == BASE.digest()
    assert BASE.digest() == BASE.digest()
    assert len(BASE.digest()) == 64 and BASE.filename("yolo") == same.filename("yolo")


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_key_changes_with_each_input(field: str) -> None:
    changed = replace(BASE, **{field: CHANGES[field]})
    assert changed.digest() != BASE.digest()
    assert changed.filename("yolo") != BASE.filename("yolo")


def test_every_field_is_covered_by_the_test() -> None:
    assert set(CHANGES) == set(BASE.__dataclass_fields__)


def test_filename_is_readable() -> None:
    name = BASE.filename("yolo11n")
    assert name.startswith("yolo11n-fp16-b1_8_32-640x640-") and name.endswith(".engine")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"batch_profile": (4, 2, 8)}, "1 <= min <= opt <= max"),
    ],
)
def test_invalid_keys(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        replace(BASE, **changes)


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert file_sha256(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def _options(**changes: object) -> BuildOptions:
    base = BuildOptions(
        precision="fp16", profile=BatchProfile(1, 8, 32), imgsz=(640, 640), workspace_bytes=None
    )
    return replace(base, **changes)


def test_engine_key_from_build_options(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model v1")
    gpu = ("NVIDIA H100", (9, 0))
    key = engine_key(model, _options(), tensorrt_version="10.7.0", gpu=gpu)
    assert key.onnx_sha256 == hashlib.sha256(b"model v1").hexdigest()
    assert key == engine_key(model, _options(), tensorrt_version="10.7.0", gpu=gpu)
    # Calibration data only matters for int8 engines.
    assert engine_key(model, _options(), tensorrt_version="10.7.0", gpu=gpu, calibration_sha256="x") == key
    int8 = engine_key(
        model, _options(precision="int8"), tensorrt_version="10.7.0", gpu=gpu, calibration_sha256="x"
    )
    assert int8.calibration_sha256 == "x"
    others = [
        engine_key(model, _options(profile=BatchProfile(1, 1, 1)), tensorrt_version="10.7.0", gpu=gpu),
        engine_key(model, _options(imgsz=(320, 320)), tensorrt_version="10.7.0", gpu=gpu),
        engine_key(model, _options(workspace_bytes=1 << 30), tensorrt_version="10.7.0", gpu=gpu),
        engine_key(model, _options(), tensorrt_version="10.7.0", gpu=("NVIDIA H100", (9, 1))),
    ]
    model.write_bytes(b"model v2")
    others.append(engine_key(model, _options(), tensorrt_version="10.7.0", gpu=gpu))
    digests = {key.digest(), int8.digest(), *(other.digest() for other in others)}
    assert len(digests) == 7


def test_cache_builds_once_then_hits(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    builds = []

    def build() -> bytes:
        builds.append(1)
        return b"engine bytes"

    path, built = cache.get_or_build(BASE, "yolo", build)
    assert built and path.read_bytes() == b"engine bytes" and path.parent == tmp_path / "engines"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["digest"] == BASE.digest() and sidecar["gpu_name"] == BASE.gpu_name
    again, built_again = cache.get_or_build(BASE, "yolo", build)
    assert again == path and not built_again and len(builds) == 1
    # Another GPU is another engine.
    other, built_other = cache.get_or_build(replace(BASE, gpu_name="NVIDIA L4"), "yolo", build)
    assert built_other and other != path and len(builds) == 2
    assert cache.lookup(replace(BASE, precision="fp32"), "yolo") is None


def test_concurrent_builds_of_one_key_build_once(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    builds = []

    def slow_build() -> bytes:
        builds.append(1)
        time.sleep(0.2)
        return b"engine"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_build(BASE, "m", slow_build)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert sorted(built for _, built in results) == [False, False, True]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def broken() -> bytes:
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cache.get_or_build(BASE, "m", broken)
    assert cache.lookup(BASE, "m") is None and not list(tmp_path.glob("*.engine"))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISTREAM_ENGINE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VISTREAM_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vistream" / "engines"
