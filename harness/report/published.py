"""Published numbers: RF-DETR's own table, matched against a run's cells.

The reference file (harness/data/published/rfdetr.yaml) keeps every published figure with the
conditions it was measured under. For each RF-DETR cell whose variant and resolution have a
published row, the report says: reproduced within tolerance, slower/faster (lower/higher mAP),
or not comparable, naming every condition that differs. Latency and mAP get separate verdicts:
random weights make mAP meaningless but leave latency comparable; the GPU decides latency but
not mAP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from harness.errors import UserError
from harness.report.rundata import CellView, flatten, show_value

REFERENCE_FILE = "published/rfdetr.yaml"


@dataclass(frozen=True)
class PublishedRow:
    model: str
    task: str
    latency_ms: float | None
    variant: str | None = None
    resolution: int | None = None
    ap: float | None = None
    ap50: float | None = None
    mask_ap: float | None = None
    params_m: float | None = None

    @property
    def metric_name(self) -> str:
        return "mask AP" if self.task == "segmentation" else "AP"

    @property
    def metric(self) -> float | None:
        return self.mask_ap if self.task == "segmentation" else self.ap


@dataclass(frozen=True)
class Reference:
    name: str
    source: dict[str, str]
    conditions: dict[str, Any]
    latency_tolerance: float  # relative
    ap_tolerance: float  # COCO points
    rows: list[PublishedRow]
    others: list[PublishedRow]

    @property
    def source_text(self) -> str:
        """The source as plain text without a URL scheme: the report makes no links outward
        (it must open offline and make no request), so the address is printed, not linked."""
        url = re.sub(r"^[a-z]+://", "", self.source.get("url", ""))
        docs = self.source.get("docs_path", "")
        return f"{url} (README; {docs})" if docs else url


def load_reference() -> Reference:
    import yaml  # light, but only needed here

    text = resources.files("harness.data").joinpath(REFERENCE_FILE).read_text("utf-8")
    where = f"<bundled {REFERENCE_FILE}>"
    data = yaml.safe_load(text)
    try:
        tol = data["tolerance"]
        return Reference(
            name=str(data["name"]),
            source={k: str(v) for k, v in data["source"].items()},
            conditions=dict(data["conditions"]),
            latency_tolerance=float(tol["latency_rel"]),
            ap_tolerance=float(tol["ap_points"]),
            rows=[PublishedRow(**row) for row in data["rows"]],
            others=[PublishedRow(**row) for row in data.get("others", [])],
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{where}: malformed published reference ({exc})") from None


@dataclass
class Match:
    cell: CellView
    row: PublishedRow
    latency_verdict: str  # reproduced | slower | faster | not comparable | not measured
    latency_ratio: float | None  # measured median / published
    latency_why: list[str] = field(default_factory=list)  # why not comparable
    latency_caveats: list[str] = field(default_factory=list)  # comparable, but note this
    map_verdict: str = "not measured"  # reproduced | lower | higher | not comparable | not measured
    map_measured: float | None = None
    map_why: list[str] = field(default_factory=list)
    map_caveats: list[str] = field(default_factory=list)
    gpu: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None

    @property
    def comparable(self) -> bool:
        return self.latency_verdict in ("reproduced", "slower", "faster")


def _same_minor(version: str, wanted: str) -> bool:
    """10.4.0.26 matches 10.4; 10.40 does not."""
    return version == wanted or version.startswith(wanted + ".")


def _version_in(text: str | None) -> str | None:
    if text is None:
        return None
    found = re.search(r"\d+(\.\d+)+", text)
    return found.group(0) if found else None


def gpu_name(cell: CellView) -> str | None:
    """The name of the GPU the cell ran on."""
    gpu = cell.gpu
    return gpu.name if gpu is not None and gpu.name else None


def tensorrt_version(cell: CellView) -> str | None:
    """Read back from the runtime first (what actually ran), else from the environment."""
    settings = flatten(cell.record.settings)
    for key, value in settings.items():
        if re.search(r"(tensorrt|trt)(_version)?$|tensorrt.*version", key, re.IGNORECASE) and value:
            version = _version_in(show_value(value))
            if version:
                return version
    return _version_in(cell.record.environment.packages.get("tensorrt"))


def cuda_version(cell: CellView) -> str | None:
    return _version_in(cell.record.environment.cuda.runtime)


def _rel(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.0f}%"


def match_cells(views: list[CellView], ref: Reference) -> tuple[list[Match], list[tuple[CellView, str]]]:
    """(cells matched to a published row, RF-DETR cells with no row and why)."""
    cond = ref.conditions
    by_key = {(r.variant, r.resolution): r for r in ref.rows if r.variant}
    resolutions: dict[str, list[int]] = {}
    for r in ref.rows:
        if r.variant and r.resolution:
            resolutions.setdefault(r.variant, []).append(r.resolution)
    matches: list[Match] = []
    unmatched: list[tuple[CellView, str]] = []
    for cell in views:
        if cell.source != "rfdetr" or not cell.variant:
            continue
        row = by_key.get((cell.variant, cell.resolution))
        if row is None:
            if cell.variant in resolutions:
                shown = ", ".join(f"{r}px" for r in resolutions[cell.variant])
                unmatched.append((cell, f"no published row at {cell.resolution}px (published: {shown})"))
            else:
                unmatched.append((cell, f"no published row for variant {cell.variant}"))
            continue
        matches.append(_judge(cell, row, ref, cond))
    matches.sort(key=lambda m: (not m.comparable, m.cell.model, m.cell.cell_id))
    return matches, unmatched


def _judge(cell: CellView, row: PublishedRow, ref: Reference, cond: dict[str, Any]) -> Match:
    m = Match(cell=cell, row=row, latency_verdict="not comparable", latency_ratio=None)
    m.gpu, m.tensorrt, m.cuda = gpu_name(cell), tensorrt_version(cell), cuda_version(cell)

    # ---- latency: every condition that moves the number disqualifies.
    why = m.latency_why
    if cell.runtime_name != cond["runtime"]:
        why.append(f"other runtime: {cell.runtime_name} (published: a native TensorRT engine)")
    if cell.device.startswith("cpu"):
        why.append(f"ran on the CPU (published: {cond['gpu']})")
    elif m.gpu is None:
        why.append(f"GPU not recorded (published: {cond['gpu']})")
    elif str(cond["gpu_match"]).lower() not in m.gpu.lower():
        why.append(f"other GPU: {m.gpu} (published: {cond['gpu']})")
    if cell.runtime_name == cond["runtime"]:
        if m.tensorrt is None:
            why.append(f"TensorRT version not recorded (published: {cond['tensorrt']})")
        elif not _same_minor(m.tensorrt, str(cond["tensorrt"])):
            why.append(f"other TensorRT: {m.tensorrt} (published: {cond['tensorrt']})")
    if cell.precision != cond["precision"]:
        why.append(f"other precision: {cell.precision} (published: {cond['precision']})")
    if cell.batch != int(cond["batch"]):
        why.append(f"batch {cell.batch} (published: batch {cond['batch']})")
    if cell.scope != cond["scope"]:
        why.append(f"{cell.scope} scope: pre- and postprocessing inside the timed region (published: model only)")
    caveats = m.latency_caveats
    if m.cuda is None:
        caveats.append(f"CUDA version not recorded (published: {cond['cuda']})")
    elif not _same_minor(m.cuda, str(cond["cuda"])):
        caveats.append(f"CUDA {m.cuda} (published: {cond['cuda']})")
    if cell.pause_ms is not None and abs(cell.pause_ms - float(cond["pause_ms"])) > 1e-9:
        caveats.append(f"pause {cell.pause_ms:g} ms between passes (published: {cond['pause_ms']} ms)")
    if cell.status in ("unstable", "throttled"):
        caveats.append(f"the cell is {cell.status}" + (f": {cell.reason}" if cell.reason else ""))

    if why:
        # Not comparable already: minor differences would only bury the ones that decide.
        caveats.clear()
    if not cell.measured:
        # Nothing to compare: the cell's own reason is the whole story.
        m.latency_verdict = "not measured"
        why[:] = [f"{cell.status}" + (f": {cell.reason}" if cell.reason else "")]
        caveats.clear()
    elif row.latency_ms and cell.median is not None:
        m.latency_ratio = cell.median / row.latency_ms
        if not why:
            if abs(m.latency_ratio - 1) <= ref.latency_tolerance:
                m.latency_verdict = "reproduced"
            else:
                m.latency_verdict = "slower" if m.latency_ratio > 1 else "faster"

    # ---- mAP: weights and dataset decide; runtime and precision are worth a note.
    published = row.metric
    m.map_measured = cell.mask_ap if row.task == "segmentation" else cell.ap
    if published is None:
        m.map_verdict = "not published"
    elif cell.random_weights:
        m.map_verdict = "not comparable"
        m.map_why.append("random weights: the mAP of an untrained model means nothing")
    elif m.map_measured is None:
        m.map_verdict = "not measured"
        if cell.measured:  # an unmeasured cell's reason is already in latency_why
            m.map_why.append("no accuracy pass for this cell")
    else:
        dataset = cell.identity.dataset
        images = cell.images
        if dataset is not None and dataset.sample:
            m.map_why.append(f"the generated sample dataset (published: {cond['dataset']})")
        elif images is not None and images != int(cond["dataset_images"]):
            m.map_why.append(
                f"{images:,} images (published: {cond['dataset']}, {int(cond['dataset_images']):,} images)"
            )
        elif images is None:
            m.map_why.append(f"number of images not recorded (published: {cond['dataset']})")
        if cell.runtime_name != cond["runtime"] or cell.precision != cond["precision"]:
            m.map_caveats.append(
                f"measured on the {cell.runtime_name} {cell.precision} artifact (published: "
                f"TensorRT {cond['precision']})"
            )
        if m.map_why:
            m.map_verdict = "not comparable"
        elif abs(m.map_measured - published) <= ref.ap_tolerance:
            m.map_verdict = "reproduced"
        else:
            m.map_verdict = "lower" if m.map_measured < published else "higher"
    return m


def overview(matches: list[Match]) -> str:
    """One sentence over all matches: how many reproduced, and the commonest blocker."""
    if not matches:
        return ""
    counts: dict[str, int] = {}
    for m in matches:
        counts[m.latency_verdict] = counts.get(m.latency_verdict, 0) + 1
    parts = [f"{n} {word}" for word, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    text = f"Latency of {len(matches)} matched cell{'s' if len(matches) > 1 else ''}: " + ", ".join(parts) + "."
    blockers: dict[str, int] = {}
    for m in matches:
        if m.latency_verdict == "not comparable":
            for why in m.latency_why:
                key = why.split(":", 1)[0]
                blockers[key] = blockers.get(key, 0) + 1
    if blockers:
        top = sorted(blockers.items(), key=lambda kv: -kv[1])[:3]
        text += " What stands in the way most often: " + ", ".join(f"{k} ({n})" for k, n in top) + "."
    return text


def latency_sentence(m: Match, ref: Reference) -> str:
    """One line a reader can quote: the verdict, the numbers, and why."""
    tol = f"±{ref.latency_tolerance * 100:g}%"
    if m.latency_verdict == "reproduced":
        return f"reproduced within {tol} ({_rel(m.latency_ratio or 1)})"
    if m.latency_verdict in ("slower", "faster"):
        return f"{m.latency_verdict} than published by {_rel(m.latency_ratio or 1)[1:]} (tolerance {tol})"
    return m.latency_verdict


def latency_detail(m: Match, ref: Reference) -> str:
    """The numbers behind a comparable verdict, for next to its badge."""
    if m.latency_ratio is None or not m.comparable:
        return ""
    return f"{_rel(m.latency_ratio)} against published, tolerance ±{ref.latency_tolerance * 100:g}%"
