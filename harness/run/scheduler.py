"""Which cell next, in which process, and what happens when one dies.

Each cell runs in a fresh `python -m harness.run.worker` process (pyperf's and
optimum-benchmark's practice: no state, allocator or JIT cache leaks from one measurement into
the next). The scheduler waits with the cell's timeout and records a crash (signal), an
out-of-memory kill, a hang or a missing result as `failed` with the reason and the log's tail;
the next cell runs regardless. Finished cells are skipped on `--resume`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.plan.cells import Cell
from harness.results import CellRecord
from harness.run.record import outcome_record
from harness.run.store import RunStore, utc_now

LOG_TAIL_LINES = 40


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return f"the worker was killed by {name} (most often the kernel's out-of-memory killer)"
        if sig == signal.SIGSEGV:
            return f"the worker crashed with {name} (segmentation fault in native code)"
        if sig == signal.SIGABRT:
            return f"the worker aborted ({name}), typically a failed assertion in native code"
        return f"the worker died from {name}"
    return f"the worker exited with status {returncode} without writing a result"


def run_cell_process(
    cell: Cell,
    store: RunStore,
    on_phase: Callable[[str], None] | None = None,
    poll_s: float = 0.2,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run one cell in a child process and return its record (always; never raises for the
    cell's own failures)."""
    run_dir = store.run_dir
    cell_json = run_dir / "logs" / f".{cell.cell_id}.cell.json"
    cell_json.write_text(cell.model_dump_json(), "utf-8")
    result_tmp = run_dir / "cells" / f".{cell.cell_id}.result.json"
    result_tmp.unlink(missing_ok=True)
    log_path = store.log_path(cell.cell_id)
    phase_path = run_dir / "logs" / f"{cell.cell_id}.phase"
    started_at = utc_now()
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        log.write(f"--- {started_at} cell {cell.cell_id}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.run.worker", str(run_dir), str(cell_json), str(result_tmp)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
        deadline = time.monotonic() + cell.timeout_s
        last_phase = ""
        timed_out = False
        while True:
            try:
                returncode = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                pass
            except BaseException:  # Ctrl-C: the worker has its own session, take it down too
                _kill_group(proc)
                proc.wait()
                raise
            if on_phase is not None:
                try:
                    phase = phase_path.read_text().split(" ", 1)[0]
                except OSError:
                    phase = ""
                if phase and phase != last_phase:
                    last_phase = phase
                    on_phase(phase)
            if time.monotonic() > deadline:
                timed_out = True
                _kill_group(proc)
                returncode = proc.wait()
                break
    cell_json.unlink(missing_ok=True)
    if not timed_out and returncode == 0 and result_tmp.is_file():
        try:
            record = json.loads(result_tmp.read_text("utf-8"))
            record["log_tail"] = log_tail(log_path) if record.get("status") == "failed" else None
            record.setdefault("files", {})["log"] = f"logs/{cell.cell_id}.log"
            CellRecord.model_validate(record)
            result_tmp.unlink(missing_ok=True)
            return record
        except (ValueError, OSError) as exc:
            reason = f"the worker's result could not be read: {exc}"
    elif timed_out:
        reason = f"timed out after {cell.timeout_s:g} s (cell_timeout_s); the worker was killed"
    else:
        reason = describe_exit(returncode)
    result_tmp.unlink(missing_ok=True)
    return outcome_record(
        cell, "failed", reason, started_at, log_tail=log_tail(log_path), files={"log": f"logs/{cell.cell_id}.log"}
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
