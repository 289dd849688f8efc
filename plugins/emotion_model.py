"""What an expression classifier expects and returns, read from its metadata or from config.

Nothing about a particular model is hard-coded: the class list, colour, input size, scaling
and normalisation come from the model (its input tensor spec and metadata) and can be
overridden by the stage configuration, which wins.

Metadata keys read (ONNX ``metadata_props``, or the backend's equivalent):

- class list: ``labels`` (comma-separated, or a JSON list), else ``names`` (a JSON or Python
  literal list, or ``{index: name}`` dict as ultralytics writes), else ``classes``.
- colour: ``color`` / ``colour`` (``gray``/``grayscale``, ``rgb``, ``bgr``).
- scaling: ``scale`` (multiplies the 0..255 pixel), ``mean`` and ``std`` (one number, or one
  per channel, comma-separated; applied after ``scale``: ``x = (p * scale - mean) / std``).
- ``output``: ``probs`` / ``softmax`` (probabilities) or ``logits`` (softmax applied here).
- ``preprocess``: free text as the shared mini-Xception writes it
  (``"grayscale 64x64, x=(x/255-0.5)*2, NCHW"``); the colour word (gray/grayscale/rgb/bgr)
  and a formula ``x=(x/A-B)*C``, ``x=(x/A-B)/C`` or ``x=x/A`` are understood, and only fill
  what the explicit keys above leave open.

Size and layout (NCHW or NHWC) come from the input tensor's shape; a single-channel input is
grayscale whatever the metadata says.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from engine.backends.base import TensorSpec
from engine.errors import ConfigError, ModelError

Color = Literal["gray", "rgb", "bgr"]

#: Usual alternative spellings of expression names, mapped to FER+ names; used to compare a
#: model's labels with a data set's (``angry`` from FER2013 is FER+'s ``anger``).
EMOTION_SYNONYMS: dict[str, str] = {
    "angry": "anger",
    "happy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
    "disgusted": "disgust",
    "fearful": "fear",
    "scared": "fear",
    "contemptuous": "contempt",
    "calm": "neutral",
}

_NUMBER = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"
_FORMULA_AFFINE = re.compile(rf"x\s*=\s*\(\s*x\s*/\s*{_NUMBER}\s*-\s*{_NUMBER}\s*\)\s*([*/])\s*{_NUMBER}")
_FORMULA_SCALE = re.compile(rf"x\s*=\s*x\s*/\s*{_NUMBER}(?!\s*-)")
_COLOR_WORDS = {
    "grayscale": "gray",
    "greyscale": "gray",
    "gray": "gray",
    "grey": "gray",
    "rgb": "rgb",
    "bgr": "bgr",
}


def canonical_emotion(label: str) -> str:
    """Return the FER+ spelling of an expression name (lower-cased; unknown names unchanged)."""
    name = label.strip().lower()
    return EMOTION_SYNONYMS.get(name, name)


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything needed to feed a classifier crops and read its answers.

    Attributes:
        labels: Class names, in output order.
        color: Channel order the model wants: ``gray``, ``rgb`` or ``bgr``.
        width: Input width in pixels.
        height: Input height in pixels.
        layout: ``NCHW`` or ``NHWC``.
        scale: Factor applied to 0..255 pixels first.
        mean: Subtracted after scaling (one value per model channel).
        std: Divides after subtracting the mean (one value per model channel).
        softmax: True: outputs are logits; False: probabilities; None: decide per call.
        input_name: Name of the image input.
        output_name: Name of the scores output.
        batch: Fixed batch size of the input, or None when the batch axis is dynamic.
        dtype: numpy dtype name of the input.
    """

    labels: tuple[str, ...]
    color: Color
    width: int
    height: int
    layout: Literal["NCHW", "NHWC"]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    softmax: bool | None
    input_name: str
    output_name: str
    batch: int | None
    dtype: str = "float32"

    @property
    def channels(self) -> int:
        """Number of model input channels (1 for gray, 3 otherwise)."""
        return 1 if self.color == "gray" else 3

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """Turn ``(n, h, w, 3)`` uint8 BGR crops into the model's input tensor.

        Crops of another size than the model's are resized (one OpenCV call per crop; the
        align stage should be configured with the model's size so this never happens).
        """
        crops = np.asarray(crops)
        if crops.shape[1:3] != (self.height, self.width):
            crops = (
                np.stack(
                    [
                        cv2.resize(crop, (self.width, self.height), interpolation=cv2.INTER_AREA)
                        for crop in crops
                    ]
                )
                if len(crops)
                else np.zeros((0, self.height, self.width, 3), dtype=np.uint8)
            )
        pixels = crops.astype(np.float32)
        if self.color == "gray":
            # ITU-R BT.601 weights, as cv2.COLOR_BGR2GRAY, on all crops at once.
            pixels = pixels @ np.array([0.114, 0.587, 0.299], dtype=np.float32)
            pixels = pixels[..., None]
        elif self.color == "rgb":
            pixels = pixels[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        tensor = (pixels * np.float32(self.scale) - mean) / std
        if self.layout == "NCHW":
            tensor = tensor.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(tensor, dtype=self.dtype)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Return ``(n, classes)`` probabilities from raw outputs (softmax when needed)."""
        scores = np.asarray(scores, dtype=np.float32).reshape(len(scores), -1)
        if scores.shape[1] != len(self.labels):
            raise ModelError(
                f"classifier output '{self.output_name}' has {scores.shape[1]} scores per face "
                f"but {len(self.labels)} labels are configured ({', '.join(self.labels)})"
            )
        apply = self.softmax
        if apply is None:  # a probability row is in [0, 1] and sums to one; anything else is logits
            apply = bool(len(scores)) and not (
                (scores >= -1e-6).all()
                and (scores <= 1 + 1e-6).all()
                and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)
            )
        if not apply:
            return scores
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def resolve_spec(
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    metadata: Mapping[str, str],
    *,
    labels: Sequence[str] | None = None,
    color: str | None = None,
    scale: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    softmax: bool | None = None,
    output_name: str | None = None,
) -> ClassifierSpec:
    """Combine the model's tensor specs and metadata with config overrides (config wins).

    Raises:
        ModelError: The model does not look like an image classifier.
        ConfigError: Labels or preprocessing are neither in the metadata nor configured.
    """
    if len(inputs) != 1:
        raise ModelError(f"expected a classifier with one image input, got {len(inputs)} inputs")
    spec_in = inputs[0]
    if len(spec_in.shape) != 4:
        raise ModelError(f"classifier input '{spec_in.name}' must be 4-D, got shape {spec_in.shape}")
    if spec_in.shape[1] in (1, 3):
        layout: Literal["NCHW", "NHWC"] = "NCHW"
        channels, height, width = spec_in.shape[1], spec_in.shape[2], spec_in.shape[3]
    elif spec_in.shape[3] in (1, 3):
        layout = "NHWC"
        height, width, channels = spec_in.shape[1], spec_in.shape[2], spec_in.shape[3]
    else:
        raise ModelError(f"classifier input '{spec_in.name}' has no 1- or 3-channel axis: {spec_in.shape}")
    if height is None or width is None:
        raise ModelError(
            f"classifier input '{spec_in.name}' needs a fixed height and width, got {spec_in.shape}"
        )
    output = _pick_output(outputs, output_name)
    text = metadata.get("preprocess", "")

    resolved_labels = tuple(labels) if labels is not None else _labels_from(metadata)
    if not resolved_labels:
        raise ConfigError(
            "the classifier's metadata has no class list (keys labels/names/classes): set 'labels'"
        )
    if output.shape and len(output.shape) == 2 and output.shape[1] not in (None, len(resolved_labels)):
        raise ModelError(
            f"classifier output '{output.name}' has {output.shape[1]} classes but "
            f"{len(resolved_labels)} labels were given: {', '.join(resolved_labels)}"
        )

    resolved_color = _color(color or metadata.get("color") or metadata.get("colour") or _color_word(text))
    if channels == 1:
        resolved_color = "gray"
    elif resolved_color in (None, "gray"):
        raise ConfigError(
            f"classifier input '{spec_in.name}' has 3 channels but neither the metadata (color) "
            "nor the config says 'rgb' or 'bgr'"
        )

    formula = _formula(text)
    resolved_scale = scale if scale is not None else _float(metadata.get("scale"), "scale")
    resolved_mean = mean if mean is not None else _floats(metadata.get("mean"), "mean")
    resolved_std = std if std is not None else _floats(metadata.get("std"), "std")
    if formula is not None:
        resolved_scale = formula[0] if resolved_scale is None else resolved_scale
        resolved_mean = (formula[1],) if resolved_mean is None else resolved_mean
        resolved_std = (formula[2],) if resolved_std is None else resolved_std
    if resolved_scale is None:
        raise ConfigError(
            "the classifier's metadata says nothing about input scaling (keys scale/mean/std or "
            "preprocess): set 'scale' (and 'mean'/'std') in the stage config"
        )
    count = 1 if resolved_color == "gray" else 3
    mean_values = _per_channel(resolved_mean or (0.0,), count, "mean")
    std_values = _per_channel(resolved_std or (1.0,), count, "std")
    if any(value == 0 for value in std_values):
        raise ConfigError(f"std must not contain 0, got {list(std_values)}")

    if softmax is None:
        kind = metadata.get("output", "").strip().lower()
        softmax = {"logits": True, "probs": False, "probabilities": False, "softmax": False}.get(kind)
        if softmax is None and output.name.lower() in ("probs", "probabilities", "softmax"):
            softmax = False
    return ClassifierSpec(
        labels=resolved_labels,
        color=resolved_color,  # type: ignore[arg-type]
        width=int(width),
        height=int(height),
        layout=layout,
        scale=float(resolved_scale),
        mean=mean_values,
        std=std_values,
        softmax=softmax,
        input_name=spec_in.name,
        output_name=output.name,
        batch=spec_in.shape[0],
        dtype=spec_in.dtype if spec_in.dtype.startswith("float") else "float32",
    )


def _pick_output(outputs: Sequence[TensorSpec], name: str | None) -> TensorSpec:
    if name is not None:
        for spec in outputs:
            if spec.name == name:
                return spec
        raise ConfigError(f"classifier has no output '{name}'; outputs: {', '.join(s.name for s in outputs)}")
    if len(outputs) != 1:
        raise ConfigError(
            f"classifier has {len(outputs)} outputs ({', '.join(s.name for s in outputs)}): set 'output_name'"
        )
    return outputs[0]


def _labels_from(metadata: Mapping[str, str]) -> tuple[str, ...]:
    for key in ("labels", "names", "classes"):
        raw = metadata.get(key)
        if not raw:
            continue
        raw = raw.strip()
        if raw[0] in "[{":
            try:
                value: Any = json.loads(raw)
            except ValueError:
                try:
                    value = ast.literal_eval(raw)
                except (ValueError, SyntaxError) as error:
                    raise ModelError(f"cannot read metadata '{key}' as a list or dict: {raw[:80]}") from error
            if isinstance(value, dict):
                value = [value[k] for k in sorted(value, key=lambda k: int(k))]
            return tuple(str(item) for item in value)
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return ()


def _color(value: str | None) -> str | None:
    if value is None:
        return None
    name = _COLOR_WORDS.get(value.strip().lower())
    if name is None:
        raise ConfigError(f"color must be gray, rgb or bgr, got {value!r}")
    return name


def _color_word(text: str) -> str | None:
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _COLOR_WORDS:
            return word
    return None


def _formula(text: str) -> tuple[float, float, float] | None:
    """``(scale, mean, std)`` from ``x=(x/A-B)*C`` / ``x=(x/A-B)/C`` / ``x=x/A`` text."""
    compact = text.replace(" ", "")
    match = _FORMULA_AFFINE.search(compact)
    if match:
        divisor, offset, operator, factor = match.groups()
        std = 1.0 / float(factor) if operator == "*" else float(factor)
        return 1.0 / float(divisor), float(offset), std
    match = _FORMULA_SCALE.search(compact)
    if match:
        return 1.0 / float(match.group(1)), 0.0, 1.0
    return None


def _float(raw: str | None, key: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError as error:
        raise ModelError(f"metadata '{key}' must be a number, got {raw!r}") from error


def _floats(raw: str | None, key: str) -> tuple[float, ...] | None:
    if raw is None or raw == "":
        return None
    try:
        return tuple(float(item) for item in raw.strip("[]() ").split(","))
    except ValueError as error:
        raise ModelError(f"metadata '{key}' must be comma-separated numbers, got {raw!r}") from error


def _per_channel(values: Sequence[float], count: int, key: str) -> tuple[float, ...]:
    values = tuple(float(value) for value in values)
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ConfigError(f"{key} needs 1 or {count} values for this model, got {list(values)}")
    return values
