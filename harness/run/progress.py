"""What a run shows while it runs: a live view on a terminal, one line per unit start and end
when the output goes elsewhere (CI logs, a pipe, a file), so a log is never silent for the
minutes a cell takes. A reader that goes away (a closed pipe) never stops the measurement.
"""

from __future__ import annotations

import contextlib
import os
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from harness.run.launch import Record, WorkUnit

STATUS_COLOURS = {"ok": "green", "failed": "red", "skipped": "yellow"}


def mute(stream: IO[Any] | None) -> None:
    """Point `stream`'s descriptor at /dev/null after its reader went away (BrokenPipeError),
    so later writes, and the interpreter's last flush, neither fail nor print a traceback."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


class View(Protocol):
    def __enter__(self) -> View: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None: ...

    def started(self, unit: WorkUnit) -> None: ...

    def phase(self, unit: WorkUnit, name: str) -> None: ...

    def done(self, unit: WorkUnit, record: Record) -> None: ...


def make_view(console: Any, total: int, done: int) -> View:
    return LiveView(console, total, done) if console.is_terminal else LineView(console, total, done)


class _Counts:
    def __init__(self, console: Any, total: int, done: int):
        self.console = console
        self.total = total
        self.done_count = done
        self.running: dict[str, tuple[str, float]] = {}  # unit key -> (phase, since)
        self.recent: list[tuple[str, str]] = []  # (unit key, status) of the last units done


class LineView(_Counts):
    """A line when a unit starts and when it ends; nothing in between."""

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def _line(self, text: str) -> None:
        try:
            self.console.print(text, soft_wrap=True, markup=False, highlight=False)
            self.console.file.flush()
        except BrokenPipeError:  # nobody reads any more: keep measuring, quietly
            mute(self.console.file)

    def started(self, unit: WorkUnit) -> None:
        self.running[unit.key] = ("starting", time.monotonic())
        self._line(f"start    {unit.key}  ({self.done_count}/{self.total} done, {len(self.running)} running)")

    def phase(self, unit: WorkUnit, name: str) -> None:
        since = self.running.get(unit.key, (name, time.monotonic()))[1]
        self.running[unit.key] = (name, since)

    def done(self, unit: WorkUnit, record: Record) -> None:
        _, since = self.running.pop(unit.key, ("", time.monotonic()))
        self.done_count += 1
        status = str(record.get("status"))
        self._line(f"{status:<8} {unit.key}  {time.monotonic() - since:.1f} s  ({self.done_count}/{self.total} done)")


class LiveView(_Counts):
    """rich's Live: how far the run is, what each running unit does, the last few results."""

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.live.__exit__(kind, exc, tb)

    def _render(self) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        left = self.total - self.done_count
        table.add_row(f"[bold]{self.done_count}/{self.total}[/] cells done, {left} left")
        now = time.monotonic()
        for key, (phase, since) in self.running.items():
            table.add_row(f"now: [cyan]{escape(key)}[/]  phase: [magenta]{phase}[/]  {now - since:5.1f} s")
        for key, status in self.recent[-5:]:
            colour = STATUS_COLOURS.get(status, "yellow")
            table.add_row(f"  [{colour}]{status:>9}[/] {escape(key)}")
        return table

    def _update(self) -> None:
        try:
            self.live.update(self._render())
        except BrokenPipeError:
            mute(self.console.file)

    def started(self, unit: WorkUnit) -> None:
        self.running[unit.key] = ("starting", time.monotonic())
        self._update()

    def phase(self, unit: WorkUnit, name: str) -> None:
        since = self.running.get(unit.key, (name, time.monotonic()))[1]
        self.running[unit.key] = (name, since)
        self._update()

    def done(self, unit: WorkUnit, record: Record) -> None:
        self.running.pop(unit.key, None)
        self.done_count += 1
        self.recent.append((unit.key, str(record.get("status"))))
        self._update()


def make_console() -> Any:
    """The run's console, on stderr. Not a terminal (CI): 100 columns unless COLUMNS says."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 100
    return console


__all__ = ["LineView", "LiveView", "View", "make_console", "make_view", "mute"]
