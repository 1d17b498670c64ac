"""The ship checklist, filled from the run itself, never ticked by hand: per model, each item
is "done" with the run's evidence, or "missing" with the plan field that would provide it.

The items (from the deployment lesson this tool serves): mAP documented with its IoU
thresholds and dataset; the score threshold chosen on a validation split, not on the images
the mAP is reported on; preprocessing documented (channel order, mean/std, resize,
resolution); worst-case latency from a sustained run of at least five minutes (thermal
throttling); the disagreement gallery present.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.report import fmt
from harness.report.rundata import CellView
from harness.results import MEASURED_STATUSES

SUSTAINED_MIN_S = 300.0  # "thermal throttling after 5 min"

ITEMS = (
    "mAP documented with its IoU thresholds and dataset",
    "score threshold chosen on a validation split",
    "preprocessing documented (channel order, mean/std, resize, resolution)",
    "worst-case latency from a sustained run of at least 5 minutes",
    "disagreement gallery present",
)


@dataclass(frozen=True)
class Item:
    item: str
    done: bool
    evidence: str | None = None  # what in the run shows it (done)
    missing: str | None = None  # the plan field that would provide it, and why it is missing


def _model_field(view: CellView, key: str) -> str:
    return f"models[{view.model}].{key}"


def _accuracy_views(views: Sequence[CellView]) -> list[CellView]:
    return [v for v in views if v.accuracy is not None and not v.accuracy_from]


def _map_item(views: Sequence[CellView]) -> Item:
    measured = _accuracy_views(views)
    if not measured:
        return Item(ITEMS[0], False, missing="`dataset` (with `accuracy.enabled: true`): no accuracy pass ran")
    if all(v.random_weights for v in measured):
        return Item(ITEMS[0], False, missing=f"`{_model_field(measured[0], 'weights')}`: a trained checkpoint "
                                             "(random weights make the mAP meaningless)")
    v = next(x for x in measured if not x.random_weights)
    acc = v.accuracy
    assert acc is not None
    metric = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}.get(acc.primary, acc.primary)
    split = " (the report split of `accuracy.threshold_split`)" if acc.score_threshold is not None else ""
    dataset = acc.dataset.annotations or "the dataset"
    text = (f"{v.config_label}: {metric} AP {fmt.num(v.metric)} = COCO AP averaged over IoU 0.50:0.05:0.95, "
            f"AP50 {fmt.num(v.ap50)}, on {acc.images} images{split} of {dataset} "
            f"(fingerprint {acc.dataset.fingerprint or '–'}), {acc.evaluator}")
    others = len(measured) - 1
    if others:
        text += f"; {others} more configuration{'s' if others > 1 else ''} with an mAP in the report"
    return Item(ITEMS[0], True, evidence=text)


def _threshold_item(views: Sequence[CellView]) -> Item:
    measured = [v for v in _accuracy_views(views) if not v.random_weights] or _accuracy_views(views)
    chosen = [v for v in measured if v.accuracy is not None and v.accuracy.score_threshold is not None]
    if not chosen:
        return Item(ITEMS[1], False, missing="`accuracy.threshold_split` (e.g. `{fraction: 0.5, seed: 0}`): no "
                                             "threshold was chosen on a split apart from the reported one")
    v = chosen[0]
    assert v.accuracy is not None and v.accuracy.score_threshold is not None
    t = v.accuracy.score_threshold
    if t.threshold is None:
        return Item(ITEMS[1], False, missing=f"a threshold could not be chosen ({t.reason}); "
                                             "`accuracy.threshold_split` ran on "
                                             f"{t.validation.images} validation images")
    if v.random_weights:
        return Item(ITEMS[1], False, missing=f"`{_model_field(v, 'weights')}`: a trained checkpoint (a threshold "
                                             f"{t.threshold:.3g} was chosen, on random weights: meaningless)")
    held = ""
    if t.report_precision is not None or t.report_recall is not None:
        held = (f"; on the {t.report.images}-image report split: precision {fmt.num(t.report_precision, 2)}, "
                f"recall {fmt.num(t.report_recall, 2)}, F1 {fmt.num(t.report_f1, 2)}")
    return Item(ITEMS[1], True, evidence=(
        f"{v.config_label}: score ≥ {t.threshold:.3g}, F1-optimal (F1 {fmt.num(t.validation_f1, 2)} at IoU "
        f"{t.iou_threshold:g}) on {t.validation.images} validation images (ids sha256 {t.validation.ids_sha256[:12]}), "
        f"disjoint from the {t.report.images} report images (ids sha256 {t.report.ids_sha256[:12]}) the mAP is "
        f"computed on{held}"))


def _preprocess_text(pre: dict[str, Any], resolutions: list[int]) -> str:
    sizes = ", ".join(f"{r} px" for r in resolutions)
    resize = pre.get("resize", "?")
    fill = f" (fill {pre.get('letterbox_fill')})" if resize == "letterbox" else ""
    return (f"{str(pre.get('channel_order', '?')).upper()} order, pixels / {pre.get('value_scale', '?')}, "
            f"mean {pre.get('mean')}, std {pre.get('std')}, {resize} resize{fill} to {sizes}")


def _preprocess_item(views: Sequence[CellView]) -> Item:
    resolutions = sorted({v.resolution for v in views})
    for v in views:
        model = v.record.prepare.model
        pre = model.get("preprocess") if isinstance(model, dict) else None
        if isinstance(pre, dict) and pre:
            return Item(ITEMS[2], True, evidence=_preprocess_text(pre, resolutions) + f" (recorded by the {v.source} source)")
    return Item(ITEMS[2], False, missing=f"`{_model_field(views[0], 'preprocess')}`: no cell of the model recorded "
                                         "its preprocessing (a measured cell records its model source's)")


def _sustained_item(views: Sequence[CellView]) -> Item:
    runs = [v for v in views if v.identity.protocol.sustained is not None]
    measured = [v for v in runs if v.status in MEASURED_STATUSES and v.record.latency is not None
                and v.record.latency.windows]
    if not measured:
        extra = " (a sustained cell was planned but not measured)" if runs else ""
        return Item(ITEMS[3], False, missing="`protocol.sustained: {duration_s: 300, window_s: 10}` (plan or "
                                             f"`{_model_field(views[0], 'protocol')}`){extra}")
    v = max(measured, key=lambda x: x.identity.protocol.sustained.duration_s if x.identity.protocol.sustained else 0)
    sustained = v.identity.protocol.sustained
    assert sustained is not None and v.record.latency is not None and v.record.latency.windows
    windows = [w for r in v.processes or [v.record] if r.latency is not None and r.latency.windows for w in r.latency.windows]
    worst = max(windows, key=lambda w: w.stats.p99)
    first, last = v.record.latency.windows[0].stats.p50, v.record.latency.windows[-1].stats.p50
    monitor = v.record.monitor.summary if v.record.monitor is not None else None
    throttle = "not throttled" if v.status != "throttled" else "THROTTLED"
    if monitor is not None and monitor.throttled:
        throttle = f"throttled: {monitor.throttled_why}"
    text = (f"{v.config_label} · {v.scope}: {sustained.duration_s:g} s in {len(v.record.latency.windows)} windows; "
            f"worst window p99 {fmt.ms(worst.stats.p99)} ms ({worst.start_s:.0f}–{worst.end_s:.0f} s), window median "
            f"{fmt.ms(first)} → {fmt.ms(last)} ms ({fmt.pct((last / first - 1) * 100 if first else None)}); {throttle}")
    if sustained.duration_s < SUSTAINED_MIN_S:
        return Item(ITEMS[3], False, evidence=text,
                    missing=f"`protocol.sustained.duration_s: {SUSTAINED_MIN_S:g}` (this run's is {sustained.duration_s:g} s)")
    return Item(ITEMS[3], True, evidence=text)


def _gallery_item(views: Sequence[CellView], gallery_of: Callable[[CellView], list[str]]) -> Item:
    drawn = {v.cell_id: gallery_of(v) for v in views}
    drawn = {k: g for k, g in drawn.items() if g}
    if drawn:
        n = sum(len(g) for g in drawn.values())
        return Item(ITEMS[4], True, evidence=f"{n} image{'s' if n > 1 else ''} for {len(drawn)} "
                                             f"cell{'s' if len(drawn) > 1 else ''} (gallery/, in the report's Accuracy section)")
    asked = [v.record.cell.get("accuracy", {}) for v in views]
    images = [a.get("gallery_images") for a in asked if isinstance(a, dict)]
    if images and all(i == 0 for i in images):
        return Item(ITEMS[4], False, missing="`accuracy.gallery_images` above 0 (this plan has 0)")
    return Item(ITEMS[4], False, missing="a `dataset` and a second configuration compared with the model's reference "
                                         "(the gallery draws where they disagree; none was drawn here)")


def checklist(views: Sequence[CellView], gallery_of: Callable[[CellView], list[str]]) -> list[tuple[str, list[Item]]]:
    """Per model, in the run's order: the five items, each done or missing."""
    models: dict[str, list[CellView]] = {}
    for v in views:
        models.setdefault(v.model, []).append(v)
    return [
        (model, [_map_item(cells), _threshold_item(cells), _preprocess_item(cells), _sustained_item(cells),
                 _gallery_item(cells, gallery_of)])
        for model, cells in models.items()
    ]
