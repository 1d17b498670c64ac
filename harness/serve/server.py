"""The server process: a cell's runtime behind the HTTP endpoint (harness.serve.app).

Two ways in:

    bench serve PLAN --model M --runtime R [--port 8000]     by hand, in the foreground
    python -m harness.serve.server CELL_JSON LISTEN_FD READY_FD    started by a server cell

The runtime is built and prepared by the worker's own steps (`build_source_and_runtime`,
`prepare_runtime`: the same export, build and cache as every cell), and requests run through its
end-to-end stages (`Runtime.stages()`), so the server answers with exactly the preprocessing and
decoder the harness times. A cell's server listens on a socket the harness opened on loopback and
passed in (LISTEN_FD); it says on READY_FD that it is ready (or why it could not start), and it
dies with its parent (PR_SET_PDEATHSIG), so no server outlives the run that started it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from harness.plan.cells import Cell
from harness.plan.server import ServerSpec
from harness.run.worker import CellEnded, CellRun, build_source_and_runtime, prepare_runtime
from harness.serve import serve_extra_problem, stack_versions

LOOPBACK = ("127.0.0.1", "::1", "localhost")
WARMUP_CALLS = 3


@dataclass
class Built:
    service: Any  # harness.serve.app.Service
    runtime: Any
    info: dict[str, Any]


def build(cell: Cell, log: TextIO, run_dir: Path | None = None) -> Built:
    """The runtime prepared, warmed up and behind a Service. CellEnded when it cannot run."""
    from harness.runtimes.registry import runtime_class
    from harness.serve import images
    from harness.serve.app import Service
    from harness.serve.batcher import Batcher

    spec = cell.server or ServerSpec()
    runtime_cls = runtime_class(cell.runtime.name)
    if reason := runtime_cls.unavailable_reason(cell):
        raise CellEnded("skipped", reason)
    run = CellRun(cell, run_dir or Path.cwd(), log, lambda name: None)
    source, runtime = build_source_and_runtime(run, runtime_cls)
    prepare = prepare_runtime(run, runtime, source)
    images.set_pillow_limits(spec.limits.max_pixels)
    max_batch = cell.batch
    batcher = Batcher(runtime.stages(), runtime.synchronize, max_batch=max_batch,
                      max_queue_delay_ms=spec.batching.max_queue_delay_ms if max_batch > 1 else 0.0,
                      pad_to_max_batch=spec.batching.pad_to_max_batch)
    warm = _warm_up(batcher, cell, max_batch)
    info = {
        "cell_id": cell.cell_id,
        "model": cell.model.name,
        "runtime": cell.runtime.key,
        "runtime_name": cell.runtime.name,
        "precision": cell.precision,
        "resolution": cell.resolution,
        "device": cell.device,
        "max_batch": max_batch,
        "max_queue_delay_ms": spec.batching.max_queue_delay_ms if max_batch > 1 else None,
        "pad_to_max_batch": spec.batching.pad_to_max_batch,
        "limits": spec.limits.model_dump(mode="json"),
        "random_weights": run.random_weights,
        "prepare": prepare,
        "settings": runtime.settings(),
        "warmup": warm,
        "server": stack_versions(),
        "pid": os.getpid(),
    }
    service = Service(batcher=batcher, class_names=list(source.class_names), limits=spec.limits, model=cell.model.name,
                      runtime=cell.runtime.key, cell_id=cell.cell_id, info=_json_safe(info))
    batcher.start()
    return Built(service, runtime, service.info)


def _warm_up(batcher: Any, cell: Cell, max_batch: int) -> dict[str, Any]:
    """A few calls at batch 1 and at the largest batch before serving, so the first requests
    don't pay for lazy initialisation (ORT's allocations, CUDA kernels, TensorRT contexts)."""
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    started = time.perf_counter()
    for size in sorted({1, max_batch}):
        for _ in range(WARMUP_CALLS):
            batcher.run_batch([image] * size)
    return {"calls": WARMUP_CALLS * len({1, max_batch}), "seconds": round(time.perf_counter() - started, 3)}


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def uvicorn_server(app: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=60,
                            lifespan="off", server_header=False, http="h11", loop="asyncio")
    return uvicorn.Server(config)


def check_loopback(host: str) -> None:
    from harness.errors import UserError

    if host not in LOOPBACK and not host.startswith("127."):
        raise UserError(f"--host {host}: the benchmark server listens on the loopback address only (127.0.0.1 or ::1)")


# -- started by a server cell ------------------------------------------------------------------


def _say(fd: int, message: dict[str, Any]) -> None:
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(message, default=str) + "\n")


def main(argv: list[str]) -> int:
    import asyncio
    import traceback

    from harness.run.worker import _die_with_parent

    _die_with_parent()
    cell_json, listen_fd, ready_fd = Path(argv[0]), int(argv[1]), int(argv[2])
    run_dir = Path(argv[3]) if len(argv) > 3 else None
    cell = Cell.model_validate_json(cell_json.read_text("utf-8"))
    try:
        if problem := serve_extra_problem():
            raise CellEnded("skipped", problem)
        built = build(cell, sys.stdout, run_dir)
    except CellEnded as end:
        _say(ready_fd, {"status": end.status, "reason": end.reason})
        return 0
    except Exception as exc:
        traceback.print_exc()
        _say(ready_fd, {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
        return 0
    from harness.serve.app import build_app

    sock = socket.socket(fileno=listen_fd)
    server = uvicorn_server(build_app(built.service))
    _say(ready_fd, {"status": "ready", "info": built.info})
    sys.stdout.flush()
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        built.service.batcher.stop()
        built.runtime.close()
    return 0


# -- by hand: bench serve ----------------------------------------------------------------------


# The options that pick one of a model's cells on a runtime: (option, Cell attribute, plural).
CELL_OPTIONS = (
    ("--precision", "precision", "precisions"),
    ("--batch", "batch", "batch sizes"),
    ("--resolution", "resolution", "resolutions"),
    ("--nms", "nms", "NMS placements"),
)


def _values(cells: list[Cell], attr: str) -> list[Any]:
    """The distinct values of `attr` among `cells`, in the plan's order (its first is the default)."""
    return list(dict.fromkeys(getattr(c, attr) for c in cells if getattr(c, attr) is not None))


def _shown(values: list[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def pick_cell(cells: list[Cell], model: str, runtime: str, precision: str | None, batch: int | None,
              resolution: int | None, nms: str | None = None) -> Cell:
    """The cell `bench serve` serves: the model on the runtime, narrowed by each option given (an
    option left out takes the plan's first value). A value the plan does not have is refused with
    the values it does have for that option."""
    from harness.errors import UserError

    found = [c for c in cells if c.model.name == model and c.runtime.key == runtime]
    if not found:
        have = sorted({f"--model {c.model.name} --runtime {c.runtime.key}" for c in cells})
        raise UserError(f"no cell of the plan is model {model!r} on runtime {runtime!r}; the plan has: " + "; ".join(have))
    # NMS placements are spelt in_graph in plans and in-graph in cell ids: take either.
    wanted = {"precision": precision, "batch": batch, "resolution": resolution,
              "nms": nms.replace("-", "_") if nms else None}
    narrowed_by: list[str] = []
    for option, attr, plural in CELL_OPTIONS:
        value = wanted[attr]
        if value is None:
            continue
        matching = [c for c in found if getattr(c, attr) == value]
        if not matching:
            which = f"model {model} on runtime {runtime}" + (f" with {' '.join(narrowed_by)}" if narrowed_by else "")
            have = _values(found, attr)
            if not have:
                raise UserError(f"{option} {value}: {which} has no NMS the harness places (the plan gives it no NMS placement)")
            raise UserError(f"{option} {value}: {which} has {plural} {_shown(have)}")
        found = matching
        narrowed_by.append(f"{option} {value}")
    end_to_end = [c for c in found if c.scope == "end_to_end"]
    return (end_to_end or found)[0]


def describe_choice(cells: list[Cell], cell: Cell) -> str:
    """What `bench serve` serves, option by option, and the plan's other values for the options
    (so a default, e.g. the first of several NMS placements, is never picked silently)."""
    siblings = [c for c in cells if c.model.name == cell.model.name and c.runtime.key == cell.runtime.key]
    served = [f"precision {cell.precision}", f"batch up to {cell.batch}", f"resolution {cell.resolution}"]
    if cell.nms is not None:
        served.append(f"NMS {cell.nms}")
    others = []
    for option, attr, _ in CELL_OPTIONS:
        rest = [v for v in _values(siblings, attr) if v != getattr(cell, attr)]
        if rest:
            others.append(f"{option} {', '.join(str(v) for v in rest)}")
    return ", ".join(served) + ("; the plan also has " + "; ".join(others) if others else "")


def open_log(cell: Cell, log_path: str | None) -> tuple[Any, Path]:
    """The runtime's log file, open for writing: `log_path`, else a new file of this process's
    own in the system's temp folder (mkstemp: a unique name, created exclusively, so a file or
    link someone planted under a predictable name is never written through)."""
    import tempfile

    if log_path:
        return open(log_path, "w", encoding="utf-8"), Path(log_path)  # noqa: SIM115  (open while serving)
    fd, name = tempfile.mkstemp(prefix=f"bench-serve-{cell.cell_id}-", suffix=".log")
    return os.fdopen(fd, "w", encoding="utf-8"), Path(name)


def serve_by_hand(plan_path: str, model: str, runtime: str, *, host: str, port: int, precision: str | None,
                  batch: int | None, resolution: int | None, nms: str | None = None,
                  max_seconds: float | None = None, log_path: str | None = None) -> int:
    """`bench serve`: the cell's server in this process, until Ctrl-C (or `max_seconds`). The
    runtime's own output (ONNX Runtime's VERBOSE session log, TensorRT's build log: a hundred
    lines and more) goes to a log file, so the terminal shows only where the server listens."""
    import asyncio

    from harness.errors import UserError
    from harness.plan.load import load_plan
    from harness.serve import MAX_PORT

    check_loopback(host)
    if not 0 <= port <= MAX_PORT:  # the CLI checks it too; this is for other callers
        raise UserError(f"--port {port}: a port is 0-{MAX_PORT} (0: any free port)")
    if problem := serve_extra_problem():
        raise UserError(problem)
    loaded = load_plan(plan_path)
    cell = pick_cell(loaded.cells, model, runtime, precision, batch, resolution, nms)
    if cell.server is None:
        cell = cell.model_copy(update={"server": loaded.plan.server or ServerSpec()})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    try:
        log, log_file = open_log(cell, log_path)
    except OSError as exc:
        sock.close()
        raise UserError(f"--log {log_path}: cannot write it: {exc.strerror}") from None
    print(f"bench serve: preparing {cell.cell_id} ({describe_choice(loaded.cells, cell)}); "
          f"the runtime's log goes to {log_file} ...", file=sys.stderr, flush=True)
    try:
        try:
            built = build(cell, log)
        except CellEnded as end:
            raise UserError(f"{cell.cell_id} cannot be served: {end.status}: {end.reason} (log: {log_file})") from None
        from harness.serve.app import build_app

        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"bench serve: {cell.cell_id} on http://{shown}:{bound} (batch up to {cell.batch}); Ctrl-C stops it\n"
              f"  curl -s -H 'Content-Type: image/jpeg' --data-binary @image.jpg http://{shown}:{bound}/v1/detect\n"
              f"  curl -s http://{shown}:{bound}/metrics", file=sys.stderr, flush=True)
        server = uvicorn_server(build_app(built.service))

        async def run() -> None:
            task = asyncio.create_task(server.serve(sockets=[sock]))
            if max_seconds is not None:
                await asyncio.sleep(max_seconds)
                server.should_exit = True
            await task

        try:
            asyncio.run(run())
        except KeyboardInterrupt:
            pass
        finally:
            built.service.batcher.stop()
            built.runtime.close()
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
