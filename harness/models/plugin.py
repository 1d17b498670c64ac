"""What a model-source plug-in says about itself, before anything heavy is imported.

A model source is where a model comes from (rfdetr builds RF-DETR; onnx_file wraps a user's
ONNX file) and how its inputs and outputs look. Each is a package under harness/models/ (or a
third-party package named by the `detbench.sources` entry point) whose `__init__.py` defines
`PLUGINS`, a list of `SourcePlugin`: its name, what it can hand a runtime (`provides`), the
plan checks that need no model (fields, variants, resolutions) and where its implementation
(a `ModelSource` subclass) lives.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from harness.models.base import ModelSource


class SourceOptions(BaseModel):
    """Base of a source's `options:` schema (models[].options): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoOptions(SourceOptions):
    """A source that takes no options."""


# What a source can hand a runtime, in the words a plan error uses.
CAPABILITIES = {"torch": "a PyTorch model", "rfdetr": "an rfdetr model object", "onnx": "an ONNX file",
                "tflite": "a LiteRT (.tflite) file"}

# (field under models[i], or "" for the model itself, message)
Problems = list[tuple[str, str]]


def model_file_check(kind: str) -> Callable[[Any, Path | None], Problems]:
    """The plan check of a source that is one model file at `path` (kind "onnx" -> `.onnx`):
    the file must exist, and `variant` / `weights` (other than `random`) have no meaning."""
    article = "an" if kind[0] in "aeiou" else "a"

    def check(spec: Any, plan_dir: Path | None) -> Problems:
        problems: Problems = []
        if not spec.path:
            problems.append(("", f"{article} {kind} model needs `path` to the .{kind} file"))
        elif plan_dir is not None:
            path = Path(spec.path).expanduser()
            path = path if path.is_absolute() else plan_dir / path
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                problems.append(("path", f"`{spec.path}` {what} (looked for {path}); expected the model's .{kind} file"))
        if spec.variant:
            problems.append(("variant", f"`variant` is for rfdetr models; {article} {kind} model is the file at `path`"))
        if spec.weights not in (None, "random"):
            problems.append(("weights", f"{article} {kind} model's weights are the file itself: leave `weights` out, or "
                                        "write `random` to state that the file holds random weights"))
        if kind == "onnx" and spec.path and plan_dir is not None and spec.decoder is not None and spec.decoder.outputs:
            problems += _onnx_output_problems(spec, plan_dir)
        return problems

    return check


def _onnx_output_problems(spec: Any, plan_dir: Path) -> Problems:
    """decoder.outputs must name outputs the file has: read from the graph (no weights loaded)
    when the file is there; an unreadable file is the run's to report."""
    path = Path(spec.path).expanduser()
    path = path if path.is_absolute() else plan_dir / path
    if not path.is_file():
        return []
    try:
        import onnx

        names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    except Exception:  # noqa: BLE001 -- onnx missing or the file unreadable: checked when it runs
        return []
    return [(f"decoder.outputs.{key}", f"{path.name} has no output `{name}`; its outputs are {', '.join(names)}")
            for key, name in spec.decoder.outputs.items() if name not in names]


def _no_problems(spec: Any, plan_dir: Path | None) -> Problems:
    return []


def _no_native(spec: Any) -> list[int] | None:
    return None


def _any_resolution(spec: Any, resolution: int) -> str | None:
    return None


def _no_nms(spec: Any) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class SourcePlugin:
    name: str  # what a plan writes in `models[].source`
    title: str
    summary: str
    implementation: str  # "module:Class" of its ModelSource subclass, imported lazily
    # What it can hand a runtime: "torch" (a core module), "rfdetr" (rfdetr's object), "onnx".
    provides: frozenset[str]
    options: type[SourceOptions] = NoOptions
    # Plan checks on the model's spec (a harness.plan.schema.ModelSpec), with no model built.
    # `plan_dir` is the plan's folder (relative paths resolve against it); None: leave out
    # the checks that files exist on this machine.
    check: Callable[[Any, Path | None], Problems] = _no_problems
    # The model's own input sizes when the plan gives none; None: the plan must give them.
    native_resolutions: Callable[[Any], list[int] | None] = _no_native
    resolution_problem: Callable[[Any, int], str | None] = _any_resolution
    # The NMS placements a spec's model supports (in_graph, host, device), its own first (what
    # a cell gets when the plan asks for none); () for a model without NMS or whose NMS is
    # not the harness's to move (an NMS-free head, a file that filters its own detections).
    nms_placements: Callable[[Any], tuple[str, ...]] = _no_nms
    # Whether a spec asks for random weights (stated in `bench validate` and the report).
    random_weights: Callable[[Any], bool] = lambda spec: False
    # True when the weights are part of the model's file (an ONNX file): the harness cannot
    # know whether they were trained, so results say "from file".
    weights_in_file: bool = False
    # The source of a model that names none (exactly one plug-in says so).
    default: bool = False

    def parse_options(self, raw: dict[str, Any]) -> Problems:
        try:
            self.options.model_validate(raw)
        except ValidationError as exc:
            known = ", ".join(self.options.model_fields) or "none"
            out: Problems = []
            for err in exc.errors(include_url=False):
                key = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    out.append((f"options.{key}", f"unknown option of {self.title} models (known: {known})"))
                else:
                    out.append((f"options.{key}", err["msg"].removeprefix("Value error, ")))
            return out
        return []

    def source_class(self) -> type[ModelSource]:
        module, _, attr = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
