"""Every model-source plug-in: the packages under harness/models/ whose `__init__.py`
defines `PLUGINS`, plus those announced through the `detbench.sources` entry point."""

from __future__ import annotations

import functools
import importlib
import pkgutil
from importlib import metadata
from typing import TYPE_CHECKING

from harness.models.plugin import SourcePlugin

if TYPE_CHECKING:
    from harness.models.base import ModelSource

ENTRY_POINT_GROUP = "detbench.sources"


@functools.cache
def _plugins() -> dict[str, SourcePlugin]:
    import harness.models as package

    modules = [
        f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__) if info.ispkg
    ]
    modules += [ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    found: dict[str, SourcePlugin] = {}
    for module_name in modules:
        for plugin in getattr(importlib.import_module(module_name), "PLUGINS", []):
            if not isinstance(plugin, SourcePlugin):
                raise TypeError(f"{module_name}.PLUGINS must be a list of SourcePlugin")
            if plugin.name in found:
                raise ValueError(f"two model sources are named {plugin.name!r} ({module_name})")
            found[plugin.name] = plugin
    return found


def source_names() -> list[str]:
    return list(_plugins())


def source_plugin(name: str) -> SourcePlugin:
    try:
        return _plugins()[name]
    except KeyError:
        raise KeyError(f"unknown model source {name!r}; known: {', '.join(source_names())}") from None


def default_source() -> str:
    marked = [p.name for p in _plugins().values() if p.default]
    if len(marked) != 1:
        raise ValueError(f"exactly one model-source plug-in must be the default, found {marked}")
    return marked[0]


def source_class(name: str) -> type[ModelSource]:
    return source_plugin(name).source_class()
