"""1,000 window requests at once through one EndpointPool of three simulator processes: every window answered
exactly once, memory bounded, no connection left open and no asyncio task left running afterwards.

Connections are counted from the kernel's view of this process (its socket fds in /proc/self/fd matched against
/proc/net/tcp{,6}), so a socket the client library forgot to close is seen even if nothing references it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import urllib.parse
from pathlib import Path

import pytest

from f.matter.analysis import analyze_window
from f.matter.documents import parse_ocr
from f.matter.llm import EndpointPool, RetryPolicy, endpoints_from_resource
from f.matter.models import Window
from matterflow.synth import synthetic_layout_bytes

WINDOWS = 1000
MAX_CONCURRENCY = 64  # per endpoint; the SDK's connection pool is sized to it plus 4
RSS_BOUND_MB = 150  # peak growth over the warmed-up process while 1,000 requests are in flight
RSS_AFTER_BOUND_MB = 60  # growth that remains once the pool is closed (the 1,000 results are still held)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_connections(ports: set[int]) -> int:
    """ESTABLISHED TCP connections of this process whose remote port is one of `ports`."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port in ports and fields[9] in inodes:
                count += 1
    return count


def make_windows(document) -> list[Window]:
    return [
        Window(index=i, first=p.number, last=p.number, owned_first=p.number, owned_last=p.number, pages=1, estimated_tokens=300)
        for i, p in enumerate(document.pages, start=1)
    ]


def test_a_thousand_concurrent_windows_keep_memory_connections_and_tasks_bounded(simulators: list) -> None:
    for sim in simulators:
        sim.configure(latency_ms=50.0, capacity=MAX_CONCURRENCY)
    ports = {urllib.parse.urlsplit(sim.base_url).port for sim in simulators}
    endpoints = endpoints_from_resource({"endpoints": [sim.endpoint(max_concurrency=MAX_CONCURRENCY, price_per_million_input=0.59) for sim in simulators]})
    policy = RetryPolicy(timeout_s=60.0)
    document = parse_ocr(synthetic_layout_bytes(WINDOWS, words_per_page=40, seed=11))
    windows = make_windows(document)
    pages = {p.number: p for p in document.pages}

    async def run(count: int, samples: dict) -> list:
        async with EndpointPool(endpoints, policy=policy) as pool:
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    samples["connections"] = max(samples.get("connections", 0), open_connections(ports))
                    samples["rss"] = max(samples.get("rss", 0.0), rss_mb())
                    samples["tasks"] = max(samples.get("tasks", 0), len(asyncio.all_tasks()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.05)  # a sampling period, not synchronisation

            sampler = asyncio.create_task(sample())
            try:
                results = await asyncio.gather(
                    *(analyze_window(pool, w, [pages[w.first]], prefer=w.index % 3) for w in windows[:count])
                )
            finally:
                done.set()
                await sampler
        # the pool is closed: nothing of it may remain
        samples["connections_after"] = open_connections(ports)
        samples["tasks_after"] = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return results

    warm: dict = {}
    asyncio.run(run(30, warm))  # imports, SDK clients, first connections: not what is being measured
    assert warm["connections"] > 0 and warm["connections_after"] == 0
    for sim in simulators:
        sim.reset()
    gc.collect()
    baseline = rss_mb()

    samples: dict = {}
    results = asyncio.run(run(WINDOWS, samples))
    gc.collect()
    after = rss_mb()

    assert [r.status for r in results].count("ok") == WINDOWS, {r.error for r in results if r.status != "ok"}
    answered: dict[str, int] = {}
    for sim in simulators:
        for key, n in sim.stats()["answered"].items():
            answered[key] = answered.get(key, 0) + n
    assert len(answered) == WINDOWS and set(answered.values()) == {1}, "every window answered exactly once"
    assert sum(sim.stats()["calls"] for sim in simulators) == WINDOWS
    assert samples["tasks"] >= WINDOWS, "the requests really were in flight together"
    assert 3 <= samples["connections"] <= 3 * (MAX_CONCURRENCY + 4), samples
    assert samples["connections_after"] == 0, f"{samples['connections_after']} connections left open after the pool closed"
    assert samples["tasks_after"] == [], samples["tasks_after"]
    assert samples["rss"] - baseline < RSS_BOUND_MB, f"peak RSS grew {samples['rss'] - baseline:.0f} MB"
    assert after - baseline < RSS_AFTER_BOUND_MB, f"RSS grew {after - baseline:.0f} MB and stayed"
    print(f"\n1,000 windows: peak connections {samples['connections']}, peak tasks {samples['tasks']}, "
          f"RSS {baseline:.0f} -> peak {samples['rss']:.0f} -> {after:.0f} MB")
