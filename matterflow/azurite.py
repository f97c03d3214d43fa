"""Start and stop a real Azurite blob emulator on a free loopback port (tests, demo, benchmarks).

Azurite comes from the project's pinned npm packages (`make setup`). It runs in memory
(`--inMemoryPersistence`) and accepts the newer API versions azure-storage-blob speaks
(`--skipApiVersionCheck`).
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

# Azurite's documented development account; public, not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READY_LINE = "successfully listens"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class AzuriteError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def azurite_binary(root: Path = PROJECT_ROOT) -> str:
    local = root / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise AzuriteError("azurite-blob not found: run `make setup` (it installs the pinned npm tools)")


class Azurite:
    """A running Azurite blob service. Use as a context manager, or call start() / stop()."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._pump: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def resource(self, container: str) -> dict[str, Any]:
        """A Windmill `azure_blob` resource pointing at this emulator."""
        return {
            "accountName": ACCOUNT_NAME,
            "containerName": container,
            "accessKey": ACCOUNT_KEY,
            "useSSL": False,
            "endpoint": self.endpoint,
        }

    def start(self) -> Azurite:
        binary = azurite_binary()
        self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        last_output = ""
        for _ in range(3):  # a port picked free can be taken before Azurite binds it; pick again
            port = self.port or free_port(self.host)
            process = subprocess.Popen(
                [
                    binary,
                    "--blobHost", self.host,
                    "--blobPort", str(port),
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--disableProductStyleUrl",
                    "--disableTelemetry",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=self._workdir.name,  # Azurite writes its debug and extent files, if any, here
                env={**os.environ, "NO_COLOR": "1"},
            )
            ready, last_output = _wait_for_line(process, READY_LINE, self.startup_timeout_s)
            if ready:
                self.port, self._process = port, process
                # Keep reading its output so Azurite never blocks on a full pipe.
                self._pump = threading.Thread(target=_discard_output, args=(process,), daemon=True)
                self._pump.start()
                return self
            _terminate(process)
            self._close_output(process)
            if self.port:
                break
        self._cleanup_workdir()
        raise AzuriteError(f"Azurite did not start: {last_output.strip()[-500:]}")

    def stop(self) -> None:
        if self._process is not None:
            _terminate(self._process)
            if self._pump is not None:
                self._pump.join()
                self._pump = None
            self._close_output(self._process)
            self._process = None
        self._cleanup_workdir()

    @staticmethod
    def _close_output(process: subprocess.Popen[str]) -> None:
        if process.stdout is not None:
            process.stdout.close()

    def _cleanup_workdir(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout_s: float) -> tuple[bool, str]:
    """Read the process's output until a line contains `needle`, it exits, or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=remaining):
                continue
            line = process.stdout.readline()
            if not line:  # EOF: the process exited
                return False, "".join(seen)
            seen.append(line)
            if needle in line:
                return True, "".join(seen)
    return False, "".join(seen) + "\n(timed out)"


def _discard_output(process: subprocess.Popen[str]) -> None:
    for _ in process.stdout or ():
        pass


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
