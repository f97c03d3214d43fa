"""Windmill's own Python parser, run from Node: what Windmill infers from each script's `main()`.

Used by the tests (and by metadata generation) so that what the Windmill UI shows is checked with Windmill's
code, not with a re-implementation of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from matterflow.azurite import PROJECT_ROOT

SCRIPT = Path(__file__).resolve().parent / "node" / "parse_python.mjs"


class ParserUnavailable(RuntimeError):
    pass


def parse_scripts(files: list[Path], root: Path = PROJECT_ROOT) -> dict[str, dict]:
    """{script path (f/matter/ingest): {"signature": ..., "relative_imports": [...]}} for each file."""
    node = shutil.which("node")
    if node is None or not (root / "node_modules" / "windmill-parser-wasm-py").exists():
        raise ParserUnavailable("node or windmill-parser-wasm-py is missing: run `make setup`")
    completed = subprocess.run(
        [node, str(SCRIPT), str(root), *(str(path) for path in files)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if completed.returncode != 0:
        raise ParserUnavailable(f"windmill parser failed: {completed.stderr.strip()[-1000:]}")
    parsed = json.loads(completed.stdout)
    return {entry["script_path"]: entry for entry in parsed.values()}
