"""Start and stop a real Azurite blob emulator on a free loopback port (tests, demo, benchmarks).

Azurite comes from the project's pinned npm packages (`make setup`). It runs in memory
(`--inMemoryPersistence`), accepts the newer API versions azure-storage-blob speaks (`--skipApiVersionCheck`)
and sends no telemetry.

Two options for the chaos and security tests: `location` keeps the data on disk in that folder, so `restart()`
(stop, then start again on the same port) keeps every blob, as a restarted storage service would; `accounts`
adds storage accounts with keys of the test's choosing (Azurite's AZURITE_ACCOUNTS), beside the development one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Self

from matterflow.processes import ManagedProcess, ProcessStartError, free_port

# Azurite's documented development account; public, not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READY_LINE = "successfully listens"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class AzuriteError(RuntimeError):
    pass


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

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 60.0,
        location: Path | None = None,
        accounts: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.location = location  # None: in memory, lost when the process ends
        self.accounts = dict(accounts or {})
        self._process: ManagedProcess | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def endpoint(self) -> str:
        return self.account_endpoint(ACCOUNT_NAME)

    def account_endpoint(self, account: str) -> str:
        return f"http://{self.host}:{self.port}/{account}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

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

    def start(self) -> Self:
        binary = azurite_binary()
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        persistence = ["--location", str(self.location)] if self.location is not None else ["--inMemoryPersistence"]
        env = {"NO_COLOR": "1"}
        if self.accounts:
            env["AZURITE_ACCOUNTS"] = ";".join(
                f"{name}:{key}" for name, key in {ACCOUNT_NAME: ACCOUNT_KEY, **self.accounts}.items()
            )
        fixed_port = self.port
        error: ProcessStartError | None = None
        for _ in range(1 if fixed_port else 3):  # a port picked free can be taken before Azurite binds it
            port = fixed_port or free_port(self.host)
            process = ManagedProcess(
                [
                    binary,
                    "--blobHost", self.host,
                    "--blobPort", str(port),
                    *persistence,
                    "--skipApiVersionCheck",
                    "--disableProductStyleUrl",
                    "--disableTelemetry",
                ],
                ready_line=READY_LINE,
                timeout_s=self.startup_timeout_s,
                cwd=Path(self._workdir.name),  # Azurite writes its debug files, if any, here
                env=env,
            )
            try:
                process.start()
            except ProcessStartError as exc:
                error = exc
                continue
            self.port, self._process = port, process
            return self
        self._cleanup()
        raise AzuriteError(str(error))

    def stop(self) -> None:
        self.halt()
        self._cleanup()

    def halt(self) -> None:
        """Stop the service (SIGTERM, as a service manager stops it) but keep the port and the data folder, so
        `start()` brings it back where it was; with `location`, every blob survives."""
        if self._process is not None:
            self._process.stop()
            self._process = None

    def restart(self) -> Self:
        self.halt()
        return self.start()

    def _cleanup(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
