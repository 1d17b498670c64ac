"""The report in a real browser: Debian's headless Chromium.

Each page is opened from file:// with every host name resolving nowhere. Three things are read
back: the DOM after the page's script ran (`--dump-dom`: the charts report how many of them
have a drawn, non-empty box), console messages (`--enable-logging=stderr`: any message fails,
errors included), and the network log (`--log-net-log`: any request the page started fails;
the browser's own background traffic is told apart by its initiator). A control page with a
planted request and a planted console error proves the checks can fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.report.compare import compare_runs
from harness.report.render import render_run

CHROMIUM = Path("/usr/bin/chromium")
RUNS = Path(__file__).parent / "data" / "runs"

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Every host name resolves nowhere: a request that slipped through could not leave.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


@dataclass
class Visit:
    dom: str
    console: list[str]
    requests: list[str]


def page_requests(netlog: Path) -> list[str]:
    """URLs of requests the page started. The browser's own traffic (update checks, account
    probes) has the initiator "not an origin" and no file:// isolation key; a page opened from
    file:// has the opaque initiator "null" and a file:// key."""
    text = netlog.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # a log cut short still has its constants and most events
        data = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in data["constants"]["logEventTypes"].items()}
    urls = []
    for event in data.get("events", []):
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if params.get("initiator") != "not an origin" or "file://" in params.get("network_isolation_key", ""):
            urls.append(params["url"])
    return urls


def visit(page: Path, tmp: Path) -> Visit:
    netlog = tmp / "net.json"
    cmd = [
        str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
        f"--log-net-log={netlog}", "--window-size=1280,2000", "--dump-dom", page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return Visit(proc.stdout, console, page_requests(netlog))


def screenshot(page: Path, out: Path, tmp: Path, height: int = 6000) -> Path:
    cmd = [
        str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'profile-shot'}", f"--window-size=1280,{height}",
        f"--screenshot={out}", page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]
    return out


def test_the_checks_catch_a_request_and_a_console_error(tmp_path: Path) -> None:
    control = tmp_path / "control.html"
    control.write_text(
        "<!doctype html><title>control</title><img src='http://127.0.0.1:9/pixel.png'>"
        "<script>console.error('planted error'); fetch('https://example.invalid/x').catch(function () {});</script>"
    )
    seen = visit(control, tmp_path)
    assert "http://127.0.0.1:9/pixel.png" in seen.requests
    assert "https://example.invalid/x" in seen.requests
    assert any("planted error" in line for line in seen.console)


def test_report_in_chromium(tmp_path: Path) -> None:
    run = tmp_path / "gpu-demo"
    shutil.copytree(RUNS / "gpu-demo", run)
    report = render_run(run)["html"]
    seen = visit(report, tmp_path)
    assert seen.requests == [], f"the report made requests: {seen.requests}"
    assert seen.console == [], f"console messages: {seen.console}"
    # The page's script ran to its end and found every chart drawn with a non-empty box.
    assert 'data-charts="5"' in seen.dom and 'data-charts-drawn="5"' in seen.dom
    # The hostile model name stayed text: the live DOM holds only the report's own script.
    assert seen.dom.count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | evil" in seen.dom

    shot = screenshot(report, tmp_path / "report.png", tmp_path)
    from PIL import Image, ImageStat

    with Image.open(shot) as img:
        assert img.size == (1280, 6000)
        top = img.convert("L").crop((0, 0, 1280, 2000))
        assert ImageStat.Stat(top).stddev[0] > 20, "the top of the page looks blank"
        assert len(top.getcolors(maxcolors=1_000_000) or []) > 50


def test_sorting_a_column_in_chromium(tmp_path: Path) -> None:
    """Click the median header (the page's own script sorts), then read the rows' order."""
    import re

    run = tmp_path / "cpu-quick-a"
    shutil.copytree(RUNS / "gpu-demo", run)
    html = render_run(run)["html"].read_text()
    # The median column, found by its header (columns were added before it over time).
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", html.split('id="cells-table"', 1)[1].split("</thead>", 1)[0])
    column = heads.index("median ms")
    click = f"<script>document.querySelectorAll('#cells-table thead th')[{column}].click();</script></body>"
    page = tmp_path / "clicked.html"
    page.write_text(html.replace("</body>", click))
    seen = visit(page, tmp_path)
    assert seen.console == []
    table = seen.dom.split('id="cells-table"', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tbody>", 1)[1].split("<tr")[1:]
    keys = [re.findall(r"<td([^>]*)>", row)[column] for row in rows]  # the median column's cells
    medians = [re.search(r'data-sort="([^"]*)"', k).group(1) for k in keys]  # type: ignore[union-attr]
    assert len(medians) == 14
    numbers = [float(m) for m in medians if m]
    assert len(numbers) == 12 and numbers == sorted(numbers)
    assert medians[-2:] == ["", ""]  # the failed and the skipped cell, without a latency, last
    assert 'aria-sort="ascending"' in table


def test_compare_page_in_chromium(tmp_path: Path) -> None:
    code, _ = compare_runs(RUNS / "cpu-quick-a", RUNS / "cpu-quick-b", out_dir=tmp_path / "out")
    assert code == 0
    seen = visit(tmp_path / "out" / "compare.html", tmp_path)
    assert seen.requests == [] and seen.console == []
    assert 'data-charts="2"' in seen.dom and 'data-charts-drawn="2"' in seen.dom


def test_budget_report_in_chromium(tmp_path: Path) -> None:
    """The ship/no-ship table, the checklist, the memory and energy table and the two resource
    charts of a GPU-like run (tests/resource_runs.py), read in the browser."""
    import re

    import resource_runs

    run_dir, _ = resource_runs.build(tmp_path / "run")
    report = run_dir / "report.html"
    seen = visit(report, tmp_path)
    assert seen.requests == [], f"the report made requests: {seen.requests}"
    assert seen.console == [], f"console messages: {seen.console}"
    charts = re.search(r'data-charts="(\d+)"', seen.dom)
    drawn = re.search(r'data-charts-drawn="(\d+)"', seen.dom)
    assert charts and drawn and int(charts.group(1)) >= 4 and charts.group(1) == drawn.group(1)
    assert 'id="chart-memory-model"' in seen.dom and 'id="chart-energy-model"' in seen.dom
    ship = seen.dom.split('id="ship"', 1)[1].split("</section>", 1)[0]
    assert "Fastest that meets every budget" in ship and ship.count('class="badge o-no_ship"') == 3
    shot = screenshot(report, tmp_path / "budgets.png", tmp_path, height=3000)
    from PIL import Image, ImageStat

    with Image.open(shot) as img:
        top = img.convert("L").crop((0, 0, 1280, 1500))
        assert ImageStat.Stat(top).stddev[0] > 20, "the top of the page looks blank"
