"""Running flow.yaml with the local runner for the e2e and many-docs scenarios, and splitting its wall time.

The runner records when each step's process started and ended (`Runner.step_runs`; with older runners, its echo
lines `<step>: done in X s`, stamped here as they arrive); inside each step's process the benchmark's
`steptimer/sitecustomize.py` (put on PYTHONPATH for the runs) stamps when the interpreter started and when
`main()` started and ended, which the runner does not record. Together they split one flow run's wall time into:

- `ingest_s`, `fanout_s`, `publish_s`: the steps' own `main()` time on the critical path (for the fan-out, the
  slowest shard; the confidence branch runs beside it);
- `process_s`: step processes starting, importing and exiting around those `main()`s (a worker pays this too);
  `critical_imports_s` is the part between the interpreter's start and `main()` (imports) on the critical path;
- `runner_s`: everything else, in the runner's own process (input transforms in V8, JSON, threads);
- `runner_overhead_s` = `process_s` + `runner_s`: all that is not a step's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from f.matter.storage import BlobStore
from matterflow.runner import Runner

FLOW = Path(__file__).resolve().parents[2] / "f" / "matter" / "process_document__flow" / "flow.yaml"
STEP_TIMER = Path(__file__).resolve().with_name("steptimer")
_DONE = re.compile(r"^(\S+): done in ([\d.]+) s$")
_BRANCHES = re.compile(r"^(\S+): \d+ branches")
FANOUT_STEPS = ("shard_0", "shard_1", "shard_2")


@dataclass
class FlowRun:
    source: str
    started: float = 0.0
    ended: float = 0.0
    events: list[tuple[float, str]] = field(default_factory=list)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # step id -> (start, end) of its process
    result: dict | None = None
    error: str | None = None

    def echo(self, line: str) -> None:
        self.events.append((time.time(), line))


@contextlib.contextmanager
def step_timer() -> Iterator[Path]:
    """Step processes started inside this block append their `main()` stamps to the yielded file."""
    with tempfile.TemporaryDirectory(prefix="matterflow-bench-steps-") as tmp:
        target = Path(tmp) / "steps.jsonl"
        target.touch()
        saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "MATTERFLOW_BENCH_STEP_TIMINGS")}
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(STEP_TIMER), saved["PYTHONPATH"]) if p)
        os.environ["MATTERFLOW_BENCH_STEP_TIMINGS"] = str(target)
        try:
            yield target
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def read_steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_flow(resources: dict, blob_path: str, *, force: bool = True) -> FlowRun:
    run = FlowRun(source=blob_path)
    runner = Runner.from_file(FLOW, resources=resources, echo=run.echo)
    run.started = time.time()
    offset = run.started - time.monotonic()  # the runner's step timings are monotonic; the step stamps are not
    try:
        run.result = runner.run({"blob_path": blob_path, "storage": "$res:f/matter/storage", "llm_pool": "$res:f/matter/llm_pool", "force": force})
    except Exception as exc:  # recorded in the report, not raised: one failed document must not hide the others
        run.error = f"{type(exc).__name__}: {exc}"
    run.ended = time.time()
    for step in getattr(runner, "step_runs", []):  # the last attempt of each step wins
        run.spans[step.step_id] = (step.started + offset, step.ended + offset)
    return run


def breakdown(run: FlowRun, steps: list[dict]) -> dict:
    """Split one flow run's wall time (see the module docstring). Steps are this run's step records."""
    done: dict[str, tuple[float, float]] = dict(run.spans)  # (process span start, end) from `Runner.step_runs`
    analyse_start = None
    for stamp, line in run.events:  # older runners expose only their echo lines: `<step>: done in X s`
        if (match := _DONE.match(line)) and match.group(1) not in run.spans:
            done[match.group(1)] = (stamp - float(match.group(2)), stamp)
        elif (match := _BRANCHES.match(line)) and analyse_start is None:
            analyse_start = stamp
    branch_starts = [start for step, (start, _) in done.items() if step in (*FANOUT_STEPS, "confidence")]
    if run.spans and branch_starts:
        analyse_start = min(branch_starts)
    main = {}
    for record in steps:  # the last attempt of each step wins
        main[record["step"]] = record
    wall = run.ended - run.started
    if run.error or not {"ingest", "publish", *FANOUT_STEPS} <= done.keys() or analyse_start is None:
        return {"wall_s": round(wall, 3), "error": run.error or "incomplete timings"}

    def main_s(step: str) -> float:
        return main[step]["main_end"] - main[step]["main_start"]

    ingest_span = done["ingest"][1] - done["ingest"][0]
    publish_span = done["publish"][1] - done["publish"][0]
    analyse_end = max(end for step, (_, end) in done.items() if step in (*FANOUT_STEPS, "confidence"))
    analyse_span = analyse_end - analyse_start
    ingest_s, publish_s = main_s("ingest"), main_s("publish")
    fanout_s = max(main_s(step) for step in FANOUT_STEPS)
    process_s = (ingest_span - ingest_s) + (analyse_span - fanout_s) + (publish_span - publish_s)
    runner_s = wall - ingest_span - analyse_span - publish_span
    startup = [r["main_start"] - r["process_start"] for r in main.values()]
    slowest = max(FANOUT_STEPS, key=main_s)
    critical_imports = sum(main[step]["main_start"] - main[step]["process_start"] for step in ("ingest", slowest, "publish"))
    return {
        "wall_s": round(wall, 3),
        "ingest_s": round(ingest_s, 3),
        "fanout_s": round(fanout_s, 3),
        "publish_s": round(publish_s, 3),
        "confidence_s": round(main_s("confidence"), 3) if "confidence" in main else None,
        "process_s": round(process_s, 3),
        "runner_s": round(runner_s, 3),
        "runner_overhead_s": round(process_s + runner_s, 3),
        "fanout_share": round(fanout_s / wall, 3),
        "runner_overhead_share": round((process_s + runner_s) / wall, 3),
        "critical_imports_s": round(critical_imports, 3),
        "step_import_s_mean": round(sum(startup) / len(startup), 3) if startup else None,
    }


def upload(storage: dict, documents: dict[str, bytes]) -> None:
    async def go() -> None:
        async with BlobStore.from_resource(storage) as store:
            await store.ensure_container()
            for path, data in documents.items():
                await store.write_bytes(path, data, content_type="application/json")

    asyncio.run(go())


def run_many(resources: dict, blob_paths: list[str], workers: int) -> list[FlowRun]:
    """One runner per document, `workers` at a time, each in its own process (spawned, so the children inherit
    the step timer's environment and no threads). Not threads: concurrent `MiniRacer()` instances in one process
    crash (mini-racer 0.14 segfaults when isolates are created from several threads at once), and the runner
    makes one per `run()`."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(blob_paths)), mp_context=context) as pool:
        futures = [pool.submit(run_flow, resources, path) for path in blob_paths]
        return [future.result() for future in futures]
