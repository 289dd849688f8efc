"""A local Triton Inference Server for tests, benchmarks and demos, without Docker.

The ``nvidia-pytriton`` wheel (0.7.x) carries a real Triton 2.51 server binary with the Python
backend only. It needs ``numpy<2`` while vistream needs numpy 2, so the server lives in its own
virtualenv (:func:`install_server_venv`, idempotent; ``make triton-server`` calls it). Facts this
module encodes (measured, see the README's "Shared inference with Triton"):

- the Python-backend stub embeds ``libpython3.X.so.1.0``: the server is started with
  ``LD_LIBRARY_PATH`` at the virtualenv Python's own ``lib/`` (with a pyenv Python the stub
  would otherwise load the system's libpython and fail), and finds the venv through ``PATH``;
- ONNX files are served through a Python-backend ``model.py`` running ONNX Runtime
  (:mod:`engine.backends.triton_onnx_model`), because the wheel has no onnxruntime backend;
- the server binds 127.0.0.1 only and stops on SIGTERM (it may ignore SIGINT).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from engine.errors import ModelError

logger = logging.getLogger(__name__)

#: What the server's virtualenv gets (numpy<2 is PyTriton's requirement).
SERVER_REQUIREMENTS = ("nvidia-pytriton>=0.7,<0.8", "numpy<2", "onnxruntime>=1.18")
_MARKER = ".vistream-triton.json"
_MODEL_PY = Path(__file__).with_name("triton_onnx_model.py")
#: ONNX element type -> Triton config data type.
_TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(uint8)": "TYPE_UINT8",
}


def _run(command: Sequence[str]) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelError(f"{' '.join(command[:4])} ... failed: {' | '.join(tail)}")


def install_server_venv(venv: str | Path, *, python: str | None = None) -> Path:
    """Create the Triton server's virtualenv once (later calls return at once).

    Installs :data:`SERVER_REQUIREMENTS` with pip (about 450 MB, ~35 s from a warm pip cache)
    and lays out a backend directory with the Python backend and its stub for the venv's
    Python version. A lock file keeps concurrent callers (test processes) from racing.

    Args:
        venv: Directory of the virtualenv, e.g. ``.venv-triton``.
        python: Interpreter to build it from (default: this process's; it must have a shared
            ``libpython``, as pyenv and Debian builds do).

    Returns:
        The virtualenv directory.

    Raises:
        ModelError: The virtualenv or a package cannot be installed.
    """
    venv = Path(venv).absolute()
    venv.mkdir(parents=True, exist_ok=True)  # `python -m venv` fills an existing directory
    with open(venv / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / _MARKER).is_file():
            return venv
        started = time.monotonic()
        if not (venv / "bin" / "python").exists():
            _run([python or sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *SERVER_REQUIREMENTS])
        probe = (
            "import json, sys, sysconfig, pytriton; from pathlib import Path; "
            "print(json.dumps({'libdir': sysconfig.get_config_var('LIBDIR'), "
            "'version': f'{sys.version_info[0]}.{sys.version_info[1]}', "
            "'pytriton': str(Path(pytriton.__file__).parent)}))"
        )
        found = subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=False
        )
        if found.returncode != 0:
            raise ModelError(f"cannot inspect the Triton virtualenv {venv}: {found.stderr.strip()[-300:]}")
        info = json.loads(found.stdout)
        server_dir = Path(info["pytriton"]) / "tritonserver"
        backend = venv / "triton-backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        links = {
            "libtriton_python.so": server_dir / "backends" / "python" / "libtriton_python.so",
            "triton_python_backend_utils.py": server_dir
            / "backends"
            / "python"
            / "triton_python_backend_utils.py",
            "triton_python_backend_stub": server_dir
            / "python_backend_stubs"
            / info["version"]
            / "triton_python_backend_stub",
        }
        for name, target in links.items():
            if not target.exists():
                raise ModelError(f"the PyTriton wheel has no {target}: cannot serve Python-backend models")
            (backend / name).unlink(missing_ok=True)
            (backend / name).symlink_to(target)
        info["binary"] = str(server_dir / "bin" / "tritonserver")
        info["libs"] = str(Path(info["pytriton"]).parent / "nvidia_pytriton.libs")
        (venv / _MARKER).write_text(json.dumps(info, indent=1))
        logger.info("installed the Triton server virtualenv %s in %.0f s", venv, time.monotonic() - started)
        return venv


def _backend_shm_files() -> set[Path]:
    """The Python backend's shared-memory files (its stubs and the server talk through them)."""
    return set(Path("/dev/shm").glob("triton_python_backend_shm_region_*"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pbtxt_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_model_repository(
    repository: str | Path,
    name: str,
    onnx_path: str | Path,
    *,
    max_batch_size: int = 0,
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    parameters: Mapping[str, str] | None = None,
) -> Path:
    """Add an ONNX model served by the Python backend to a model repository.

    Writes ``<repository>/<name>/config.pbtxt`` and ``1/{model.onnx,model.py}``. Input and
    output specs come from the ONNX file; its metadata (Ultralytics' ``names``, ``imgsz``,
    ``stride``...) goes into the config's ``parameters``, where the ``triton://`` backend
    reads it, as it would from an ``onnxruntime``/``tensorrt`` model configured the same way.

    Args:
        repository: Model repository directory (created when missing).
        name: Model name.
        onnx_path: The ONNX file (copied).
        max_batch_size: 0 serves the file's shapes as they are; N > 0 requires a dynamic first
            axis and turns on dynamic batching of up to N rows.
        max_queue_delay_us: How long the dynamic batcher waits for more requests.
        instances: Model instances (each its own ONNX Runtime session).
        parameters: Extra config parameters (they override the ONNX metadata).

    Returns:
        The model's directory.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    metadata.update(parameters or {})

    def tensors(nodes: Sequence[ort.NodeArg]) -> str:
        entries = []
        for node in nodes:
            dims = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape]
            if max_batch_size > 0:
                if dims[0] != -1:
                    raise ModelError(
                        f"{onnx_path}: max_batch_size needs a dynamic batch axis, {node.name} has {dims}"
                    )
                dims = dims[1:]
            if node.type not in _TRITON_TYPES:
                raise ModelError(f"{onnx_path}: {node.name} has element type {node.type}, not served here")
            shape = ", ".join(map(str, dims))
            entries.append(
                f'  {{ name: "{node.name}" data_type: {_TRITON_TYPES[node.type]} dims: [ {shape} ] }}'
            )
        return ",\n".join(entries)

    lines = [
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        f"input [\n{tensors(session.get_inputs())}\n]",
        f"output [\n{tensors(session.get_outputs())}\n]",
        f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]",
    ]
    if max_batch_size > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}")
    lines += [
        f"parameters {{ key: {_pbtxt_string(key)} value: {{ string_value: {_pbtxt_string(value)} }} }}"
        for key, value in metadata.items()
    ]
    model_dir = Path(repository) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text("\n".join(lines) + "\n")
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    shutil.copyfile(_MODEL_PY, model_dir / "1" / "model.py")
    return model_dir


class LocalTritonServer:
    """A ``tritonserver`` process on 127.0.0.1, started from the server virtualenv.

    Args:
        venv: The virtualenv made by :func:`install_server_venv`.
        repository: Model repository directory.
        load_models: Load only these models (explicit model control: the others stay in the
            repository, not ready); None loads every model.
        http_port: HTTP port (default: a free one); kept across :meth:`start` calls, so a
            restarted server is found where it was.
        grpc_port: gRPC port (default: a free one).
        log_path: Server log file (default: ``server.log`` beside the repository).
    """

    def __init__(
        self,
        venv: str | Path,
        repository: str | Path,
        *,
        load_models: Sequence[str] | None = None,
        http_port: int | None = None,
        grpc_port: int | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.venv = Path(venv).absolute()
        self.repository = Path(repository).absolute()
        self.load_models = list(load_models) if load_models is not None else None
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.log_path = Path(log_path) if log_path else self.repository.parent / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._shm_before: set[Path] = set()

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self._process.pid if self._process is not None else None

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The server's command line and environment."""
        info = json.loads((self.venv / _MARKER).read_text())
        command = [
            info["binary"],
            f"--model-repository={self.repository}",
            f"--backend-directory={self.venv / 'triton-backends'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--log-verbose=0",
        ]
        if self.load_models is not None:
            command += [
                "--model-control-mode=explicit",
                *(f"--load-model={name}" for name in self.load_models),
            ]
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = ":".join(
            part for part in (info["libdir"], info["libs"], env.get("LD_LIBRARY_PATH", "")) if part
        )
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        return command, env

    def start(self, *, timeout_s: float = 60.0) -> LocalTritonServer:
        """Start the server and wait until it is ready.

        Raises:
            ModelError: It exited or was not ready within ``timeout_s`` (the log's tail is in
                the message).
        """
        if self._process is not None:
            return self
        command, env = self.command()
        self._shm_before = _backend_shm_files()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise ModelError(f"tritonserver exited with code {code}: {self._log_tail()}")
            if self._ready():
                logger.info(
                    "tritonserver pid %d ready on %s (gRPC %s)", self.pid, self.http_url, self.grpc_url
                )
                return self
            time.sleep(0.2)
        self.stop()
        raise ModelError(f"tritonserver was not ready within {timeout_s:.0f} s: {self._log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in lines if line.startswith("E") or "error" in line.lower()]
        return " | ".join((errors or lines)[-3:])

    def kill(self) -> None:
        """Kill the server and its backend stubs at once (SIGKILL), as a crash would.

        A killed server cannot remove the shared-memory files its Python backend made in
        ``/dev/shm``; those that appeared since :meth:`start` are removed here.
        """
        if self._process is None:
            return
        # The whole process group (the server leads it: start_new_session): a SIGKILLed server
        # cannot stop its Python-backend stub processes, which would otherwise live on.
        os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=30)
        self._process = None
        for path in _backend_shm_files() - self._shm_before:
            path.unlink(missing_ok=True)

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the server with SIGTERM (SIGKILL after ``timeout_s``); idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "tritonserver pid %d ignored SIGTERM for %.0f s: killing it", process.pid, timeout_s
            )
            os.killpg(process.pid, signal.SIGKILL)  # the server and its backend stubs
            process.wait(timeout=30)

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
