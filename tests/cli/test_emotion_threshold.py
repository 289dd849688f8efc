"""emotion-threshold: the rejection curve, threshold proposals, and the tool on real photos."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli import emotion_threshold as tool
from engine.errors import ConfigError
from tests.conftest import shared_path


def test_rejection_curve_counts_answers_and_remaining_errors() -> None:
    confidence = np.array([0.9, 0.8, 0.6, 0.4, 0.3])
    correct = np.array([True, False, True, False, False])
    rows = tool.rejection_curve(confidence, correct, np.array([0.0, 0.5, 0.85, 1.0]))
    assert [row["answered"] for row in rows] == [1.0, 0.6, 0.2, 0.0]
    assert [row["errors_remaining"] for row in rows] == [1.0, pytest.approx(1 / 3), 0.0, 0.0]
    assert rows[1]["accuracy_answered"] == pytest.approx(2 / 3)
    assert np.isnan(rows[3]["accuracy_answered"])


def test_threshold_for_a_target_reject_rate_rejects_that_share() -> None:
    confidence = np.random.default_rng(0).uniform(size=1000)
    threshold = tool.threshold_for_reject(confidence, 0.2)
    assert (confidence < threshold).mean() == pytest.approx(0.2, abs=0.001)
    assert tool.threshold_for_reject(confidence, 0.0) == 0.0


def test_threshold_for_a_target_error_rate() -> None:
    confidence = np.array([0.95, 0.9, 0.7, 0.5, 0.4])
    correct = np.array([True, True, False, True, False])
    assert tool.threshold_for_error(confidence, correct, 0.0) == pytest.approx(0.9)
    assert tool.threshold_for_error(confidence, correct, 0.25) == pytest.approx(0.5)
    assert tool.threshold_for_error(confidence, correct, 0.5) == 0.0
    assert tool.threshold_for_error(confidence, np.zeros(5, bool), 0.1) is None


def test_label_map_and_csv_errors(tmp_path: Path) -> None:
    assert tool.parse_label_map("angry=anger, happy=happiness") == {"angry": "anger", "happy": "happiness"}
    with pytest.raises(ConfigError, match="model=dataset"):
        tool.parse_label_map("angry")
    assert tool.model_to_dataset_names(["angry", "happy", "x"], {"x": "contempt"}) == [
        "anger",
        "happiness",
        "contempt",
    ]
    bad = tmp_path / "labels.csv"
    bad.write_text("name,value\na.jpg,anger\n")
    with pytest.raises(ConfigError, match="image column"):
        tool.read_labels(bad)


def test_the_tool_writes_table_chart_and_proposal_on_the_expressions_set(tmp_path: Path) -> None:
    images = shared_path("media/expressions/images")
    parser = argparse.ArgumentParser()
    tool.add_subcommand(parser.add_subparsers())
    args = parser.parse_args(
        [
            "emotion-threshold",
            "--model",
            str(shared_path("models/emotion_mini_xception_fer2013_7cls.onnx")),
            "--detector",
            str(shared_path("models/face_detection_yunet_2023mar.onnx")),
            "--images",
            str(images),
            "--labels",
            str(images.parent / "labels.csv"),
            "--target-reject",
            "0.2",
            "--step",
            "0.1",
            "--video",
            str(shared_path("media/faces/carphone_176x144.mp4")),
            "--max-video-frames",
            "30",
            "--target-reject-on-video",
            "0.1",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert args.handler(args) == 0
    report = json.loads((tmp_path / "out" / "threshold_curve.json").read_text())
    # contempt is not among the 7 FER2013 classes: those images are dropped and counted.
    assert report["dropped_labels"] == {"contempt": 9}
    assert report["images"] + len(report["no_face"]) == 70
    assert report["images"] >= 60
    curve = report["curve"]
    assert [row["threshold"] for row in curve] == pytest.approx(np.arange(0, 1.01, 0.1).tolist())
    answered = [row["answered"] for row in curve]
    assert answered[0] == 1.0 and answered == sorted(answered, reverse=True)
    assert 0.25 < report["accuracy_at_0"] < 0.7  # demo-level model, 7 classes
    proposal = report["proposal"]
    confidences = np.array([row["confidence"] for row in report["predictions"]])
    assert (confidences < proposal["for_target_reject"]).mean() == pytest.approx(0.2, abs=0.03)
    assert report["video"]["faces"] == 30
    assert proposal["threshold"] == proposal["for_target_reject_on_video"]
    csv_lines = (tmp_path / "out" / "threshold_curve.csv").read_text().splitlines()
    assert csv_lines[0].startswith("threshold,answered,errors_remaining") and len(csv_lines) == 12
    chart = cv2.imread(str(tmp_path / "out" / "threshold_curve.png"))
    assert chart is not None and chart.shape[0] > 200 and chart.shape[1] > 400


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    tool.add_subcommand(parser.add_subparsers())
    base = [
        "emotion-threshold",
        "--model",
        "m.onnx",
        "--images",
        str(tmp_path),
        "--labels",
        "l.csv",
        "-o",
        str(tmp_path / "o"),
    ]
    for extra, message in (
        (["--target-reject", "1.5"], "target-reject"),
        (["--target-reject-on-video", "0.2"], "needs --video"),
        (["--step", "0"], "step"),
    ):
        args = parser.parse_args(base + extra)
        with pytest.raises(ConfigError, match=message):
            args.handler(args)
