"""One flow step in its own process, as on a Windmill worker: `python -m matterflow.step f/matter/ingest IN OUT`.

The script is a workspace path (`f/matter/ingest`) or, for a rawscript step, a `.py` file. Reads the arguments
(JSON) from IN, imports the script, calls `main(**args)` as the worker does, and
writes `{"result": ...}` or `{"error": {"name", "message"}}` to OUT, serialised as the worker serialises
(`json.dumps(result, default=str)`). Exit code 0 on success, 1 on error.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import traceback
from pathlib import Path


def run(script_path: str, args_file: Path, out_file: Path) -> int:
    try:
        args = json.loads(args_file.read_text())
        module = _load(script_path)
        result = module.main(**args)
        out_file.write_text(json.dumps({"result": result}, default=str))
        return 0
    except BaseException as exc:  # everything a step can raise is reported, as Windmill reports it
        out_file.write_text(json.dumps({"error": {"name": type(exc).__name__, "message": str(exc)}}))
        traceback.print_exc(file=sys.stderr)
        return 1


def _load(script_path: str):
    if script_path.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(script_path).stem, script_path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(script_path.replace("/", "."))


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
