"""Crash recovery of the whole flow (`matterflow run` in its own process group, against Azurite and the three
simulator processes): kill -9 at random points of the fan-out, Azurite stopped and restarted mid-run, every
endpoint throttled for 30 s. These take minutes, so they run in `make chaos`, not `make test`.

Every wait here polls an observable condition (blob listings, the process's exit) with a deadline; the only
timed pauses are the faults themselves (how long Azurite stays down, how long the endpoints throttle).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from f.matter.storage import COMPLETE_METADATA_KEY, BlobStore
from matterflow.azurite import Azurite
from matterflow.synth import synthetic_layout_bytes

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "f" / "matter" / "process_document__flow" / "flow.yaml"
SOURCE = "matters/M-3003/documents/agreement.ocr.json"
RESULTS = "results/matters/M-3003/documents/agreement.ocr/"
PAGES, WINDOW_PAGES = 36, 2  # 18 windows, 6 a shard
DOCUMENT = synthetic_layout_bytes(PAGES, words_per_page=150, seed=3003, low_confidence_pages=[7])
KILL_POINTS = 5
SEED = 20240611


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def blob(storage: dict, action):
    async def go():
        async with BlobStore.from_resource(storage) as store:
            return await action(store)

    return asyncio.run(go())


def upload(storage: dict) -> None:
    async def put(store: BlobStore) -> None:
        await store.ensure_container()
        await store.write_bytes(SOURCE, DOCUMENT, content_type="application/json")

    blob(storage, put)


def checkpoint_names(storage: dict) -> list[str]:
    return blob(storage, lambda store: store.list_paths(RESULTS))


def windows_done(names: list[str]) -> set[int]:
    return {int(n.rsplit("/", 1)[1][:5]) for n in names if "/windows/" in n and n.endswith(".json")}


class FlowProcess:
    """`matterflow run` in a new session (its own process group), so kill -9 can take the runner and every step
    process it started at once, as a worker crash would."""

    def __init__(self, tmp: Path, storage: dict, pool: dict, name: str) -> None:
        resources = tmp / f"resources-{name}"
        (resources / "f" / "matter").mkdir(parents=True)
        (resources / "f" / "matter" / "storage.json").write_text(json.dumps(storage))
        (resources / "f" / "matter" / "llm_pool.json").write_text(json.dumps(pool))
        self.stdout, self.stderr = tmp / f"{name}.out", tmp / f"{name}.err"
        flow_input = {"blob_path": SOURCE, "storage": "$res:f/matter/storage", "llm_pool": "$res:f/matter/llm_pool", "window_pages": WINDOW_PAGES}
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "matterflow", "run", str(FLOW), "--resources", str(resources), "--input", json.dumps(flow_input)],
                cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def result(self) -> dict:
        return json.loads(self.stdout.read_text())

    def output(self) -> str:
        return self.stdout.read_text()[-2000:] + self.stderr.read_text()[-3000:]

    def kill_group(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while live := _live_members(self.process.pid):
            assert time.monotonic() < deadline, f"processes of the killed group still alive: {live}"
            time.sleep(0.05)  # polling /proc for the kernel to finish the kill, with a deadline


def _live_members(pgid: int) -> list[int]:
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def wait_for(condition, what: str, timeout: float, process: FlowProcess | None = None):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if process is not None and process.process.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{process.output()}")
        time.sleep(0.05)  # polling an observable condition with a deadline
    return value


def answered(simulators: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sim in simulators:
        for key, n in sim.stats()["answered"].items():
            counts[key] = counts.get(key, 0) + n
    return counts


def comparable(result: dict) -> dict:
    """result.json without what legitimately differs between runs: wall times."""
    result = json.loads(json.dumps(result))
    result["usage"].pop("fanout_seconds")
    return result


def read_manifest(storage: dict) -> dict:
    async def read(store: BlobStore) -> dict:
        names = await store.list_paths(RESULTS)
        return await store.read_json(next(n for n in names if n.endswith("/manifest.json")))

    return blob(storage, read)


def read_result(storage: dict, summary: dict) -> dict:
    return blob(storage, lambda store: store.read_json(summary["result"]))


def slow_pool(simulators: list) -> dict:
    """One request at a time per endpoint and 300 ms a call: the fan-out takes seconds, so there is time to
    kill it between checkpoints."""
    for sim in simulators:
        sim.configure(latency_ms=300.0, capacity=4)
    return {"endpoints": [sim.endpoint(max_concurrency=1, price_per_million_input=0.59, price_per_million_output=0.79) for sim in simulators]}


def uninterrupted(tmp_path: Path, storage: dict, pool: dict) -> dict:
    upload(storage)
    run = FlowProcess(tmp_path, storage, pool, f"clean-{storage['containerName']}")
    assert run.wait(timeout=300) == 0, run.output()
    summary = run.result()
    assert summary["status"] == "complete"
    return read_result(storage, summary)


def other_container(storage: dict, suffix: str) -> dict:
    return {**storage, "containerName": f"{storage['containerName'][:40]}-{suffix}"}


# ---------------------------------------------------------------------------------------------------------------
# kill -9


def test_kill_minus_9_at_random_checkpoints_then_rerun_gives_the_same_result_without_recalling_windows(
    tmp_path: Path, storage: dict, simulators: list
) -> None:
    pool = slow_pool(simulators)
    expected = uninterrupted(tmp_path, other_container(storage, "clean"), pool)
    total = len(expected["pages"]) // WINDOW_PAGES
    points = sorted(random.Random(SEED).sample(range(1, total), KILL_POINTS))
    killed_at = []
    for point in points:
        target = other_container(storage, f"k{point}")
        upload(target)
        for sim in simulators:
            sim.reset()
        run = FlowProcess(tmp_path, target, pool, f"killed-{point}")
        wait_for(lambda target=target, point=point: len(windows_done(checkpoint_names(target))) >= point, f"checkpoint {point}", 120, run)
        run.kill_group()

        finished = windows_done(checkpoint_names(target))
        assert point <= len(finished) < total, f"killed at {len(finished)} of {total} checkpoints"
        killed_at.append(len(finished))
        manifest = read_manifest(target)
        owned = {w["index"]: f"{w['owned_first']}-{w['owned_last']}:" for w in manifest["plan"]["windows"]}
        before = answered(simulators)
        assert all(sum(n for k, n in before.items() if k.startswith(owned[i])) == 1 for i in finished)

        rerun = FlowProcess(tmp_path, target, pool, f"rerun-{point}")
        assert rerun.wait(timeout=300) == 0, rerun.output()
        summary = rerun.result()
        assert summary["status"] == "complete" and not summary["reused"]
        after = answered(simulators)
        for index in finished:
            calls = sum(n for k, n in after.items() if k.startswith(owned[index]))
            assert calls == 1, f"kill at {point}: window {index} was checkpointed before the kill and answered {calls} times"
        assert {k.split(":")[0] + ":" for k in after} == set(owned.values()), "every window was answered"
        prefix = manifest["refs"]["prefix"]
        shards = [blob(target, lambda store, n=n, prefix=prefix: store.read_json(f"{prefix}shards/{n:02d}.json")) for n in range(3)]
        assert sum(s["skipped_checkpointed"] for s in shards) == len(finished)
        assert sum(s["ok"] for s in shards) == total - len(finished)
        assert comparable(read_result(target, summary)) == comparable(expected), f"kill at {point}: the result differs"
    print(f"\nkill -9 when checkpoint {points} of {total} appeared; checkpoints in blob after the kill: {killed_at}")


# ---------------------------------------------------------------------------------------------------------------
# Azurite down and back


def test_azurite_stopped_mid_run_and_restarted_leaves_a_complete_result_or_a_clean_failure(
    tmp_path: Path, simulators: list
) -> None:
    pool = slow_pool(simulators)
    outage_s = 4.0
    with Azurite(location=tmp_path / "azurite-data") as azurite:
        expected = uninterrupted(tmp_path, azurite.resource("clean"), pool)
        storage = azurite.resource("outage")
        upload(storage)
        run = FlowProcess(tmp_path, storage, pool, "outage")
        before = wait_for(lambda: windows_done(checkpoint_names(storage)) if len(windows_done(checkpoint_names(storage))) >= 3 else None, "3 checkpoints", 120, run)
        total = len(expected["pages"]) // WINDOW_PAGES
        assert len(before) < total, "the fan-out was still running when storage went away"
        azurite.halt()
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(timeout=outage_s)  # storage stays down this long, unless the run ends first
        running_at_restart = run.process.poll() is None
        azurite.start()
        code = run.wait(timeout=300)

        names = checkpoint_names(storage)
        assert before <= windows_done(names), "checkpoints written before the outage survived the restart"

        async def inspect(store: BlobStore) -> dict:
            found = {}
            for name in names:
                data = await store.read_bytes(name)
                if name.endswith(".json"):
                    found[name] = json.loads(data)  # nothing half-written: every JSON blob parses
                else:
                    assert name.endswith("report.html") and data.rstrip().endswith(b"</html>"), name
            for name in names:
                if name.endswith("/result.json"):
                    properties = await store._blob(name).get_blob_properties()
                    found[name + "#complete"] = properties.metadata.get(COMPLETE_METADATA_KEY)
            return found

        stored = blob(storage, inspect)
        results = [n for n in stored if n.endswith("/result.json")]
        statuses = [n for n in stored if n.endswith("status.json")]
        assert statuses, "a status.json says how the run ended"
        if code == 0:
            summary = run.result()
            assert summary["status"] == "complete" and results == [summary["result"]]
            assert stored[summary["result"] + "#complete"] == "true"
            assert comparable(stored[summary["result"]]) == comparable(expected)
            assert stored[f"{RESULTS}{summary['run_key']}/status.json"]["status"] == "complete"
        else:
            assert results == [], "no result.json unless the run completed"
            assert stored[f"{RESULTS}status.json"]["status"] == "failed", run.output()
        print(f"\nAzurite down {outage_s} s with {len(before)}/{total} checkpoints; run still going at restart: "
              f"{running_at_restart}; exit code {code}")


# ---------------------------------------------------------------------------------------------------------------
# Every endpoint throttled


def test_every_endpoint_throttled_for_30_s_the_run_waits_and_completes(tmp_path: Path, storage: dict, simulators: list) -> None:
    throttle_s = 30.0
    for sim in simulators:
        sim.configure(latency_ms=300.0, retry_after_s=1.0)
    pool = {"endpoints": [sim.endpoint(max_concurrency=2) for sim in simulators]}
    upload(storage)
    run = FlowProcess(tmp_path, storage, pool, "throttled")
    wait_for(lambda: len(windows_done(checkpoint_names(storage))) >= 1, "the first checkpoint", 120, run)
    started = time.monotonic()
    for sim in simulators:
        sim.configure(throttle_s=throttle_s)
    unfinished_at_start = PAGES // WINDOW_PAGES - len(windows_done(checkpoint_names(storage)))
    assert unfinished_at_start > 0 and run.process.poll() is None
    assert run.wait(timeout=throttle_s + 240) == 0, run.output()
    waited = time.monotonic() - started

    summary = run.result()
    assert summary["status"] == "complete" and summary["failed_windows"] == 0
    result = read_result(storage, summary)
    assert result["failed_windows"] == [] and all(page["analysed"] for page in result["pages"])
    stats = [sim.stats() for sim in simulators]
    assert all(s["status"].get("429", 0) > 0 for s in stats), "every endpoint answered 429"
    assert all(s["throttle_remaining_s"] == 0 for s in stats)
    assert waited >= throttle_s - 1, f"the run finished {waited:.1f} s after the throttle began"
    shards = blob(storage, lambda store: asyncio.gather(*(store.read_json(f"{RESULTS}{summary['run_key']}/shards/{n:02d}.json") for n in range(3))))
    assert sum(s["failed"] for s in shards) == 0
    assert sum(s["failed_calls"] for s in shards) > 0, "the 429s were recorded as attempts"
