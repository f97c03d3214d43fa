"""`matterflow bench blob`: staging and reading a large document through `BlobStore` vs the raw SDK at its best.

One Azurite process. Each round transfers the same bytes with matterflow's `BlobStore.write_bytes` / `read_bytes`
(its own settings) and with the raw azure-storage-blob (async) SDK in several configurations for each direction
(upload: single put, block sizes and concurrency; download: single get, chunk sizes and concurrency), each in a
fresh client, the order reversed every other round, after one uncounted warm-up round. The SDK's best
configuration is the one with the best median; the medians give MiB/s and the ratio matterflow / best SDK
(goal >= 0.9). When a direction misses the goal, one matterflow transfer is
profiled (cProfile) and the top functions by total time are kept in the report.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import time
import uuid
import warnings
from pathlib import Path

from azure.storage.blob.aio import BlobServiceClient

from f.matter.storage import (
    DEFAULT_BLOCK_BYTES,
    DEFAULT_SINGLE_PUT_BYTES,
    DEFAULT_TRANSFER_CONCURRENCY,
    BlobStore,
)
from matterflow.azurite import Azurite

from .common import goal, md_table, median

MiB = 1024 * 1024
GOAL = 0.9

# name -> (client options, call options)
UPLOAD_CONFIGS: dict[str, tuple[dict, dict]] = {
    "single put": ({"max_single_put_size": 256 * MiB}, {"max_concurrency": 1}),
    "4 MiB blocks x 8": ({"max_single_put_size": 4 * MiB, "max_block_size": 4 * MiB}, {"max_concurrency": 8}),
    "8 MiB blocks x 4": ({"max_single_put_size": 8 * MiB, "max_block_size": 8 * MiB}, {"max_concurrency": 4}),
    "16 MiB blocks x 4": ({"max_single_put_size": 16 * MiB, "max_block_size": 16 * MiB}, {"max_concurrency": 4}),
    "32 MiB blocks x 2": ({"max_single_put_size": 32 * MiB, "max_block_size": 32 * MiB}, {"max_concurrency": 2}),
}
DOWNLOAD_CONFIGS: dict[str, tuple[dict, dict]] = {
    "single get": ({"max_single_get_size": 256 * MiB}, {"max_concurrency": 1}),
    "4 MiB chunks x 4": ({"max_single_get_size": 4 * MiB, "max_chunk_get_size": 4 * MiB}, {"max_concurrency": 4}),
    "4 MiB chunks x 8": ({"max_single_get_size": 4 * MiB, "max_chunk_get_size": 4 * MiB}, {"max_concurrency": 8}),
    "16 MiB chunks x 4": ({"max_single_get_size": 16 * MiB, "max_chunk_get_size": 16 * MiB}, {"max_concurrency": 4}),
    "SDK defaults (32 + 4 MiB chunks) x 4": ({}, {"max_concurrency": 4}),
    "32 + 16 MiB chunks x 4 (proposed)": ({"max_chunk_get_size": 16 * MiB}, {"max_concurrency": 4}),
}


async def sdk_upload(connection_string: str, container: str, path: str, data: bytes, config: tuple[dict, dict]) -> float:
    client_options, call_options = config
    async with BlobServiceClient.from_connection_string(connection_string, **client_options) as service:
        started = time.perf_counter()
        await service.get_blob_client(container, path).upload_blob(data, overwrite=True, **call_options)
        return time.perf_counter() - started


async def sdk_download(connection_string: str, container: str, path: str, size: int, config: tuple[dict, dict]) -> float:
    client_options, call_options = config
    async with BlobServiceClient.from_connection_string(connection_string, **client_options) as service:
        started = time.perf_counter()
        stream = await service.get_blob_client(container, path).download_blob(**call_options)
        data = await stream.readall()
        seconds = time.perf_counter() - started
    assert len(data) == size
    return seconds


async def store_upload(resource: dict, path: str, data: bytes) -> float:
    async with BlobStore.from_resource(resource) as store:
        started = time.perf_counter()
        await store.write_bytes(path, data, content_type="application/json")
        return time.perf_counter() - started


async def store_download(resource: dict, path: str, size: int) -> float:
    async with BlobStore.from_resource(resource) as store:
        started = time.perf_counter()
        data = await store.read_bytes(path)
        seconds = time.perf_counter() - started
    assert len(data) == size
    return seconds


def _profile(coroutine_factory) -> list[str]:
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(coroutine_factory())
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(8)
    lines = [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return lines[start : start + 9]


def run(mb: int = 50, rounds: int = 5) -> dict:
    with warnings.catch_warnings():
        # aiohttp warns when one large bytes body is sent (the SDK's single-put and single-get configurations);
        # that warning is why BlobStore streams blocks above 1 MiB, and here it is expected.
        warnings.filterwarnings("ignore", "Sending a large body", ResourceWarning)
        return _run(mb, rounds)


def _run(mb: int, rounds: int) -> dict:
    size = mb * MiB
    data = os.urandom(size)
    with Azurite() as azurite:
        container = f"bench-{uuid.uuid4().hex[:12]}"
        resource, conn = azurite.resource(container), azurite.connection_string

        async def setup() -> None:
            async with BlobStore.from_resource(resource) as store:
                await store.ensure_container()

        asyncio.run(setup())
        # Every upload contender overwrites its own blob (as a restage would); every download reads one blob.
        read_path = "bench/download.bin"
        asyncio.run(store_upload(resource, read_path, data))
        uploads = {"matterflow": lambda: store_upload(resource, "bench/up-matterflow.bin", data)} | {
            name: (lambda cfg=cfg, i=i: sdk_upload(conn, container, f"bench/up-sdk-{i}.bin", data, cfg))
            for i, (name, cfg) in enumerate(UPLOAD_CONFIGS.items())
        }
        downloads = {"matterflow": lambda: store_download(resource, read_path, size)} | {
            name: (lambda cfg=cfg: sdk_download(conn, container, read_path, size, cfg)) for name, cfg in DOWNLOAD_CONFIGS.items()
        }
        for action in (*uploads.values(), *downloads.values()):  # warm-up round, not counted
            asyncio.run(action())
        up_times: dict[str, list[float]] = {name: [] for name in uploads}
        down_times: dict[str, list[float]] = {name: [] for name in downloads}
        for round_index in range(rounds):
            for actions, times in ((uploads, up_times), (downloads, down_times)):
                names = list(actions) if round_index % 2 == 0 else list(reversed(actions))
                for name in names:
                    times[name].append(asyncio.run(actions[name]()))
        up_mibs = {name: round(mb / median(values), 1) for name, values in up_times.items()}
        down_mibs = {name: round(mb / median(values), 1) for name, values in down_times.items()}
        best_up = max((n for n in up_mibs if n != "matterflow"), key=up_mibs.get)
        best_down = max((n for n in down_mibs if n != "matterflow"), key=down_mibs.get)
        upload_ratio = round(up_mibs["matterflow"] / up_mibs[best_up], 3)
        download_ratio = round(down_mibs["matterflow"] / down_mibs[best_down], 3)
        profiles = {}
        if upload_ratio < GOAL:
            profiles["matterflow upload"] = _profile(uploads["matterflow"])
        if download_ratio < GOAL:
            profiles["matterflow download"] = _profile(downloads["matterflow"])

    report = {
        "scenario": "blob",
        "settings": {
            "mb": mb,
            "rounds": rounds,
            "matterflow": {
                "single_put_bytes": DEFAULT_SINGLE_PUT_BYTES, "block_bytes": DEFAULT_BLOCK_BYTES,
                "max_concurrency": DEFAULT_TRANSFER_CONCURRENCY, "download": "download_blob(max_concurrency=4), SDK default chunk sizes",
            },
            "sdk_best_upload": best_up,
            "sdk_best_download": best_down,
        },
        "upload_mib_s": up_mibs["matterflow"],
        "sdk_upload_mib_s": up_mibs[best_up],
        "upload_ratio": upload_ratio,
        "download_mib_s": down_mibs["matterflow"],
        "sdk_download_mib_s": down_mibs[best_down],
        "download_ratio": download_ratio,
        "seconds": {
            "upload": {name: [round(v, 4) for v in values] for name, values in up_times.items()},
            "download": {name: [round(v, 4) for v in values] for name, values in down_times.items()},
        },
        "sweep_mib_s": {"upload": up_mibs, "download": down_mibs},
        "profiles": profiles,
    }
    report["goals"] = [
        goal("BlobStore upload throughput / best raw SDK upload", upload_ratio, GOAL, at_most=False, unit="x"),
        goal("BlobStore download throughput / best raw SDK download", download_ratio, GOAL, at_most=False, unit="x"),
    ]
    return report


def table(report: dict) -> str:
    s = report["settings"]
    main = md_table(
        ["direction", "matterflow BlobStore MiB/s", "raw SDK best MiB/s", "SDK configuration", "matterflow / SDK"],
        [
            ["upload (write_bytes)", f"{report['upload_mib_s']:.1f}", f"{report['sdk_upload_mib_s']:.1f}", s["sdk_best_upload"], f"**{report['upload_ratio']:.3f}**"],
            ["download (read_bytes)", f"{report['download_mib_s']:.1f}", f"{report['sdk_download_mib_s']:.1f}", s["sdk_best_download"], f"**{report['download_ratio']:.3f}**"],
        ],
    )
    sweep = md_table(
        ["every configuration (median of the same rounds)", "MiB/s"],
        [[f"upload, {name}", f"{v:.1f}"] for name, v in report["sweep_mib_s"]["upload"].items()]
        + [[f"download, {name}", f"{v:.1f}"] for name, v in report["sweep_mib_s"]["download"].items()],
    )
    return f"{s['mb']} MiB of random bytes, one Azurite; median of {s['rounds']} alternated rounds.\n\n{main}\n\n{sweep}"


def plot(report: dict, path: Path) -> None:
    from .common import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1, 1.5]})
    x = [0, 1]
    left.bar([i - 0.2 for i in x], [report["upload_mib_s"], report["download_mib_s"]], 0.4, label="matterflow BlobStore", color="#1f77b4")
    left.bar([i + 0.2 for i in x], [report["sdk_upload_mib_s"], report["sdk_download_mib_s"]], 0.4, label="raw SDK, best configuration", color="#999999")
    top = max(report["upload_mib_s"], report["download_mib_s"], report["sdk_upload_mib_s"], report["sdk_download_mib_s"])
    for i, ratio in zip(x, (report["upload_ratio"], report["download_ratio"]), strict=True):
        left.text(i, top * 1.04, f"{ratio:.2f}x", ha="center", fontweight="bold")
    left.set_ylim(0, top * 1.45)
    left.set_xticks(x, ["upload", "download"])
    left.set_ylabel("MiB/s (median)")
    left.legend(fontsize=8, loc="upper right")
    left.set_title(f"{report['settings']['mb']} MiB through one Azurite")
    sweep = [(f"up: {k}", v) for k, v in report["sweep_mib_s"]["upload"].items()] + [(f"down: {k}", v) for k, v in report["sweep_mib_s"]["download"].items()]
    colors = ["#1f77b4" if k.endswith("matterflow") else "#ff7f0e" if k.startswith("up") else "#2ca02c" for k, _ in sweep]
    right.barh([k for k, _ in sweep], [v for _, v in sweep], color=colors)
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=7)
    right.set_xlabel("MiB/s (median)")
    right.set_title("every configuration, same rounds (blue: BlobStore)")
    fig.suptitle("blob: BlobStore vs the raw azure-storage-blob SDK (goal >= 0.9x)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
