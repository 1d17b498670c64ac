"""What a runtime plug-in says about itself, before anything heavy is imported.

A plug-in is a package under harness/runtimes/ (or a third-party package named by the
`detbench.runtimes` entry point) whose `__init__.py` defines `PLUGINS`, a list of
`RuntimePlugin`. Everything the plan validator, the report and the fingerprint need to know
about a runtime comes from there: its name, where it runs, which precisions and scopes it can
time, its settings schema, what it needs from the model source, the libraries that decide its
speed. The implementation (the `Runtime` subclass) lives in a module of the same package and is
imported only by the worker that runs a cell, so validating a plan never imports torch,
onnxruntime or TensorRT. docs/adding-a-runtime.md walks through adding one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from harness.plan.cells import Cell

Device = Literal["cpu", "cuda", "any"]
ALL_SCOPES = frozenset({"model", "end_to_end"})


class RuntimeSettings(BaseModel):
    """Base of every runtime's `settings:` schema: unknown keys are errors, values are typed.
    Fields left at None mean "the library's own default", which is read back and recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class NoSettings(RuntimeSettings):
    """A runtime that takes no settings: any key is a misspelling or a wrong runtime."""


class SettingsProblem(Exception):
    """Settings that do not fit the runtime's schema: one (key path, message) pair each."""

    def __init__(self, title: str, problems: list[tuple[str, str]]):
        self.title = title
        self.problems = problems
        super().__init__("; ".join(f"{key}: {what}" for key, what in problems))

    def summary(self) -> str:
        lines = [f"invalid {self.title} settings:"]
        lines += [f"  {key}: {what}" for key, what in self.problems]
        return "\n".join(lines)

    def describe(self, where: str) -> str:
        return f"{where}: {self.summary()}"


# Extra validation a plug-in runs on each expanded cell: (field, message) pairs, where a field
# is the cell's own (`runtime.settings.batch_profile`) or a plan field (`dataset`).
CellCheck = Callable[["Cell"], list[tuple[str, str]]]


@dataclass(frozen=True)
class TuneOption:
    """A setting whose value changes the runtime's speed, and the values `bench tune` tries
    (harness/tune/space.py takes the product of a plug-in's options). The first value is the
    one a plan gets when it leaves the setting out, so the all-first candidate is the runtime
    as configured by default."""

    key: str  # the settings key (a field of the plug-in's settings schema)
    values: tuple[Any, ...]
    # Only at these precisions (TF32 rounds fp32 math: an option of fp32 cells only); None: all.
    precisions: frozenset[str] | None = None


@dataclass(frozen=True)
class RuntimePlugin:
    name: str  # what a plan writes in `runtimes:`
    title: str  # how messages name it ("ONNX Runtime", "TensorRT")
    summary: str  # one line for `bench runtimes` and docs
    implementation: str  # "module:Class" of its Runtime subclass, imported lazily
    device: Device  # "cpu" only, "cuda" only, or "any" (follows the plan's device)
    precisions: frozenset[str]
    scopes: frozenset[str] = ALL_SCOPES
    settings: type[RuntimeSettings] = NoSettings
    # What the model source must provide: "torch" (a core torch module), "rfdetr" (rfdetr's
    # own model object), "onnx" (an ONNX file).
    needs: frozenset[str] = frozenset()
    # Packages (environment capture's logical names) whose version decides this runtime's
    # speed; they enter the environment fingerprint.
    libraries: tuple[str, ...] = ()
    # A model's reference configuration when no runtime is marked `reference: true`: the
    # first cell of a runtime with this flag, at this precision.
    default_reference_precision: str | None = None
    # "module:function" with the CellCheck signature, for checks that need the whole cell.
    cell_check: str | None = None
    # True when the runtime can hand its raw outputs to torch on its own device without a copy
    # (`Runtime.device_tensors`), so the `device` NMS placement can run there.
    device_nms: bool = False
    # Settings keys that the model source reads when it exports (opset, dynamic batch).
    export_keys: tuple[str, ...] = field(default=())
    # The runtime a plan gets when it names none (exactly one plug-in says so).
    default: bool = False
    # Settings worth searching for speed (`bench tune`), declared here so the search names no
    # runtime: a new plug-in that declares options is searched with them.
    tune_options: tuple[TuneOption, ...] = ()
    # True when the runtime may run fp16 on a CPU (OpenVINO on CPUs with FP16 arithmetic): the
    # plan then accepts the cell, and the runtime's unavailable_reason says whether this CPU can.
    cpu_fp16: bool = False

    def parse_settings(self, raw: dict[str, Any]) -> RuntimeSettings:
        """The plan's settings dict as this runtime's typed settings, or SettingsProblem."""
        try:
            return self.settings.model_validate(raw)
        except ValidationError as exc:
            raise SettingsProblem(self.title, self._problems(exc)) from None

    def _problems(self, exc: ValidationError) -> list[tuple[str, str]]:
        problems = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"]) or "<settings>"
            if err["type"] == "extra_forbidden":
                known = ", ".join(_fields_at(self.settings, err["loc"][:-1])) or "none"
                what = f"unknown {self.title} setting (check its spelling; known: {known})"
            else:
                what = err["msg"].removeprefix("Value error, ")
                if "input" in err and not isinstance(err["input"], (dict, list)):
                    what += f" (got {err['input']!r})"
            problems.append((key, what))
        return problems

    def implementation_class(self) -> type:
        """The `harness.runtimes.base.Runtime` subclass (typed by registry.runtime_class; this
        module stays below base.py). Imports it: torch, onnxruntime..."""
        cls = _load(self.implementation)
        if not isinstance(cls, type):
            raise TypeError(f"{self.implementation} is not a class")
        return cls

    def unavailable_reason(self, cell: Cell) -> str | None:
        """Why this runtime cannot run `cell` on this machine (package, GPU, provider), or
        None. Imports the implementation, so only a worker (or `bench env`) calls it."""
        reason: str | None = self.implementation_class().unavailable_reason(cell)  # type: ignore[attr-defined]
        return reason

    def check_cell(self, cell: Cell) -> list[tuple[str, str]]:
        if self.cell_check is None:
            return []
        check: CellCheck = _load(self.cell_check)
        return check(cell)


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a settings model accepts at `loc` (a nested section such as `int8`)."""
    import typing

    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)
