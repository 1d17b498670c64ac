"""`bench compare A B`: did B get slower (or less accurate) than A, cell by cell?

For every cell id in both runs: the change in median latency, judged at the level of
processes (the unit that varies; samples inside one process are not independent): Welch's
t-test on the logs of the process medians (harness.measure.repeats.compare_processes, in words
TEST_WORDS), the change's (1 - alpha) interval, and a verdict from where that interval lies
against +-threshold_pct. With one process on a side there is no interval and the cell gets "no
verdict" (protocol.repeats >= 3 gives one). Server cells are compared level by level at equal
load, the same test on each level's per-process median latency (harness.report.serve.
compare_levels); they run one process by default, so they need protocol.repeats for a verdict.
The change in mAP is shown beside. Two numbers compare only when they were measured under the
same conditions, so the environments' fingerprints must match; when they don't, the
comparison is refused (exit 2) and the differing fields are listed, unless forced.

Memory is compared too, as latency is gated: a cell whose peak device memory or peak host RSS
(the worst process, harness.measure.resources) grew by more than `memory_threshold_pct` from A
to B is a regression; energy per image is shown beside it, not gated (it follows the host's
and the GPU's state more than the code).

Exit status, for CI:
  0  no matched cell is slower than the threshold allows (cells with no verdict do not fail it;
     compare.html and compare.md say when no cell got a verdict at all)
  1  at least one matched cell is slower by more than threshold_pct over its whole (1 - alpha)
     interval, grew in memory by more than memory_threshold_pct, or was measured in A but
     failed in B
  2  refused: fingerprints differ, or a matched cell was measured under another latency
     protocol or on another dataset (and not forced), or the runs share no cell

Fingerprints are recomputed from each record's stored facts by this harness's rule
(harness.environment.fingerprint), so what a newer rule leaves out (a process's CUDA stream
address) no longer splits an older run's cells either.

compare.html and compare.md go to `out_dir`, by default B's run folder (B is the run under
test; A is the baseline), or the folder holding B's results.json; the text says where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.environment.fingerprint import (
    comparability_fields,
    comparable_settings,
    fingerprint,
    fingerprint_differences,
)
from harness.measure.repeats import ProcessComparison, compare_processes
from harness.report import charts, fmt
from harness.report.render import render_template, write_atomic
from harness.report.rundata import CellView, cell_views, environment_json, flatten, is_volatile, load_run, show_value

EXIT_OK, EXIT_REGRESSION, EXIT_REFUSED = 0, 1, 2
UNJUDGED_VERDICTS = ("no verdict", "not compared")
# The test in words: the terminal text, compare.md and compare.html's banner all say it from here.
TEST_WORDS = ("Welch's t-test on the logs of the process medians (each process one value: samples "
              "inside a process are not independent); the threshold applies to the interval")


@dataclass
class CellComparison:
    cell_id: str
    a: CellView
    b: CellView
    # slower | faster | no change beyond threshold | inconclusive | no verdict | failed in B | not compared
    verdict: str
    note: str = ""
    change_pct: float | None = None
    test: ProcessComparison | None = None
    map_change: float | None = None  # points, B - A
    regression: bool = False
    # Server cells: their levels at equal load (harness.report.serve.compare_levels).
    levels: list[Any] = field(default_factory=list)
    unmatched_levels: list[str] = field(default_factory=list)
    memory: list[MemoryChange] = field(default_factory=list)
    energy_change_pct: float | None = None  # joules per image, B against A

    @property
    def memory_grew(self) -> list[MemoryChange]:
        return [m for m in self.memory if m.grew]

    @property
    def p_value(self) -> float | None:
        return self.test.p_value if self.test else None


@dataclass(frozen=True)
class MemoryChange:
    what: str  # "device memory" | "host RSS"
    a_bytes: int
    b_bytes: int
    grew: bool  # past the memory threshold
    # Why the two figures were not compared (read different ways: not one quantity); then
    # `grew` is False and no change is stated.
    not_compared: str | None = None

    @property
    def change_pct(self) -> float:
        return (self.b_bytes / self.a_bytes - 1.0) * 100.0 if self.a_bytes else 0.0

    def text(self) -> str:
        if self.not_compared:
            return f"{self.what} not compared ({self.not_compared})"
        return (f"{self.what} {fmt.pct(self.change_pct)} ({fmt.mb(self.a_bytes)} → {fmt.mb(self.b_bytes)} MB)")


@dataclass
class FingerprintProblem:
    cell_id: str
    a: str | None
    b: str | None
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (field, in A, in B)


@dataclass
class ConditionProblem:
    """A matched cell measured under other conditions than the plan's own fingerprint covers:
    another latency protocol, another dataset."""

    cell_id: str
    fields: list[tuple[str, str, str]]  # (field, in A, in B)


def _environment(view: CellView) -> dict[str, Any]:
    return environment_json(view.record)


def _comparable_fields(view: CellView) -> dict[str, Any]:
    """Environment and runtime settings, minus readings that vary anyway (clocks, times)."""
    out = {k: v for k, v in flatten(_environment(view)).items() if not is_volatile(k)}
    out.update({f"settings.{k}": v for k, v in flatten(comparable_settings(view.record.settings)).items()})
    return out


def _fingerprint_inputs(view: CellView) -> dict[str, Any]:
    return comparability_fields(
        _environment(view), runtime=view.runtime_name, precision=view.precision, settings=view.record.settings,
    )


def fingerprint_of(view: CellView) -> str:
    """The fingerprint of the cell's stored facts, by this harness's rule (what a newer rule
    leaves out, e.g. a process's CUDA stream address, no longer splits an older run's cells)."""
    return fingerprint(_environment(view), runtime=view.runtime_name, precision=view.precision, settings=view.record.settings)


def _differences(a: CellView, b: CellView) -> list[tuple[str, str, str]]:
    """The fields behind two different fingerprints: the fingerprint's own inputs
    (harness.environment.fingerprint.comparability_fields) when they differ, else every
    captured field that differs apart from readings that always vary."""
    diff = fingerprint_differences(_fingerprint_inputs(a), _fingerprint_inputs(b))
    if diff:
        return [(key, show_value(va), show_value(vb)) for key, (va, vb) in diff.items()]
    ea, eb = _comparable_fields(a), _comparable_fields(b)
    return [
        (key, show_value(ea[key]) if key in ea else "(not recorded)", show_value(eb[key]) if key in eb else "(not recorded)")
        for key in sorted(set(ea) | set(eb))
        if ea.get(key, "\0missing") != eb.get(key, "\0missing")
    ]


def fingerprint_problems(pairs: list[tuple[CellView, CellView]]) -> list[FingerprintProblem]:
    problems = []
    for a, b in pairs:
        fa, fb = fingerprint_of(a), fingerprint_of(b)
        if fa == fb:
            continue
        problems.append(FingerprintProblem(a.cell_id, fa, fb, _differences(a, b)))
    return problems


def _conditions(view: CellView) -> dict[str, Any]:
    """What decides whether two cells' numbers were measured alike, besides the environment:
    the latency protocol, the dataset the plan named, and the images the accuracy pass saw."""
    ident = view.identity
    out: dict[str, Any] = {f"protocol.{k}": v for k, v in flatten(ident.protocol.model_dump(mode="json")).items()}
    out["time_decode"] = ident.time_decode
    dataset = ident.dataset.model_dump(mode="json") if ident.dataset is not None else None
    out.update({f"dataset.{k}": v for k, v in flatten(dataset).items()} if dataset else {"dataset": None})
    accuracy = view.record.accuracy
    if accuracy is not None:
        out["accuracy.images"] = accuracy.images
        out["accuracy.dataset.fingerprint"] = accuracy.dataset.fingerprint
    return out


def condition_problems(pairs: list[tuple[CellView, CellView]]) -> list[ConditionProblem]:
    problems = []
    for a, b in pairs:
        ca, cb = _conditions(a), _conditions(b)
        # Accuracy facts compare only where both sides ran the accuracy pass.
        keys = [k for k in dict.fromkeys([*ca, *cb]) if not k.startswith("accuracy.") or (k in ca and k in cb)]
        fields = [(k, show_value(ca.get(k)), show_value(cb.get(k))) for k in keys if ca.get(k) != cb.get(k)]
        if fields:
            problems.append(ConditionProblem(a.cell_id, fields))
    return problems


def compare_server_cell(a: CellView, b: CellView, threshold_pct: float, alpha: float) -> CellComparison:
    """Two server cells, level by level at equal load: slower when any level's median latency
    grew past the threshold with p < alpha; the cell's change is its headline level's."""
    from harness.report.serve import compare_levels

    c = CellComparison(a.cell_id, a, b, verdict="not compared")
    assert a.record.serve is not None and b.record.serve is not None
    c.levels, c.unmatched_levels = compare_levels(
        a.record.serve, b.record.serve, threshold_pct, alpha,
        [r.serve for r in a.processes if r.serve is not None], [r.serve for r in b.processes if r.serve is not None],
    )
    if b.status == "failed" and a.status != "failed":
        c.verdict, c.regression, c.note = "failed in B", True, b.reason or "failed"
        return c
    if not c.levels:
        c.note = "no level at equal load in both runs"
        return c
    slower = [lv.key for lv in c.levels if lv.verdict == "slower"]
    faster = [lv.key for lv in c.levels if lv.verdict == "faster"]
    if a.median and b.median:
        c.change_pct = (b.median / a.median - 1.0) * 100.0  # the headline level's median
    if slower:
        c.verdict, c.regression = "slower", True
        c.note = "at " + ", ".join(slower)
    elif faster:
        c.verdict, c.note = "faster", "at " + ", ".join(faster)
    elif all(lv.verdict == "no verdict" for lv in c.levels):
        c.verdict = "no verdict"
        c.note = "one server process a side: the between-process variance is unknown; measure with protocol.repeats >= 3"
    elif any(lv.verdict == "inconclusive" for lv in c.levels):
        c.verdict = "inconclusive"
    else:
        c.verdict = "no change beyond threshold"
    return c


def memory_changes(a: CellView, b: CellView, threshold_pct: float) -> list[MemoryChange]:
    """Peak device memory and peak host RSS, A against B, where both sides measured them."""
    out: list[MemoryChange] = []
    ra, rb = a.resources, b.resources
    if ra is None or rb is None:
        return out
    for what, attr in (("device memory", "device_memory_peak_bytes"), ("host RSS", "host_peak_rss_bytes")):
        va, vb = getattr(ra, attr), getattr(rb, attr)
        if va is None or vb is None or va <= 0:
            continue
        if attr == "device_memory_peak_bytes" and ra.device_memory_method != rb.device_memory_method:
            # NVML's process figure and the allocator's are different quantities: a change
            # between them says nothing, so it is flagged, never gated.
            out.append(MemoryChange(what, int(va), int(vb), False, not_compared=(
                f"read different ways: A {ra.device_memory_method or 'unknown'}, B {rb.device_memory_method or 'unknown'}")))
            continue
        out.append(MemoryChange(what, int(va), int(vb), vb > va * (1 + threshold_pct / 100.0)))
    return out


def compare_cell(a: CellView, b: CellView, threshold_pct: float, alpha: float,
                 memory_threshold_pct: float = 10.0) -> CellComparison:
    """B's latency against A's at the level of processes (the unit that varies): Welch's t-test
    on the logs of the process medians, the change with its (1 - alpha) interval, and a verdict
    from where that interval lies against +-threshold_pct (see docs/report.md); and memory
    growth past memory_threshold_pct, which is a regression too."""
    if a.is_server and b.is_server:
        return compare_server_cell(a, b, threshold_pct, alpha)
    c = CellComparison(a.cell_id, a, b, verdict="not compared")
    c.memory = memory_changes(a, b, memory_threshold_pct)
    ea = a.resources.joules_per_image if a.resources else None
    eb = b.resources.joules_per_image if b.resources else None
    if ea and eb:
        c.energy_change_pct = (eb / ea - 1.0) * 100.0
    if a.metric is not None and b.metric is not None:
        c.map_change = b.metric - a.metric
    if a.measured and b.measured and a.median is not None and b.median is not None:
        test = compare_processes(a.process_medians or [a.median], b.process_medians or [b.median], level=1 - alpha)
        c.test, c.change_pct = test, test.change_pct
        c.verdict, c.note, c.regression = _verdict(test, threshold_pct)
    elif a.measured and b.status == "failed":
        c.verdict, c.regression = "failed in B", True
        c.note = b.reason or "failed"
    else:
        missing = [f"{name} {v.status}" for name, v in (("A", a), ("B", b)) if not v.measured]
        c.note = "no latency: " + ", ".join(missing)
    if c.memory_grew:
        c.regression = True
        if not c.verdict.startswith(("slower", "failed")):
            # The cell fails on memory whatever its latency said: the verdict column says so.
            c.verdict = "grew in memory" if c.verdict in ("no verdict", "not compared") else f"{c.verdict}, grew in memory"
        grew = "; ".join(m.text() for m in c.memory_grew)
        c.note = f"{c.note}; memory grew past +{memory_threshold_pct:g}%: {grew}" if c.note else \
            f"memory grew past +{memory_threshold_pct:g}%: {grew}"
    return c


def _verdict(test: ProcessComparison, threshold_pct: float) -> tuple[str, str, bool]:
    """(verdict, note, regression) from the change's interval; the threshold applies to the
    interval, never to the point estimate alone."""
    if test.change_ci_pct is None:
        return ("no verdict", f"{test.n_a} vs {test.n_b} process(es): with one process on a side the "
                "between-process variance is unknown; measure with protocol.repeats >= 3", False)
    lo, hi = test.change_ci_pct
    interval = f"{lo:+.1f}% .. {hi:+.1f}%"
    if lo > threshold_pct:
        return "slower", f"interval {interval} above +{threshold_pct:g}%", True
    if hi < -threshold_pct:
        return "faster", f"interval {interval} below -{threshold_pct:g}%", False
    if -threshold_pct <= lo and hi <= threshold_pct:
        return "no change beyond threshold", f"interval {interval} within ±{threshold_pct:g}%", False
    return "inconclusive", f"interval {interval} reaches past ±{threshold_pct:g}%: more processes would tell", False


def _out_dir(b: Path, out_dir: Path | None) -> Path:
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir
    return b if b.is_dir() else b.parent


def compare_runs(
    a: Path,
    b: Path,
    *,
    threshold_pct: float = 5.0,
    alpha: float = 0.01,
    force: bool = False,
    out_dir: Path | None = None,
    memory_threshold_pct: float = 10.0,
) -> tuple[int, str]:
    """Compare run B against baseline A; (exit status, text summary). See the module doc."""
    a, b = Path(a), Path(b)
    run_a, run_b = load_run(a), load_run(b)
    views_a = {v.cell_id: v for v in cell_views(run_a)}
    views_b = cell_views(run_b)
    matched = [(views_a[v.cell_id], v) for v in views_b if v.cell_id in views_a]
    ids_b = {v.cell_id for v in views_b}
    only_a = [cid for cid in views_a if cid not in ids_b]
    only_b = [v.cell_id for v in views_b if v.cell_id not in views_a]
    meta_a, meta_b = run_a.results.run, run_b.results.run
    id_a, id_b = meta_a.run_id, meta_b.run_id
    header = f"bench compare: A = {id_a} ({a})\n               B = {id_b} ({b})"
    if not matched:
        return EXIT_REFUSED, f"{header}\nREFUSED: the runs share no cell id; nothing to compare."

    problems = fingerprint_problems(matched)
    conditions = condition_problems(matched)
    warning = "\n".join(
        part for part in (_fingerprint_text(problems) if problems else "", _conditions_text(conditions) if conditions else "") if part
    )
    if warning and not force:
        return EXIT_REFUSED, (
            f"{header}\n\nREFUSED: {warning}\n\nNumbers measured under different conditions do not "
            "compare. Rerun both under the same environment, protocol and dataset, or pass --force to "
            "compare anyway (the report will say the comparison was forced). Nothing was written."
        )

    rows = [compare_cell(ca, cb, threshold_pct, alpha, memory_threshold_pct) for ca, cb in matched]
    regressions = [r for r in rows if r.regression]
    # A pass is only claimed for cells that got a verdict (one process a side gets none).
    unjudged = [r for r in rows if r.verdict in UNJUDGED_VERDICTS and not r.regression]
    code = EXIT_REGRESSION if regressions else EXIT_OK
    context = {
        "id_a": id_a, "id_b": id_b, "path_a": str(a), "path_b": str(b),
        "meta_a": meta_a, "meta_b": meta_b,
        "rows": rows, "regressions": regressions, "only_a": only_a, "only_b": only_b,
        "unjudged": unjudged, "test_words": TEST_WORDS,
        "threshold_pct": threshold_pct, "alpha": alpha, "forced": bool(warning) and force,
        "memory_threshold_pct": memory_threshold_pct,
        "problems": problems, "conditions": conditions, "warning": warning, "code": code,
        "plan_differs": meta_a.plan_sha256 != meta_b.plan_sha256,
        "flagged": [r for r in rows if _flags(r)],
        "change_svg": charts.change_bars(
            [
                charts.ChangeBar(r.a.model, f"{r.a.config_label} · {r.a.scope}", r.change_pct, r.verdict, r.p_value or 1.0)
                for r in rows if r.change_pct is not None
            ],
            threshold_pct,
        ),
        "dist_svg": charts.latency_distribution(
            [
                row
                for r in rows if r.change_pct is not None
                for row in (
                    charts.DistRow(r.a.model, f"A · {r.a.config_label} · {r.a.scope}", r.a.samples, color="#8c959f"),
                    charts.DistRow(r.b.model, f"B · {r.b.config_label} · {r.b.scope}", r.b.samples, color="#0072B2"),
                )
            ],
            "Latency distributions, A and B",
            legend=[("#8c959f", "A (baseline)"), ("#0072B2", "B")],
        ),
        "generated_at": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
    folder = _out_dir(b, out_dir)
    write_atomic(folder / "compare.html", render_template("compare.html.j2", context))
    write_atomic(folder / "compare.md", compare_markdown(context))
    where = "the --out folder" if out_dir is not None else "B's run folder; --out DIR writes them elsewhere"
    return code, _text(header, context, f"Wrote {folder / 'compare.html'} and {folder / 'compare.md'} (into {where})")


FLAGGED_STATUSES = ("unstable", "throttled")


def _flags(row: CellComparison) -> str:
    """Which side's number carries a flag that makes a change there doubtful, in words."""
    sides = {name: v.status for name, v in (("A", row.a), ("B", row.b)) if v.status in FLAGGED_STATUSES}
    if not sides:
        return ""
    if len(sides) == 2 and sides["A"] == sides["B"]:
        return f"{sides['A']} in A and B"
    return ", ".join(f"{status} in {name}" for name, status in sides.items())


def _fingerprint_text(problems: list[FingerprintProblem]) -> str:
    lines = [f"environment fingerprints differ for {len(problems)} matched cell(s):"]
    seen: set[tuple[str, str, str]] = set()
    shown, limit = 0, 40
    for p in problems:
        lines.append(f"  {p.cell_id}: A {fmt.short_hash(p.a)} != B {fmt.short_hash(p.b)}")
        new = [f for f in p.fields if f not in seen]
        seen.update(new)
        remaining = max(limit - shown, 0)
        for f in new[:remaining]:
            lines.append(f"    {f[0]}: A {f[1]} | B {f[2]}")
        if len(new) > remaining:
            lines.append(f"    ... and {len(new) - remaining} more differing fields")
        shown += min(len(new), remaining)
    if not any(p.fields for p in problems):
        lines.append("  (no captured environment field differs; the fingerprint covers more than the report shows)")
    return "\n".join(lines)


def _conditions_text(problems: list[ConditionProblem]) -> str:
    lines = [f"measured under other conditions (latency protocol or dataset) for {len(problems)} matched cell(s):"]
    seen: set[tuple[str, str, str]] = set()
    for p in problems:
        new = [f for f in p.fields if f not in seen]
        seen.update(new)
        lines.append(f"  {p.cell_id}:" + ("" if new else " (the same differences as above)"))
        lines += [f"    {f[0]}: A {f[1]} | B {f[2]}" for f in new[:20]]
        if len(new) > 20:
            lines.append(f"    ... and {len(new) - 20} more differing fields")
    return "\n".join(lines)


def _text(header: str, ctx: dict[str, Any], wrote: str) -> str:
    lines = [header]
    if ctx["forced"]:
        if ctx["problems"]:
            lines += ["", "WARNING: FORCED COMPARISON ACROSS DIFFERENT ENVIRONMENTS"]
        if ctx["conditions"]:
            lines += ["", "WARNING: FORCED COMPARISON ACROSS DIFFERENT PROTOCOLS OR DATASETS"]
        lines.append(ctx["warning"])
    lines.append("")
    w = max(len(r.cell_id) for r in ctx["rows"])
    lines.append(f"{'cell':<{w}} {'A ms':>9} {'B ms':>9} {'n':>5} {'change':>8} {'p':>8}  verdict")
    for r in ctx["rows"]:
        p = f"{r.p_value:.2g}" if r.p_value is not None else "–"
        verdict = r.verdict + (f" ({r.note})" if r.note else "")
        flags = _flags(r)
        lines.append(
            f"{r.cell_id:<{w}} {fmt.ms(r.a.median):>9} {fmt.ms(r.b.median):>9} {f'{r.a.repeats}/{r.b.repeats}':>5} "
            f"{fmt.pct(r.change_pct):>8} {p:>8}  {verdict}"
            + (f"; mAP {fmt.signed(r.map_change)} pts" if r.map_change is not None else "")
            + "".join(f"; {m.text()}" for m in r.memory if not m.grew)
            + (f"; energy/image {fmt.pct(r.energy_change_pct)}" if r.energy_change_pct is not None else "")
            + (f" [{flags}]" if flags else "")
        )
    for r in ctx["rows"]:
        if r.levels or r.unmatched_levels:
            lines.append(f"  {r.cell_id}, level by level at equal load:")
            lines.append(f"    {'level':<12} {'A p50':>8} {'B p50':>8} {'p50':>8} {'A p99':>8} {'B p99':>8} {'p99':>8} {'answers/s':>9} {'p':>8}  verdict")
            for lv in r.levels:
                qa, qb = lv.a.latency_ms, lv.b.latency_ms
                p = f"{lv.p_value:.2g}" if lv.p_value is not None else "–"
                lines.append(
                    f"    {lv.key:<12} {fmt.ms(qa.p50 if qa else None):>8} {fmt.ms(qb.p50 if qb else None):>8} {fmt.pct(lv.p50_change_pct):>8} "
                    f"{fmt.ms(qa.p99 if qa else None):>8} {fmt.ms(qb.p99 if qb else None):>8} {fmt.pct(lv.p99_change_pct):>8} "
                    f"{fmt.pct(lv.throughput_change_pct):>9} {p:>8}  {lv.verdict}")
            if r.unmatched_levels:
                lines.append("    not at equal load in both runs: " + ", ".join(r.unmatched_levels))
    for cid in ctx["only_a"]:
        lines.append(f"only in A: {cid}")
    for cid in ctx["only_b"]:
        lines.append(f"only in B: {cid}")
    lines.append("")
    if ctx["flagged"]:
        lines.append(
            f"NOTE: {len(ctx['flagged'])} cell(s) are unstable or throttled in A or B ("
            + ", ".join(f"{r.cell_id}: {_flags(r)}" for r in ctx["flagged"])
            + "): their medians move from process to process, so a change there may be noise."
        )
    level = f"{(1 - ctx['alpha']) * 100:g}%"
    lines.append(f"Test: {TEST_WORDS}; change intervals at {level}; n = processes A/B.")
    if ctx["regressions"]:
        lines.append(
            f"FAIL: {len(ctx['regressions'])} cell(s) slower than A by more than {ctx['threshold_pct']:g}% "
            f"over their whole {level} interval, grown in memory by more than {ctx['memory_threshold_pct']:g}%, "
            "or failing in B: "
            + ", ".join(r.cell_id for r in ctx["regressions"])
        )
    elif ctx["rows"] and len(ctx["unjudged"]) == len(ctx["rows"]):
        lines.append(f"NO VERDICT: none of the {len(ctx['rows'])} matched cell(s) could be judged (one process on a "
                     "side has no between-process interval: measure with protocol.repeats >= 3); none grew in "
                     f"memory by more than {ctx['memory_threshold_pct']:g}%.")
    else:
        judged = len(ctx["rows"]) - len(ctx["unjudged"])
        without = f" ({len(ctx['unjudged'])} of {len(ctx['rows'])} cell(s) got no verdict)" if ctx["unjudged"] else ""
        lines.append(f"OK: no cell slower by more than {ctx['threshold_pct']:g}% over its whole {level} interval "
                     f"({judged} judged){without}, none grown in memory by more than {ctx['memory_threshold_pct']:g}%.")
    lines.append(wrote)
    return "\n".join(lines)


def compare_markdown(ctx: dict[str, Any]) -> str:
    lines = [f"# Comparison: {fmt.md(ctx['id_b'])} against {fmt.md(ctx['id_a'])}", ""]
    if ctx["forced"] and ctx["problems"]:
        lines += ["> [!CAUTION]", "> **Forced comparison across different environments**: the fingerprints differ, so these changes may come from the environment, not the code.", ""]
        for p in ctx["problems"]:
            for f in p.fields[:12]:
                lines.append(f"> - {fmt.md(p.cell_id)}: {fmt.md(f[0])}: A {fmt.md(f[1])}, B {fmt.md(f[2])}")
        lines.append("")
    if ctx["forced"] and ctx["conditions"]:
        lines += ["> [!CAUTION]", "> **Forced comparison across different protocols or datasets**: the cells were not measured alike.", ""]
        for c in ctx["conditions"]:
            for f in c.fields[:12]:
                lines.append(f"> - {fmt.md(c.cell_id)}: {fmt.md(f[0])}: A {fmt.md(f[1])}, B {fmt.md(f[2])}")
        lines.append("")
    level = f"{(1 - ctx['alpha']) * 100:g}%"
    unjudged, n_rows = ctx["unjudged"], len(ctx["rows"])
    if ctx["regressions"]:
        verdict = f"**FAIL**: {len(ctx['regressions'])} cell(s) slower by more than {ctx['threshold_pct']:g}% over their whole {level} interval"
    elif len(unjudged) == n_rows:
        why = "; ".join(dict.fromkeys(r.note for r in unjudged if r.note))
        verdict = f"**NO VERDICT**: none of the {n_rows} cell(s) could be judged" + (f" ({fmt.md(why)})" if why else "")
    else:
        verdict = f"**PASS**: no cell slower by more than {ctx['threshold_pct']:g}% over its whole {level} interval" + (
            f" ({len(unjudged)} of {n_rows} cell(s) got no verdict)" if unjudged else "")
    lines += [
        verdict + f". Test: {TEST_WORDS}.", "",
        "| cell | A median ms | B median ms | processes A/B | change | p | verdict | mAP change (pts) | memory | energy/image |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | :--- | ---: | :--- | ---: |",
    ]
    for r in ctx["rows"]:
        note = f" ({fmt.md(r.note)})" if r.note else ""
        lines.append(
            f"| {fmt.md(r.cell_id)} | {fmt.ms(r.a.median)} | {fmt.ms(r.b.median)} | {r.a.repeats}/{r.b.repeats} | {fmt.pct(r.change_pct)} | "
            f"{'–' if r.p_value is None else f'{r.p_value:.2g}'} | {fmt.md(r.verdict)}{note}"
            + (f" ({fmt.md(_flags(r))})" if _flags(r) else "") + f" | {fmt.signed(r.map_change)} | "
            + (fmt.md("; ".join(m.text() for m in r.memory)) or "–") + f" | {fmt.pct(r.energy_change_pct)} |"
        )
    for r in ctx["rows"]:
        if r.levels:
            lines += ["", f"### {fmt.md(r.cell_id)}: server levels at equal load", "",
                      "| level | A p50 ms | B p50 ms | change | A p99 ms | B p99 ms | change | answers/s change | p | verdict |",
                      "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
            for lv in r.levels:
                qa, qb = lv.a.latency_ms, lv.b.latency_ms
                lines.append(
                    f"| {fmt.md(lv.key)} | {fmt.ms(qa.p50 if qa else None)} | {fmt.ms(qb.p50 if qb else None)} | {fmt.pct(lv.p50_change_pct)} | "
                    f"{fmt.ms(qa.p99 if qa else None)} | {fmt.ms(qb.p99 if qb else None)} | {fmt.pct(lv.p99_change_pct)} | "
                    f"{fmt.pct(lv.throughput_change_pct)} | {'–' if lv.p_value is None else f'{lv.p_value:.2g}'} | {fmt.md(lv.verdict)} |")
            if r.unmatched_levels:
                lines += ["", "Not at equal load in both runs: " + fmt.md(", ".join(r.unmatched_levels))]
    if ctx["only_a"] or ctx["only_b"]:
        lines.append("")
        lines += [f"- only in A: {fmt.md(c)}" for c in ctx["only_a"]]
        lines += [f"- only in B: {fmt.md(c)}" for c in ctx["only_b"]]
    lines.append("")
    return "\n".join(lines)
