"""`bench merge`: runs measured apart joined into one run folder; duplicates refused, the same
cell on different GPUs kept apart, inputs untouched, and the result finalizes like any run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.plan.load import parse_plan
from harness.run.merge import cross_hardware_differences, merge_runs
from harness.run.placement import base_cell_id, hardware_name, hardware_slug, qualify
from harness.run.record import new_record
from harness.run.store import RunStore, utc_now

PLAN = """
name: fleet
device: cuda
models:
  - name: nano
    variant: nano
    weights: random
    resolutions: [320, 384]
runtimes: [torch]
precisions: [fp32, fp16]
scopes: [model]
"""


def cell_ids(tmp_path: Path) -> list[str]:
    return [c.cell_id for c in parse_plan(PLAN, "plan.yaml", tmp_path).cells]


def environment(gpu: str | None, torch: str = "2.4.1", host: str = "node") -> dict[str, Any]:
    return {
        "hostname": host,
        "cpu": {"model": "Intel Xeon Gold 6338", "available_cores": 16},
        "gpus": [{"name": gpu, "uuid": f"GPU-{host}"}] if gpu else [],
        "packages": {"torch": torch, "torchvision": "0.19.1", "rfdetr": "1.11.2"},
        "distributions": {},
        "nvidia": {"driver_version": "550.54"},
        "cuda": {"runtime": "12.4", "cudnn": "9.1.0"},
        "env_vars": {},
    }


def make_run(base: Path, gpu: str | None, ids: list[str], *, torch: str = "2.4.1", host: str = "node",
             plan: str = PLAN, status: str = "ok") -> Path:
    loaded = parse_plan(plan, "plan.yaml", base)
    cells = {c.cell_id: c for c in loaded.cells}
    store = RunStore.create(base, "fleet", plan, {"cell_ids": list(cells), "plan_sha256": loaded.sha256})
    for cell_id in ids:
        cell = cells[cell_id]
        files = {"log": f"logs/{cell_id}.log", "detections": f"detections/{cell_id}.json",
                 "outputs": f"outputs/{cell_id}.npz"}
        store.log_path(cell_id).write_text(f"log of {cell_id} on {gpu}\n")
        (store.run_dir / files["detections"]).write_text(json.dumps([{"image_id": 1, "score": 0.5}]))
        (store.run_dir / files["outputs"]).write_bytes(b"npz " + cell_id.encode())
        (store.run_dir / "gallery" / f"{cell_id}-0.jpg").write_bytes(b"jpeg")
        (store.run_dir / "logs" / f"{cell_id}.phase").write_text("done 1.0\n")
        store.write_cell(new_record(
            cell, status, utc_now(), environment=environment(gpu, torch, host),  # type: ignore[arg-type]
            settings={"device": "cuda:0"}, files=files,
        ).model_dump(mode="json"))
    return store.run_dir


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def records(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["cell_id"]: r for r in RunStore(run_dir).read_cells()}


def test_placement_helpers() -> None:
    assert hardware_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert hardware_slug("Tesla T4") == "t4"
    assert hardware_slug("NVIDIA A10G") == "a10g"
    assert hardware_slug("CPU Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz") == "intel-xeon-gold-6338-2-00ghz"
    assert qualify("a__b__model", "t4") == "a__b__model@t4" == qualify("a__b__model@l4", "t4")
    assert base_cell_id("a__b__model@t4") == "a__b__model"
    assert hardware_name({"environment": environment("NVIDIA L4")}) == "NVIDIA L4"
    assert hardware_name({"environment": environment(None)}) == "CPU Intel Xeon Gold 6338"
    lost = {"cell": {"device": "cuda:0"}, "placement": {"accelerator_type": "H100"}}
    assert hardware_name(lost) == "H100"  # a cell lost on Ray before it saw its GPU


def test_the_same_cells_on_two_gpus_are_kept_apart(tmp_path: Path) -> None:
    ids = cell_ids(tmp_path)
    t4 = make_run(tmp_path / "t4", "Tesla T4", ids, host="t4-box")
    l4 = make_run(tmp_path / "l4", "NVIDIA L4", ids[:2], host="l4-box")
    before = {t4: snapshot(t4), l4: snapshot(l4)}

    merged = merge_runs([t4, l4], tmp_path / "merged")

    assert snapshot(t4) == before[t4] and snapshot(l4) == before[l4]  # inputs untouched
    assert merged.parent.parent == tmp_path / "merged" and merged.parent.name == "fleet"
    got = records(merged)
    assert sorted(got) == sorted([f"{i}@t4" for i in ids] + [f"{i}@l4" for i in ids[:2]])
    one = got[f"{ids[0]}@l4"]
    assert one["cell"]["cell_id"] == one["cell_id"]
    assert one["placement"]["hardware"] == "NVIDIA L4" and one["placement"]["gpu_slug"] == "l4"
    assert one["placement"]["measured_cell_id"] == ids[0]
    assert one["placement"]["host"] == "l4-box"
    assert one["placement"]["source_dir"] == str(l4.resolve())
    assert one["files"] == {"log": f"logs/{ids[0]}@l4.log", "detections": f"detections/{ids[0]}@l4.json",
                            "outputs": f"outputs/{ids[0]}@l4.npz"}
    assert (merged / one["files"]["log"]).read_text() == f"log of {ids[0]} on NVIDIA L4\n"
    assert (merged / one["files"]["outputs"]).read_bytes() == f"npz {ids[0]}".encode()
    assert (merged / "gallery" / f"{ids[0]}@l4-0.jpg").is_file()
    assert not list((merged / "logs").glob("*.phase"))

    meta = json.loads((merged / "run.json").read_text())
    assert meta["backend"] == "merge" and meta["plans_differ"] is False
    assert meta["hardware"] == {"t4": "Tesla T4", "l4": "NVIDIA L4"}
    assert [s["run_dir"] for s in meta["merged_from"]] == [str(t4.resolve()), str(l4.resolve())]
    assert meta["cell_ids"][:2] == [f"{ids[0]}@t4", f"{ids[0]}@l4"]  # plan order, then input order
    assert sorted(meta["cell_ids"]) == sorted(got)
    for source in meta["merged_from"]:
        assert (merged / source["kept_as"] / "plan.yaml").read_text() == PLAN
        assert (merged / source["kept_as"] / "run.json").is_file()
    assert (merged / "plan.yaml").read_text() == PLAN


def test_the_merged_run_finalizes_into_results(tmp_path: Path) -> None:
    from harness.run.execute import finalize, reopen_run

    ids = cell_ids(tmp_path)
    merged = merge_runs([make_run(tmp_path / "a", "Tesla T4", ids), make_run(tmp_path / "b", "NVIDIA L4", ids)],
                        tmp_path / "merged")
    store, loaded = reopen_run(merged)
    results = finalize(store, loaded).model_dump(mode="json")  # results.json as written
    assert sorted(r["cell_id"] for r in results["cells"]) == sorted(f"{i}@{s}" for i in ids for s in ("t4", "l4"))
    assert json.loads((merged / "results.json").read_text())["run"]["merged_from"]


def test_duplicate_cells_on_the_same_gpu_model_are_refused(tmp_path: Path) -> None:
    ids = cell_ids(tmp_path)
    a = make_run(tmp_path / "a", "NVIDIA L4", ids[:3], host="one")
    b = make_run(tmp_path / "b", "NVIDIA L4", ids[2:], host="two", status="failed")
    with pytest.raises(UserError) as info:
        merge_runs([a, b], tmp_path / "merged")
    message = str(info.value)
    assert f"{ids[2]} on NVIDIA L4: in {a} (ok) and in {b} (failed)" in message
    assert ids[0] not in message
    assert not (tmp_path / "merged").exists()  # nothing written


def test_halves_of_a_plan_on_identical_machines_keep_their_ids(tmp_path: Path) -> None:
    ids = cell_ids(tmp_path)
    a = make_run(tmp_path / "a", "NVIDIA L4", ids[:2], host="one")
    b = make_run(tmp_path / "b", "NVIDIA L4", ids[2:], host="two")
    merged = merge_runs([a, b], tmp_path / "merged")
    got = records(merged)
    assert sorted(got) == sorted(ids)
    assert {r["placement"]["host"] for r in got.values()} == {"one", "two"}
    assert "gpu_slug" not in got[ids[0]]["placement"]


def test_merging_a_merged_run_again_keeps_the_slugs(tmp_path: Path) -> None:
    ids = cell_ids(tmp_path)
    first = merge_runs([make_run(tmp_path / "a", "Tesla T4", ids[:1]), make_run(tmp_path / "b", "NVIDIA L4", ids[:1])],
                       tmp_path / "m1")
    h100 = make_run(tmp_path / "c", "NVIDIA H100 80GB HBM3", ids[:1])
    again = merge_runs([first, h100], tmp_path / "m2")
    assert sorted(records(again)) == sorted(f"{ids[0]}@{s}" for s in ("t4", "l4", "h100-80gb-hbm3"))
    with pytest.raises(UserError, match="measured on the same GPU model"):
        merge_runs([first, make_run(tmp_path / "d", "Tesla T4", ids[:1])], tmp_path / "m3")


def test_merge_refuses_bad_inputs(tmp_path: Path) -> None:
    ids = cell_ids(tmp_path)
    a = make_run(tmp_path / "a", "Tesla T4", ids)
    with pytest.raises(UserError, match="at least two run folders"):
        merge_runs([a], tmp_path / "m")
    with pytest.raises(UserError, match="is given twice"):
        merge_runs([a, a.parent / ".." / a.parent.name / a.name], tmp_path / "m")
    with pytest.raises(UserError, match="not a run folder"):
        merge_runs([a, tmp_path], tmp_path / "m")
    with pytest.raises(UserError, match="no such run folder"):
        merge_runs([a, tmp_path / "missing"], tmp_path / "m")


def test_different_plans_are_kept_as_sources(tmp_path: Path) -> None:
    ids = cell_ids(tmp_path)
    other_plan = PLAN.replace("resolutions: [320, 384]", "resolutions: [320, 384, 448]")
    a = make_run(tmp_path / "a", "Tesla T4", ids[:1])
    b = make_run(tmp_path / "b", "NVIDIA L4", ids[:1], plan=other_plan)
    merged = merge_runs([a, b], tmp_path / "merged")
    meta = json.loads((merged / "run.json").read_text())
    assert meta["plans_differ"] is True
    assert (merged / "plan.yaml").read_text() == PLAN
    assert (merged / meta["merged_from"][1]["kept_as"] / "plan.yaml").read_text() == other_plan


def test_cross_hardware_differences_flag_software_not_the_gpu(tmp_path: Path) -> None:
    ids = cell_ids(tmp_path)
    same = merge_runs([make_run(tmp_path / "a", "Tesla T4", ids[:2]), make_run(tmp_path / "b", "NVIDIA L4", ids[:2])],
                      tmp_path / "m1")
    assert cross_hardware_differences(list(records(same).values())) == {}  # only the GPU differs

    drifted = merge_runs([make_run(tmp_path / "c", "Tesla T4", ids[:2]),
                          make_run(tmp_path / "d", "NVIDIA L4", ids[:1], torch="2.5.0")], tmp_path / "m2")
    flags = cross_hardware_differences(list(records(drifted).values()))
    assert sorted(flags) == [f"{ids[0]}@l4", f"{ids[0]}@t4"]  # ids[1] ran on one GPU only
    assert flags[f"{ids[0]}@l4"] == {"libraries.torch": {"Tesla T4": "2.4.1", "NVIDIA L4": "2.5.0"}}
