"""Where vistream looks for models, calibrations and the shared data, and how to say so.

A pipeline YAML names files through ``${VISTREAM_MODELS}`` and ``${VISTREAM_CALIBRATIONS}``;
this module gives those variables their defaults when the environment does not, and the
sentence that "not found" errors and ``vistream run --help`` use to name the directory
searched and the variable that sets it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The checkout this engine runs from, when it runs from one (an editable install).
_CHECKOUT_DIR = Path(__file__).resolve().parent.parent


def _first_directory(candidates: list[Path]) -> Path:
    """The first candidate that is a directory, else the first one (named in errors)."""
    return next((path for path in candidates if path.is_dir()), candidates[0])


def default_variables() -> dict[str, str]:
    """Variables a pipeline YAML may use even when the environment does not set them.

    - ``VISTREAM_SHARED``: ``../shared`` beside the current directory, else beside the
      checkout the engine runs from.
    - ``VISTREAM_MODELS``: ``$VISTREAM_SHARED/models``.
    - ``VISTREAM_CALIBRATIONS``: the checkout's ``calibrations/``, else the copy a plain
      ``pip install`` puts under ``<prefix>/share/vistream/calibrations``.
    """
    shared = os.environ.get("VISTREAM_SHARED") or str(
        _first_directory([(Path.cwd() / ".." / "shared").resolve(), _CHECKOUT_DIR.parent / "shared"])
    )
    calibrations = os.environ.get("VISTREAM_CALIBRATIONS") or str(
        _first_directory(
            [_CHECKOUT_DIR / "calibrations", Path(sys.prefix) / "share" / "vistream" / "calibrations"]
        )
    )
    return {
        "VISTREAM_SHARED": shared,
        "VISTREAM_MODELS": os.environ.get("VISTREAM_MODELS") or str(Path(shared) / "models"),
        "VISTREAM_CALIBRATIONS": calibrations,
    }


def describe_lookup(kind: str = "models") -> str:
    """Where ``${VISTREAM_MODELS}`` (``kind="models"``) or ``${VISTREAM_CALIBRATIONS}``
    (``kind="calibrations"``) points now and how to change it, for "not found" errors."""
    variables = default_variables()
    if kind == "calibrations":
        return (
            f"calibrations are looked up in {variables['VISTREAM_CALIBRATIONS']}; set VISTREAM_CALIBRATIONS"
        )
    return (
        f"models are looked up in {variables['VISTREAM_MODELS']}; "
        "set VISTREAM_MODELS, or VISTREAM_SHARED for its parent"
    )
