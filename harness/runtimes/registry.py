"""Every runtime plug-in, found rather than listed.

The plug-ins are the packages under harness/runtimes/ whose `__init__.py` defines `PLUGINS`,
plus those that installed packages announce through the `detbench.runtimes` entry point
(each entry point names a module with a `PLUGINS` list). Only those light `__init__` modules
are imported here; a runtime's implementation is imported when a worker runs one of its cells.
Adding a runtime is adding a package: nothing here, in plan/ or in the report names one.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from importlib import metadata
from typing import TYPE_CHECKING

from harness.runtimes.plugin import RuntimePlugin

if TYPE_CHECKING:
    from harness.runtimes.base import Runtime

ENTRY_POINT_GROUP = "detbench.runtimes"


class UnknownRuntime(KeyError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown runtime {self.name!r}; known: {', '.join(runtime_names())}"


def _module_plugins(module_name: str) -> list[RuntimePlugin]:
    module = importlib.import_module(module_name)
    plugins = getattr(module, "PLUGINS", None)
    if plugins is None:
        return []
    if not all(isinstance(p, RuntimePlugin) for p in plugins):
        raise TypeError(f"{module_name}.PLUGINS must be a list of RuntimePlugin")
    return list(plugins)


@functools.cache
def _plugins() -> dict[str, RuntimePlugin]:
    import harness.runtimes as package

    modules = [
        f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__) if info.ispkg
    ]
    modules += [ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    found: dict[str, RuntimePlugin] = {}
    for module_name in modules:
        for plugin in _module_plugins(module_name):
            if plugin.name in found:
                raise ValueError(f"two runtime plug-ins are named {plugin.name!r} ({module_name})")
            found[plugin.name] = plugin
    return found


def plugins() -> list[RuntimePlugin]:
    return list(_plugins().values())


def runtime_names() -> list[str]:
    return list(_plugins())


def plugin(name: str) -> RuntimePlugin:
    try:
        return _plugins()[name]
    except KeyError:
        raise UnknownRuntime(name) from None


def default_runtime() -> str:
    """The runtime of a plan that names none: the plug-in marked `default`."""
    marked = [p.name for p in _plugins().values() if p.default]
    if len(marked) != 1:
        raise ValueError(f"exactly one runtime plug-in must be the default, found {marked}")
    return marked[0]


def libraries(name: str) -> tuple[str, ...] | None:
    """The packages that decide runtime `name`'s speed, or None for a runtime this harness
    does not know (a record from a newer harness or a removed plug-in)."""
    found = _plugins().get(name)
    return found.libraries if found else None


def runtime_class(name: str) -> type[Runtime]:
    """The implementation of runtime `name` (imports it: torch, onnxruntime...)."""
    from harness.runtimes.base import Runtime

    cls = plugin(name).implementation_class()
    if not issubclass(cls, Runtime):
        raise TypeError(f"runtime {name!r}: {cls.__name__} is not a Runtime")
    return cls
