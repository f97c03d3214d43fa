"""The one shared conftest: paths to the real fixtures, and a real Azurite for the whole session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from f.matter.storage import BlobStore
from matterflow.azurite import Azurite

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
