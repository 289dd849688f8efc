"""Output directories are owned: a lock, a manifest, an earlier run's files replaced whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ConfigError, OutputBusyError
from engine.sinks.ownership import LOCK_NAME, OutputDirectory, check_file_part
from engine.sources import gstreamer_available
from tests.cli.test_bad_inputs import error_line
from tests.cli.test_cli import vistream
from tests.cli.test_shutdown import wait_for_lines
from tests.conftest import REPO_ROOT, SHARED_DIR


def test_a_second_owner_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first = OutputDirectory(tmp_path / "out")
    with pytest.raises(OutputBusyError, match=rf"in use by another vistream run \(pid {os.getpid()}\)"):
        OutputDirectory(tmp_path / "out")
    first.release()
    OutputDirectory(tmp_path / "out").release()
    assert (tmp_path / "out" / LOCK_NAME).exists()


def test_earlier_outputs_are_replaced_as_a_whole_and_other_files_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("events.jsonl", "annotated_cam1.mp4", "tracks_objects.txt", "summary.json", "custom.bin"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    (out / "manifest.json").write_text(
        json.dumps({"files": {"x": {"file": "custom.bin"}, "y": {"file": "../up"}}})
    )
    (tmp_path / "up").write_text("outside")
    (out / "linked.jsonl").symlink_to(tmp_path / "up")
    directory = OutputDirectory(out)
    removed = directory.replace_earlier_outputs()
    assert removed == sorted(
        [
            "annotated_cam1.mp4",
            "custom.bin",
            "events.jsonl",
            "manifest.json",
            "summary.json",
            "tracks_objects.txt",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "linked.jsonl", "notes.txt"]
    assert (tmp_path / "up").read_text() == "outside"
    directory.release()


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "a" * 65, "x\0y", 3])
def test_names_that_cannot_be_part_of_a_file_name_are_refused(name: object) -> None:
    with pytest.raises(ConfigError, match="cannot name an output file"):
        check_file_part("layer", name)


@pytest.mark.gst
@pytest.mark.fault(
    "Two runs with the same `--out` at once; a run into the `--out` of an earlier run",
    "The second run gets exit 2 and one line (`output directory … is in use by another vistream "
    "run (pid N)`) and touches nothing; a later run replaces the earlier run's outputs as a whole "
    "(its manifest's files, or the engine's file names) and keeps every other file; "
    "`manifest.json` lists what the run wrote",
)
def test_two_runs_into_one_output_directory(tmp_path: Path) -> None:
    if not gstreamer_available():
        pytest.skip("GStreamer is not available through PyGObject")
    out = tmp_path / "out"
    (tmp_path / "p.yaml").write_text("stages:\n  - stage: track\n  - stage: annotate\n")
    pipeline = ["--pipeline", str(tmp_path / "p.yaml")]
    first = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", "test://?width=160&height=120&fps=30", *pipeline]
        + ["--out", str(out), "--quiet"],
        cwd=REPO_ROOT,
        env={**os.environ, "VISTREAM_SHARED": str(SHARED_DIR)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_lines(out / "events.jsonl", 10, first)
        second = vistream(
            "run", "test://?width=64&height=48&frames=3", *pipeline, "--out", str(out), "--quiet"
        )
        assert f"is in use by another vistream run (pid {first.pid})" in error_line(second)
    finally:
        first.terminate()
        first.communicate(timeout=60)
    assert first.returncode == 0
    (out / "mine.txt").write_text("kept")
    third = vistream(
        "run", "test://?width=64&height=48&frames=3", *pipeline, "--out", str(out), "--quiet", "--no-video"
    )
    assert third.returncode == 0, third.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            LOCK_NAME,
            "events.jsonl",
            "manifest.json",
            "mine.txt",
            "objects.jsonl",
            "summary.json",
            "tracks_objects.txt",
            "vehicles.csv",
        ]
    )  # the first run's annotated.mp4 is gone with the rest of its outputs
    assert (out / "events.jsonl").read_text().count("\n") == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert {entry["file"] for entry in manifest["files"].values()} == {
        "events.jsonl",
        "objects.jsonl",
        "summary.json",
        "tracks_objects.txt",
        "vehicles.csv",
    }
