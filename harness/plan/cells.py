"""Expansion of a plan into cells, and the rules that reject cells which cannot exist.

A cell is one (model, runtime, precision, batch, resolution, scope) measurement. It carries
everything its worker process needs, so it serialises to JSON and back without the plan.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from harness.models.variants import VARIANTS, resolution_problem
from harness.plan.schema import (
    RUNTIME_DEVICES,
    AccuracySpec,
    DatasetSpec,
    GpuConditions,
    LatencyProtocol,
    ModelSpec,
    Plan,
    Precision,
    RuntimeSpec,
    Scope,
)

# Precisions each runtime can build. int8 needs calibration, which only TensorRT does here.
RUNTIME_PRECISIONS: dict[str, set[str]] = {
    "torch": {"fp32", "fp16", "bf16"},
    "rfdetr-predict": {"fp32", "fp16", "bf16"},
    "rfdetr-optimized": {"fp32", "fp16", "bf16"},
    "onnxruntime-cpu": {"fp32"},
    "onnxruntime-cuda": {"fp32", "fp16"},
    "onnxruntime-tensorrt": {"fp32", "fp16"},
    "tensorrt": {"fp32", "fp16", "int8"},
}

# Runtimes whose call is rfdetr's predict(): it takes images, so only end_to_end exists.
END_TO_END_ONLY = {"rfdetr-predict"}


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_id: str
    model: ModelSpec
    runtime: RuntimeSpec
    precision: Precision
    batch: int
    resolution: int
    scope: Scope
    # "auto", "cpu", "cuda:N": the device this cell asks for. "auto" resolves at run time to
    # cuda:0 when a GPU is present, else cpu.
    device: str
    protocol: LatencyProtocol
    dataset: DatasetSpec | None
    accuracy: AccuracySpec
    gpu: GpuConditions
    timeout_s: float
    artifacts_dir: str
    plan_dir: str  # relative paths in the plan resolve against the plan file's folder
    time_decode: bool = False
    # Run the accuracy pass in this cell: only the first scope of a configuration does, the
    # other scope reuses it (the artifact and precision are the same).
    run_accuracy: bool = False
    # This cell is its model's reference for mAP deltas and output agreement.
    is_reference: bool = False

    @property
    def config_key(self) -> str:
        """Identity without the scope: cells that share an artifact and precision."""
        return self.cell_id.rsplit("__", 1)[0]

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.plan_dir) / path


class PlanProblem(Exception):
    """A plan that validates field by field but asks for cells that cannot exist."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {what}" for where, what in problems))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)


def make_cell_id(model: str, runtime: str, precision: str, batch: int, res: int, scope: str) -> str:
    return "__".join([_slug(model), _slug(runtime), precision, f"b{batch}", f"r{res}", scope])


def _merge_protocol(base: LatencyProtocol, model: ModelSpec) -> LatencyProtocol:
    if model.protocol is None:
        return base
    changes: dict[str, Any] = {
        k: v for k, v in model.protocol.model_dump(exclude_unset=True).items() if v is not None
    }
    return LatencyProtocol.model_validate({**base.model_dump(), **changes})


def _resolutions(plan: Plan, model: ModelSpec, where: str) -> tuple[list[int], str]:
    if model.resolutions is not None:
        return model.resolutions, f"{where}.resolutions"
    if plan.resolutions is not None:
        return plan.resolutions, "resolutions"
    if model.source == "rfdetr" and model.variant in VARIANTS:
        return [VARIANTS[model.variant].native_resolution], f"{where}.variant"
    raise PlanProblem([(f"{where}.resolutions", "an onnx model needs `resolutions` (its input size)")])


def expand(plan: Plan, plan_dir: Path, *, check_runtime_settings: bool = True) -> list[Cell]:
    """The plan's cells, in run order (each model's reference first), or PlanProblem.

    `check_runtime_settings=False` skips the runtimes' own settings checks (tests use it to
    reach the run-time defences behind them)."""
    problems: list[tuple[str, str]] = []
    cells: list[Cell] = []
    # The artifact cache (exports, engines, generated datasets) belongs to where bench runs,
    # like `output`, not beside the plan file: plans/ must stay a folder of plans.
    artifacts = Path(plan.artifacts).expanduser()
    artifacts_dir = str(artifacts if artifacts.is_absolute() else (Path.cwd() / artifacts).resolve())
    for m_index, model in enumerate(plan.models):
        where = f"models[{m_index}]"
        if model.source == "rfdetr" and model.variant not in VARIANTS:
            known = ", ".join(VARIANTS)
            problems.append((f"{where}.variant", f"unknown RF-DETR variant `{model.variant}`; known: {known}"))
            continue
        try:
            resolutions, res_field = _resolutions(plan, model, where)
        except PlanProblem as exc:
            problems.extend(exc.problems)
            continue
        runtimes = model.runtimes or plan.runtimes
        rt_field = f"{where}.runtimes" if model.runtimes else "runtimes"
        precisions = model.precisions or plan.precisions
        batches = model.batch_sizes or plan.batch_sizes
        scopes = model.scopes or plan.scopes
        protocol = _merge_protocol(plan.protocol, model)
        keys = [r.key for r in runtimes]
        if len(set(keys)) != len(keys):
            problems.append((rt_field, "two runtimes share a name; give them different `label`s"))
            continue
        if sum(r.reference for r in runtimes) > 1:
            problems.append((rt_field, "only one runtime per model may be `reference: true`"))

        for res in resolutions:
            if model.source == "rfdetr" and (why := resolution_problem(model.variant or "", res)):
                problems.append((res_field, why))
        model_cells: list[Cell] = []
        combos = [
            (runtime, precision, batch, res)
            for runtime in runtimes
            for precision, batch, res in itertools.product(runtime.precisions or precisions, batches, resolutions)
        ]
        for runtime, precision, batch, res in combos:
            rt_where = f"{rt_field}[{keys.index(runtime.key)}]"
            pr_field = f"{rt_where}.precisions" if runtime.precisions else (
                f"{where}.precisions" if model.precisions else "precisions"
            )
            runs_on = RUNTIME_DEVICES[runtime.name]
            if runs_on == "cuda" and plan.device == "cpu":
                problems.append((rt_where, f"runtime {runtime.name} needs a GPU but the plan's device is cpu"))
                continue
            if precision not in RUNTIME_PRECISIONS[runtime.name]:
                ok = ", ".join(sorted(RUNTIME_PRECISIONS[runtime.name]))
                problems.append((pr_field, f"runtime {runtime.name} cannot run {precision} (it runs {ok})"))
                continue
            device = "cpu" if runs_on == "cpu" else plan.device
            if runs_on == "cuda" and device == "auto":
                device = "cuda:0"
            if device == "cuda":
                device = "cuda:0"
            if precision == "fp16" and device == "cpu":
                problems.append((pr_field, f"fp16 needs a GPU, but {runtime.name} runs on the cpu here"))
                continue
            cell_scopes = [s for s in scopes if not (runtime.name in END_TO_END_ONLY and s == "model")]
            if not cell_scopes:
                problems.append((rt_where, f"{runtime.name} times rfdetr's predict(), which only has the end_to_end scope"))
                continue
            for s_index, scope in enumerate(cell_scopes):
                model_cells.append(
                    Cell(
                        cell_id=make_cell_id(model.name, runtime.key, precision, batch, res, scope),
                        model=model,
                        runtime=runtime,
                        precision=precision,
                        batch=batch,
                        resolution=res,
                        scope=scope,
                        device=device,
                        protocol=protocol,
                        dataset=plan.dataset,
                        accuracy=plan.accuracy,
                        gpu=plan.gpu,
                        timeout_s=plan.cell_timeout_s,
                        artifacts_dir=artifacts_dir,
                        plan_dir=str(plan_dir),
                        time_decode=plan.time_decode,
                        run_accuracy=bool(plan.dataset) and plan.accuracy.enabled and s_index == 0,
                    )
                )
        cells.extend(_with_reference_first(model_cells))
    if check_runtime_settings:
        problems.extend(_runtime_setting_problems(cells))
    if problems:
        raise PlanProblem(list(dict.fromkeys(problems)))  # one line per distinct problem
    return cells


def _runtime_setting_problems(cells: list[Cell]) -> list[tuple[str, str]]:
    """Runtimes whose settings have their own schema check them now, not at run time."""
    problems: list[tuple[str, str]] = []
    if any(c.runtime.name == "tensorrt" for c in cells):
        from harness.runtimes.tensorrt_engine import cell_problems

        for cell in cells:
            if cell.runtime.name == "tensorrt":
                for _, what in cell_problems(cell):
                    where = f"runtimes[{cell.runtime.key}].settings (model {cell.model.name})"
                    problems.append((where, what.removeprefix("runtime.settings: ")))
    return problems


def _with_reference_first(cells: list[Cell]) -> list[Cell]:
    """Mark the model's reference configuration (the runtime marked `reference: true`, else
    PyTorch FP32) and move its cells to the front, so every later cell of the model can be
    compared against the reference cell of the same resolution and batch."""
    if not cells:
        return cells
    marked = [c for c in cells if c.runtime.reference]
    if not marked:
        marked = [c for c in cells if c.runtime.name == "torch" and c.precision == "fp32"]
    if not marked:
        return cells
    ref_runtime, ref_precision = marked[0].runtime.key, marked[0].precision

    def is_ref(c: Cell) -> bool:
        return c.runtime.key == ref_runtime and c.precision == ref_precision

    ref = [c.model_copy(update={"is_reference": True}) for c in cells if is_ref(c)]
    return ref + [c for c in cells if not is_ref(c)]
