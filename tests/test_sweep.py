"""The sweep against a real Azurite container, starting flows through the real `wmill` client and a recording API."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import wmill
import yaml

from f.matter import ingest, sweep
from f.matter.errors import InputError, MatterflowError
from f.matter.storage import BlobConfig, BlobStore
from matterflow.synth import synthetic_layout_bytes
from matterflow.wmill_api import WindmillApi

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "f/matter/process_document__flow/flow.yaml"
T0 = 1_900_000_000.0


def blob(storage: dict, action):
    async def go():
        async with BlobStore.from_resource(storage) as store:
            return await action(store)

    return asyncio.run(go())


def put(storage: dict, documents: dict[str, bytes]) -> None:
    async def write(store: BlobStore) -> None:
        await asyncio.gather(*(store.write_bytes(path, data) for path, data in documents.items()))

    blob(storage, write)


def document(seed: int) -> bytes:
    return synthetic_layout_bytes(3, words_per_page=20, seed=seed)


def docs(count: int, folder: str = "matters/M-7") -> dict[str, bytes]:
    return {f"{folder}/doc-{i:02d}.ocr.json": document(i) for i in range(count)}


def params(**overrides) -> sweep.SweepInput:
    values = {
        "prefix": "matters/", "limit": 20, "suffix": ".json", "window_pages": 8, "overlap_pages": 2,
        "context_tokens": 8192, "model": "llama-3-70b", "min_confidence": 0.8, "storage_resource": "f/matter/storage",
        "llm_pool": "f/matter/llm_pool", "flow_path": "f/matter/process_document", "claim_ttl_minutes": 60,
        "dry_run": False,
    }
    return sweep.SweepInput(**(values | overrides))


@pytest.fixture
def api() -> Iterator[WindmillApi]:
    with WindmillApi(workspace="legal") as server:
        yield server


@pytest.fixture
def start(api: WindmillApi) -> Iterator:
    """`run_flow_async` of a real `wmill` client pointed at the recording API."""
    client = wmill.Windmill(base_url=api.base_url, token=api.token, workspace=api.workspace)
    yield client.run_flow_async
    client.client.close()


def run(storage: dict, start, store: BlobStore | None = None, now: float = T0, sweep_id: str = "sweep-1", **overrides) -> dict:
    store = store or BlobStore.from_resource(storage)
    return asyncio.run(sweep.sweep(store, params(**overrides), start, sweep_id=sweep_id, now=lambda: now))


def started(summary: dict) -> list[str]:
    return [entry["blob_path"] for entry in summary["started"]]


def reasons(summary: dict) -> dict[str, str]:
    return {entry["blob_path"]: entry["reason"] for entry in summary["skipped"] + summary["failed"]}


def listing(storage: dict, prefix: str = "") -> list[str]:
    return blob(storage, lambda store: store.list_paths(prefix))


def give_result(storage: dict, path: str, **settings) -> dict:
    """What a finished flow leaves: ingest's manifest and a result.json in the run folder."""
    manifest = ingest.main(storage, path, **settings)
    blob(storage, lambda store: store.write_json(manifest["refs"]["result"], {"status": "complete"}))
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# run key and selection


def test_the_sweeps_run_key_is_the_one_ingest_computes(storage: dict) -> None:
    data = document(3)
    put(storage, {"matters/M-1/a.ocr.json": data})
    for settings in ({}, {"window_pages": 4, "overlap_pages": 1, "context_tokens": 131072, "model": "llama-3.1-70b"}):
        manifest = ingest.main(storage, "matters/M-1/a.ocr.json", **settings)
        assert sweep.settings_run_key(hashlib.sha256(data).hexdigest(), params(**settings)) == manifest["run_key"]


def test_documents_without_a_result_are_started_and_those_with_one_skipped(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(3) | {"matters/M-7/notes.txt": b"not ocr", "other/outside.ocr.json": document(9)})
    done = give_result(storage, "matters/M-7/doc-01.ocr.json")
    summary = run(storage, start)
    assert started(summary) == ["matters/M-7/doc-00.ocr.json", "matters/M-7/doc-02.ocr.json"]
    assert summary["skipped"] == [{"blob_path": "matters/M-7/doc-01.ocr.json", "run_key": done["run_key"], "reason": "done"}]
    assert summary["documents"] == 3 and summary["failed"] == [] and summary["claimed_by_other"] == []
    assert sorted((run.path, run.args["blob_path"]) for run in api.flow_runs) == [
        ("f/matter/process_document", "matters/M-7/doc-00.ocr.json"),
        ("f/matter/process_document", "matters/M-7/doc-02.ocr.json"),
    ]
    args = api.flow_runs[0].args
    assert args | {"blob_path": None} == {
        "blob_path": None, "storage": "$res:f/matter/storage", "llm_pool": "$res:f/matter/llm_pool",
        "min_confidence": 0.8, "window_pages": 8, "overlap_pages": 2, "context_tokens": 8192,
        "model": "llama-3-70b", "force": False,
    }
    assert {entry["job_id"] for entry in summary["started"]} == {r.job_id for r in api.flow_runs}


def test_the_flow_arguments_match_the_flow_inputs_and_carry_no_credentials(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(1))
    run(storage, start)
    schema = yaml.safe_load(FLOW.read_text())["schema"]
    (flow_run,) = api.flow_runs
    assert set(flow_run.args) <= set(schema["properties"]) and set(schema["required"]) <= set(flow_run.args)
    assert storage["accessKey"] not in repr(api.flow_runs) + repr(api.calls)


def test_a_started_document_is_claimed_with_its_job_and_skipped_by_the_next_sweep(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(2))
    first = run(storage, start)
    key = first["started"][0]["run_key"]
    claim_ref = sweep.claim_path("matters/M-7/doc-00.ocr.json", key, 1)
    claim = blob(storage, lambda store: store.read_json(claim_ref))
    assert claim["state"] == "started" and claim["flow_job"] == first["started"][0]["job_id"]
    assert claim["sweep_job"] == "sweep-1" and claim["expires_at"] == T0 + 60 * 60

    downloads: list[str] = []

    class CountingStore(BlobStore):
        async def read_bytes(self, path: str) -> bytes:
            if not path.startswith("results/"):
                downloads.append(path)
            return await super().read_bytes(path)

    store = CountingStore(BlobConfig.from_resource(storage))
    second = run(storage, start, store=store, now=T0 + 60 * 60 - 1)
    assert second["started"] == [] and len(api.flow_runs) == 2
    assert set(reasons(second).values()) == {"claimed"}
    assert {e["job_id"] for e in second["skipped"]} == {e["job_id"] for e in first["started"]}
    assert downloads == []  # the content hash came from the ETag cache


def test_a_changed_document_is_swept_again(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(1))
    give_result(storage, "matters/M-7/doc-00.ocr.json")
    assert run(storage, start)["counts"] == {"done": 1}
    put(storage, {"matters/M-7/doc-00.ocr.json": document(42)})
    again = run(storage, start)
    assert started(again) == ["matters/M-7/doc-00.ocr.json"]


def test_at_most_limit_flows_start_per_sweep_and_the_rest_wait_their_turn(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(5))
    rounds = [run(storage, start, limit=2) for _ in range(3)]
    assert [len(r["started"]) for r in rounds] == [2, 2, 1]
    assert rounds[0]["counts"] == {"deferred": 3, "started": 2}
    assert started(rounds[0]) == ["matters/M-7/doc-00.ocr.json", "matters/M-7/doc-01.ocr.json"]
    everything = [path for r in rounds for path in started(r)]
    assert sorted(everything) == sorted(docs(5)) and len(api.flow_runs) == 5


def test_a_dry_run_reports_what_it_would_start_and_writes_and_starts_nothing(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(3))
    before = listing(storage)
    summary = run(storage, start, dry_run=True, limit=2)
    assert [e["blob_path"] for e in summary["would_start"]] == ["matters/M-7/doc-00.ocr.json", "matters/M-7/doc-01.ocr.json"]
    assert summary["started"] == [] and summary["dry_run"] is True
    assert listing(storage) == before
    assert api.flow_runs == [] and api.calls == []


# ---------------------------------------------------------------------------------------------------------------
# overlapping sweeps


class Rendezvous(BlobStore):
    """Holds each claim write until the other sweep reaches the same claim, so both really race on it."""

    def __init__(self, config: BlobConfig, barriers: dict[str, asyncio.Barrier]) -> None:
        super().__init__(config)
        self.barriers = barriers

    async def write_new(self, path: str, data: bytes, **kwargs) -> bool:
        if path.endswith(".claim.json"):
            async with asyncio.timeout(30):
                await self.barriers.setdefault(path, asyncio.Barrier(2)).wait()
        return await super().write_new(path, data, **kwargs)


def test_two_sweeps_racing_for_the_same_claims_start_each_document_once(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(6))

    async def both() -> list[dict]:
        barriers: dict[str, asyncio.Barrier] = {}
        config = BlobConfig.from_resource(storage)
        return await asyncio.gather(*(
            sweep.sweep(Rendezvous(config, barriers), params(), start, sweep_id=f"sweep-{i}", now=lambda: T0)
            for i in range(2)
        ))

    a, b = asyncio.run(both())
    starts = [run.args["blob_path"] for run in api.flow_runs]
    assert sorted(starts) == sorted(docs(6))  # each document exactly once
    assert sorted(started(a) + started(b)) == sorted(starts)
    lost = [e["blob_path"] for e in a["claimed_by_other"] + b["claimed_by_other"]]
    assert sorted(lost) == sorted(starts)  # every claim was contested and lost by exactly one sweep


def test_overlapping_scheduled_sweeps_in_threads_start_each_document_once(storage: dict, api: WindmillApi) -> None:
    put(storage, docs(8))
    results: list[dict] = []
    go = threading.Barrier(3)

    def scheduled() -> None:
        go.wait(timeout=30)
        results.append(sweep.main(storage, limit=20))

    with api.activated(api.new_job(path="f/matter/sweep")):
        threads = [threading.Thread(target=scheduled) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(results) == 3
    starts = [run.args["blob_path"] for run in api.flow_runs]
    assert sorted(starts) == sorted(docs(8))
    assert sum(len(r["started"]) for r in results) == 8
    for summary in results:  # every sweep accounted for every document
        assert sum(summary["counts"].values()) == 8 and "error" not in summary["counts"]


# ---------------------------------------------------------------------------------------------------------------
# expiry and failed starts


def test_an_expired_claim_is_retaken_by_exactly_one_sweep(storage: dict, api: WindmillApi, start) -> None:
    put(storage, docs(1))
    first = run(storage, start, now=T0)
    key = first["started"][0]["run_key"]
    assert run(storage, start, now=T0 + 3599)["counts"] == {"claimed": 1}
    later = T0 + 3600

    async def racing() -> list[dict]:
        barriers: dict[str, asyncio.Barrier] = {}
        config = BlobConfig.from_resource(storage)
        return await asyncio.gather(*(
            sweep.sweep(Rendezvous(config, barriers), params(), start, sweep_id=f"late-{i}", now=lambda: later)
            for i in range(2)
        ))

    a, b = asyncio.run(racing())
    assert len(a["started"]) + len(b["started"]) == 1
    assert len(a["claimed_by_other"]) + len(b["claimed_by_other"]) == 1
    assert len(api.flow_runs) == 2
    claims = listing(storage, sweep.sweep_folder("matters/M-7/doc-00.ocr.json"))
    assert [n for n in claims if n.endswith(".claim.json")] == [sweep.claim_path("matters/M-7/doc-00.ocr.json", key, n) for n in (1, 2)]


def test_a_failed_start_releases_its_claim_so_the_next_sweep_retries_at_once(storage: dict) -> None:
    put(storage, docs(2))
    refuse = {"on": True}

    def on_run_flow(path: str, args: dict) -> str:
        if refuse["on"]:
            raise RuntimeError("queue is full")
        return f"job-{args['blob_path']}"

    with WindmillApi(on_run_flow=on_run_flow) as api:
        client = wmill.Windmill(base_url=api.base_url, token=api.token, workspace=api.workspace)
        try:
            failed = run(storage, client.run_flow_async, limit=1)
            refuse["on"] = False
            retried = run(storage, client.run_flow_async, limit=1)
        finally:
            client.client.close()
    assert failed["started"] == [] and failed["counts"] == {"deferred": 1, "start_failed": 1}
    (failure,) = failed["failed"]
    assert failure["reason"] == "start_failed" and "500" in failure["detail"]
    key = failure["run_key"]
    released = blob(storage, lambda store: store.read_json(sweep.claim_path(failure["blob_path"], key, 1)))
    assert released["state"] == "released" and released["expires_at"] <= T0 and "500" in released["error"]
    # Same clock: no TTL had to pass. The retry is a new claim, so the failed one stays as a record.
    assert started(retried) == [failure["blob_path"]]
    retaken = blob(storage, lambda store: store.read_json(sweep.claim_path(failure["blob_path"], key, 2)))
    assert retaken["state"] == "started" and retaken["flow_job"] == f"job-{failure['blob_path']}"


def test_main_fails_after_the_other_documents_when_windmill_refuses_a_start(storage: dict) -> None:
    put(storage, docs(2))
    calls = {"n": 0}

    def second_refused(path: str, args: dict) -> str:
        calls["n"] += 1
        if args["blob_path"].endswith("doc-01.ocr.json"):
            raise RuntimeError("refused")
        return "job-ok"

    with (
        WindmillApi(on_run_flow=second_refused) as api,
        api.activated(api.new_job()),
        pytest.raises(MatterflowError, match=r"1 flow starts failed .* 1 started"),
    ):
        sweep.main(storage)
    assert calls["n"] == 2 and [r.args["blob_path"] for r in api.flow_runs] == ["matters/M-7/doc-00.ocr.json"]


# ---------------------------------------------------------------------------------------------------------------
# inputs and Windmill's view of main()


def test_main_starts_flows_through_the_windmill_client(storage: dict, api: WindmillApi) -> None:
    put(storage, docs(2))
    with api.activated(api.new_job(path="f/matter/sweep")) as env:
        summary = sweep.main(storage, llm_pool="$res:f/matter/pool_b", limit=5)
    assert len(summary["started"]) == 2
    assert [r.args["llm_pool"] for r in api.flow_runs] == ["$res:f/matter/pool_b"] * 2
    assert api.rejected == []
    claim = blob(storage, lambda store: store.read_json(sweep.claim_path(
        summary["started"][0]["blob_path"], summary["started"][0]["run_key"], 1)))
    assert claim["sweep_job"] == env["WM_JOB_ID"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prefix": "results/"}, "prefix: 'results/' is where matterflow writes results"),
        ({"prefix": "/matters"}, "prefix: invalid blob path"),
        ({"llm_pool": "my pool"}, "llm_pool: expected a Windmill resource path"),
        ({"flow_path": "process_document"}, "flow_path: expected a flow path"),
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"context_tokens": 2048}, "context_tokens="),
    ],
)
def test_bad_inputs_are_named(storage: dict, overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        sweep.main(storage, **overrides)


@pytest.mark.node
def test_windmill_reads_main_as_a_form_with_the_flows_defaults() -> None:
    from matterflow.windmill_parser import parse_scripts

    parsed = parse_scripts([ROOT / "f/matter/sweep.py"], ROOT)["f/matter/sweep"]["signature"]
    args = {arg["name"]: arg for arg in parsed["args"]}
    assert args["storage"]["typ"] == {"resource": "azure_blob"} and not args["storage"]["has_default"]
    assert args["llm_pool"]["typ"] == {"str": None} and args["dry_run"]["typ"] == "bool" and args["limit"]["typ"] == "int"
    flow_inputs = yaml.safe_load(FLOW.read_text())["schema"]["properties"]
    for name in ("window_pages", "overlap_pages", "context_tokens", "model", "min_confidence"):
        assert args[name]["default"] == flow_inputs[name]["default"], name
    assert args["flow_path"]["default"] == sweep.DEFAULT_FLOW_PATH
    assert args["limit"]["default"] == sweep.DEFAULT_LIMIT
    assert args["claim_ttl_minutes"]["default"] == sweep.DEFAULT_CLAIM_TTL_MINUTES


def test_the_schedule_runs_the_sweep_with_arguments_it_takes() -> None:
    spec = yaml.safe_load((ROOT / "f/matter/sweep.schedule.yaml").read_text())
    assert spec["script_path"] == "f/matter/sweep" and spec["is_flow"] is False and spec["enabled"] is True
    assert len(spec["schedule"].split()) == 6  # Windmill's cron has seconds first
    main_params = set(sweep.main.__code__.co_varnames[: sweep.main.__code__.co_argcount])
    assert set(spec["args"]) <= main_params
    assert spec["args"]["storage"] == "$res:f/matter/storage"
    trigger = yaml.safe_load((ROOT / "f/matter/process_document.http_trigger.yaml").read_text())
    assert (trigger["script_path"], trigger["is_flow"], trigger["route_path"]) == ("f/matter/process_document", True, "matter/process")
    assert FLOW.exists()


@pytest.mark.node
def test_wmill_lint_looks_at_schedules_and_triggers(tmp_path: Path) -> None:
    """tests/test_workspace.py lints the repository; this proves that lint checks these two kinds of file at all."""
    import shutil
    import subprocess

    shutil.copy(ROOT / "wmill.yaml", tmp_path)
    (tmp_path / "f/matter").mkdir(parents=True)
    schedule = (ROOT / "f/matter/sweep.schedule.yaml").read_text().replace("timezone: UTC\n", "")
    (tmp_path / "f/matter/sweep.schedule.yaml").write_text(schedule)
    trigger = (ROOT / "f/matter/process_document.http_trigger.yaml").read_text().replace("request_type: async", "request_type: later")
    (tmp_path / "f/matter/process_document.http_trigger.yaml").write_text(trigger)
    completed = subprocess.run([str(ROOT / "node_modules/.bin/wmill"), "lint", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert completed.returncode != 0
    assert "missing required property 'timezone'" in completed.stdout
    assert "request_type must be one of" in completed.stdout
