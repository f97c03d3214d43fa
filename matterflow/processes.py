"""Child processes the tooling starts and stops: Azurite, simulators. Readiness is a line the process prints,
awaited with a deadline; nothing sleeps to synchronise."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class ProcessStartError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ManagedProcess:
    """A child process that counts as started once it prints `ready_line`; its output is drained afterwards so
    it never blocks on a full pipe."""

    def __init__(self, argv: Sequence[str], *, ready_line: str, timeout_s: float = 60.0, cwd: Path | None = None, env: dict | None = None) -> None:
        self.argv = list(argv)
        self.ready_line = ready_line
        self.timeout_s = timeout_s
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.output: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=self.cwd,
            env=self.env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        # One thread reads every line for the process's whole life (so it never blocks on a full pipe) and hands
        # them over through a queue: no select() on a buffered pipe, which can miss lines already buffered.
        pump = threading.Thread(target=self._read_lines, args=(process, lines), daemon=True)
        pump.start()
        if not self._wait_ready(lines):
            _terminate(process)
            pump.join()
            process.stdout.close()
            raise ProcessStartError(f"{Path(self.argv[0]).name} did not start: {''.join(self.output).strip()[-800:]}")
        self._process, self._pump = process, pump

    def stop(self) -> None:
        if self._process is None:
            return
        _terminate(self._process)
        if self._pump is not None:
            self._pump.join()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process = self._pump = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def _wait_ready(self, lines: queue.Queue[str | None]) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:  # the process exited
                return False
            if self.ready_line in line:
                return True
        self.output.append("(timed out waiting for readiness)\n")
        return False

    def _read_lines(self, process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        for line in process.stdout:
            if len(self.output) < 2000:
                self.output.append(line)
            lines.put(line)
        lines.put(None)


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
