"""Import Ultralytics the way an engine should: offline, and never installing packages.

Ultralytics reads its environment once, at import: ``YOLO_OFFLINE`` stops downloads
(assets, fonts, update checks) and ``YOLO_AUTOINSTALL`` stops it from pip-installing
requirements behind the user's back. Both default to off here; a user who sets them keeps
their values.
"""

from __future__ import annotations

import os
from types import ModuleType

from engine.errors import ModelError

_DEFAULTS = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}


def import_ultralytics() -> ModuleType:
    """Import ``ultralytics`` with the offline defaults above.

    Raises:
        ModelError: Ultralytics is not installed (it is in the ``export`` extra).
    """
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        import ultralytics
    except ImportError as error:
        raise ModelError(
            "Ultralytics is needed for .pt/.yaml models: pip install 'vistream[export]'"
        ) from error
    return ultralytics
