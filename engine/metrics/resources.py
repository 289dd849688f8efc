"""Resources of this process and machine for benchmarks: CPU time, memory, GPU, machine facts.

:class:`ResourceSampler` samples on a thread while a run goes on, so utilisation can be
reported over a window that leaves the warm-up out; :func:`machine_description` says what
the numbers were measured on.
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.device import Device, parse_device

_SAMPLE_INTERVAL_S = 0.2


#: The CPU vector extensions that decide inference speed (``/proc/cpuinfo`` flag names):
#: AVX-512 BF16 and AMX run bf16 layers, VNNI int8 ones; without them OpenVINO's ``auto``
#: precision is f32 and int8 runs on plain AVX2.
INFERENCE_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine_description() -> dict[str, Any]:
    """CPU, core count, memory, OS and Python of this machine (and the GPU when torch sees one).

    ``cpu`` is the model name with its family and model numbers (one name such as "AMD EPYC"
    covers CPU generations that differ twofold in inference speed); ``cpu_features`` lists
    which of :data:`INFERENCE_CPU_FLAGS` the CPU has.
    """
    cpu = platform.processor() or ""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if not key:
                break  # the first processor's block ends here: every core reports the same
            fields.setdefault(key, value.strip())
    except OSError:
        pass
    if "model name" in fields:
        cpu = fields["model name"]
        if "cpu family" in fields and "model" in fields:
            cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    machine: dict[str, Any] = {
        "cpu": cpu or platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if "flags" in fields:
        flags = set(fields["flags"].split())
        machine["cpu_features"] = [flag for flag in INFERENCE_CPU_FLAGS if flag in flags]
    try:
        import psutil

        machine["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        machine["load_average"] = [round(value, 2) for value in os.getloadavg()]
    except (ImportError, OSError):
        pass
    machine["gpu"] = _gpu_name() or "none"
    return machine


def cpu_features_text(machine: dict[str, Any]) -> str:
    """``" with AVX2 AVX512F ..."`` for a machine line (empty when the features are unknown)."""
    features = machine.get("cpu_features")
    if features is None:
        return ""
    return f" with {' '.join(feature.upper() for feature in features) or 'no AVX2'}"


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


class ResourceSampler:
    """Samples this process's CPU time, RSS and (on CUDA) GPU utilisation on a thread."""

    def __init__(self, *, device: str | Device = "cpu", interval_s: float = _SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.device = device
        self.samples: list[tuple[int, float, float, float | None]] = []  # (t_ns, cpu_s, rss_mb, gpu%)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._gpu = _GpuProbe(device)

    def __enter__(self) -> ResourceSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        times = os.times()
        self.samples.append(
            (time.monotonic_ns(), times.user + times.system, _rss_mb(), self._gpu.utilisation())
        )

    def summary(self, start_ns: int | None = None, end_ns: int | None = None) -> dict[str, Any]:
        """CPU use, memory and GPU use over [start_ns, end_ns] (the whole run when None)."""
        rows = [
            s
            for s in self.samples
            if (start_ns is None or s[0] >= start_ns) and (end_ns is None or s[0] <= end_ns)
        ]
        if len(rows) < 2:
            rows = self.samples
        cpus = os.cpu_count() or 1
        result: dict[str, Any] = {"cpus": cpus}
        if len(rows) >= 2:
            wall_s = (rows[-1][0] - rows[0][0]) / 1e9
            busy = (rows[-1][1] - rows[0][1]) / wall_s if wall_s > 0 else float("nan")
            result["cpu_percent"] = round(100.0 * busy, 1)  # of one core, as `top` shows it
            result["cpu_utilisation"] = round(busy / cpus, 3)  # share of the whole machine
        rss = [s[2] for s in self.samples if s[2] == s[2]]
        result["rss_sampled_max_mb"] = round(max(rss), 1) if rss else None
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        gpu = [s[3] for s in rows if s[3] is not None]
        result["gpu"] = self._gpu.summary(gpu)
        return result


class _GpuProbe:
    """GPU utilisation through torch (NVML) or nvidia-smi; "n/a" on the CPU."""

    def __init__(self, device: str | Device) -> None:
        self.device = parse_device(device)
        self.torch: Any = None
        if self.device.is_cuda:
            try:
                import torch

                if torch.cuda.is_available():
                    self.torch = torch
            except ImportError:
                pass

    def utilisation(self) -> float | None:
        if self.torch is None:
            return None
        try:
            return float(self.torch.cuda.utilization())
        except Exception:  # no NVML: utilisation unknown, memory still reported
            return None

    def summary(self, samples: list[float]) -> Any:
        if self.torch is None:
            return "n/a"
        result: dict[str, Any] = {
            "name": str(self.torch.cuda.get_device_name(0)),
            "max_memory_allocated_mb": round(self.torch.cuda.max_memory_allocated() / 2**20, 1),
        }
        result["utilisation_percent"] = round(float(np.mean(samples)), 1) if samples else "n/a"
        return result


def _rss_mb() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        try:  # Linux without psutil: resident pages from /proc
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return float("nan")


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark, in MB.

    Reads ``VmHWM`` from ``/proc/self/status``: ``getrusage().ru_maxrss`` on Linux keeps the
    high-water mark of the process image *before* ``exec``, so a child started from a big
    parent would report the parent's peak. Falls back to ``ru_maxrss`` elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
