"""Shared-memory input regions for the Triton backend (system or CUDA), one set per thread.

Inputs (the large tensors: letterboxed frames) are written into regions registered with the
server, so only their names travel in the request; outputs still come back in the response,
because their size is not known ahead for models with dynamic output axes.

- ``system``: POSIX shared memory (``tritonclient.utils.shared_memory``); needs the server on
  the same host. Tested against the local server.
- ``cuda``: CUDA IPC (``tritonclient.utils.cuda_shared_memory``, which needs ``cuda-python``);
  torch CUDA tensors are copied device to device through DLPack, and the server reads them on
  the same GPU. Written against tritonclient's API and not executed on this project's
  development machines (no CUDA there).

A region grows (is recreated) when a larger batch arrives. Names carry the process id, the
backend's id and the thread id, so several backends and processes can share one server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import ModelError


@dataclass
class _Region:
    name: str
    handle: Any
    byte_size: int


class ShmRegions:
    """The input regions of one thread's client.

    Args:
        kind: ``system`` or ``cuda``.
        client: The thread's tritonclient client (registrations are per server, made through it).
        prefix: Unique name prefix.
        device_id: CUDA device of the regions (``cuda`` only).
    """

    def __init__(self, kind: str, client: Any, prefix: str, device_id: int = 0) -> None:
        self.kind = kind
        self.client = client
        self.prefix = f"{prefix}-{os.getpid()}-{threading.get_ident()}"
        self.device_id = device_id
        self._regions: dict[str, _Region] = {}
        try:
            if kind == "cuda":
                import tritonclient.utils.cuda_shared_memory as module
            else:
                import tritonclient.utils.shared_memory as module
        except ImportError as error:
            raise ModelError(f"shared_memory {kind!r} is not available here: {error}") from error
        self._module: Any = module

    def _region(self, input_name: str, byte_size: int) -> _Region:
        region = self._regions.get(input_name)
        if region is not None and region.byte_size >= byte_size:
            return region
        if region is not None:
            self._release(region)
        name = f"{self.prefix}-{input_name}"
        if self.kind == "cuda":
            handle = self._module.create_shared_memory_region(name, byte_size, self.device_id)
            raw = self._module.get_raw_handle(handle)
            self.client.register_cuda_shared_memory(name, raw, self.device_id, byte_size)
        else:
            key = "/" + name.replace("/", "_")
            handle = self._module.create_shared_memory_region(name, key, byte_size)
            self.client.register_system_shared_memory(name, key, byte_size)
        region = _Region(name, handle, byte_size)
        self._regions[input_name] = region
        return region

    def attach(self, request: Any, input_name: str, value: Any) -> None:
        """Write ``value`` (numpy, or a torch CUDA tensor for ``cuda``) and point ``request`` at it."""
        byte_size = int(value.nbytes) if hasattr(value, "nbytes") else value.numel() * value.element_size()
        region = self._region(input_name, byte_size)
        if self.kind == "cuda":
            self._module.set_shared_memory_region_from_dlpack(region.handle, [value])
        else:
            self._module.set_shared_memory_region(region.handle, [value])
        request.set_shared_memory(region.name, byte_size)

    def _release(self, region: _Region) -> None:
        try:
            if self.kind == "cuda":
                self.client.unregister_cuda_shared_memory(region.name)
            else:
                self.client.unregister_system_shared_memory(region.name)
        except Exception:  # the server may be gone; the local memory is freed below anyway
            pass
        self._module.destroy_shared_memory_region(region.handle)

    def close(self) -> None:
        """Unregister and free every region."""
        for region in self._regions.values():
            self._release(region)
        self._regions.clear()


def shapes_and_types(inputs: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and numpy dtype name of numpy arrays or torch tensors, without copying them."""
    described = {}
    for name, value in inputs.items():
        dtype = str(value.dtype).removeprefix("torch.")
        described[name] = (tuple(int(dim) for dim in value.shape), dtype)
    return described
