"""Find stage classes: an entry-point name (group ``vistream.stages``) or ``module:Class``.

Built-in stages are registered in setup.cfg exactly like third-party ones, so there is no
import-time registry: only the stages a pipeline names are imported.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from engine.errors import PluginError
from engine.stage import Stage, missing_members

#: Entry-point group under which stage classes are registered.
STAGE_GROUP = "vistream.stages"


@dataclass(frozen=True)
class StageInfo:
    """One installed stage, as `vistream plugins` lists it.

    Attributes:
        name: Registered name (what a pipeline YAML writes after ``stage:``).
        target: ``module:Class`` the name points to.
        distribution: The installed distribution that registers it (such as ``vistream``).
    """

    name: str
    target: str
    distribution: str


def _stage_entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=STAGE_GROUP)}


def installed_stages() -> list[StageInfo]:
    """List every stage registered under the entry-point group, sorted by name."""
    return [
        StageInfo(
            name=ep.name,
            target=ep.value,
            distribution=ep.dist.name if ep.dist is not None else "?",
        )
        for ep in sorted(_stage_entry_points().values(), key=lambda ep: ep.name)
    ]


def resolve_stage(spec: str) -> type[Stage]:
    """Return the stage class named by ``spec``.

    Args:
        spec: A registered name (``"detect"``) or a dotted path (``"my_pkg.stages:Blur"``).

    Raises:
        PluginError: The name is not installed (the message lists installed names), the
            module cannot be imported, or the target is not a class.
    """
    if ":" in spec:
        return _import_class(spec, origin=spec)
    entry_point = _stage_entry_points().get(spec)
    if entry_point is None:
        names = ", ".join(info.name for info in installed_stages()) or "none"
        raise PluginError(
            f"unknown stage '{spec}'; installed stages: {names} "
            "(or give a dotted path such as 'my_package.module:MyStage')"
        )
    return _import_class(entry_point.value, origin=f"{spec} ({entry_point.value})")


def _import_class(target: str, *, origin: str) -> type[Stage]:
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise PluginError(f"stage '{origin}': expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PluginError(f"stage '{origin}': cannot import module '{module_name}': {error}") from error
    value: Any = module
    for part in class_name.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise PluginError(f"stage '{origin}': module '{module_name}' has no '{class_name}'")
    if not inspect.isclass(value):
        raise PluginError(f"stage '{origin}': '{class_name}' is not a class")
    missing = missing_members(value)
    if missing:
        raise PluginError(
            f"stage '{origin}': {class_name} lacks {', '.join(missing)} of the stage contract "
            "(subclass engine.stage.BaseStage for the defaults)"
        )
    return cast("type[Stage]", value)


def first_doc_line(cls: type) -> str:
    """Return the first line of a class docstring, or an empty string."""
    doc = inspect.getdoc(cls) or ""
    return doc.splitlines()[0] if doc else ""
