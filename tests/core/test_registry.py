"""Stage discovery: entry points (a tiny distribution built here), dotted paths, errors.

The custom stage is the one printed in README.md, so the README example is tested as written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from engine.config import parse_pipeline
from engine.errors import PluginError
from engine.frame import Batch, Frame
from engine.registry import installed_stages, resolve_stage
from tests.conftest import REPO_ROOT

BUILT_IN = {"detect", "track", "annotate"}


def readme_stage_source() -> str:
    """The Python block that follows the custom-stage marker in README.md."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    after_marker = readme.split("<!-- custom-stage-example -->", 1)[1]
    match = re.search(r"```python\n(.*?)```", after_marker, re.S)
    assert match, "README.md has no python block after the custom-stage marker"
    return match.group(1)


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding a tiny installed distribution `vistream-blur` with one stage."""
    site = tmp_path / "site"
    package = site / "vistream_blur"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stages.py").write_text(readme_stage_source())
    dist_info = site / "vistream_blur-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: vistream-blur\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        "[vistream.stages]\nblur = vistream_blur.stages:BlurObjects\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_built_in_stages_are_registered_as_entry_points() -> None:
    names = {info.name for info in installed_stages()}
    assert BUILT_IN <= names
    assert all(info.distribution == "vistream" for info in installed_stages() if info.name in BUILT_IN)


def test_entry_point_plugin_from_another_distribution(plugin_site: Path) -> None:
    stages = {info.name: info for info in installed_stages()}
    assert stages["blur"].distribution == "vistream-blur"
    blur_class = resolve_stage("blur")
    spec = parse_pipeline({"stages": [{"stage": "blur", "kernel_px": 9}]}, config_dir=plugin_site)
    stage = spec.stages[0].build()
    assert isinstance(stage, blur_class)
    _check_blur(stage)


def test_dotted_path_plugin(plugin_site: Path) -> None:
    spec = parse_pipeline(
        {"stages": [{"stage": "vistream_blur.stages:BlurObjects", "layer": "objects"}]},
        config_dir=plugin_site,
    )
    _check_blur(spec.stages[0].build())


def test_cli_lists_the_third_party_stage(plugin_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{plugin_site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("blur "))
    assert "vistream_blur.stages:BlurObjects" in line
    assert "[vistream-blur]" in line
    assert "Blurs every detection" in line


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", r"unknown stage 'nope'; installed stages: .*annotate.*detect"),
        ("json:nope", r"module 'json' has no 'nope'"),
        ("json:dumps", r"'dumps' is not a class"),
        ("no_such_pkg.mod:Stage", r"cannot import module 'no_such_pkg.mod'"),
        (":Stage", r"expected 'package.module:Class'"),
    ],
)
def test_resolution_errors(spec: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        resolve_stage(spec)


def _check_blur(stage: object) -> None:
    """The README stage blurs inside boxes on the canvas and leaves the image untouched."""
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[::2, ::2] = 255  # a fine checkerboard that a blur visibly smooths
    frame = Frame(source_id="cam0", index=0, pts_ns=0, image=image)
    frame.layers["objects"] = sv.Detections(xyxy=np.array([[10, 10, 30, 30]], dtype=np.float32))
    stage(Batch([frame]))  # type: ignore[operator]
    assert frame.canvas is not None
    assert np.array_equal(frame.image[::2, ::2], np.full((20, 20, 3), 255))
    inside, outside = frame.canvas[12:28, 12:28], frame.canvas[0:8, 0:8]
    assert inside.std() < image[12:28, 12:28].std() / 2
    assert np.array_equal(outside, image[0:8, 0:8])


def test_readme_custom_stage_runs_as_written(tmp_path: Path, highway_video: Path) -> None:
    """The README's files and command, in a fresh folder: `PYTHONPATH=. vistream run ...`."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    pipeline = re.search(r"<!-- custom-stage-pipeline -->\n```yaml\n(.*?)```", readme, re.S)
    command = re.search(r"<!-- custom-stage-command -->\n```bash\n(.*?)```", readme, re.S)
    assert pipeline and command, "README.md lost the custom-stage pipeline or command"
    (tmp_path / "my_package").mkdir()
    (tmp_path / "my_package" / "__init__.py").write_text("")
    (tmp_path / "my_package" / "stages.py").write_text(readme_stage_source())
    (tmp_path / "blur.yaml").write_text(pipeline.group(1))
    words = command.group(1).split()
    assert words[:3] == ["PYTHONPATH=.", "vistream", "run"]
    arguments = [str(highway_video) if word.startswith("../shared/") else word for word in words[3:]]
    # The shared data by an absolute path: the run's working directory is the new folder.
    env = {**os.environ, "PYTHONPATH": ".", "VISTREAM_SHARED": str(highway_video.parents[2].resolve())}
    console_script = Path(sys.executable).with_name("vistream")  # as a user runs it: no cwd on the path
    if not console_script.is_file():
        pytest.skip(f"no vistream console script beside {sys.executable}")
    result = subprocess.run(
        [str(console_script), "run", *arguments, "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "annotated.mp4").stat().st_size > 0
