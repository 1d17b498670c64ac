"""summary.md (GitHub Markdown for release notes) and results.csv (one row per cell).

Both are built from the same context as the HTML report. Every string from a plan, a model file
or the environment goes through `fmt.md` or `fmt.csv_text`.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from harness.report import fmt
from harness.report.ladder import ladder_markdown
from harness.report.rundata import CellView
from harness.report.serve import LEVEL_CSV_COLUMNS, level_csv_rows
from harness.report.serve import markdown as serve_markdown
from harness.report.throughput import CROSS_SCOPE_LABEL, ThroughputGroup, ThroughputRow

CSV_COLUMNS = [
    "cell_id", "model", "variant", "source", "runtime", "runtime_name", "precision", "batch",
    "resolution", "scope", "device", "gpu_name", "gpu_uuid", "host", "timer", "status", "reason", "flags", "random_weights",
    "is_reference", "samples", "median_ms", "p90_ms", "p99_ms", "mean_ms", "cov",
    "median_ci95_lo_ms", "median_ci95_hi_ms", "throughput_ips", "ap", "ap50", "mask_ap",
    "map_delta_ap", "accuracy_images", "fingerprint", "weights", "unpredictable_classes", "ap_over",
    "device_memory_peak_bytes", "device_memory_method", "process_memory_peak_bytes", "host_peak_rss_bytes",
    "artifact_bytes", "artifact_kind", "joules_per_image", "images_per_joule", "mean_power_w", "peak_power_w",
    "energy_method", "budget_outcome", "budgets_failed", "budgets_not_measured", "budgets_inconclusive",
]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    return [_md_row(header), _md_row([marks[a] for a in align]), *(_md_row(r) for r in rows)]


def _status(v: CellView) -> str:
    word = v.status.replace("_", " ")
    return f"**{fmt.md(word)}**: {fmt.md(v.reason)}" if v.reason and v.status != "ok" else fmt.md(word)


def _map(v: CellView) -> str:
    if v.metric is None:
        return "–"
    text = fmt.num(v.metric)
    if v.unpredictable:
        n = len(v.unpredictable)
        text += f" (⚠ {n} class{'es' if n > 1 else ''} unpredictable)"
    return f"{text} (random weights)" if v.random_weights else text


def summary_markdown(ctx: dict[str, Any]) -> str:
    meta = ctx["meta"]
    views: list[CellView] = ctx["views"]
    lines = [f"# Benchmark report: {fmt.md(ctx['plan_name'])}", ""]
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in ctx["counts"])
    lines.append(
        f"Run {fmt.md(ctx['run_id'])} · started {fmt.md(meta.started_at)}"
        + (f" · took {fmt.md(ctx['duration'])}" if ctx["duration"] else "")
        + f" · harness {fmt.md(meta.harness_version)} · {len(views)} cells ({counts})"
    )
    if ctx["devices"]:
        lines.append("")
        lines.append("Devices: " + "; ".join(fmt.md(d) for d in ctx["devices"]))
    if ctx["random_cells"]:
        names = sorted({v.model for v in ctx["random_cells"]})
        lines += [
            "",
            "> [!WARNING]",
            f"> **Random weights** in {len(ctx['random_cells'])} of {len(views)} cells "
            f"({', '.join(fmt.md(n) for n in names)}): their latency is real, their mAP is meaningless.",
        ]
    if ctx["unpredictable"]:
        lines += ["", "> [!WARNING]", "> **Classes the model cannot predict**: the mAP is COCO's over every annotated class."]
        lines += [f"> - {fmt.md(model)}: {fmt.md(note)}." for model, note in ctx["unpredictable"]]
    lines += _ship_markdown(ctx)
    lines += _checklist_markdown(ctx["checklist"])
    lines += ["", "## Verdicts", "", "Per model and scope, the fastest configuration that passed its accuracy gate.", ""]
    rows = []
    for verdict in ctx["verdicts"]:
        b = verdict.best
        if b is None:
            rows.append([fmt.md(verdict.model), fmt.md(verdict.scope), "no configuration passed", "–", "–", "–", "–", "–"])
            continue
        delta = "reference" if b.is_reference else fmt.signed(b.map_delta)
        rows.append([
            fmt.md(verdict.model) + (" (random weights)" if b.random_weights else ""),
            fmt.md(verdict.scope),
            fmt.md(b.config_label),
            fmt.ms(b.median), fmt.ms(b.p99), fmt.rate(b.throughput), delta, _status(b),
        ])
    lines += _md_table(
        ["model", "scope", "fastest passing configuration", "median ms", "p99 ms", "img/s", "mAP change (pts)", "status"],
        rows, "lllrrrrl",
    )
    lines += _throughput_markdown(ctx["throughput"])
    lines += ladder_markdown(ctx.get("ladders") or [])
    lines += serve_markdown(views)
    lines += ["", "## All cells", ""]
    rows = [
        [
            fmt.md(v.model), fmt.md(v.runtime), fmt.md(v.precision), str(v.batch), str(v.resolution),
            fmt.md(v.scope), fmt.md(v.timer or "–"), fmt.ms(v.median), fmt.ms(v.p90), fmt.ms(v.p99),
            fmt.rate(v.throughput), _map(v), "reference" if v.is_reference else fmt.signed(v.map_delta),
            fmt.md(v.weights_word), _status(v),
        ]
        for v in views
    ]
    lines += _md_table(
        ["model", "runtime", "precision", "batch", "res", "scope", "timer", "median ms", "p90 ms",
         "p99 ms", "img/s", "mAP", "mAP change", "weights", "status"],
        rows, "llllrllrrrrrrll",
    )
    lines += _nms_markdown(ctx["nms_rows"], ctx["nms_counts"])
    lines += _resources_markdown(views)
    if ctx["matches"]:
        ref = ctx["ref"]
        lines += [
            "", "## Published numbers", "",
            f"Against {fmt.md(ref.name)}, from {fmt.md(ref.source_text)}, measured on "
            f"{fmt.md(ref.conditions['gpu'])}, TensorRT {fmt.md(ref.conditions['tensorrt'])}, CUDA "
            f"{fmt.md(ref.conditions['cuda'])}, {fmt.md(ref.conditions['precision'])}, batch "
            f"{ref.conditions['batch']}, {ref.conditions['pause_ms']} ms pause, model scope, "
            f"{fmt.md(ref.conditions['dataset'])}. Tolerance: latency ±{ref.latency_tolerance * 100:g}%, "
            f"mAP ±{ref.ap_tolerance:g} points.", "",
        ]
        lines += [fmt.md(ctx["published_overview"]), ""]
        rows = []
        # Release notes want the numbers that compare; the rest are counted above and listed
        # with their reasons in report.html.
        shown = [m for m in ctx["matches"] if m.comparable or m.map_verdict in ("reproduced", "lower", "higher")]
        for m in shown:
            why = "; ".join(m.latency_why + m.latency_caveats + m.map_why + m.map_caveats)
            rows.append([
                fmt.md(m.cell.model) + " " + fmt.md(m.cell.config_label) + " " + fmt.md(m.cell.scope),
                fmt.md(f"{m.row.model} @ {m.row.resolution}"),
                f"{fmt.ms(m.cell.median)} / {fmt.ms(m.row.latency_ms)}",
                fmt.md(ctx["latency_sentence"](m)),
                f"{fmt.num(m.map_measured)} / {fmt.num(m.row.metric)}",
                fmt.md(m.map_verdict),
                fmt.md(why) or "–",
            ])
        if rows:
            lines += _md_table(
                ["cell", "published row", "ms (ours / published)", "latency", "mAP (ours / published)", "mAP", "why / caveats"],
                rows, "llrlrll",
            )
        else:
            lines.append("No cell was measured under conditions that compare with the published table.")
    lines += ["", f"Full report with charts: report.html · generated by detbench harness {fmt.md(ctx['harness_version'])}", ""]
    return "\n".join(lines)


def _nms_markdown(rows: list[Any], counts: Any) -> list[str]:
    """The NMS placement table (harness.report.nms): stage medians and agreement per placement."""
    if not rows:
        return []
    lines = ["", "## NMS placement", "",
             "Each placement's NMS timed as its own end-to-end stage (in-graph: inside infer); candidates entering "
             "NMS per image; agreement with the reference placement's detections.", ""]
    table = []
    for r in rows:
        agreement = ("reference" if r.is_reference else
                     f"{r.match_rate * 100:.1f}% of {r.compared}" if r.match_rate is not None else "–")
        table.append([
            fmt.md(r.model), fmt.md(f"{r.runtime} · {r.precision} · b{r.batch} · {r.resolution}px"),
            fmt.md(r.placement.replace("_", "-")), counts(r.candidates), counts(r.kept), fmt.ms(r.infer),
            fmt.ms(r.candidates_ms), "in infer" if r.placement == "in_graph" else fmt.ms(r.nms_ms),
            fmt.ms(r.d2h), fmt.ms(r.end_to_end), agreement,
        ])
    lines += _md_table(["model", "configuration", "placement", "candidates", "kept", "infer ms", "candidates ms",
                        "NMS ms", "d2h ms", "end to end ms", "agreement"], table, "lllrrrrrrrr")
    return lines


def _ship_markdown(ctx: dict[str, Any]) -> list[str]:
    """The ship/no-ship table: per model and scope, every configuration's budgets, fastest first."""
    from harness.report.budgets import verdict_text

    lines = ["", "## Ship or not", ""]
    groups = ctx["ship"]
    if not groups:
        return lines + ["No budgets: the plan sets none (`budgets:` per plan or per model), so no configuration is judged."]
    lines += ["Each configuration against the plan's budgets, on its figures over processes. **ships**: passes every "
              "budget; **does not ship**: fails one; **not shown**: a budget could not be measured or is inconclusive "
              "(its re-run interval straddles the limit).", ""]
    words = ctx["outcome_words"]
    for g in groups:
        lines += [f"### {fmt.md(g.model)} · {fmt.md(g.scope.replace('_', '-'))} scope", ""]
        if g.fastest is not None:
            lines += [f"Fastest that meets every budget: **{fmt.md(g.fastest.view.config_label)}**, median "
                      f"{fmt.ms(g.fastest.view.median)} ms ({len(g.shipping)} of {len(g.rows)} ship).", ""]
        else:
            lines += [f"**No configuration meets every budget** ({len(g.rows)} judged).", ""]
        if g.memory_note:
            lines += [fmt.md(g.memory_note), ""]
        rows = []
        for r in g.rows:
            cells = []
            for key, _ in g.columns:
                b = r.by_budget.get(key)
                cells.append("–" if b is None else fmt.md(verdict_text(b)))
            rows.append([fmt.md(r.view.config_label), fmt.ms(r.view.median), *cells, f"**{fmt.md(words[r.outcome])}**"])
        lines += _md_table(["configuration", "median ms", *[fmt.md(label) for _, label in g.columns], "verdict"], rows,
                           "lr" + "l" * len(g.columns) + "l")
        lines.append("")
    return lines


def _checklist_markdown(items: list[tuple[str, list[Any]]]) -> list[str]:
    lines = ["", "## Ship checklist", "", "Filled from this run: done with its evidence, or missing with the plan field that would provide it.", ""]
    for model, checks in items:
        lines += [f"### {fmt.md(model)}", ""]
        for c in checks:
            mark = "x" if c.done else " "
            text = fmt.md(c.evidence) if c.done else f"missing: {fmt.md(c.missing)}"
            if c.done and c.missing:
                text += f" (missing: {fmt.md(c.missing)})"
            elif not c.done and c.evidence:
                text = f"{fmt.md(c.evidence)}; missing: {fmt.md(c.missing)}"
            lines.append(f"- [{mark}] **{fmt.md(c.item)}**: {text}")
        lines.append("")
    return lines


def _resources_markdown(views: list[CellView]) -> list[str]:
    shown = [v for v in views if v.resources is not None]
    if not shown:
        return []
    lines = ["", "## Memory and energy", "",
             "Over each cell's processes: peak device memory of the timed phase and host RSS (the worst process), the "
             "artifact on disk, energy over the measurement phase (the median process). MB are 10^6 bytes; – means "
             "not measured (report.html says why).", ""]
    rows = []
    for v in shown:
        r = v.resources
        assert r is not None
        rows.append([
            fmt.md(v.model), fmt.md(v.config_label), fmt.md(v.scope),
            fmt.mb(r.device_memory_peak_bytes) + (f" ({fmt.md(r.device_memory_method)})" if r.device_memory_method else ""),
            fmt.mb(r.host_peak_rss_bytes), fmt.mb(r.artifact_bytes, 3), fmt.sig(r.joules_per_image), fmt.sig(r.images_per_joule),
            fmt.sig(r.mean_power_w), fmt.sig(r.peak_power_w), fmt.md(r.energy_method or "–"),
        ])
    return lines + _md_table(["model", "configuration", "scope", "device MB", "host RSS MB", "artifact MB", "J/image",
                              "images/J", "mean W", "peak W", "energy from"], rows, "llllrrrrrrl")


def _flagged(value: str, v: CellView) -> str:
    """A number with the cell's flag beside it (unstable, throttled...), never apart from it."""
    return f"{value} ({fmt.md(v.status.replace('_', ' '))})" if v.status != "ok" else value


def _speedup_text(row: ThroughputRow, value: float | None) -> str:
    text = fmt.speedup(value)
    return f"{text} ({fmt.md('; '.join(row.qualifiers))})" if row.qualifiers else text


def _throughput_markdown(groups: list[ThroughputGroup]) -> list[str]:
    lines = [
        "", "## Throughput and speed-up", "",
        "Per model and scope: images per second (batch ÷ median), median ms per batch, and the speed-up "
        "= reference median ÷ cell median against the model's reference cell of the same scope, batch and "
        "resolution. The scopes time different regions, so no ratio crosses them unless its column says so.",
    ]
    for g in groups:
        lines += ["", f"### {fmt.md(g.model)} · {fmt.md(g.scope.replace('_', '-'))} scope", ""]
        if g.references:
            refs = "; ".join(
                f"{fmt.md(r.config_label)} ({fmt.ms(r.median)} ms" + (f", {fmt.md(r.status.replace('_', ' '))})" if r.status != "ok" else ")")
                for r in g.references
            )
            lines += [f"Reference: {refs}", ""]
        if g.note:
            lines += [f"> {fmt.md(g.note)}.", ""]
        header = ["configuration", "precision", "batch", "res", "img/s", "median ms", "speed-up vs reference"]
        if g.has_cross:
            header.append(CROSS_SCOPE_LABEL)
        rows = []
        for r in g.rows:
            v = r.cell
            name = fmt.md(v.runtime) + (" (reference)" if v.is_reference else "")
            if not v.measured:
                numbers = [_status(v), "–", "–"] + (["–"] if g.has_cross else [])
            else:
                if r.reference is v:
                    ratio = "reference"
                elif r.speedup is not None:
                    ratio = _speedup_text(r, r.speedup)
                else:
                    ratio = fmt.md(r.note or "–")
                numbers = [_flagged(fmt.rate(v.throughput), v), _flagged(fmt.ms(v.median), v), ratio]
                if g.has_cross:
                    numbers.append(_speedup_text(r, r.cross_speedup) if r.cross_speedup is not None else "–")
            rows.append([name, fmt.md(v.precision), str(v.batch), str(v.resolution), *numbers])
        lines += _md_table(header, rows, "llrrrrr" + ("r" if g.has_cross else ""))
    return lines


def _cell(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _resource_cells(v: CellView) -> list[Any]:
    from harness.report.budgets import outcome

    r = v.resources
    figures: list[Any] = [""] * 11 if r is None else [
        "" if r.device_memory_peak_bytes is None else r.device_memory_peak_bytes, fmt.csv_text(r.device_memory_method or ""),
        "" if r.process_memory_peak_bytes is None else r.process_memory_peak_bytes,
        "" if r.host_peak_rss_bytes is None else r.host_peak_rss_bytes,
        "" if r.artifact_bytes is None else r.artifact_bytes, r.artifact_kind or "",
        _cell(r.joules_per_image), _cell(r.images_per_joule), _cell(r.mean_power_w), _cell(r.peak_power_w),
        fmt.csv_text(r.energy_method or ""),
    ]
    result = outcome(v.budgets)
    return [*figures, result or "",
            ";".join(b.budget for b in v.budgets if b.verdict == "fail"),
            ";".join(b.budget for b in v.budgets if b.verdict == "not_measured"),
            ";".join(b.budget for b in v.budgets if b.verdict == "inconclusive")]


def results_csv(views: list[CellView]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + LEVEL_CSV_COLUMNS)
    for v in views:
        for level in level_csv_rows(v):
            writer.writerow(_cell_row(v) + level)
    return buffer.getvalue()


def _cell_row(v: CellView) -> list[object]:
    """The cell's own columns (a server cell repeats them on each of its level rows)."""
    return [
        fmt.csv_text(v.cell_id), fmt.csv_text(v.model), fmt.csv_text(v.variant or ""),
        fmt.csv_text(v.source), fmt.csv_text(v.runtime), fmt.csv_text(v.runtime_name),
        fmt.csv_text(v.precision), v.batch, v.resolution, fmt.csv_text(v.scope),
        fmt.csv_text(v.device), fmt.csv_text((v.gpu.name or "") if v.gpu else ""),
        fmt.csv_text((v.gpu.uuid or "") if v.gpu else ""),
        fmt.csv_text(v.record.environment.hostname or ""),
        fmt.csv_text(v.timer or ""), v.status,
        fmt.csv_text(v.reason or ""), fmt.csv_text(";".join(v.flags)),
        str(v.random_weights).lower(), str(v.is_reference).lower(), len(v.samples),
        _cell(v.median), _cell(v.p90), _cell(v.p99), _cell(v.mean), _cell(v.cov, 4),
        _cell(v.ci[0] if v.ci else None), _cell(v.ci[1] if v.ci else None),
        _cell(v.throughput), _cell(v.ap, 4), _cell(v.ap50, 4), _cell(v.mask_ap, 4),
        _cell(v.map_delta, 4), "" if v.images is None else v.images,
        fmt.csv_text(v.record.fingerprint or ""),
        v.weights_word, fmt.csv_text(";".join(v.unpredictable)), v.ap_over or "",
        *_resource_cells(v),
    ]
