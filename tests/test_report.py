"""The report, rendered from the golden run folders in tests/data/runs (made by make_runs.py)."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.report import render as render_mod
from harness.report.offline import external_references
from harness.report.published import load_reference, match_cells
from harness.report.render import build_context, load_run, render_run
from harness.report.rundata import cell_views, verdicts
from harness.report.serve import LEVEL_CSV_COLUMNS
from harness.report.summary import CSV_COLUMNS
from harness.report.throughput import CROSS_SCOPE_LABEL, throughput_groups
from harness.results import SCHEMA_VERSION

RUNS = Path(__file__).parent / "data" / "runs"
HOSTILE = "<script>alert(1)</script> | evil"


def copy_run(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(RUNS / name, dest)
    return dest


@pytest.fixture(scope="module")
def gpu_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    run = copy_run(tmp_path_factory.mktemp("report"), "gpu-demo")
    return run, render_run(run)


class Page(HTMLParser):
    """Tags, attributes, script bodies and text (per enclosing svg or not) of a page."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.text: list[str] = []
        self.svg_text: list[str] = []
        self._stack: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in ("meta", "img", "br", "rect", "line", "circle", "polygon", "polyline", "path"):
            self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1] == "script":
            self.scripts.append(data)
        elif "svg" in self._stack:
            self.svg_text.append(data)
        else:
            self.text.append(data)

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


# ----------------------------------------------------------------------------- loading


def test_load_run_reads_results_json() -> None:
    run = load_run(RUNS / "gpu-demo")
    assert run["run"]["plan_name"] == "h100-deployment"
    assert len(run["cells"]) == 14
    assert "rfdetr-nano__tensorrt__fp16__b1__r384__model" in run["derived"]


def test_load_run_accepts_results_file_directly() -> None:
    run = load_run(RUNS / "gpu-demo" / "results.json")
    assert len(run["cells"]) == 14
    assert run["run_dir"] == str(RUNS / "gpu-demo")


def test_load_run_rebuilds_from_cells_in_planned_order() -> None:
    folder = RUNS / "cpu-quick-b"
    assert not (folder / "results.json").exists()
    run = load_run(folder)
    planned = json.loads((folder / "run.json").read_text())["cell_ids"]
    assert [c["cell_id"] for c in run["cells"]] == planned
    assert run["derived"] == {}
    # Without `derived`, the mAP change still comes from the model's reference cell.
    views = {v.cell_id: v for v in cell_views(run)}
    ort = views["rfdetr-nano__onnxruntime-cpu__fp32__b1__r384__model"]
    assert ort.map_delta == pytest.approx(0.0)


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run folder"):
        load_run(tmp_path)
    with pytest.raises(UserError, match="no such run folder"):
        load_run(tmp_path / "missing")


@pytest.mark.parametrize("where", ["results", "run_json", "cell"])
def test_load_run_refuses_a_newer_schema(tmp_path: Path, where: str) -> None:
    newer = SCHEMA_VERSION + 1
    if where == "results":
        run = copy_run(tmp_path, "gpu-demo")
        data = json.loads((run / "results.json").read_text())
        data["schema_version"] = newer
        (run / "results.json").write_text(json.dumps(data))
    elif where == "run_json":
        run = copy_run(tmp_path, "cpu-quick-b")
        meta = json.loads((run / "run.json").read_text())
        meta["schema_version"] = newer
        (run / "run.json").write_text(json.dumps(meta))
    else:
        run = copy_run(tmp_path, "cpu-quick-b")
        cell_file = next((run / "cells").glob("*.json"))
        record = json.loads(cell_file.read_text())
        record["schema_version"] = newer
        cell_file.write_text(json.dumps(record))
    with pytest.raises(UserError, match=rf"schema version {newer}.*upgrade the harness"):
        load_run(run)


def test_load_run_names_the_broken_file(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "cpu-quick-b")
    broken = next((run / "cells").glob("*.json"))
    broken.write_text("{not json")
    with pytest.raises(UserError, match=broken.name):
        load_run(run)


# ----------------------------------------------------------------------------- outputs


def test_render_writes_three_files_atomically(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    run, paths = gpu_demo
    assert set(paths) == {"html", "markdown", "csv"}
    assert paths["html"] == run / "report.html" and paths["markdown"] == run / "summary.md"
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert not list(run.glob(".*.tmp")), "temporary files left behind"


def test_failed_write_keeps_the_previous_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.html"
    target.write_text("previous")

    def broken_replace(src: str, dst: str, **dir_fds: int) -> None:
        raise OSError("disk full")

    from harness import files  # write_atomic writes through harness.files

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError):
        render_mod.write_atomic(target, "new")
    assert target.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [target]


def test_verdicts_pick_the_fastest_configuration_that_passed_its_gate() -> None:
    found = {(v.model, v.scope): v for v in verdicts(cell_views(load_run(RUNS / "gpu-demo")))}
    nano = found[("rfdetr-nano", "model")]
    # INT8 is faster (1.18 ms) but failed its accuracy gate, so TensorRT FP16 wins.
    assert nano.best is not None and nano.best.cell_id == "rfdetr-nano__tensorrt__fp16__b1__r384__model"
    assert any(c.precision == "int8" and "accuracy gate" in why for c, why in nano.excluded)
    # Batch 8 pushes more images per second: named separately.
    assert nano.best_throughput is not None and nano.best_throughput.batch == 8
    assert found[("rfdetr-nano", "end_to_end")].best.runtime == "tensorrt"  # type: ignore[union-attr]
    small = found[("rfdetr-small", "model")]
    assert small.best is not None and small.best.runtime == "torch"
    assert {c.status for c, _ in small.excluded} == {"skipped", "failed"}


def test_html_has_verdicts_table_reasons_and_random_weights_banner(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    _, paths = gpu_demo
    html = paths["html"].read_text()
    page = Page(html)
    text = page.all_text()
    assert 'id="random-weights"' in html
    assert "Random weights in 2 of 14 cells" in text
    assert "mAP is meaningless" in text
    # The verdict card for rfdetr-nano (model scope): TensorRT FP16 at 1.61 ms median.
    assert "tensorrt · fp16 · b1 · 384px 1.61 median ms 1.66 p99 ms 621 images / s −0.1" in text
    # The full table: one row per cell, statuses with their reasons.
    rows = [a for t, a in page.tags if t == "tr" and (a.get("id") or "").startswith("row-")]
    assert len(rows) == 14
    for reason in (
        "onnxruntime-tensorrt needs onnxruntime-gpu",  # skipped
        "engine build failed: out of memory",  # failed
        "CoV 9.8% exceeds 5%",  # unstable
        "SM clock fell below 90% of its start (1980 MHz), to 1725 MHz",  # throttled (the monitor's words)
        # accuracy_regression: the gate tripped after the cell ran; the words come from `derived`
        "AP fell 4.5 points below rfdetr-nano__torch__fp32__b1__r384__model, past the plan's max_map_drop of 1",
    ):
        assert reason in text, reason
    assert "<class 'RuntimeError'>: engine build failed: out of memory & <no engine>" in text  # the log tail
    assert text.count("random") >= 3  # the banner, and a column entry per random-weights cell


def test_html_escapes_hostile_strings_everywhere(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    _, paths = gpu_demo
    html = paths["html"].read_text()
    page = Page(html)
    # Only the report's own sorting script exists, and nothing from the data became markup.
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]
    assert not [a for t, a in page.tags if t == "img" and not (a.get("src") or "").startswith("data:")]
    assert not [t for t, _ in page.tags if t == "iframe"]
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    # ...and it all shows as text: in the page, in the SVG charts, in attributes.
    text = page.all_text()
    assert HOSTILE in text
    assert "Deployment check on an H100 <img src=x onerror=alert(2)>" in text
    assert "<iframe src=//evil>" in text  # a runtime setting, in the cell details
    assert "path: models/evil|<b>x</b>.onnx" in text  # the model file, in the cell details
    assert any(HOSTILE in t for t in page.svg_text), "hostile name missing from the SVG text"
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | evil" in html
    assert "<script>alert(1)" not in html


def test_html_is_self_contained(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    _, paths = gpu_demo
    html = paths["html"].read_text()
    assert external_references(html) == []
    assert "http://" not in html and "https://" not in html
    page = Page(html)
    hrefs = [a.get("href") or "" for t, a in page.tags if t == "a"]
    assert hrefs and all(h.startswith("#") for h in hrefs)


def test_render_refuses_to_write_a_page_with_an_outside_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jinja2

    run = copy_run(tmp_path, "cpu-quick-a")
    real = render_mod.template_env
    style = (Path(render_mod.__file__).parent / "templates" / "_style.css.j2").read_text()

    def env_with_a_web_font() -> jinja2.Environment:  # a template change that adds a request
        env = real()
        leak = style + "@font-face { font-family: x; src: url(https://fonts.example/x.woff2); }"
        env.loader = jinja2.ChoiceLoader([jinja2.DictLoader({"_style.css.j2": leak}), env.loader])
        return env

    monkeypatch.setattr(render_mod, "template_env", env_with_a_web_font)
    with pytest.raises(RuntimeError, match="would load from outside the file"):
        render_run(run)
    assert not (run / "report.html").exists()


def test_charts_are_in_the_page(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    _, paths = gpu_demo
    html = paths["html"].read_text()
    for chart_id in ("chart-distribution", "chart-pareto-model", "chart-pareto-end_to_end", "chart-stages", "chart-sustained-1"):
        assert f'id="{chart_id}"' in html, chart_id
    svgs = [a for t, a in Page(html).tags if t == "svg" and a.get("class") == "chart"]
    assert len(svgs) == 5
    # The stage breakdown names every stage; the sustained chart plots both series.
    assert all(stage in html for stage in (">preprocess<", ">h2d<", ">infer<", ">d2h<", ">postprocess<"))
    assert ">SM clock<" in html and ">median latency<" in html and 'class="ch-throttle"' in html


def test_gallery_is_embedded_and_large_images_are_scaled_down(tmp_path: Path) -> None:
    from PIL import Image

    run = copy_run(tmp_path, "gpu-demo")
    big = Image.new("RGB", (2400, 1800), (30, 90, 160))
    big.save(run / "gallery" / "rfdetr-nano__tensorrt__fp16__b1__r384__model-0.png")  # found by the layout
    big.save(run / "gallery" / "rfdetr-nano__tensorrt__fp16__b1__r384__model-1.jpg", quality=95)
    outside = tmp_path / "outside.jpg"
    big.save(outside)
    data = json.loads((run / "results.json").read_text())
    medium = next(c for c in data["cells"] if c["cell_id"] == "rfdetr-medium__torch__fp32__b1__r576__model")
    medium["files"]["gallery"] = ["../outside.jpg", "/etc/passwd"]  # must not leave the run folder
    (run / "results.json").write_text(json.dumps(data))
    html = render_run(run)["html"].read_text()
    images = [a for t, a in Page(html).tags if t == "img"]
    assert len(images) == 3  # two from the INT8 cell, the big JPEG; not the PNG (layout is *.jpg)
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            assert max(img.size) <= render_mod.GALLERY_MAX_SIDE
    assert len(html) < 1_500_000


def test_markdown_summary_escapes_and_keeps_table_shape(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    _, paths = gpu_demo
    md = paths["markdown"].read_text()
    assert "<script>" not in md and "<img" not in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\| evil" in md
    assert "> **Random weights** in 2 of 14 cells" in md
    assert "| rfdetr-nano | model | tensorrt · fp16 · b1 · 384px | 1.61 | 1.66 | 621.4 | −0.1 | ok |" in md
    # Every table row has as many cells as its header: no name or reason broke a row.
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            widths = {len(_split_md_row(r)) for r in rows}
            assert len(widths) == 1, rows


def _split_md_row(row: str) -> list[str]:
    cells, current, escaped = [], "", False
    for ch in row.strip()[1:-1]:
        if ch == "|" and not escaped:
            cells.append(current)
            current = ""
        else:
            current += ch
        escaped = ch == "\\" and not escaped
    return [*cells, current]


def test_csv_has_one_row_per_cell(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    run, paths = gpu_demo
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    # The server scenario's per-level columns follow, empty for single-stream cells.
    assert list(rows[0].keys()) == CSV_COLUMNS + LEVEL_CSV_COLUMNS
    assert {r["scenario"] for r in rows} == {"single_stream"}
    assert len(rows) == 14
    by_id = {r["cell_id"]: r for r in rows}
    trt = by_id["rfdetr-nano__tensorrt__fp16__b1__r384__model"]
    record = next(c for c in load_run(run)["cells"] if c["cell_id"] == trt["cell_id"])
    assert float(trt["median_ms"]) == pytest.approx(record["latency"]["stats"]["p50"])
    assert float(trt["map_delta_ap"]) == pytest.approx(-0.1)
    assert by_id["rfdetr-small__tensorrt__fp16__b1__r512__model"]["status"] == "failed"
    assert by_id["rfdetr-small__tensorrt__fp16__b1__r512__model"]["median_ms"] == ""
    assert {r["random_weights"] for r in rows if r["model"] == "rfdetr-medium"} == {"true"}
    assert any(r["model"] == HOSTILE for r in rows)


def test_csv_neutralises_spreadsheet_formulas(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "cpu-quick-a")
    data = json.loads((run / "results.json").read_text())
    data["cells"][0]["reason"] = "=HYPERLINK(\"x\")"
    (run / "results.json").write_text(json.dumps(data))
    rows = list(csv.DictReader(io.StringIO(render_run(run)["csv"].read_text())))
    assert rows[0]["reason"] == "'=HYPERLINK(\"x\")"


# ----------------------------------------------------------------------------- throughput and speed-up

NO_MODEL_SCOPE_REFERENCE = (
    "no fp32 reference in the model scope: rfdetr-predict times predict(), which has only the end-to-end scope"
)


def test_speedups_are_against_the_reference_of_the_same_scope_batch_and_resolution() -> None:
    groups = {(g.model, g.scope): g for g in throughput_groups(cell_views(load_run(RUNS / "deploy-predict")))}
    assert list(groups) == [("rfdetr-medium", "end_to_end"), ("rfdetr-medium", "model")]
    e2e = {r.cell.runtime: r for r in groups[("rfdetr-medium", "end_to_end")].rows}
    assert [r.cell.runtime for r in groups[("rfdetr-medium", "end_to_end")].rows][0] == "predict-fp32"
    # deploy-predict's samples are the reference's divided by 2 and by 1.25.
    assert e2e["fp16-jit"].speedup == pytest.approx(2.0, abs=1e-4)
    assert e2e["onnxruntime-cuda"].speedup == pytest.approx(1.25, abs=1e-4)
    assert e2e["onnxruntime-cuda"].qualifiers == ["unstable"]
    assert e2e["predict-fp32"].reference is e2e["predict-fp32"].cell
    assert e2e["tensorrt"].speedup is None and e2e["tensorrt"].cell.status == "skipped"
    # The reference is predict(), which has no model scope: no ratio is invented there...
    model = groups[("rfdetr-medium", "model")]
    assert model.note == NO_MODEL_SCOPE_REFERENCE and model.references == []
    jit = next(r for r in model.rows if r.cell.runtime == "fp16-jit")
    assert jit.reference is None and jit.speedup is None and jit.note == "no reference in this scope"
    # ...only the labelled cross-scope ratio (predict's end-to-end median / the forward pass).
    assert jit.cross_reference is not None and jit.cross_reference.runtime == "predict-fp32"
    assert jit.cross_speedup == pytest.approx(4.0, abs=1e-4)
    failed = next(r for r in model.rows if r.cell.runtime == "onnxruntime-cuda")
    assert failed.cell.status == "failed" and failed.speedup is None and failed.cross_speedup is None


def test_speedups_on_the_gpu_demo_run() -> None:
    views = cell_views(load_run(RUNS / "gpu-demo"))
    groups = {(g.model, g.scope): g for g in throughput_groups(views)}
    nano = {(r.cell.runtime, r.cell.precision, r.cell.batch): r for r in groups[("rfdetr-nano", "model")].rows}
    by_id = {v.cell_id: v for v in views}
    ref = by_id["rfdetr-nano__torch__fp32__b1__r384__model"]
    trt = nano[("tensorrt", "fp16", 1)]
    assert trt.reference is ref and trt.speedup == pytest.approx(ref.median / trt.cell.median)  # type: ignore[operator]
    assert 2.9 < trt.speedup < 3.1  # type: ignore[operator]  # 4.82 ms against 1.61 ms
    # Batch 8 has no reference at batch 8: a ratio of per-batch medians would mean nothing.
    b8 = nano[("tensorrt", "fp16", 8)]
    assert b8.speedup is None and b8.note == "no reference at batch 8, 384px"
    # The end-to-end scope compares with the end-to-end reference, not the model-scope one.
    e2e = {r.cell.runtime: r for r in groups[("rfdetr-nano", "end_to_end")].rows}
    assert e2e["tensorrt"].reference is by_id["rfdetr-nano__torch__fp32__b1__r384__end_to_end"]
    assert not groups[("rfdetr-nano", "model")].has_cross  # a same-scope reference exists
    assert groups[(HOSTILE, "model")].note == "no reference cell for this model, so no speed-up"


def _section(text: str, start: str, end: str) -> str:
    assert start in text and end in text
    return text.split(start, 1)[1].split(end, 1)[0]


def test_throughput_section_in_the_markdown(tmp_path: Path) -> None:
    md = render_run(copy_run(tmp_path, "deploy-predict"))["markdown"].read_text()
    assert md.index("## Verdicts") < md.index("## Throughput and speed-up") < md.index("## All cells")
    section = _section(md, "## Throughput and speed-up", "## All cells")
    assert "| predict-fp32 (reference) | fp32 | 1 | 576 | 33.3 | 30.0 | reference |" in section
    assert "| fp16-jit | fp16 | 1 | 576 | 66.6 | 15.0 | 2.00× |" in section
    # An unstable cell keeps its flag beside each number and beside the ratio.
    assert "| onnxruntime-cuda | fp32 | 1 | 576 | 41.6 (unstable) | 24.0 (unstable) | 1.25× (unstable) |" in section
    assert "| tensorrt | fp16 | 1 | 576 | **skipped**: tensorrt is not installed in this image | – | – |" in section
    assert f"> {NO_MODEL_SCOPE_REFERENCE}." in section
    assert f"| speed-up vs reference | {CROSS_SCOPE_LABEL} |" in section
    assert "| fp16-jit | fp16 | 1 | 576 | 133.1 | 7.51 | no reference in this scope | 4.00× |" in section
    assert "| onnxruntime-cuda | fp32 | 1 | 576 | **failed**: onnxruntime could not create a CUDA session" in section


def test_throughput_section_in_the_html(tmp_path: Path) -> None:
    html = render_run(copy_run(tmp_path, "deploy-predict"))["html"].read_text()
    section = _section(html, '<section id="throughput">', "</section>")
    text = Page(section).all_text()
    assert "Throughput and speed-up" in text
    assert "predict-fp32 ref fp32 1 576 33.3 30.0 reference" in text
    assert "fp16-jit fp16 1 576 66.6 15.0 2.00×" in text
    assert "onnxruntime-cuda fp32 1 576 41.6 unstable 24.0 unstable 1.25× (unstable)" in text
    assert "tensorrt fp16 1 576 skipped tensorrt is not installed in this image" in text
    assert NO_MODEL_SCOPE_REFERENCE + "." in text
    assert CROSS_SCOPE_LABEL in text
    assert "fp16-jit fp16 1 576 133.1 7.51 no reference in this scope 4.00×" in text
    assert "onnxruntime-cuda fp32 1 576 failed onnxruntime could not create a CUDA session" in text
    # It sits right after the verdicts, and the page's table of contents links to it.
    assert html.index('id="verdicts"') < html.index('id="throughput"') < html.index('id="cells"')
    assert 'href="#throughput"' in html


def test_throughput_section_escapes_hostile_names(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    _, paths = gpu_demo
    html = paths["html"].read_text()
    section = _section(html, '<section id="throughput">', "</section>")
    assert HOSTILE in Page(section).all_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | evil" in section and "<script" not in section
    md = _section(paths["markdown"].read_text(), "## Throughput and speed-up", "## All cells")
    assert "### &lt;script&gt;alert(1)&lt;/script&gt; \\| evil · model scope" in md
    assert "| tensorrt | fp16 | 8 | 384 | 1,159.4 (throttled) | 6.90 (throttled) | no reference at batch 8, 384px |" in md


# ----------------------------------------------------------------------------- published numbers


def test_published_reference_has_every_row_and_its_conditions() -> None:
    ref = load_reference()
    assert [r.model for r in ref.rows][:6] == ["RF-DETR-N", "RF-DETR-S", "RF-DETR-M", "RF-DETR-L", "RF-DETR-XL", "RF-DETR-2XL"]
    assert len(ref.rows) == 12 and len(ref.others) == 15
    nano = ref.rows[0]
    assert (nano.variant, nano.resolution, nano.ap, nano.ap50, nano.latency_ms) == ("nano", 384, 48.4, 67.6, 2.3)
    seg2xl = ref.rows[-1]
    assert (seg2xl.variant, seg2xl.resolution, seg2xl.mask_ap, seg2xl.latency_ms) == ("seg-2xlarge", 768, 49.9, 21.8)
    c = ref.conditions
    assert (c["gpu"], c["tensorrt"], c["cuda"], c["precision"], c["batch"], c["pause_ms"], c["scope"]) == (
        "NVIDIA T4", "10.4", "12.4", "fp16", 1, 200, "model"
    )
    assert ref.source["url"] == "https://github.com/roboflow/rf-detr"
    assert "://" not in ref.source_text  # printed, never linked


def test_published_verdicts_under_the_published_conditions() -> None:
    matches, unmatched = match_cells(cell_views(load_run(RUNS / "t4-published")), load_reference())
    got = {(m.cell.model, m.cell.runtime): m for m in matches}
    nano = got[("rfdetr-nano", "tensorrt")]
    assert (nano.latency_verdict, nano.map_verdict) == ("reproduced", "reproduced")
    assert nano.latency_why == [] and nano.latency_caveats == []
    assert got[("rfdetr-small", "tensorrt")].latency_verdict == "slower"  # 4.04 ms against 3.5 (+16%)
    seg = got[("rfdetr-seg-nano", "tensorrt")]
    assert seg.latency_verdict == "faster"  # 2.95 ms against 3.4 (−13%)
    assert seg.map_measured == pytest.approx(40.1) and seg.map_verdict == "reproduced"  # mask AP
    torch = got[("rfdetr-nano", "torch")]
    assert torch.latency_verdict == "not comparable"
    assert torch.latency_why == ["other runtime: torch (published: a native TensorRT engine)", "other precision: fp32 (published: fp16)"]
    assert [c.model for c, _ in unmatched] == ["rfdetr-medium-640", "rfdetr-medium-640"]
    assert "no published row at 640px (published: 576px)" in unmatched[0][1]


def test_published_caveats_on_a_comparable_cell(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "t4-published")
    data = json.loads((run / "results.json").read_text())
    nano = next(c for c in data["cells"] if c["cell_id"] == "rfdetr-nano__tensorrt__fp16__b1__r384__model")
    nano["environment"]["cuda"]["runtime"] = "12.6"
    nano["cell"]["protocol"]["pause_ms"] = 0.0
    (run / "results.json").write_text(json.dumps(data))
    matches, _ = match_cells(cell_views(load_run(run)), load_reference())
    m = next(m for m in matches if m.cell.cell_id == nano["cell_id"])
    assert m.latency_verdict == "reproduced"  # still comparable: these are caveats, not blockers
    assert m.latency_caveats == ["CUDA 12.6 (published: 12.4)", "pause 0 ms between passes (published: 200 ms)"]


def test_published_verdicts_say_why_not_comparable() -> None:
    matches, _ = match_cells(cell_views(load_run(RUNS / "gpu-demo")), load_reference())
    got = {m.cell.cell_id: m for m in matches}
    trt = got["rfdetr-nano__tensorrt__fp16__b1__r384__model"]
    assert trt.latency_verdict == "not comparable"
    assert "other GPU: NVIDIA H100 80GB HBM3 (published: NVIDIA T4)" in trt.latency_why
    assert "other TensorRT: 10.13.3.9 (published: 10.4)" in trt.latency_why
    assert trt.latency_caveats == []  # CUDA 13.0 differs too, but would only bury what decides
    assert trt.map_verdict == "not comparable" and "500 images" in trt.map_why[0]
    e2e = got["rfdetr-nano__tensorrt__fp16__b1__r384__end_to_end"]
    assert any(w.startswith("end_to_end scope") for w in e2e.latency_why)
    b8 = got["rfdetr-nano__tensorrt__fp16__b8__r384__model"]
    assert "batch 8 (published: batch 1)" in b8.latency_why
    int8 = got["rfdetr-nano__tensorrt__int8__b1__r384__model"]
    assert "other precision: int8 (published: fp16)" in int8.latency_why
    medium = got["rfdetr-medium__tensorrt__fp16__b1__r576__model"]
    assert medium.map_verdict == "not comparable"
    assert medium.map_why == ["random weights: the mAP of an untrained model means nothing"]
    failed = got["rfdetr-small__tensorrt__fp16__b1__r512__model"]
    assert failed.latency_verdict == "not measured" and failed.latency_why[0].startswith("failed: engine build failed")
    assert not any(m.cell.source == "onnx" for m in matches)


def test_published_section_in_the_html(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "t4-published")
    text = Page(render_run(run)["html"].read_text()).all_text()
    assert "+1% against published, tolerance ±10%" in text
    assert "+16% against published, tolerance ±10%" in text
    assert (
        "Latency of 6 matched cells: 3 not comparable, 1 reproduced, 1 faster, 1 slower. What stands "
        "in the way most often: other runtime (3), other precision (3)."
    ) in text
    assert "github.com/roboflow/rf-detr (README; docs/learn/benchmarks.md)" in text


def test_context_of_a_cpu_run_without_gpu_fields() -> None:
    ctx = build_context(load_run(RUNS / "cpu-quick-b"))
    assert ctx["devices"] == ["CPU: AMD EPYC 7B13"]
    assert ctx["sustained"] == [] and ctx["gallery"] == []
    assert ctx["matches"] and all(m.latency_verdict == "not comparable" for m in ctx["matches"])
    assert all("ran on the CPU (published: NVIDIA T4)" in m.latency_why for m in ctx["matches"])


def test_golden_runs_are_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make_runs.py regenerates the committed JSON byte for byte (gallery JPEGs aside, which
    depend on the JPEG library's version)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_runs", RUNS.parent / "make_runs.py")
    assert spec and spec.loader
    make_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_runs)
    monkeypatch.setattr(make_runs, "HERE", tmp_path)
    make_runs.t4_published()
    make_runs.deploy_predict()
    make_runs.cpu_quick("cpu-quick-b", 2, False)
    for name in ("t4-published", "deploy-predict", "cpu-quick-b"):
        for path in sorted((RUNS / name).rglob("*.json")):
            rel = path.relative_to(RUNS / name)
            assert (tmp_path / name / rel).read_bytes() == path.read_bytes(), f"{name}/{rel}"


def test_a_run_over_two_gpus_says_which_gpu_ran_each_cell(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "gpu-demo")
    data = json.loads((run / "results.json").read_text())
    gpu_cells = [c for c in data["cells"] if c["cell"]["device"].startswith("cuda") and c["environment"].get("gpus")]
    second = gpu_cells[1]  # as `--gpus 0,1` records it: pinned, so cuda:0 in-process, NVML index 1
    second["environment"]["gpus"][0].update(uuid="GPU-second", nvml_index=1, pci_bus_id="00000000:2A:00.0")
    (run / "results.json").write_text(json.dumps(data))
    context = build_context(load_run(run))
    assert "2 × NVIDIA H100 80GB HBM3" in context["devices"]
    assert context["gpu_places"][second["cell_id"]] == "GPU 1"
    paths = render_run(run)
    page = Page(paths["html"].read_text())
    headers = [t for t in page.text if t.strip() == "GPU"]
    assert headers, "the All cells table has a GPU column"
    rows = {r["cell_id"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    assert rows[second["cell_id"]]["gpu_uuid"] == "GPU-second"
    assert rows[gpu_cells[0]["cell_id"]]["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert "2 × NVIDIA H100 80GB HBM3" in paths["markdown"].read_text()

    one_gpu = build_context(load_run(copy_run(tmp_path / "again", "gpu-demo")))
    assert one_gpu["gpu_places"] == {}  # one GPU: no column to clutter the table
    assert "NVIDIA H100 80GB HBM3" in one_gpu["devices"]


def test_a_sustained_run_shows_its_clock_history_window_by_window(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    run, paths = gpu_demo
    history = build_context(load_run(run))["sustained"][0]["history"]
    assert len(history) == 12 and history[0]["start_s"] == 0 and history[-1]["end_s"] == 60
    cool, hot = history[0], history[-1]  # the fixture's GPU slows down (thermal) from 30 s on
    assert cool["slowdown_share"] == 0 and hot["slowdown_share"] == 1
    assert hot["sm_median"] < 0.9 * cool["sm_median"] and hot["p50"] > cool["p50"]
    assert hot["temp_max"] > cool["temp_max"] and cool["power_median"] == pytest.approx(558.3)
    table = paths["html"].read_text().split('class="sustained-history"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + 12 and "55–60" in table and ">1,754<" in table


# ----------------------------------------------------------------------------- labels


def _retyped(run: Path, change: object) -> None:
    """Rewrite results.json in the current schema after `change(results)` edits the typed run."""
    from harness.results import read_run

    results = read_run(run).results
    results = change(results)  # type: ignore[operator]
    (run / "results.json").write_text(json.dumps(results.model_dump(mode="json")))


def test_classes_the_model_cannot_predict_show_wherever_the_map_is(tmp_path: Path) -> None:
    import io as _io

    from rich.console import Console

    from harness.report.terminal import print_summary
    from harness.results import ClassMapping, read_run

    run = copy_run(tmp_path, "cpu-quick-a")
    ort_id = "rfdetr-nano__onnxruntime-cpu__fp32__b1__r384__model"
    mapping = ClassMapping(annotated_classes=5, predictable_classes=4, unpredictable_classes=["sports ball"],
                           model_classes_unused=76, ap_over="annotated", warning="1 of 5 ...")

    def change(results):  # type: ignore[no-untyped-def]
        cells = [c.model_copy(update={"accuracy": c.accuracy.model_copy(update={"mapping": mapping})})
                 if c.cell_id == ort_id else c for c in results.cells]
        return results.model_copy(update={"cells": cells})

    _retyped(run, change)
    paths = render_run(run)
    html = paths["html"].read_text()
    text = Page(html).all_text()
    assert 'id="unpredictable-classes"' in html
    assert "the model cannot predict 1 of 5 annotated class (sports ball): they count as AP 0 in this mAP" in text
    row = html.split(f'id="row-{ort_id}"', 1)[1].split("</tr>", 1)[0]
    assert "1 class unpredictable" in row
    md = paths["markdown"].read_text()
    assert "**Classes the model cannot predict**" in md and "sports ball" in md
    all_cells = _section(md, "## All cells", "## Published numbers")
    assert "(⚠ 1 class unpredictable)" in next(line for line in all_cells.splitlines() if "| onnxruntime-cpu | fp32 | 1 | 384 | model |" in line)
    rows = {r["cell_id"]: r for r in csv.DictReader(io.StringIO(paths["csv"].read_text()))}
    assert rows[ort_id]["unpredictable_classes"] == "sports ball" and rows[ort_id]["ap_over"] == "annotated"
    out = _io.StringIO()
    print_summary(read_run(run).results, Console(file=out, width=200))
    assert "cannot predict 1 annotated class(es)" in out.getvalue() and "sports ball" in out.getvalue()


def test_accuracy_throughput_is_labelled_for_what_it_is_and_match_rate_is_a_rate(
    gpu_demo: tuple[Path, dict[str, Path]],
) -> None:
    _, paths = gpu_demo
    html = paths["html"].read_text()
    section = _section(html, '<section id="accuracy">', "</section>")
    assert "img/s in predict()" in section and "JPEG decoding excluded" in section
    text = Page(section).all_text()
    assert "boxes matched: 99.8% (2,394 pairs)" in text  # match_rate 0.9975, not "boxes matched: 0.998"


def test_onnx_weights_are_from_file_not_trained(gpu_demo: tuple[Path, dict[str, Path]]) -> None:
    run, paths = gpu_demo
    page = Page(paths["html"].read_text())
    assert "from file" in page.all_text()
    all_cells = _section(paths["markdown"].read_text(), "## All cells", "## Published numbers")
    md_row = next(line for line in all_cells.splitlines() if line.startswith("| &lt;script&gt;"))
    assert "| from file |" in md_row and "| trained |" not in md_row
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert {r["weights"] for r in rows if r["source"] == "onnx"} == {"from file"}
    assert {r["weights"] for r in rows if r["model"] == "rfdetr-medium"} == {"random"}
    assert {r["weights"] for r in rows if r["model"] == "rfdetr-small"} == {"trained"}


def test_small_rates_keep_their_digits(tmp_path: Path) -> None:
    from harness.report import fmt

    assert (fmt.rate(0.2), fmt.rate(0.2, 0), fmt.rate(0.0213), fmt.rate(621.4, 0), fmt.rate(621.4)) == (
        "0.2", "0.2", "0.021", "621", "621.4")
    run = copy_run(tmp_path, "cpu-quick-a")
    data = json.loads((run / "results.json").read_text())
    for record in data["cells"]:
        if record["latency"]:
            record["latency"]["throughput_ips"] = 0.2
    (run / "results.json").write_text(json.dumps(data))
    paths = render_run(run)
    text = Page(paths["html"].read_text()).all_text()
    assert "0.2 images / s" in text and " 0 images / s" not in text
    assert "| 0.2 |" in paths["markdown"].read_text()


def test_a_plan_with_one_runtime_needs_no_reference_and_says_so_neutrally(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "cpu-quick-a")
    data = json.loads((run / "results.json").read_text())
    data["cells"] = [c for c in data["cells"] if c["cell"]["runtime"]["name"] == "onnxruntime-cpu"]
    data["run"]["cell_ids"] = [c["cell_id"] for c in data["cells"]]
    data["derived"] = {c["cell_id"]: {"status": "ok"} for c in data["cells"]}
    (run / "results.json").write_text(json.dumps(data))
    for path in (run / "cells").glob("*.json"):
        if "onnxruntime" not in path.name:
            path.unlink()
    html = render_run(run)["html"].read_text()
    section = _section(html, '<section id="throughput">', "</section>")
    assert 'class="tp-note-neutral"' in section and 'class="tp-note"' not in section
    text = Page(section).all_text()
    assert "the plan measures one runtime (onnxruntime-cpu), so there is nothing to compare it with" in text
    assert "no reference cell" not in text
