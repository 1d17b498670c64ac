"""The candidates `bench tune` considers, built from the runtime plug-ins (never from a list of
runtime names): for each model, every runtime whose needs its source provides (or the plan's
`runtimes:` when it names some), each precision the runtime runs (or the plan's, when it names
them), each batch asked for, and the product of the runtime's declared speed options
(`RuntimePlugin.tune_options`, or the plan's `tune.options`). Settings the plan fixes in a
runtime entry are kept and not searched.

A candidate that cannot exist (the plan's own validation refuses it: fp16 on the CPU, a GPU
runtime on a CPU plan, int8 without a calibration split) or cannot run on this machine (the
plug-in's availability check: a missing package, no GPU, an absent provider) is pruned here,
with the reason, before any process starts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.plan.cells import Cell, PlanProblem
from harness.plan.expand import expand
from harness.plan.load import LoadedPlan
from harness.plan.schema import LatencyProtocol, ModelSpec, Plan, RuntimeSpec
from harness.runtimes.plugin import RuntimePlugin, TuneOption
from harness.runtimes.registry import plugin, plugins
from harness.tune.labels import candidate_text

MAX_LABEL = 80  # RuntimeSpec.label's limit


@dataclass
class Candidate:
    model_index: int
    model: str
    runtime: str
    precision: str
    batch: int
    settings: dict[str, Any]  # everything given to the runtime: the plan's fixed settings + varied
    varied: dict[str, Any]  # the searched settings and their values here
    name: str = ""  # the runtime label it runs under (unique per model)
    baseline: bool = False
    pruned: tuple[str, str] | None = None  # (kind, reason)
    # The protocol its measured cell runs with (the plan's, a model's `protocol:` over it, the
    # repeats resolved): what the time budget projects stage 2 from. None until expanded.
    protocol: LatencyProtocol | None = None

    @property
    def group(self) -> tuple[int, str, str, int]:
        """Candidates that share a runtime entry: same model, runtime, settings and batch."""
        return (self.model_index, self.runtime, repr(sorted(self.settings.items())), self.batch)


@dataclass
class Space:
    candidates: list[Candidate] = field(default_factory=list)
    scope: str = "model"
    resolutions: dict[int, int] = field(default_factory=dict)  # model index -> the resolution tuned at
    notes: list[str] = field(default_factory=list)

    def alive(self) -> list[Candidate]:
        return [c for c in self.candidates if c.pruned is None]


def load_tune_plan(path: str | Path) -> tuple[LoadedPlan, list[str]]:
    """The plan `bench tune` searches, and notes on what it left out. A plan that names no
    runtime is searched over every runtime its models' sources can feed (a plan's own default,
    eager PyTorch, may not even take the model), each with the plan's precisions it runs;
    runtimes that need a GPU are left out of a CPU plan, and the notes say so."""
    import yaml

    from harness.models.registry import default_source, source_names, source_plugin
    from harness.plan.load import load_plan, parse_plan
    from harness.plan.yaml_input import load_plan_yaml

    file = Path(path)
    try:
        data = load_plan_yaml(file.read_text("utf-8"))
    except Exception:  # noqa: BLE001 -- load_plan says what is wrong with the file, in its words
        return load_plan(file), []
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or data.get("runtimes") or any(
            not isinstance(m, dict) or m.get("runtimes") for m in models):
        return load_plan(file), []
    device = str(data.get("device", "auto"))
    asked = data.get("precisions")
    notes: list[str] = []
    for m in models:
        source = m.get("source") or default_source()
        if source not in source_names():
            return load_plan(file), []
        provides = source_plugin(source).provides
        runtimes = []
        for rt in plugins():
            if not rt.needs <= provides:
                continue
            if rt.device == "cuda" and device == "cpu":
                notes.append(f"{rt.name} left out for {m.get('name')}: it needs a GPU and the plan's device is cpu")
                continue
            wanted = m.get("precisions") or asked
            precisions = sorted(rt.precisions) if not isinstance(wanted, list) else [p for p in wanted if p in rt.precisions]
            if precisions:
                runtimes.append({"name": rt.name, "precisions": precisions})
        m["runtimes"] = runtimes
    # The runtimes filled in carry no settings, so nothing of the user's goes unchecked here;
    # whole-cell checks (int8's calibration split) prune single candidates in build_space.
    return parse_plan(yaml.safe_dump(data, sort_keys=False), str(file), file.resolve().parent, file,
                      check_runtime_settings=False), notes


def _option_values(rt: RuntimePlugin, plan: Plan, fixed: dict[str, Any], precision: str) -> list[tuple[str, tuple[Any, ...]]]:
    """(key, values) to search for runtime `rt` at `precision`: the plan's tune.options for it
    replace the plug-in's declared values; keys the runtime entry fixes are not searched."""
    asked = dict(plan.tune.options.get(rt.name, {})) if plan.tune else {}
    out: list[tuple[str, tuple[Any, ...]]] = []
    declared: dict[str, TuneOption] = {o.key: o for o in rt.tune_options}
    for key, option in declared.items():
        if key in fixed or (option.precisions is not None and precision not in option.precisions):
            continue
        out.append((key, tuple(asked.pop(key, option.values))))
    out += [(key, tuple(values)) for key, values in asked.items() if key not in fixed]
    return out


def _short(key: str) -> str:
    return "".join(word[0] for word in key.split("_"))


def _label(runtime: str, varied: dict[str, Any], defaults: dict[str, Any], batch: int | None) -> str:
    """`runtime k=v k=v` for the values that differ from the first (default) one; keys are cut
    to their initials when the full label would pass RuntimeSpec's limit."""
    changed = {k: v for k, v in varied.items() if defaults.get(k, object()) != v}

    def text(parts: dict[str, Any], short: bool) -> str:
        words = [runtime] + [f"{_short(k) if short else k}={'default' if v is None else v}" for k, v in parts.items()]
        return " ".join(words) + (f" b{batch}" if batch is not None else "")

    label = text(changed, short=False)
    return label if len(label) <= MAX_LABEL else text(changed, short=True)[:MAX_LABEL]


def _runtimes_for(plan: Plan, model: ModelSpec) -> list[RuntimeSpec]:
    named = model.runtimes or plan.runtimes
    if named:
        return list(named)
    from harness.models.registry import default_source, source_plugin

    provides = source_plugin(model.source or default_source()).provides
    return [RuntimeSpec(name=p.name) for p in plugins() if p.needs <= provides]


def _precisions(plan: Plan, model: ModelSpec, spec: RuntimeSpec, rt: RuntimePlugin) -> list[str]:
    if spec.precisions:
        return list(spec.precisions)
    if model.precisions:
        return list(model.precisions)
    if "precisions" in plan.model_fields_set:
        return list(plan.precisions)
    order = ["fp32", "tf32", "bf16", "fp16", "int8", "int8-dynamic"]
    return sorted(rt.precisions, key=lambda p: order.index(p) if p in order else len(order))


def build_space(loaded: LoadedPlan, batches: list[int], *, check_available: bool = True) -> Space:
    """Every candidate of the plan's models, the impossible and unavailable ones pruned."""
    plan = loaded.plan
    first = {c.model.name: c for c in loaded.cells}
    space = Space(scope=plan.scopes[0])
    if len(plan.scopes) > 1:
        space.notes.append(f"tuned in the plan's first scope, {plan.scopes[0]}")
    for m_index, model in enumerate(plan.models):
        cell = first.get(model.name)
        resolution = cell.resolution if cell else (model.resolutions or plan.resolutions or [0])[0]
        space.resolutions[m_index] = resolution
        for spec in _runtimes_for(plan, model):
            try:
                rt = plugin(spec.name)
            except KeyError:
                continue  # the plan's validation named it already
            for precision in _precisions(plan, model, spec, rt):
                options = _option_values(rt, plan, spec.settings, precision)
                keys = [k for k, _ in options]
                declared = {o.key: o.values for o in rt.tune_options}
                defaults = {k: (declared.get(k) or values)[0] for k, values in options}
                for values in itertools.product(*(v for _, v in options)):
                    varied = {k: v for k, v in zip(keys, values, strict=True)}
                    settings = {**spec.settings, **{k: v for k, v in varied.items() if v is not None}}
                    for batch in batches:
                        name = _label(spec.key, varied, defaults, batch if len(batches) > 1 else None)
                        space.candidates.append(Candidate(m_index, model.name, rt.name, precision, batch,
                                                          settings, varied, name))
    _dedupe_names(space)
    _prune_invalid(space, loaded)
    if check_available:
        _prune_unavailable(space, loaded)
    _choose_baselines(space)
    return space


def _dedupe_names(space: Space) -> None:
    """Labels are unique per model and runtime entry (one entry holds a group's precisions)."""
    seen: dict[tuple[int, str], tuple[int, str, str, int]] = {}
    for c in space.candidates:
        owner = seen.setdefault((c.model_index, c.name), c.group)
        n = 2
        while owner != c.group:
            name = f"{c.name[: MAX_LABEL - 4]} #{n}"
            owner = seen.setdefault((c.model_index, name), c.group)
            if owner == c.group:
                c.name = name
            n += 1


def plan_with(loaded: LoadedPlan, candidates: list[Candidate], space: Space, *, model_protocols: bool = True,
              **changes: Any) -> Plan:
    """The plan with each model's runtimes replaced by `candidates` (one runtime entry per
    group, holding its precisions and its batch), at the tuned scope and resolution, without
    its tune section or plan-wide precision and batch axes; models without a candidate are
    left out. `model_protocols=False` drops each model's own `protocol:` so the plan's (the
    screening protocol, given in `changes`) holds for every cell: a model's would otherwise be
    merged over it."""
    plan = loaded.plan
    models = []
    for m_index, model in enumerate(plan.models):
        mine = [c for c in candidates if c.model_index == m_index]
        if not mine:
            continue
        groups: dict[tuple[int, str, str, int], list[Candidate]] = {}
        for c in sorted(mine, key=lambda c: not c.baseline):  # the baseline's entry first
            groups.setdefault(c.group, []).append(c)
        specs = []
        for members in groups.values():
            head = members[0]
            precisions = sorted({c.precision for c in members}, key=lambda p: (not any(
                c.baseline and c.precision == p for c in members), p))
            specs.append(RuntimeSpec(name=head.runtime, label=head.name, settings=head.settings,
                                     precisions=precisions, batch_sizes=[head.batch],  # type: ignore[arg-type]
                                     reference=any(c.baseline for c in members)))
        models.append(model.model_copy(update={
            "runtimes": specs, "precisions": None, "batch_sizes": None, "scopes": None, "nms": None,
            "resolutions": [space.resolutions[m_index]] if model.resolutions or plan.resolutions else None,
            **({} if model_protocols else {"protocol": None}),
        }))
    # Every runtime entry pins its precisions and batch, so the plan's axes would be read by no
    # cell: they go back to their defaults, which a dump leaves out (a tuned.yaml listing int8
    # at the top while no configuration runs it would say otherwise).
    update: dict[str, Any] = {"models": models, "runtimes": None, "tune": None, "scopes": [space.scope], "nms": None,
                              "precisions": list(Plan.model_fields["precisions"].default),
                              "batch_sizes": list(Plan.model_fields["batch_sizes"].default), **changes}
    return plan.model_copy(update=update)


def _prune_invalid(space: Space, loaded: LoadedPlan) -> None:
    """Each candidate through the plan's own validation, alone: what it refuses is pruned with
    the field and message `bench validate` would print."""
    plan_dir = loaded.plan_dir
    for c in space.candidates:
        one = plan_with(loaded, [c], space)
        try:
            c.protocol = expand(one, plan_dir)[0].protocol
        except PlanProblem as exc:
            what = "; ".join(f"{where}: {why}" for where, why in exc.problems)
            c.pruned = ("invalid", what.replace(f"runtimes[{c.name}]", f"runtime {c.runtime}"))


def _prune_unavailable(space: Space, loaded: LoadedPlan) -> None:
    """The plug-in's own availability check (a missing package, no GPU, an absent provider),
    asked once per runtime, device, precision and settings (a setting can decide it: an
    execution provider, a back end that needs its own package)."""
    plan_dir = loaded.plan_dir
    asked: dict[tuple[str, str, str, str], str | None] = {}
    for c in space.alive():
        cells: list[Cell] = expand(plan_with(loaded, [c], space), plan_dir)
        cell = cells[0]
        key = (c.runtime, cell.device, c.precision, repr(sorted(c.settings.items())))
        if key not in asked:
            try:
                asked[key] = plugin(c.runtime).unavailable_reason(cell)
            except Exception as exc:  # noqa: BLE001 -- a check that breaks makes the runtime unavailable, said so
                asked[key] = f"its availability check failed: {exc!r}"
        if asked[key]:
            c.pruned = ("unavailable", str(asked[key]))


def _choose_baselines(space: Space) -> None:
    """Per model, the FP32 reference every mAP drop is taken against. The runtime first: the
    one whose plug-in names fp32 its default reference (eager PyTorch), else the plan's first
    runtime with an FP32 candidate that can run here. Then, within that runtime only, the
    candidate at the first batch closest to the plug-in's defaults: the fewest searched
    settings away from each option's first declared value, ties in the order the plan lists
    the values. `tune.options` may leave a default out ([1, 2] threads): the baseline then
    stays on the first runtime rather than moving to another one that happens to sit at its
    defaults, and the note says which settings differ."""
    for m_index in sorted({c.model_index for c in space.candidates}):
        mine = [c for c in space.candidates if c.model_index == m_index]
        runtime_order = list(dict.fromkeys(c.runtime for c in mine))
        alive = [c for c in mine if c.pruned is None and c.precision == "fp32"]
        if not alive:
            space.notes.append(f"model {space_model(space, m_index)} has no FP32 candidate that can run here: "
                               "no baseline, so no mAP drop can be checked for it")
            continue
        first_batch = min(c.batch for c in alive)
        runtime = min((c.runtime for c in alive), key=lambda r: (plugin(r).default_reference_precision != "fp32",
                                                                 runtime_order.index(r)))
        own = [c for c in alive if c.runtime == runtime]
        # min() keeps the first of equals: the space's order, the plan's values first.
        chosen = min(own, key=lambda c: (c.batch != first_batch, len(_off_default(c))))
        chosen.baseline = True
        space.notes.append(baseline_note(chosen, runtime_order))


def _off_default(c: Candidate) -> dict[str, tuple[Any, Any]]:
    """The searched settings of `c` away from the plug-in's default: key -> (value, default).
    A key only the plan's tune.options name has no declared default and never counts."""
    declared = {o.key: o.values for o in plugin(c.runtime).tune_options}
    return {k: (v, declared[k][0]) for k, v in c.varied.items() if declared.get(k) and declared[k][0] != v}


def _setting_text(value: Any) -> str:
    return "not set" if value is None else str(value)


def baseline_note(c: Candidate, runtime_order: list[str]) -> str:
    """Which candidate is the baseline and by which step of the rule (docs/tune.md)."""
    if plugin(c.runtime).default_reference_precision == "fp32":
        why = f"{c.runtime} names FP32 its default reference"
    elif runtime_order and c.runtime != runtime_order[0]:
        why = (f"{c.runtime} is the first of the plan's runtimes with an FP32 candidate that can run here "
               f"({', '.join(runtime_order[:runtime_order.index(c.runtime)])}: none)")
    else:
        why = f"{c.runtime} is the plan's first runtime"
    off = _off_default(c)
    if off:
        changed = ", ".join(f"{k}={_setting_text(v)} (default {_setting_text(d)})" for k, (v, d) in off.items())
        settings = f"its FP32 candidate closest to the defaults, as tune.options leaves a default out: {changed}"
    else:
        settings = "its FP32 candidate at the default settings"
    return (f"baseline of model {c.model}: {candidate_text(c.name, c.precision, c.batch)}: {why}; {settings}; "
            "every mAP drop is taken against it")


def space_model(space: Space, m_index: int) -> str:
    return next((c.model for c in space.candidates if c.model_index == m_index), str(m_index))
