"""The local flow runner: flow.yaml with Windmill's semantics, each step in its own process."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from f.matter.errors import InputError
from f.matter.storage import BlobStore
from matterflow.runner import FlowFailed, Runner, _retry_delays

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "f" / "matter" / "process_document__flow" / "flow.yaml"


def flow_of(*modules: dict, **extra: dict) -> dict:
    return {"summary": "t", "value": {"modules": list(modules), **extra}, "schema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    ("module", "named"),
    [
        ({"id": "a", "value": {"type": "whileloopflow", "modules": []}}, "'whileloopflow'"),
        ({"id": "a", "suspend": {"required_events": 1}, "value": {"type": "identity"}}, "['suspend']"),
        ({"id": "a", "sleep": {"type": "static", "value": 5}, "value": {"type": "identity"}}, "['sleep']"),
        ({"id": "a", "value": {"type": "rawscript", "language": "deno", "content": ""}}, "'deno'"),
        ({"id": "a", "value": {"type": "script", "path": "f/matter/ingest", "input_transforms": {"x": {"type": "magic"}}}}, "'magic'"),
        ({"id": "a", "value": {"type": "forloopflow", "modules": [], "iterator": {"type": "magic"}, "skip_failures": False}}, "'magic'"),
        (
            {"id": "a", "value": {"type": "branchall", "branches": [{"modules": [{"id": "b", "stop_after_if": {"expr": "true"}, "value": {"type": "identity"}}]}]}},
            "'b' uses stop_after_if inside a branch or loop",
        ),
    ],
)
def test_unsupported_features_are_refused_by_name(module: dict, named: str) -> None:
    with pytest.raises(InputError, match=re.escape(named)):
        Runner(flow_of(module))


def test_retry_delays_follow_windmill_fields() -> None:
    assert _retry_delays({"constant": {"attempts": 3, "seconds": 5}}) == [5.0, 5.0, 5.0]
    delays = _retry_delays({"exponential": {"attempts": 3, "multiplier": 2, "seconds": 2, "random_factor": 0}})
    assert delays == [2.0, 4.0, 8.0]
    assert _retry_delays({}) == []


def test_missing_required_flow_input_is_named() -> None:
    with pytest.raises(InputError, match="missing required flow inputs: blob_path, storage, llm_pool"):
        Runner.from_file(FLOW).run({})


def test_the_real_flow_runs_end_to_end_and_a_second_run_reuses_everything(storage: dict, llm_pool: dict, simulators: list) -> None:
    from matterflow.synth import synthetic_layout_bytes

    source = "matters/M-77/documents/deed.ocr.json"

    async def put():
        async with BlobStore.from_resource(storage) as store:
            await store.write_bytes(source, synthetic_layout_bytes(10, words_per_page=150, seed=77))

    asyncio.run(put())
    lines: list[str] = []
    runner = Runner.from_file(FLOW, resources={"f/matter/storage": storage, "f/matter/llm_pool": llm_pool}, echo=lines.append)
    flow_input = {"blob_path": source, "storage": "$res:f/matter/storage", "llm_pool": "$res:f/matter/llm_pool", "window_pages": 3}
    first = runner.run(flow_input)
    assert first["status"] == "complete" and not first["reused"] and first["pages"] == 10
    calls = sum(sim.stats()["calls"] for sim in simulators)
    second = runner.run(flow_input)
    assert second["reused"] and second["result"] == first["result"]
    assert sum(sim.stats()["calls"] for sim in simulators) == calls, "a rerun makes no LLM calls"
    assert "analyse: 4 branches in parallel" in lines


def test_a_failing_step_runs_the_failure_module_and_the_flow_fails(storage: dict, llm_pool: dict, simulators: list) -> None:
    source = "matters/M-78/documents/broken.ocr.json"

    async def put_and_read():
        async with BlobStore.from_resource(storage) as store:
            await store.write_bytes(source, b'{"analyzeResult": {"pages": [{"pageNumber": 1, "words": [{"content": "x", "confidence": 7}]}]}}')

    asyncio.run(put_and_read())
    runner = Runner.from_file(FLOW, resources={"f/matter/storage": storage, "f/matter/llm_pool": llm_pool})
    with pytest.raises(FlowFailed, match=r"step ingest failed: OcrFormatError: .*page 1, word 1 \('x'\) has confidence 7"):
        runner.run({"blob_path": source, "storage": "$res:f/matter/storage", "llm_pool": "$res:f/matter/llm_pool"})

    async def stored() -> tuple[list[str], dict]:
        async with BlobStore.from_resource(storage) as store:
            names = await store.list_paths("results/matters/M-78/")
            return names, await store.read_json("results/matters/M-78/documents/broken.ocr/status.json")

    names, status = asyncio.run(stored())
    assert names == ["results/matters/M-78/documents/broken.ocr/status.json"], "a status record and no result"
    assert status["status"] == "failed" and status["error"]["step"] == "ingest" and status["error"]["name"] == "OcrFormatError"
    assert "has confidence 7" in status["error"]["message"]

    async def status():
        async with BlobStore.from_resource(storage) as store:
            return await store.read_json("results/matters/M-78/documents/broken.ocr/status.json")

    record = asyncio.run(status())
    assert record["status"] == "failed" and record["error"]["step"] == "ingest"
    assert record["error"]["name"] == "OcrFormatError"
    assert record["inputs"]["storage"]["accessKey"] == "[redacted]"


def test_the_sweep_run_like_a_schedule_starts_the_flow_for_each_new_document(storage: dict, llm_pool: dict, simulators: list) -> None:
    """sweep.py calls wmill.run_flow_async; under the runner that starts process_document for real."""
    from matterflow.synth import synthetic_layout_bytes

    documents = [f"matters/M-90/documents/exhibit-{i}.ocr.json" for i in (1, 2)]

    async def put() -> None:
        async with BlobStore.from_resource(storage) as store:
            for seed, path in enumerate(documents):
                await store.write_bytes(path, synthetic_layout_bytes(3, words_per_page=80, seed=seed))

    async def results() -> list[str]:
        async with BlobStore.from_resource(storage) as store:
            return sorted(p for p in await store.list_paths("results/matters/M-90/") if p.endswith("/result.json"))

    asyncio.run(put())
    resources = {"f/matter/storage": storage, "f/matter/llm_pool": llm_pool}
    sweep_input = {"storage": "$res:f/matter/storage", "prefix": "matters/M-90/", "limit": 5}
    first = Runner.for_script("f/matter/sweep", list(sweep_input), resources=resources).run(sweep_input)
    assert sorted(s["blob_path"] for s in first["started"]) == documents
    found = asyncio.run(results())
    assert [p.split("/")[4] for p in found] == ["exhibit-1.ocr", "exhibit-2.ocr"], "each started flow ran to its result"
    second = Runner.for_script("f/matter/sweep", list(sweep_input), resources=resources).run(sweep_input)
    assert second["started"] == []
