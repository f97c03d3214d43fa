"""A clean clone of the committed tree installs what it needs with the Makefile alone and passes its tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUARD = "MATTERFLOW_INSIDE_CLEAN_CLONE"


@pytest.mark.slow
@pytest.mark.clone
@pytest.mark.skipif(bool(os.environ.get(GUARD)), reason="this run is the clean clone's own test run")
def test_a_clean_clone_sets_itself_up_and_passes_its_tests(tmp_path: Path) -> None:
    clone = tmp_path / "main"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")  # as CI lays it: shared/ beside the clone
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env[GUARD] = "1"
    completed = subprocess.run(
        ["make", "test", "PYTEST_ARGS=-q -m 'not slow and not chaos and not clone' -p no:cacheprovider"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert (clone / ".venv" / "bin" / "matterflow").exists()
    assert (clone / "node_modules" / ".bin" / "azurite-blob").exists()
    assert " passed" in output and "Lint passed" in output
