"""The one shared conftest: paths to the real fixtures, and a real Azurite for the whole session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from f.matter.storage import BlobStore
from matterflow.azurite import Azurite
from matterflow.sim import FAULTS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT.parent / "shared" / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Mark by use, so `-m "not azurite"` selects the tests that need no emulator without anyone tagging them.
    for item in items:
        if "azurite" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.azurite)


@pytest.fixture(scope="session")
def fixture_files() -> list[Path]:
    if not FIXTURE_FILES:
        pytest.fail(f"no shared OCR fixtures found in {FIXTURES}")
    return FIXTURE_FILES


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A real Azurite blob service on a free loopback port, started once and stopped after the session."""
    with Azurite() as emulator:
        yield emulator


@pytest.fixture
def container(azurite: Azurite) -> str:
    """A fresh, empty container for one test."""
    name = f"t-{uuid.uuid4().hex[:20]}"

    async def create() -> None:
        async with BlobStore.from_resource(azurite.resource(name)) as store:
            await store.ensure_container()

    asyncio.run(create())
    return name


@pytest.fixture
def storage(azurite: Azurite, container: str) -> dict:
    """The Windmill `azure_blob` resource of a fresh container in Azurite, as a flow step receives it."""
    return azurite.resource(container)


# Every setting a test may change, back to fast and fault-free before each test.
FAST_SIM = {
    "latency_ms": 5.0, "tokens_per_s": 20000.0, "capacity": 64, "fault_rate": 0.0, "faults": list(FAULTS),
    "fault_script": [], "down": False, "rpm": None, "hang_s": 600.0, "retry_after_s": 0.2, "context_tokens": None,
    "throttle_s": 0.0, "obey_injections": False, "reject_auth": False,
}


@pytest.fixture(scope="session")
def simulator_processes() -> Iterator[list]:
    """Three real simulator processes on loopback: the replicas of one Llama 3 70B pool."""
    from matterflow.sim import SimulatorProcess

    sims = [SimulatorProcess(name=f"sim-{i}", seed=i) for i in range(3)]
    try:
        for sim in sims:
            sim.start()
        yield sims
    finally:
        for sim in sims:
            sim.stop()


@pytest.fixture
def simulators(simulator_processes: list) -> list:
    """The three simulators, fast and fault-free, with their counters at zero."""
    for sim in simulator_processes:
        sim.configure(**FAST_SIM)
        sim.reset()
    return simulator_processes


@pytest.fixture
def llm_pool(simulators: list) -> dict:
    """An `llm_pool` resource over the three simulators, with prices so costs are non-zero."""
    return {
        "endpoints": [
            sim.endpoint(price_per_million_input=0.59, price_per_million_output=0.79) for sim in simulators
        ]
    }
