"""Factories for the face tests: tiny ONNX classifiers with known answers, real face frames.

The synthetic classifiers are ``GlobalAveragePool → Flatten → MatMul W → Add b [→ Softmax]``
built with ``onnx.helper``, so their output for any crop is computable in numpy
(:func:`reference_scores`): a test can tell whether the stage fed the right colour order,
size, scaling and layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.frame import Frame
from tests.conftest import shared_path

FERPLUS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
YUNET = "models/face_detection_yunet_2023mar.onnx"
MINI_XCEPTION = "models/emotion_mini_xception_fer2013_7cls.onnx"
#: Where the shared README says the astronaut's eyes are (subject's right eye first).
ASTRONAUT_EYES = np.array([[200.0, 102.0], [247.0, 103.0]])


def build_classifier(
    path: Path,
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    size: tuple[int, int] = (64, 64),
    layout: str = "NCHW",
    batch: int | None = None,
    softmax: bool = True,
    metadata: Mapping[str, str] | None = None,
    output_name: str = "probs",
) -> Path:
    """Write a linear classifier on channel means: ``scores = mean_c(x) @ weights + bias``.

    Args:
        path: Output ``.onnx`` file.
        weights: ``(channels, classes)``.
        bias: ``(classes,)``.
        size: ``(width, height)`` of the input.
        layout: ``NCHW`` or ``NHWC`` (NHWC models transpose first).
        batch: Fixed batch size, or None for a dynamic batch axis.
        softmax: End with a Softmax (probabilities) or not (logits).
        metadata: ``metadata_props`` to write.
        output_name: Name of the output.
    """
    channels, classes = weights.shape
    width, height = size
    batch_dim: int | str = batch if batch is not None else "N"
    shape = [batch_dim, channels, height, width] if layout == "NCHW" else [batch_dim, height, width, channels]
    nodes, source = [], "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes += [
        helper.make_node("GlobalAveragePool", [source], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["weighted"]),
        helper.make_node("Add", ["weighted", "b"], ["logits_" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits_"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes,
        "linear_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_dim, classes])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference_scores(
    crops: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    color: str,
    scale: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """What :func:`build_classifier`'s model outputs (before softmax), computed independently."""
    images = crops.astype(np.float64)
    if color == "gray":
        images = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) for c in crops]).astype(np.float64)[..., None]
    elif color == "rgb":
        images = images[..., ::-1]
    normalised = (images * scale - np.asarray(mean)) / np.asarray(std)
    return normalised.mean(axis=(1, 2)) @ weights + bias  # type: ignore[no-any-return]


def solid_crops(bgr_colors: Sequence[tuple[int, int, int]], size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 crops, each one flat BGR colour."""
    width, height = size
    return np.stack([np.full((height, width, 3), color, dtype=np.uint8) for color in bgr_colors])


def astronaut() -> np.ndarray:
    """The shared astronaut portrait (BGR)."""
    image = cv2.imread(str(shared_path("media/faces/astronaut.png")))
    assert image is not None
    return image


def carphone_frames() -> list[Frame]:
    """The 120 frames of the shared carphone video as CPU frames of source ``car``."""
    capture = cv2.VideoCapture(str(shared_path("media/faces/carphone_176x144.mp4")))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        index = len(frames)
        frames.append(Frame(source_id="car", index=index, pts_ns=int(index * 1e9 / 30), image=image))
    capture.release()
    return frames


def rotate_about(
    image: np.ndarray, centre: tuple[float, float], angle_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate an image about a point (counter-clockwise on screen); return it and the 2×3 matrix."""
    matrix = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    rotated = cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    return rotated, matrix
