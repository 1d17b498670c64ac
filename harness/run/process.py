"""One unit of work in a fresh `python -m harness.run.worker` child process, and what happens
when it dies.

Each unit runs in its own process (pyperf's and optimum-benchmark's practice: no state,
allocator or JIT cache leaks from one measurement into the next). The parent waits with the
cell's timeout and turns a crash (signal), an out-of-memory kill, a hang or a missing result
into a `failed` record with the reason, the log's tail and the failure's kind: `cell` when
the cell's own code failed (a segfault, an abort), `environmental` when something outside it
did (killed from outside, out of time, no result written), which a resume measures again.
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

from harness.files import UnsafePath
from harness.results import CellRecord
from harness.run.record import outcome_record
from harness.run.store import RunStore, utc_now
from harness.run.unit import WorkUnit

LOG_TAIL_LINES = 40
# Signals a cell's own native code dies of; any other death comes from outside the cell.
CELL_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


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


def describe_exit(returncode: int) -> tuple[str, str]:
    """(reason, failure kind) of a worker that ended without a result."""
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        kind = "cell" if sig in CELL_SIGNALS else "environmental"
        if sig == signal.SIGKILL:
            return f"the worker was killed by {name} (most often the kernel's out-of-memory killer)", kind
        if sig == signal.SIGSEGV:
            return f"the worker crashed with {name} (segmentation fault in native code)", kind
        if sig == signal.SIGABRT:
            return f"the worker aborted ({name}), typically a failed assertion in native code", kind
        return f"the worker died from {name}", kind
    # The worker writes a record for every failure of the cell's own; none means it could not.
    return f"the worker exited with status {returncode} without writing a result", "environmental"


def run_unit_process(
    unit: WorkUnit,
    store: RunStore,
    on_phase: Callable[[str], None] | None = None,
    poll_s: float = 0.2,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run one unit in a child process and return its record (always; never raises for the
    cell's own failures)."""
    cell, key = unit.cell, unit.key
    unit_rel, result_rel, log_rel = f"logs/.{key}.cell.json", f"cells/.{key}.result.json", f"logs/{cell.cell_id}.log"
    run_dir = store.run_dir
    result_tmp = run_dir / result_rel
    handover = run_dir / "logs" / f".{key}.built.json"
    started_at = utc_now()
    try:
        log = store.open_append(log_rel)
    except UnsafePath as exc:  # a link planted in the run folder: nothing is written through it
        return outcome_record(cell, "failed", str(exc), started_at, failure_kind="environmental", repeat=unit.repeat)
    with log:
        result_tmp.unlink(missing_ok=True)
        handover.unlink(missing_ok=True)
        store.write_replace(unit_rel, unit.model_dump_json(), durable=False)
        repeat = "" if unit.repeat is None else f" repeat {unit.repeat}"
        log.write(f"--- {started_at} cell {cell.cell_id}{repeat}\n".encode())
        log.flush()
        argv = [sys.executable, "-m", "harness.run.worker", str(run_dir), str(run_dir / unit_rel), str(result_tmp),
                str(handover)]
        worker_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        phase_path = run_dir / "logs" / f"{key}.phase"
        returncode, timed_out = _wait_for_worker(argv, log, worker_env, cell.timeout_s, phase_path, on_phase, poll_s)
        if not timed_out and returncode == 0 and not result_tmp.is_file() and handover.is_file():
            # The worker built the artifact: a fresh process, which finds it cached, times it
            # (harness.run.worker's doc says why), under a timeout of its own.
            log.write(f"--- {utc_now()} cell {cell.cell_id}{repeat}: timed in a fresh process after the build\n".encode())
            log.flush()
            returncode, timed_out = _wait_for_worker(argv, log, worker_env, cell.timeout_s, phase_path, on_phase, poll_s)
    (run_dir / unit_rel).unlink(missing_ok=True)
    handover.unlink(missing_ok=True)
    files = {"log": log_rel}
    if not timed_out and returncode == 0 and result_tmp.is_file():
        try:
            record = json.loads(result_tmp.read_text("utf-8"))
            record["log_tail"] = log_tail(run_dir / log_rel) if record.get("status") == "failed" else None
            record.setdefault("files", {})["log"] = log_rel
            CellRecord.model_validate(record)
            result_tmp.unlink(missing_ok=True)
            return record
        except (ValueError, OSError) as exc:
            reason, kind = f"the worker's result could not be read: {exc}", "environmental"
    elif timed_out:
        reason = f"timed out after {cell.timeout_s:g} s (cell_timeout_s); the worker was killed"
        kind = "environmental"
    else:
        reason, kind = describe_exit(returncode)
    result_tmp.unlink(missing_ok=True)
    return outcome_record(cell, "failed", reason, started_at, log_tail=log_tail(run_dir / log_rel),
                          files=files, failure_kind=kind, repeat=unit.repeat)


def _wait_for_worker(
    argv: list[str],
    log: Any,
    env: dict[str, str],
    timeout_s: float,
    phase_path: Path,
    on_phase: Callable[[str], None] | None,
    poll_s: float,
) -> tuple[int, bool]:
    """Start the worker and wait for it, following its phase file; (return code, timed out)."""
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True,  # its own process group: a timeout kills its children too
    )
    deadline = time.monotonic() + timeout_s
    last_phase = ""
    try:
        while True:
            try:
                return proc.wait(timeout=poll_s), False
            except subprocess.TimeoutExpired:
                pass
            if on_phase is not None:
                try:
                    phase = phase_path.read_text().split(" ", 1)[0]
                except OSError:
                    phase = ""
                if phase and phase != last_phase:
                    last_phase = phase
                    on_phase(phase)
            if time.monotonic() > deadline:
                kill_group(proc)
                return proc.wait(), True
    except BaseException:  # Ctrl-C, or the caller's callback failed: take the worker down too
        kill_group(proc)
        proc.wait()
        raise


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
