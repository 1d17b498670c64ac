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
from typing import Any, cast

from harness.models.plugin import CAPABILITIES, SourcePlugin
from harness.models.registry import default_source, source_names, source_plugin
from harness.plan.cells import Cell, PlanProblem, make_cell_id
from harness.plan.schema import BudgetLimits, LatencyProtocol, ModelSpec, NmsPlacement, Plan, RuntimeSpec, Scope
from harness.plan.server import ServerSpec
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
    problems += _server_problems(plan, plan_dir, check_paths)
    problems += _tune_problems(plan)
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
    if plan.scenario == "server":
        scopes, found = _server_scopes(plan, m_index, runtime)
        if found:
            return [], found
    if not scopes:
        only = ", ".join(sorted(runtime.scopes))
        return [], [(rt_where, f"{runtime.name} only has the {only} scope, which the plan's scopes leave out")]
    cells: list[Cell] = []
    protocol = _merge_protocol(plan.protocol, model)
    batches = spec.batch_sizes or model.batch_sizes or plan.batch_sizes
    if protocol.repeats is None:
        on_cpu = device == "cpu" or (device == "auto" and not _gpu_driver_present())
        # A server cell's one process is a whole load sweep; more are asked for explicitly.
        repeats = REPEATS_ON_CPU if on_cpu or plan.scenario == "server" else REPEATS_ON_GPU
        protocol = protocol.model_copy(update={"repeats": repeats})
    placements, problems = _nms_placements(plan, m_index, runtime, rt_where)
    if problems:
        return [], problems
    nms_axis = bool(model.nms or plan.nms) and placements != [None]
    for precision, batch, res, nms in itertools.product(precisions, batches, resolutions, placements):
        if precision not in runtime.precisions:
            ok = ", ".join(sorted(runtime.precisions))
            problems.append((pr_field, f"runtime {runtime.name} cannot run {precision} (it runs {ok})"))
            continue
        if precision == "fp16" and device == "cpu" and not runtime.cpu_fp16:
            problems.append((pr_field, f"fp16 needs a GPU, but {runtime.name} runs on the cpu here"))
            continue
        for s_index, scope in enumerate(scopes):
            server = plan.scenario == "server"
            cells.append(
                Cell(
                    # A server cell's id says so where a scope would: it serves end to end.
                    cell_id=make_cell_id(model.name, spec.key, precision, batch, res, "server" if server else scope,
                                         nms if nms_axis else None),
                    model=model,
                    runtime=spec,
                    precision=precision,
                    batch=batch,
                    resolution=res,
                    scope=scope,
                    nms=cast("NmsPlacement | None", nms),
                    nms_axis=nms_axis,
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
                    run_accuracy=bool(plan.dataset) and plan.accuracy.enabled and s_index == 0 and not server,
                    scenario=plan.scenario,
                    server=(plan.server or ServerSpec()) if server else None,
                    budgets=_budgets(plan, model),
                )
            )
    return cells, problems


def _server_scopes(plan: Plan, m_index: int, runtime: RuntimePlugin) -> tuple[list[Scope], Problems]:
    """A server cell serves images end to end (decode, preprocess, model, decoder): that is its
    only scope, whatever the plan's default `scopes` say; asking for another is an error."""
    model = plan.models[m_index]
    asked, field = (model.scopes, f"models[{m_index}].scopes") if model.scopes else (
        (plan.scopes, "scopes") if "scopes" in plan.model_fields_set else (None, ""))
    if asked is not None and any(s != "end_to_end" for s in asked):
        return [], [(field, "the server scenario serves images end to end; give `[end_to_end]` or leave `scopes` out")]
    if "end_to_end" not in runtime.scopes:
        return [], [(field or "runtimes", f"runtime {runtime.name} has no end_to_end scope, which a server needs")]
    return ["end_to_end"], []


def _tune_problems(plan: Plan) -> Problems:
    """`tune.options` names runtimes that exist and values their settings schema takes."""
    if plan.tune is None:
        return []
    problems: Problems = []
    for name, options in plan.tune.options.items():
        where = f"tune.options.{name}"
        try:
            runtime = plugin(name)
        except KeyError:
            known = ", ".join(repr(n) for n in runtime_names())
            problems.append((where, f"unknown runtime {name!r}; expected one of {known}"))
            continue
        for key, values in options.items():
            if key not in runtime.settings.model_fields:
                known = ", ".join(runtime.settings.model_fields) or "none"
                problems.append((f"{where}.{key}", f"not a {runtime.title} setting (known: {known})"))
                continue
            for value in values:
                try:
                    runtime.parse_settings({key: value})
                except SettingsProblem as exc:
                    what = "; ".join(w for _, w in exc.problems)
                    problems.append((f"{where}.{key}", f"{value!r}: {what}"))
    return problems


def _server_problems(plan: Plan, plan_dir: Path, check_paths: bool) -> Problems:
    """A server plan whose load cannot fit in the cell's timeout, or whose baseline run is
    not there."""
    if plan.scenario != "server":
        return []
    spec = plan.server or ServerSpec()
    problems: Problems = []
    # The load, plus a minute for starting the server, the capture and the record.
    need = spec.load_seconds() + 60.0
    if need > plan.cell_timeout_s:
        problems.append(("server", f"the load levels take up to {spec.load_seconds():.0f} s (+60 s to start and "
                                   f"record), more than cell_timeout_s ({plan.cell_timeout_s:g} s); shorten "
                                   "the levels or raise cell_timeout_s"))
    baseline = spec.monitoring.baseline
    if check_paths and baseline is not None:
        path = Path(baseline).expanduser()
        path = path if path.is_absolute() else plan_dir / path
        if not path.exists():
            problems.append(("server.monitoring.baseline", f"`{baseline}` does not exist (looked for {path}); "
                                                           "expected a run folder or its results.json"))
    return problems
def _nms_placements(
    plan: Plan, m_index: int, runtime: RuntimePlugin, rt_where: str
) -> tuple[list[str | None], Problems]:
    """The NMS placements a model's cells of one runtime get: the model's own (`models[].nms`,
    each one checked), else the plan's axis narrowed to what the model supports, else the
    model's own placement (its source's first), or [None] for a model without NMS."""
    model = plan.models[m_index]
    supported = list(source_plugin(model.source or default_source()).nms_placements(model))
    where = f"models[{m_index}].nms" if model.nms else "nms"
    asked = model.nms or plan.nms
    if not asked:
        return [supported[0] if supported else None], []
    if not supported:
        if model.nms:
            return [], [(where, f"model `{model.name}` has no NMS the harness can place (its outputs need none, "
                                "or the model filters its own detections)")]
        return [None], []  # the plan's axis is for the models that have one
    problems: Problems = []
    if model.nms:
        for placement in model.nms:
            if placement not in supported:
                problems.append((where, f"model `{model.name}` cannot run its NMS {placement} "
                                        f"(it supports {', '.join(supported)})"))
        placements = list(dict.fromkeys(model.nms))
    else:
        placements = [p for p in dict.fromkeys(plan.nms or []) if p in supported]
        if not placements:
            problems.append((where, f"model `{model.name}` supports none of the plan's NMS placements "
                                    f"(it supports {', '.join(supported)})"))
    if "device" in placements and not runtime.device_nms:
        if model.nms:
            problems.append((rt_where, f"runtime {runtime.name} cannot hand its outputs to torch on its device, "
                                       f"so NMS cannot run `device` there (models[{m_index}].nms asks for it)"))
        placements = [p for p in placements if p != "device"]
        if not placements and not problems:
            problems.append((rt_where, f"runtime {runtime.name} cannot run any of the plan's NMS placements for "
                                       f"model `{model.name}`"))
    return list(placements), problems


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
    first runtime whose plug-in names a default reference precision, at that precision, else
    the plan's first runtime at fp32) and move its cells to the front, so every later cell of
    the model can be compared against the reference cell of the same resolution and batch
    (and every NMS placement against the first: how placements are checked to agree)."""
    if not cells:
        return cells
    marked = [c for c in cells if c.runtime.reference]
    if not marked:
        marked = [c for c in cells if c.precision == plugin(c.runtime.name).default_reference_precision]
    if not marked:
        marked = [c for c in cells if c.precision == "fp32"]
    if not marked:
        return cells
    ref_runtime, ref_precision, ref_nms = marked[0].runtime.key, marked[0].precision, marked[0].nms

    def is_ref(c: Cell) -> bool:
        # One NMS placement is the reference (the first asked for): the others are compared
        # with it, which is how placements are checked to agree.
        return c.runtime.key == ref_runtime and c.precision == ref_precision and c.nms == ref_nms

    ref = [c.model_copy(update={"is_reference": True}) for c in cells if is_ref(c)]
    return ref + [c for c in cells if not is_ref(c)]
