"""The fan-out against three real simulator processes over HTTP and a real Azurite: faults, failover, resume."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from f.matter import ingest, llm_fanout
from f.matter.analysis import WindowResult
from f.matter.errors import EndpointError, InputError
from f.matter.llm import EndpointPool, RetryPolicy, endpoints_from_resource
from f.matter.models import Manifest
from f.matter.storage import BlobStore
from matterflow.synth import synthetic_layout_bytes

SOURCE = "matters/M-2001/documents/contract.ocr.json"
FAST_POLICY = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.2, timeout_s=5.0, breaker_cooldown_s=0.3)


def blob(storage: dict, action):
    async def go():
        async with BlobStore.from_resource(storage) as store:
            return await action(store)

    return asyncio.run(go())


def stage(storage: dict, pages: int = 40, **kwargs) -> dict:
    data = synthetic_layout_bytes(pages, words_per_page=200, seed=21, low_confidence_pages=[5])
    blob(storage, lambda store: store.write_bytes(SOURCE, data))
    return ingest.main(storage, SOURCE, **kwargs)


def run_all_shards(storage: dict, manifest: dict, pool: dict, **kwargs) -> list[dict]:
    """The flow's branch-all: every shard at the same time, each in its own thread as on separate workers."""
    shards = len(manifest["plan"]["shards"])
    with ThreadPoolExecutor(shards) as executor:
        futures = [executor.submit(llm_fanout.main, storage, manifest, pool, shard=i, **kwargs) for i in range(shards)]
        return [future.result() for future in futures]


def checkpoints(storage: dict, manifest: dict) -> dict[int, WindowResult]:
    async def read_all(store):
        names = await store.list_paths(manifest["refs"]["windows"])
        return {int(n.rsplit("/", 1)[-1][:5]): WindowResult.model_validate(await store.read_json(n)) for n in names}

    return blob(storage, read_all)


def answers(results: dict[int, WindowResult]) -> dict[int, dict]:
    return {index: result.analysis.model_dump() for index, result in results.items()}


def total_answers(simulators: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sim in simulators:
        for key, count in sim.stats()["answered"].items():
            counts[key] = counts.get(key, 0) + count
    return counts


def test_clean_run_answers_every_window_once_and_checkpoints_it(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = stage(storage)
    summaries = run_all_shards(storage, manifest, llm_pool)

    windows = manifest["plan"]["windows"]
    assert sum(s["ok"] for s in summaries) == len(windows)
    assert all(s["failed"] == 0 and s["failed_windows"] == [] for s in summaries)
    saved = checkpoints(storage, manifest)
    assert sorted(saved) == [w["index"] for w in windows]
    for result in saved.values():
        owned = set(range(result.window.owned_first, result.window.owned_last + 1))
        assert result.status == "ok"
        assert [p.page for p in result.analysis.pages] == sorted(owned)
        assert all(set(item.pages) <= owned for item in result.analysis.entities + result.analysis.dates)
        assert result.usage.input_tokens > 0 and result.usage.cost_usd > 0
    assert sorted(total_answers(simulators).values()) == [1] * len(windows), "each window answered exactly once"
    # shard i prefers endpoint i: with healthy endpoints each shard stays on its own replica
    for shard, summary in enumerate(summaries):
        if summary["ok"]:
            assert list(summary["per_endpoint"]) == [f"sim-{shard}"]
    assert summaries[0]["claude_3_5_sonnet_cost_usd"] > summaries[0]["cost_usd"] > 0


def test_twenty_percent_mixed_faults_give_the_same_results_as_a_clean_run(
    azurite, storage: dict, llm_pool: dict, simulators: list
) -> None:
    clean = stage(storage, pages=160, window_pages=4)
    run_all_shards(storage, clean, llm_pool)
    clean_answers = answers(checkpoints(storage, clean))

    faulty_storage = {**storage, "containerName": storage["containerName"][:-2] + "fx"}
    blob(faulty_storage, lambda store: store.ensure_container())
    for sim in simulators:
        sim.reset()
        sim.configure(fault_rate=0.2, faults=["429", "500", "502", "503", "reset", "malformed", "truncated", "timeout"], hang_s=30.0)
    faulty = stage(faulty_storage, pages=160, window_pages=4)
    assert faulty["run_key"] == clean["run_key"]
    summaries = run_all_shards(faulty_storage, faulty, llm_pool, timeout_s=1.0, max_attempts=10)

    faults = sum(sum(sim.stats()["faults"].values()) for sim in simulators)
    assert faults >= 8, "the run really met faults"
    assert sum(s["failed"] for s in summaries) == 0
    assert sum(s["failed_calls"] + s["repaired"] for s in summaries) > 0
    assert answers(checkpoints(faulty_storage, faulty)) == clean_answers
    assert all(count == 1 for count in total_answers(simulators).values()), "no window answered successfully twice"


def test_one_endpoint_down_for_the_whole_run_fails_over(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = stage(storage)
    simulators[1].configure(down=True)
    summaries = run_all_shards(storage, manifest, llm_pool)
    assert sum(s["ok"] for s in summaries) == len(manifest["plan"]["windows"])
    assert simulators[1].stats()["ok"] == 0 and simulators[1].stats()["status"].get("503", 0) > 0
    assert "sim-1" not in summaries[1]["per_endpoint"] or summaries[1]["per_endpoint"]["sim-1"]["failed_calls"] > 0
    assert all(count == 1 for count in total_answers(simulators).values())


def test_every_endpoint_down_fails_clearly_and_records_the_failed_windows(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = Manifest.model_validate(stage(storage))
    for sim in simulators:
        sim.configure(down=True)
    store = BlobStore.from_resource(storage)
    pool = EndpointPool(endpoints_from_resource(llm_pool), policy=FAST_POLICY)
    with pytest.raises(EndpointError, match=r"shard 0: all \d+ windows failed; first reason: all 6 attempts failed"):
        asyncio.run(llm_fanout._main(store, pool, manifest, 0, False))
    record = blob(storage, lambda s: s.read_json(llm_fanout.shard_ref(manifest, 0)))
    assert record["ok"] == 0 and record["failed"] == len(manifest.plan.shards[0])
    assert all("503" in f["reason"] or "server_error" in f["reason"] for f in record["failed_windows"])
    assert checkpoints(storage, manifest.model_dump(mode="json")) == {}, "failures are not checkpointed, so a rerun retries them"


def test_a_rerun_resumes_and_never_recalls_finished_windows(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest_dict = stage(storage, pages=60, shards=1)
    manifest = Manifest.model_validate(manifest_dict)
    for sim in simulators:
        sim.configure(latency_ms=300.0, capacity=2)
    total = len(manifest.plan.windows)

    async def interrupted() -> set[int]:
        store = BlobStore.from_resource(storage)
        pool = EndpointPool(endpoints_from_resource({"endpoints": [llm_pool["endpoints"][0] | {"max_concurrency": 2}]}), policy=FAST_POLICY)
        task = asyncio.create_task(llm_fanout._main(store, pool, manifest, 0, False))
        deadline = time.monotonic() + 60
        async with BlobStore.from_resource(storage) as probe:
            while len(await llm_fanout.checkpointed(probe, manifest)) < 3:
                assert time.monotonic() < deadline and not task.done(), "fan-out did not make progress"
                await asyncio.sleep(0.05)  # polling blob storage with a deadline, not synchronising on time
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with BlobStore.from_resource(storage) as probe:
            return await llm_fanout.checkpointed(probe, manifest)

    finished = asyncio.run(interrupted())
    assert 3 <= len(finished) < total
    before = total_answers(simulators)
    for sim in simulators:
        sim.configure(latency_ms=5.0, capacity=64)
    summary = llm_fanout.main(storage, manifest_dict, llm_pool, shard=0)

    assert summary["skipped_checkpointed"] == len(finished)
    assert summary["ok"] == total - len(finished)
    assert len(checkpoints(storage, manifest_dict)) == total
    after = total_answers(simulators)
    for window in manifest.plan.windows:
        if window.index in finished:
            key = next(k for k in before if k.startswith(f"{window.owned_first}-{window.owned_last}:"))
            assert after[key] == before[key], f"window {window.index} was asked again after it was checkpointed"


def test_checkpoints_are_never_overwritten_by_a_rerun(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = stage(storage, pages=12)
    run_all_shards(storage, manifest, llm_pool)
    first = {i: r.model_dump() for i, r in checkpoints(storage, manifest).items()}
    calls = sum(sim.stats()["calls"] for sim in simulators)
    second = run_all_shards(storage, manifest, llm_pool)
    assert sum(s["calls"] for s in second) == 0
    assert sum(sim.stats()["calls"] for sim in simulators) == calls
    assert {i: r.model_dump() for i, r in checkpoints(storage, manifest).items()} == first


def test_force_recomputes_every_window(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = stage(storage, pages=12)
    run_all_shards(storage, manifest, llm_pool)
    forced = run_all_shards(storage, manifest, llm_pool, force=True)
    assert sum(s["ok"] for s in forced) == len(manifest["plan"]["windows"])
    assert sum(s["skipped_checkpointed"] for s in forced) == 0


def test_shard_outside_the_plan_is_named(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = stage(storage, pages=6)
    with pytest.raises(InputError, match="shard 7 does not exist; the plan has 3 shards"):
        llm_fanout.main(storage, manifest, llm_pool, shard=7)


def test_a_pool_without_endpoints_is_named(storage: dict, simulators: list) -> None:
    manifest = stage(storage, pages=6)
    with pytest.raises(InputError, match=r"llm_pool\.endpoints: needs at least one endpoint"):
        llm_fanout.main(storage, manifest, {"endpoints": []})


def test_progress_is_reported_to_windmill_while_windows_finish(storage: dict, llm_pool: dict, simulators: list) -> None:
    """On a worker, WM_* variables point the `wmill` client at Windmill's API; a recording server plays it."""
    from matterflow.wmill_api import WindmillApi

    manifest = stage(storage, pages=48, window_pages=2, shards=1)
    with WindmillApi(workspace="legal") as api:
        flow = api.new_job()
        job = api.new_job(parent=flow)
        with api.activated(job):
            summary = llm_fanout.main(storage, manifest, llm_pool, shard=0)
    progress = [body for method, path, body in api.calls if method == "POST" and path == f"/api/w/legal/job_metrics/set_progress/{job}"]
    assert summary["ok"] == len(manifest["plan"]["windows"]) >= 10
    assert len(progress) >= 3
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents) and percents[0] > 0 and percents[-1] <= 99
    assert api.progress[job] == percents
    assert all(p["flow_job_id"] == flow for p in progress)
    assert api.rejected == []  # every call carried the bearer token and reached a served endpoint


def test_api_keys_never_reach_results_summaries_or_errors(storage: dict, llm_pool: dict, simulators: list) -> None:
    secret = "sk-live-SECRET-4d1c9e"
    pool = {"endpoints": [e | {"api_key": secret} for e in llm_pool["endpoints"]]}
    manifest = stage(storage, pages=12)
    simulators[2].configure(fault_script=["500", "503", "reset", "malformed"])
    summaries = run_all_shards(storage, manifest, pool)
    for sim in simulators:
        sim.configure(down=True)
    with pytest.raises(EndpointError) as info:
        llm_fanout.main(storage, manifest, pool, shard=0, force=True, max_attempts=2)
    stored = blob(storage, lambda s: s.list_paths(""))
    texts = [json.dumps(summaries), str(info.value), repr(info.value.__cause__)]
    texts += [blob(storage, lambda s, name=name: s.read_bytes(name)).decode("utf-8", "replace") for name in stored]
    assert not [text for text in texts if secret in text]


def test_a_storage_failure_during_the_fanout_surfaces_as_the_typed_error(storage: dict, llm_pool: dict, simulators: list) -> None:
    from f.matter.errors import StorageError

    manifest = Manifest.model_validate(stage(storage, pages=12))

    class FailingCheckpoints(BlobStore):
        async def write_new(self, path: str, data: bytes, **kwargs) -> bool:
            raise StorageError("storage refused the write", container=self.container, path=path)

    store = FailingCheckpoints.from_resource(storage)
    pool = EndpointPool(endpoints_from_resource(llm_pool), policy=FAST_POLICY)
    with pytest.raises(StorageError, match="storage refused the write"):
        asyncio.run(llm_fanout._main(store, pool, manifest, 0, False))
