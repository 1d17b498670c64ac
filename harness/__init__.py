"""detbench harness: reproducible latency and accuracy numbers for exported object detectors.

The public API, for people who script the harness (docs/api.md): plans, running them, reading
their results, the record types, the plug-in registries. Every name is imported on first use
(`harness.load_plan` imports the plan package then, not before): `bench --help` must not pull
torch or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it
_PUBLIC = {
    # plans
    "load_plan": "harness.plan.load",
    "parse_plan": "harness.plan.load",
    "LoadedPlan": "harness.plan.load",
    "Plan": "harness.plan.schema",
    "Cell": "harness.plan.cells",
    "expand": "harness.plan.expand",
    # running
    "run_plan": "harness.api",
    "Run": "harness.api",
    # results
    "read_run": "harness.api",
    "cell_views": "harness.report.rundata",
    "CellView": "harness.report.rundata",
    "compare_runs": "harness.report.compare",
    "render_run": "harness.report.render",
    "ResultsFile": "harness.results",
    "CellRecord": "harness.results",
    "CellIdentity": "harness.results",
    "Latency": "harness.results",
    "Stats": "harness.results",
    "Accuracy": "harness.results",
    "AcrossProcesses": "harness.results",
    "DerivedEntry": "harness.results",
    "ResultsError": "harness.results",
    "SCHEMA_VERSION": "harness.results",
    # plug-ins
    "RuntimePlugin": "harness.runtimes.plugin",
    "RuntimeSettings": "harness.runtimes.plugin",
    "SourcePlugin": "harness.models.plugin",
    "runtime_plugins": "harness.runtimes.registry:plugins",
    "runtime_plugin": "harness.runtimes.registry:plugin",
    "source_plugin": "harness.models.registry:source_plugin",
    "UserError": "harness.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
