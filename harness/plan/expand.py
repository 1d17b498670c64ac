"""Expansion of a plan into cells, and the rules that reject cells which cannot exist.

Everything this module knows about a runtime or a model source comes from its plug-in
(`harness.runtimes.registry`, `harness.models.registry`): where it runs, its precisions and
scopes, its settings schema, what it needs from a model and what a source provides. Problems
are collected, not raised one by one, so `bench validate` lists every problem of a plan at
once, each with the field that asks for it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from harness.models.plugin import CAPABILITIES, SourcePlugin
from harness.models.registry import default_source, source_names, source_plugin
from harness.plan.cells import Cell, PlanProblem, make_cell_id
from harness.plan.schema import BudgetLimits, LatencyProtocol, ModelSpec, Plan, RuntimeSpec
from harness.runtimes.plugin import RuntimePlugin, SettingsProblem
from harness.runtimes.registry import default_runtime, plugin, runtime_names

Problems = list[tuple[str, str]]

# Fresh processes per cell when the plan does not say: on the lent H200 the medians of
# identical processes moved 17-50% (docs/performance.md), so one process is not a result.
REPEATS_ON_GPU = 3
REPEATS_ON_CPU = 1



def _merge_protocol(base: LatencyProtocol, model: ModelSpec) -> LatencyProtocol:
    if model.protocol is None:
        return base
    changes: dict[str, Any] = {
        k: v for k, v in model.protocol.model_dump(exclude_unset=True).items() if v is not None
    }
    return LatencyProtocol.model_validate({**base.model_dump(), **changes})


def _budgets(plan: Plan, model: ModelSpec) -> BudgetLimits | None:
    """The limits a model's cells are judged against: the plan's, the model's over them."""
    if plan.budgets is None and model.budgets is None:
        return None
    base = plan.budgets if plan.budgets is not None else BudgetLimits()
    merged = base.merged(model.budgets)
    return merged if merged.flat() else None


def _resolutions(plan: Plan, model: ModelSpec, source: SourcePlugin, where: str) -> tuple[list[int], str]:
    if model.resolutions is not None:
        return model.resolutions, f"{where}.resolutions"
    if plan.resolutions is not None:
        return plan.resolutions, "resolutions"
    native = source.native_resolutions(model)
    if native:
        return native, f"{where}.variant"
    raise PlanProblem([(f"{where}.resolutions", f"an {model.source} model needs `resolutions` (its input size)")])


def _with_defaults(plan: Plan) -> Plan:
    """The plan with the registries' defaults filled in where it names no runtime or source,
    so every cell says which plug-ins it uses."""
    models = [m if m.source else m.model_copy(update={"source": default_source()}) for m in plan.models]
    runtimes = plan.runtimes or [RuntimeSpec(name=default_runtime())]
    return plan.model_copy(update={"models": models, "runtimes": runtimes})


def _field(where: str, sub: str) -> str:
    return f"{where}.{sub}" if sub else where


def _source_problems(model: ModelSpec, where: str, plan_dir: Path | None) -> tuple[SourcePlugin | None, Problems]:
    try:
        source = source_plugin(model.source or default_source())
    except KeyError:
        known = ", ".join(repr(n) for n in source_names())
        return None, [(f"{where}.source", f"got {model.source!r}; expected one of {known}")]
    problems = [(_field(where, sub), what) for sub, what in source.check(model, plan_dir)]
    problems += [(_field(where, sub), what) for sub, what in source.parse_options(model.options)]
    return source, problems


def _runtime_problems(
    spec: RuntimeSpec, rt_where: str, model: ModelSpec, source: SourcePlugin, device: str, check_settings: bool
) -> tuple[RuntimePlugin | None, Problems]:
    try:
        runtime = plugin(spec.name)
    except KeyError:
        known = ", ".join(repr(n) for n in runtime_names())
        return None, [(f"{rt_where}.name", f"got {spec.name!r}; expected one of {known}")]
    problems: Problems = []
    missing = runtime.needs - source.provides
    if missing:
        wants = " and ".join(CAPABILITIES.get(m, m) for m in sorted(missing))
        problems.append((rt_where, f"runtime {runtime.name} needs {wants}; model `{model.name}` is a "
                                   f"{source.title} source, which provides {_provides(source)}"))
    if runtime.device == "cuda" and device == "cpu":
        problems.append((rt_where, f"runtime {runtime.name} needs a GPU but the plan's device is cpu"))
    if check_settings:
        try:
            runtime.parse_settings(spec.settings)
        except SettingsProblem as exc:
            problems.append((f"runtimes[{spec.key}].settings (model {model.name})", exc.summary()))
    return runtime, problems


def _provides(source: SourcePlugin) -> str:
    return " and ".join(CAPABILITIES.get(p, p) for p in sorted(source.provides))


def _cell_device(runtime: RuntimePlugin, plan_device: str) -> str:
    device = "cpu" if runtime.device == "cpu" else plan_device
    if runtime.device == "cuda" and device == "auto":
        device = "cuda:0"
    return "cuda:0" if device == "cuda" else device


def expand(
    plan: Plan, plan_dir: Path, *, check_runtime_settings: bool = True, check_paths: bool = True
) -> list[Cell]:
    """The plan's cells, in run order (each model's reference first), or PlanProblem.

    `check_runtime_settings=False` skips the runtimes' settings checks (tests use it to reach
    the run-time defences behind them); `check_paths=False` skips the checks that the files a
    plan names (dataset, ONNX files, checkpoints) exist on this machine."""
    problems: Problems = []
    cells: list[Cell] = []
    # The artifact cache (exports, engines, generated datasets) belongs to where bench runs,
    # like `output`, not beside the plan file: plans/ must stay a folder of plans.
    artifacts = Path(plan.artifacts).expanduser()
    artifacts_dir = str(artifacts if artifacts.is_absolute() else (Path.cwd() / artifacts).resolve())
    plan = _with_defaults(plan)
    for m_index, model in enumerate(plan.models):
        where = f"models[{m_index}]"
        source, found = _source_problems(model, where, plan_dir if check_paths else None)
        problems += found
        if source is None or found:
            continue
        try:
            resolutions, res_field = _resolutions(plan, model, source, where)
        except PlanProblem as exc:
            problems.extend(exc.problems)
            continue
        runtimes = model.runtimes or plan.runtimes or []
        rt_field = f"{where}.runtimes" if model.runtimes else "runtimes"
        keys = [r.key for r in runtimes]
        if len(set(keys)) != len(keys):
            problems.append((rt_field, "two runtimes share a name; give them different `label`s"))
            continue
        if sum(r.reference for r in runtimes) > 1:
            problems.append((rt_field, "only one runtime per model may be `reference: true`"))
        for res in resolutions:
            if why := source.resolution_problem(model, res):
                problems.append((res_field, why))
        model_cells: list[Cell] = []
        for r_index, spec in enumerate(runtimes):
            rt_where = f"{rt_field}[{r_index}]"
            runtime, found = _runtime_problems(spec, rt_where, model, source, plan.device, check_runtime_settings)
            problems += found
            if runtime is None or found:
                continue
            made, found = _runtime_cells(plan, m_index, spec, runtime, rt_where, resolutions, plan_dir, artifacts_dir)
            problems += found
            model_cells += made
        cells.extend(_with_reference_first(model_cells))
    if check_paths:
        problems += _dataset_problems(plan, plan_dir)
    problems += _cell_id_collisions(cells)
    if check_runtime_settings:
        problems += _runtime_cell_checks(cells)
    if problems:
        raise PlanProblem(list(dict.fromkeys(problems)))  # one line per distinct problem
    return cells


def _gpu_driver_present() -> bool:
    """Whether `device: auto` can mean a GPU here (the NVIDIA driver's files; no library loads)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _runtime_cells(
    plan: Plan,
    m_index: int,
    spec: RuntimeSpec,
    runtime: RuntimePlugin,
    rt_where: str,
    resolutions: list[int],
    plan_dir: Path,
    artifacts_dir: str,
) -> tuple[list[Cell], Problems]:
    model = plan.models[m_index]
    precisions = spec.precisions or model.precisions or plan.precisions
    if spec.precisions:
        pr_field = f"{rt_where}.precisions"
    else:
        pr_field = f"models[{m_index}].precisions" if model.precisions else "precisions"
    device = _cell_device(runtime, plan.device)
    scopes = [s for s in (model.scopes or plan.scopes) if s in runtime.scopes]
    if not scopes:
        only = ", ".join(sorted(runtime.scopes))
        return [], [(rt_where, f"{runtime.name} only has the {only} scope, which the plan's scopes leave out")]
    problems: Problems = []
    cells: list[Cell] = []
    protocol = _merge_protocol(plan.protocol, model)
    batches = model.batch_sizes or plan.batch_sizes
    if protocol.repeats is None:
        on_cpu = device == "cpu" or (device == "auto" and not _gpu_driver_present())
        protocol = protocol.model_copy(update={"repeats": REPEATS_ON_CPU if on_cpu else REPEATS_ON_GPU})
    for precision, batch, res in itertools.product(precisions, batches, resolutions):
        if precision not in runtime.precisions:
            ok = ", ".join(sorted(runtime.precisions))
            problems.append((pr_field, f"runtime {runtime.name} cannot run {precision} (it runs {ok})"))
            continue
        if precision == "fp16" and device == "cpu":
            problems.append((pr_field, f"fp16 needs a GPU, but {runtime.name} runs on the cpu here"))
            continue
        for s_index, scope in enumerate(scopes):
            cells.append(
                Cell(
                    cell_id=make_cell_id(model.name, spec.key, precision, batch, res, scope),
                    model=model,
                    runtime=spec,
                    precision=precision,
                    batch=batch,
                    resolution=res,
                    scope=scope,
                    device=device,
                    protocol=protocol,
                    dataset=plan.dataset,
                    accuracy=plan.accuracy,
                    gpu=plan.gpu,
                    controls=plan.controls,
                    timeout_s=plan.cell_timeout_s,
                    artifacts_dir=artifacts_dir,
                    plan_dir=str(plan_dir),
                    time_decode=plan.time_decode,
                    run_accuracy=bool(plan.dataset) and plan.accuracy.enabled and s_index == 0,
                    budgets=_budgets(plan, model),
                )
            )
    return cells, problems


def _dataset_problems(plan: Plan, plan_dir: Path) -> Problems:
    """A dataset that is not there would fail every cell's accuracy pass: say so now."""
    dataset = plan.dataset
    if dataset is None or dataset.sample:
        return []
    problems: Problems = []
    for key, value, want_dir in (("images", dataset.images, True), ("annotations", dataset.annotations, False)):
        if value is None:
            continue
        path = Path(value).expanduser()
        path = path if path.is_absolute() else plan_dir / path
        expected = "a folder of images" if want_dir else "a COCO-format instances JSON file"
        if not path.exists():
            hint = "; scripts/fetch-coco.sh fetches COCO val2017" if "coco" in value.lower() else ""
            problems.append((f"dataset.{key}", f"`{value}` does not exist (looked for {path}); expected {expected}{hint}"))
        elif want_dir != path.is_dir():
            problems.append((f"dataset.{key}", f"`{value}` ({path}) is not {expected}"))
    return problems


def _cell_id_collisions(cells: list[Cell]) -> Problems:
    """Two configurations whose names differ only in characters a cell id cannot hold (`det a`
    and `det/a` both become `det-a`) would share one result file: a plan error, named."""
    first: dict[str, Cell] = {}
    problems: Problems = []
    for cell in cells:
        other = first.setdefault(cell.cell_id, cell)
        if other is cell:
            continue
        if other.model.name != cell.model.name:
            what = f"models `{other.model.name}` and `{cell.model.name}`"
        else:
            what = f"runtimes `{other.runtime.key}` and `{cell.runtime.key}` of model `{cell.model.name}`"
        problems.append(("models" if other.model.name != cell.model.name else "runtimes",
                         f"{what} give the same cell id `{cell.cell_id}` (names are reduced to letters, "
                         "digits, '-' and '.'); rename one"))
    return problems


def _runtime_cell_checks(cells: list[Cell]) -> Problems:
    """Checks a runtime plug-in runs on whole cells (settings that fit the schema but not the
    cell: a batch outside an engine profile, INT8 without calibration data...)."""
    problems: Problems = []
    for cell in cells:
        runtime = plugin(cell.runtime.name)
        if runtime.cell_check is None:
            continue
        for field, what in runtime.check_cell(cell):
            if field.startswith("runtime.settings"):
                # The runtime's own messages start with its field; say which entry it is.
                what = what.removeprefix(f"{field}: ")
                field = f"runtimes[{cell.runtime.key}].settings (model {cell.model.name})"
            problems.append((field, what))
    return problems


def _with_reference_first(cells: list[Cell]) -> list[Cell]:
    """Mark the model's reference configuration (the runtime marked `reference: true`, else the
    first runtime whose plug-in names a default reference precision, at that precision) and
    move its cells to the front, so every later cell of the model can be compared against the
    reference cell of the same resolution and batch."""
    if not cells:
        return cells
    marked = [c for c in cells if c.runtime.reference]
    if not marked:
        marked = [c for c in cells if c.precision == plugin(c.runtime.name).default_reference_precision]
    if not marked:
        return cells
    ref_runtime, ref_precision = marked[0].runtime.key, marked[0].precision

    def is_ref(c: Cell) -> bool:
        return c.runtime.key == ref_runtime and c.precision == ref_precision

    ref = [c.model_copy(update={"is_reference": True}) for c in cells if is_ref(c)]
    return ref + [c for c in cells if not is_ref(c)]
