"""`matterflow bench fanout`: the fan-out against its peers, side by side in one run, on the same simulators.

Peers, each sending the same window prompts to the same three simulator processes:
- `gather`: `asyncio.gather` over `AsyncOpenAI` calls, unbounded (SDK defaults);
- `semaphore`: `AsyncOpenAI` with a semaphore of 64 per endpoint (SDK defaults otherwise);
- `langchain`: LangChain `ChatOpenAI.abatch(max_concurrency=64)` per endpoint;
- `aiohttp`: raw aiohttp POSTs with a semaphore of 64 per endpoint (the floor of client cost).
matterflow runs its real fan-out path: `EndpointPool` + `analyze_window` (validation, page filtering, usage
records) + a checkpoint per window written to a real Azurite; "matterflow, no checkpoints" is the same without the
blob writes, to show what they cost.

Figures are ratios measured in the same run: wall time / the ideal `ceil(windows / (3 x 64)) x seconds per call`,
and client CPU milliseconds per request (this process's CPU time; the simulators run in their own processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
from openai import AsyncOpenAI

from f.matter import ingest, llm_fanout
from f.matter.analysis import RESPONSE_FORMAT, analyze_window, build_messages
from f.matter.documents import parse_ocr
from f.matter.llm import Endpoint, EndpointPool, RetryPolicy
from f.matter.models import Document, Manifest
from f.matter.storage import BlobStore
from matterflow.azurite import Azurite
from matterflow.sim import SimulatorProcess
from matterflow.synth import synthetic_layout_bytes

from .common import dumps  # noqa: F401 - `bench.fanout.dumps` stays importable

CAPACITY = 64
ENDPOINTS = 3
MAX_TOKENS = 512


@dataclass
class Measurement:
    name: str
    requests: int
    ok: int
    wall_s: float
    cpu_s: float
    ratio_to_ideal: float
    cpu_ms_per_request: float


def window_workload(windows: int) -> tuple[Document, Manifest]:
    """A document of `windows` short pages, planned one owned page per window and no overlap."""
    data = synthetic_layout_bytes(windows, words_per_page=60, seed=99)
    document = parse_ocr(data)
    params = ingest.IngestInput(
        blob_path="bench/document.json", window_pages=1, overlap_pages=0, context_tokens=8192,
        model="llama-3-70b", shards=ENDPOINTS, force=True,
    )
    manifest = ingest.build_manifest(document, hashlib.sha256(data).hexdigest(), "bench", params)
    return document, manifest


def prompts(document: Document, manifest: Manifest) -> list[tuple[int, list[dict]]]:
    """(preferred endpoint, messages) for every window, the endpoint being the window's shard."""
    by_number = {p.number: p for p in document.pages}
    shard_of = {i: s for s, indexes in enumerate(manifest.plan.shards) for i in indexes}
    return [
        (shard_of[w.index], build_messages(w, [by_number[n] for n in range(w.first, w.last + 1) if n in by_number], {}))
        for w in manifest.plan.windows
    ]


async def measure(name: str, requests: int, ideal_s: float, action: Callable[[], Awaitable[int]]) -> Measurement:
    cpu, wall = time.process_time(), time.perf_counter()
    ok = await action()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Measurement(name, requests, ok, round(wall, 3), round(cpu, 3), round(wall / ideal_s, 3), round(1000 * cpu / requests, 3))


# ---------------------------------------------------------------------------------------------------------------
# The contenders


async def matterflow_fanout(storage: dict, endpoints: list[Endpoint], document: Document, manifest: Manifest, policy: RetryPolicy) -> int:
    async with BlobStore.from_resource(storage) as setup:
        await setup.ensure_container()
    store = BlobStore.from_resource(storage)
    async with store, EndpointPool(endpoints, policy=policy) as pool:
        per_shard = await asyncio.gather(
            *(
                llm_fanout.run_windows(
                    store, pool, manifest, document,
                    [w for w in manifest.plan.windows if w.index in set(indexes)], shard, False, lambda done, total: None,
                )
                for shard, indexes in enumerate(manifest.plan.shards)
            )
        )
    return sum(1 for results in per_shard for r in results if r.status == "ok")


async def matterflow_without_checkpoints(endpoints: list[Endpoint], document: Document, manifest: Manifest, policy: RetryPolicy) -> int:
    """The same pool and window checks, no blob writes: shows what the checkpoints cost."""
    by_number = {p.number: p for p in document.pages}
    shard_of = {i: s for s, indexes in enumerate(manifest.plan.shards) for i in indexes}
    async with EndpointPool(endpoints, policy=policy) as pool:
        results = await asyncio.gather(
            *(analyze_window(pool, w, [by_number[n] for n in range(w.first, w.last + 1) if n in by_number], prefer=shard_of[w.index]) for w in manifest.plan.windows)
        )
    return sum(1 for r in results if r.status == "ok")


async def sdk_calls(urls: list[str], work: list[tuple[int, list[dict]]], *, limit: int | None, max_retries: int = 2) -> int:
    """Bare `AsyncOpenAI` (SDK defaults, its own retries): unbounded `gather` when `limit` is None, else a semaphore
    of `limit` per endpoint."""
    clients = [AsyncOpenAI(base_url=url, api_key="k", max_retries=max_retries) for url in urls]
    limits = [asyncio.Semaphore(limit) if limit else contextlib.nullcontext() for _ in urls]

    async def one(endpoint: int, messages: list[dict]) -> bool:
        async with limits[endpoint]:
            try:
                await clients[endpoint].chat.completions.create(
                    model="llama-3-70b-sim", messages=messages, response_format=RESPONSE_FORMAT, max_tokens=MAX_TOKENS
                )
                return True
            except Exception:
                return False

    try:
        return sum(await asyncio.gather(*(one(e, m) for e, m in work)))
    finally:
        for client in clients:
            await client.close()


async def langchain_abatch(urls: list[str], work: list[tuple[int, list[dict]]]) -> int:
    from langchain_openai import ChatOpenAI

    async def endpoint_batch(index: int, url: str) -> int:
        chat = ChatOpenAI(base_url=url, api_key="k", model="llama-3-70b-sim", max_tokens=MAX_TOKENS).bind(response_format=RESPONSE_FORMAT)
        batch = [messages for endpoint, messages in work if endpoint == index]
        answers = await chat.abatch(batch, config={"max_concurrency": CAPACITY}, return_exceptions=True)
        return sum(1 for answer in answers if not isinstance(answer, BaseException))

    return sum(await asyncio.gather(*(endpoint_batch(i, url) for i, url in enumerate(urls))))


async def raw_aiohttp(urls: list[str], work: list[tuple[int, list[dict]]]) -> int:
    limits = [asyncio.Semaphore(CAPACITY) for _ in urls]
    connector = aiohttp.TCPConnector(limit=CAPACITY * len(urls))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(endpoint: int, messages: list[dict]) -> bool:
            body = {"model": "llama-3-70b-sim", "messages": messages, "response_format": RESPONSE_FORMAT, "max_tokens": MAX_TOKENS}
            async with limits[endpoint], session.post(f"{urls[endpoint]}/chat/completions", json=body) as response:
                payload = await response.json()
                return response.status == 200 and bool(payload["choices"][0]["message"]["content"])

        return sum(await asyncio.gather(*(one(e, m) for e, m in work)))


# ---------------------------------------------------------------------------------------------------------------
# Scenarios


def fanout(windows: int = 1000, latency_ms: float = 2000.0, peers: bool = True) -> dict:
    """The concurrency-bound (2 s) or client-CPU-bound (200 ms) setting."""
    document, manifest = window_workload(windows)
    work = prompts(document, manifest)
    per_call_s = latency_ms / 1000
    ideal_s = math.ceil(windows / (ENDPOINTS * CAPACITY)) * per_call_s
    sims = [SimulatorProcess(name=f"sim-{i}", latency_ms=latency_ms, tokens_per_s=1e9, capacity=CAPACITY) for i in range(ENDPOINTS)]
    policy = RetryPolicy(timeout_s=max(60.0, per_call_s * 10))
    with Azurite() as azurite:
        for sim in sims:
            sim.start()
        try:
            urls = [sim.base_url for sim in sims]
            endpoints = [Endpoint.model_validate(sim.endpoint(max_concurrency=CAPACITY)) for sim in sims]
            contenders: list[tuple[str, Callable[[], Awaitable[int]]]] = [
                ("matterflow", lambda: matterflow_fanout(azurite.resource(f"b-{uuid.uuid4().hex[:12]}"), endpoints, document, manifest, policy)),
            ]
            if peers:
                contenders += [
                    ("matterflow, no checkpoints", lambda: matterflow_without_checkpoints(endpoints, document, manifest, policy)),
                    ("gather", lambda: sdk_calls(urls, work, limit=None)),
                    ("semaphore", lambda: sdk_calls(urls, work, limit=CAPACITY)),
                    ("langchain", lambda: langchain_abatch(urls, work)),
                    ("aiohttp", lambda: raw_aiohttp(urls, work)),
                ]
            results = [asyncio.run(measure(name, windows, ideal_s, action)) for name, action in contenders]
        finally:
            for sim in sims:
                sim.stop()
    return _report("fanout", {"windows": windows, "latency_ms": latency_ms, "ideal_s": ideal_s}, results)


def throttled(windows: int = 300, rpm: int = 600) -> dict:
    """One endpoint that allows `rpm` requests a minute answers 429 + Retry-After beyond that."""
    document, manifest = window_workload(windows)
    work = [(0, messages) for _, messages in prompts(document, manifest)]
    single = manifest.model_copy(update={"plan": manifest.plan.model_copy(update={"shards": [[w.index for w in manifest.plan.windows]]})})
    burst = max(1, rpm // 60)
    ideal_s = (windows - burst) / (rpm / 60)
    with Azurite() as azurite, SimulatorProcess(name="throttled", latency_ms=200.0, tokens_per_s=1e9, capacity=CAPACITY, rpm=rpm, retry_after=1.0) as sim:
        endpoint = Endpoint.model_validate(sim.endpoint(max_concurrency=CAPACITY))
        results = []
        for name, action in (
            ("matterflow", lambda: matterflow_fanout(azurite.resource(f"b-{uuid.uuid4().hex[:12]}"), [endpoint], document, single, RetryPolicy())),
            ("semaphore", lambda: sdk_calls([sim.base_url], work, limit=CAPACITY, max_retries=2)),
        ):
            sim.reset()
            results.append(asyncio.run(measure(name, windows, ideal_s, action)))
    return _report("throttled", {"windows": windows, "rpm": rpm, "ideal_s": ideal_s}, results)


def _report(scenario: str, settings: dict, results: list[Measurement]) -> dict:
    ours, others = results[0], results[1:]
    return {
        "scenario": scenario,
        "settings": settings,
        "ratio_to_ideal": ours.ratio_to_ideal,
        "cpu_ms_per_request": ours.cpu_ms_per_request,
        "ok": ours.ok,
        "failed": ours.requests - ours.ok,
        "wall_s": ours.wall_s,
        "peers": {m.name: {"ratio_to_ideal": m.ratio_to_ideal, "cpu_ms_per_request": m.cpu_ms_per_request, "ok": m.ok, "wall_s": m.wall_s} for m in others},
        "measurements": [asdict(m) for m in results],
    }


def table(report: dict) -> str:
    """The RESULTS.md table: every contender, measured one after the other on the same simulators."""
    rows = [f"| contender | ok / requests | wall s | x ideal ({report['settings']['ideal_s']:.1f} s) | client CPU ms / request |", "|---|---|---|---|---|"]
    for m in report["measurements"]:
        rows.append(f"| {m['name']} | {m['ok']} / {m['requests']} | {m['wall_s']:.2f} | {m['ratio_to_ideal']:.3f} | {m['cpu_ms_per_request']:.2f} |")
    return "\n".join(rows)


def plot(report: dict, path: Path) -> None:
    """Wall time as a multiple of the ideal, and client CPU per request, per contender."""
    from .common import pyplot

    plt = pyplot()
    names = [m["name"] for m in report["measurements"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ["#1f77b4" if n.startswith("matterflow") else "#999999" for n in names]
    bars = left.barh(names, [m["ratio_to_ideal"] for m in report["measurements"]], color=colors)
    left.bar_label(bars, labels=[f"{m['ok']} / {m['requests']} ok" for m in report["measurements"]], fontsize=8, padding=2)
    left.set_xlim(0, max(m["ratio_to_ideal"] for m in report["measurements"]) * 1.35)
    left.axvline(1.0, color="black", lw=0.8, ls="--")
    left.set_xlabel(f"wall time / ideal ({report['settings']['ideal_s']:.1f} s)")
    left.invert_yaxis()
    right.barh(names, [m["cpu_ms_per_request"] for m in report["measurements"]], color=colors)
    right.set_xlabel("client CPU ms per request")
    right.invert_yaxis()
    right.set_yticklabels([])
    settings = report["settings"]
    what = f"{settings['windows']} windows" + (f", {settings['latency_ms']:.0f} ms per call" if "latency_ms" in settings else f", {settings.get('rpm')} rpm")
    fig.suptitle(f"{report['scenario']}: {what} (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
