"""The TensorRT engine cache: one engine per (model, TensorRT, GPU, build options) key.

A TensorRT engine is only valid for the TensorRT version and the GPU (compute capability)
it was built on, and it bakes in the precision, the batch profile, the input size and the
workspace it was allowed. :class:`EngineKey` covers all of them plus the ONNX file's
sha256, so a changed model, driver stack or GPU never loads a stale engine, and an
unchanged one is never rebuilt. The key is pure data: it is computed and tested without
TensorRT (:func:`gpu_identity` is the only part that asks torch about the GPU).

Layout: ``<cache dir>/<onnx stem>-<precision>-b<min>_<opt>_<max>-<H>x<W>-<digest16>.engine``
plus a ``.json`` sidecar with the full key (to see what an engine was built for). Writes are
atomic (temporary file + rename) and builds of one key are serialised with a file lock, so
two processes starting at once build once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from engine.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

#: Bump when the engine file layout or the build recipe changes: old engines then miss.
CACHE_FORMAT = 1


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything a built TensorRT engine depends on.

    Attributes:
        onnx_sha256: sha256 of the ONNX file's bytes.
        tensorrt_version: ``tensorrt.__version__``.
        gpu_name: The GPU's name, as CUDA reports it.
        compute_capability: ``(major, minor)`` of the GPU.
        precision: ``fp32``, ``fp16`` or ``int8``.
        batch_profile: ``(min, opt, max)`` batch sizes of the optimisation profile.
        imgsz: Input ``(height, width)``.
        workspace_bytes: Builder workspace limit; None lets TensorRT decide.
        calibration_sha256: For int8, the identity of the calibration data (or cache).
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    batch_profile: tuple[int, int, int]
    imgsz: tuple[int, int]
    workspace_bytes: int | None = None
    calibration_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        low, opt, high = self.batch_profile
        if not 1 <= low <= opt <= high:
            raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.batch_profile}")

    def digest(self) -> str:
        """Hex sha256 of the key's canonical JSON (stable across runs and machines)."""
        fields = asdict(self)
        fields["cache_format"] = CACHE_FORMAT
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def filename(self, stem: str) -> str:
        """A readable, unique engine file name for a model called ``stem``."""
        low, opt, high = self.batch_profile
        height, width = self.imgsz
        return f"{stem}-{self.precision}-b{low}_{opt}_{high}-{height}x{width}-{self.digest()[:16]}.engine"


def gpu_identity(device: str = "cuda") -> tuple[str, tuple[int, int]]:
    """Name and compute capability of a CUDA device, from torch.

    Raises:
        ModelError: torch is missing or sees no CUDA device.
    """
    try:
        import torch
    except ImportError as error:
        raise ModelError("building TensorRT engines needs torch with CUDA (the 'gpu' extra)") from error
    if not torch.cuda.is_available():
        raise ModelError("building TensorRT engines needs a CUDA GPU; torch sees none")
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), (int(major), int(minor))


def default_cache_dir() -> Path:
    """``$VISTREAM_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/vistream/engines`` (``~/.cache``)."""
    configured = os.environ.get("VISTREAM_ENGINE_CACHE")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vistream" / "engines"


class EngineCache:
    """A directory of built engines, looked up by :class:`EngineKey`.

    Args:
        root: The cache directory (created on first store); None uses :func:`default_cache_dir`.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path_for(self, key: EngineKey, stem: str) -> Path:
        """Where the engine for ``key`` lives (whether or not it exists yet)."""
        return self.root / key.filename(stem)

    def lookup(self, key: EngineKey, stem: str) -> Path | None:
        """The cached engine for ``key``, or None."""
        path = self.path_for(key, stem)
        return path if path.is_file() and path.stat().st_size > 0 else None

    def store(self, key: EngineKey, stem: str, data: bytes) -> Path:
        """Write an engine file atomically, with a JSON sidecar describing its key."""
        path = self.path_for(key, stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)
        sidecar = {**asdict(key), "digest": key.digest(), "cache_format": CACHE_FORMAT}
        _atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2).encode())
        return path

    def get_or_build(self, key: EngineKey, stem: str, build: Callable[[], bytes]) -> tuple[Path, bool]:
        """Return the cached engine for ``key``, building and storing it on a miss.

        Args:
            key: The engine's key.
            stem: The model's name, for the file name.
            build: Produces the engine file's bytes (called at most once, under a lock).

        Returns:
            The engine file and whether it was built now.
        """
        cached = self.lookup(key, stem)
        if cached is not None:
            logger.info("engine cache hit: %s", cached.name)
            return cached, False
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path_for(key, stem).with_suffix(".lock")):
            cached = self.lookup(key, stem)  # another process may have built it meanwhile
            if cached is not None:
                return cached, False
            logger.info("engine cache miss: building %s", key.filename(stem))
            return self.store(key, stem, build()), True


def _atomic_write(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
