"""One flow step in its own process, as on a Windmill worker: `python -m matterflow.step f/matter/ingest IN OUT`.

Reads the arguments (JSON) from IN, imports the workspace script, calls `main(**args)` as the worker does, and
writes `{"result": ...}` or `{"error": {"name", "message"}}` to OUT, serialised as the worker serialises
(`json.dumps(result, default=str)`). Exit code 0 on success, 1 on error.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from pathlib import Path


def run(script_path: str, args_file: Path, out_file: Path) -> int:
    try:
        args = json.loads(args_file.read_text())
        module = importlib.import_module(script_path.replace("/", "."))
        result = module.main(**args)
        out_file.write_text(json.dumps({"result": result}, default=str))
        return 0
    except BaseException as exc:  # everything a step can raise is reported, as Windmill reports it
        out_file.write_text(json.dumps({"error": {"name": type(exc).__name__, "message": str(exc)}}))
        traceback.print_exc(file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
