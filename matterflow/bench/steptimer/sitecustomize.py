"""Benchmark-only step timer, loaded by a flow step's Python process when this folder is on PYTHONPATH.

`matterflow.step` imports the workspace script with `importlib.import_module` and calls its `main()`; this wraps
that `main()` to append one JSON line per call to $MATTERFLOW_BENCH_STEP_TIMINGS: the step id, the document, and
wall-clock stamps of the interpreter's start, main()'s start and main()'s end. Nothing else changes. The runner
records no per-step timings itself (see bench/NOTES.md for the hook that would replace this).
"""

import importlib
import json
import os
import time

_STARTED = time.time()
_TARGET = os.environ.get("MATTERFLOW_BENCH_STEP_TIMINGS")

if _TARGET:
    _import_module = importlib.import_module

    def _source(kwargs):
        if isinstance(kwargs.get("blob_path"), str):
            return kwargs["blob_path"]
        manifest = kwargs.get("manifest")
        if isinstance(manifest, dict):
            return (manifest.get("refs") or {}).get("source")
        return None

    def _timed(name, main):
        def timed_main(**kwargs):
            begun = time.time()
            try:
                return main(**kwargs)
            finally:
                record = {
                    "step": os.environ.get("WM_FLOW_STEP_ID"), "script": name, "source": _source(kwargs),
                    "process_start": _STARTED, "main_start": begun, "main_end": time.time(), "pid": os.getpid(),
                }
                with open(_TARGET, "a") as out:
                    out.write(json.dumps(record) + "\n")

        return timed_main

    def import_module(name, package=None):
        module = _import_module(name, package)
        if name.startswith("f.matter.") and callable(getattr(module, "main", None)) and not getattr(module, "_bench_timed", False):
            module.main = _timed(name, module.main)
            module._bench_timed = True
        return module

    importlib.import_module = import_module
