"""What `matterflow run` and `matterflow demo` show while a flow runs.

On a terminal, a live block redrawn in place: one line per step with its state, time, the progress the step reported
through `wmill.set_progress` and its last log line (the fan-out logs `12/40 windows done`). Elsewhere (CI logs,
pipes), plain lines: each step's start, log lines and end, as Windmill's job log shows them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TextIO

REDRAW_S = 0.2


@dataclass
class StepState:
    job_id: str
    started: float
    last_line: str = ""
    seconds: float | None = None
    ok: bool | None = None


class PlainDisplay:
    """One line per event, through `echo` (e.g. a stream's write); for logs and pipes."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self._lock:
            self.echo(line)

    def message(self, line: str) -> None:
        self._write(line)

    def step_started(self, step_id: str, job_id: str) -> None:
        self._write(f"{step_id}: started (job {job_id})")

    def step_log(self, step_id: str, line: str) -> None:
        if line.strip():
            self._write(f"  [{step_id}] {line}")

    def step_finished(self, step_id: str, *, ok: bool, seconds: float, detail: str = "") -> None:
        self._write(f"{step_id}: {'done' if ok else 'failed'} in {seconds:.1f} s{f' ({detail})' if detail else ''}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class LiveDisplay:
    """A block of step lines redrawn in place on a terminal; messages scroll above it."""

    def __init__(self, stream: TextIO, *, progress_of: Callable[[str], int | None] = lambda job_id: None, width: int = 100) -> None:
        self.stream = stream
        self.progress_of = progress_of
        self.width = width
        self.steps: dict[str, StepState] = {}
        self._lock = threading.Lock()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    # RunEvents -------------------------------------------------------------------------------------------------

    def message(self, line: str) -> None:
        with self._lock:
            self._clear()
            self.stream.write(line + "\n")
            self._draw()

    def step_started(self, step_id: str, job_id: str) -> None:
        with self._lock:
            self.steps[step_id] = StepState(job_id, time.monotonic())

    def step_log(self, step_id: str, line: str) -> None:
        with self._lock:
            if step_id in self.steps and line.strip():
                self.steps[step_id].last_line = line.strip()

    def step_finished(self, step_id: str, *, ok: bool, seconds: float, detail: str = "") -> None:
        with self._lock:
            state = self.steps.setdefault(step_id, StepState("", time.monotonic()))
            state.ok, state.seconds = ok, seconds
            if detail:
                state.last_line = detail

    # drawing ---------------------------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        now = time.monotonic()
        rows = []
        for step_id, state in self.steps.items():
            if state.ok is None:
                mark, seconds = "▶", now - state.started
                percent = self.progress_of(state.job_id)
                progress = f"{percent:3d}%" if percent is not None else "    "
            else:
                mark, seconds, progress = ("✓" if state.ok else "✗"), state.seconds or 0.0, "    "
            rows.append(f"  {mark} {step_id:<14} {seconds:6.1f} s {progress}  {state.last_line}"[: self.width])
        return rows

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's first line, erase to the end
            self._drawn = 0

    def _draw(self) -> None:
        rows = self.lines()
        if rows:
            self.stream.write("\n".join(rows) + "\n")
        self._drawn = len(rows)
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(REDRAW_S):
            with self._lock:
                self._clear()
                self._draw()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._clear()
            self._draw()


def display_for(stream: TextIO, *, progress_of: Callable[[str], int | None] = lambda job_id: None) -> LiveDisplay | PlainDisplay:
    """A live block on a terminal, plain lines anywhere else."""
    if stream.isatty():
        return LiveDisplay(stream, progress_of=progress_of)
    return PlainDisplay(lambda line: print(line, file=stream, flush=True))
