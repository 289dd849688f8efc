"""Hostile inputs to `vistream run`: each ends in exit code 2 and one line on stderr.

Every case runs the real CLI in a subprocess with GStreamer initialised (a ``test://``
source), because that is where a native crash once hid: see
:func:`engine.sources.gst.prefer_gnu_unwinder`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.sources import gstreamer_available
from tests.cli.test_cli import vistream
from tests.conftest import REPO_ROOT, shared_path

YOLO = "models/yolo11n_fp32_320.onnx"
CALIBRATION = REPO_ROOT / "calibrations" / "highway_overpass.yaml"


def needs_gst() -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a user error prints (asserting there is exactly one, and exit code 2)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vistream: error: "), result.stderr[-3000:]
    assert len(lines[0]) <= 2100, len(lines[0])
    return lines[0]


def detect_pipeline(tmp: Path, model: Path) -> list[str]:
    path = tmp / "detect.yaml"
    path.write_text(f"stages:\n  - stage: detect\n    model: {model}\n  - stage: track\n")
    return ["--pipeline", str(path)]


def _truncated_model(tmp: Path) -> list[str]:
    model = tmp / "truncated.onnx"
    model.write_bytes(shared_path(YOLO).read_bytes()[:5_000_000])
    return detect_pipeline(tmp, model)


def _random_bytes_model(tmp: Path) -> list[str]:
    model = tmp / "random.onnx"
    model.write_bytes(bytes((index * 7919 + 13) % 251 for index in range(300_000)))
    return detect_pipeline(tmp, model)


def _edited_input_model(tmp: Path) -> list[str]:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(shared_path(YOLO)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 640  # the graph was built for 320
    path = tmp / "edited.onnx"
    onnx.save(model, str(path))
    return detect_pipeline(tmp, path)


def _yaml(text: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "p.yaml").write_text(text)
        return ["--pipeline", str(tmp / "p.yaml")]

    return make


_ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)


def _calibration_with_a_boolean(tmp: Path) -> list[str]:
    text = CALIBRATION.read_text()
    (tmp / "bool.yaml").write_text(text.replace("- [127.56, 216.2]", "- [true, 216]", 1))
    path = tmp / "speed.yaml"
    path.write_text(f"stages:\n  - stage: track\n  - stage: speed\n    calibration: {tmp / 'bool.yaml'}\n")
    return ["--pipeline", str(path)]


SOURCE = "test://?width=320&height=240&frames=5"

# case: (arguments after `run`, or a function of the temporary directory; expected text)
CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "ONNX model cut in the middle": (_truncated_model, "runs 5"),
    "ONNX model of random bytes": (_random_bytes_model, "is not a valid ONNX model"),
    "ONNX model with its input size edited": (_edited_input_model, "cannot load"),
    "duplicate YAML key": (
        _yaml("stages:\n  - stage: track\nbatch_size: 1\nstages:\n  - stage: annotate\n"),
        "duplicate key 'stages' at line 4 (first at line 1)",
    ),
    "YAML alias bomb": (
        _yaml(_ALIAS_BOMB + "stages:\n  - stage: track\n    layer: *i\n"),
        "expands to more than 100000 values",
    ),
    "YAML file of 2 MB": (
        _yaml("stages:\n  - stage: track\n" + "# padding\n" * 200_000),
        "too large for a config",
    ),
    "huge value in a stage argument": (
        _yaml("stages:\n  - stage: track\n    layer: [" + ", ".join(["1"] * 50_000) + "]\n"),
        "characters)",
    ),
    "batch size 100000": (lambda tmp: ["--batch-size", "100000"], "--batch-size: expected an integer"),
    "status interval 1e-9 s": (lambda tmp: ["--status-interval-s", "1e-9"], "--status-interval-s"),
    "stage timeout 'soon'": (lambda tmp: ["--stage-timeout-s", "soon"], "--stage-timeout-s: expected"),
    "layer name with a path": (
        _yaml("stages:\n  - stage: track\n    layer: ../../x\n"),
        "layer '../../x' cannot name an output file",
    ),
    "calibration point [true, 216]": (_calibration_with_a_boolean, "pixel pairs (numbers)"),
}

SOURCE_CASES: dict[str, tuple[str, str]] = {
    "RTSP port 99999": ("rtsp://admin:pw@10.0.0.5:99999/x", "Port out of range"),
    "RTSP port not a number": ("rtsp://10.0.0.5:http/x", "Port could not be cast"),
    "RTSP malformed IPv6 host": ("rtsp://[::1/x", "Invalid IPv6 URL"),
    "unknown URI scheme": ("gopher://example.com/x", "unsupported source URI scheme 'gopher'"),
    "a directory as a source": (str(REPO_ROOT / "tests"), "is a directory, not a video file"),
}


@pytest.mark.fault(
    "Hostile pipeline inputs: a corrupt ONNX model (cut, random bytes, input size edited), a "
    "duplicate YAML key, an alias bomb, a 2 MB YAML, a 50 000-item argument, "
    "`--batch-size 100000`, `--status-interval-s 1e-9`, a layer named `../../x`, a calibration "
    "point `[true, 216]`",
    "User error (exit 2) in one line of at most 2000 characters, naming the place (`duplicate key "
    "'stages' at line 4 (first at line 1)`); a damaged ONNX file is found by a wire-format check "
    "before ONNX Runtime parses it, and ONNX Runtime's own errors reach Python with GStreamer "
    "loaded",
)
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_inputs_exit_2_with_one_line(case: str, tmp_path: Path) -> None:
    needs_gst()
    make_args, expected = CASES[case]
    out = tmp_path / "out"
    result = vistream("run", SOURCE, *make_args(tmp_path), "--out", str(out), "--quiet", timeout_s=180)
    assert expected in error_line(result)
    if (out / "summary.json").exists():  # the run got as far as its outputs: they are valid
        assert json.loads((out / "summary.json").read_text())["status"] == "failed"


@pytest.mark.fault(
    "Malformed source URIs: RTSP port 99999 or `http`, a malformed IPv6 host, an unknown scheme, a directory",
    "User error at start-up (exit 2, one line, password masked), never a reconnect loop",
)
@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_malformed_sources_exit_2_without_retrying(case: str, tmp_path: Path) -> None:
    uri, expected = SOURCE_CASES[case]
    result = vistream("run", uri, "--out", str(tmp_path / "out"), "--quiet", timeout_s=120)
    line = error_line(result)
    assert expected in line and "pw@" not in line


@pytest.mark.fault(
    "A live source (`test://`, `rtsp://`) on an install without GStreamer",
    "User error at start-up naming what to install (exit 2), not an endless retry",
)
def test_live_source_without_gstreamer_exits_2(tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "gi").mkdir(parents=True)
    (hidden / "gi" / "__init__.py").write_text("raise ImportError('PyGObject hidden by the test')\n")
    (tmp_path / "p.yaml").write_text("stages:\n  - stage: track\n")
    env_path = f"{hidden}:{REPO_ROOT}"
    for uri in ("test://?fps=15", "rtsp://admin:hunter2@127.0.0.1:9/cam"):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from engine.cli.main import main; sys.exit(main())",
                "run",
                uri,
            ]
            + ["--pipeline", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "out"), "--quiet"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": env_path},
            timeout=120,
        )
        line = error_line(result)
        assert "needs GStreamer" in line and "hunter2" not in line


@pytest.mark.fault(
    "stdout and stderr closed (`vistream run ... >&- 2>&-`, a daemon manager)",
    "The run completes (exit 0, every frame written): closed standard descriptors are pointed at "
    "/dev/null before any file is opened, so no output file can take fd 2",
)
def test_closed_stderr_does_not_end_the_run(tmp_path: Path) -> None:
    needs_gst()
    out = tmp_path / "out"
    (tmp_path / "p.yaml").write_text("stages:\n  - stage: track\n")
    command = (
        f"exec {sys.executable} -m engine.cli run 'test://?width=64&height=48&frames=40' "
        f"--pipeline {tmp_path / 'p.yaml'} --out {out} >&- 2>&-"
    )
    result = subprocess.run(["sh", "-c", command], cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0
    assert (out / "events.jsonl").read_text().count("\n") == 40
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
