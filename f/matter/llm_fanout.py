"""Flow branch x K: one shard of windows -> many concurrent Llama 3 70B calls, each answer checkpointed at once.

The flow runs K of these in parallel (shard 0..K-1), next to the OCR-confidence branch. Each shard reads the
staged document, skips windows already checkpointed for this run_key (a rerun resumes; `force` recomputes),
asks the endpoint pool about the rest concurrently (shard i prefers endpoint i mod n), and writes
`windows/NNNNN.json` the moment a window's answer is in. Failed windows are listed with their reasons and are
not checkpointed, so a rerun tries them again. Returns a small summary: counts, attempts, tokens, cost.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import time

import wmill
from pydantic import BaseModel, ConfigDict, Field

from .analysis import analyze_window
from .answers import Usage, WindowResult
from .errors import EndpointError, InputError
from .llm import EndpointPool, RetryPolicy, endpoints_from_resource
from .models import CLAUDE_SONNET_PRICE_PER_MILLION, Document, Manifest, Window, llm_pool, validate_input
from .ocr_confidence import DEFAULT_MIN_CONFIDENCE, score_page
from .storage import BlobStore, azure_blob, encode_json

LOW_CONFIDENCE_WARNING = DEFAULT_MIN_CONFIDENCE


class FanoutInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    shard: int = Field(ge=0, le=63)
    force: bool
    max_attempts: int = Field(ge=1, le=20)
    timeout_s: float = Field(gt=0, le=3600)


def main(
    storage: azure_blob,
    manifest: dict,
    llm_pool: llm_pool,
    shard: int = 0,
    force: bool = False,
    max_attempts: int = 6,
    timeout_s: float = 120.0,
) -> dict:
    """Analyse one shard of the document's windows with the LLM endpoint pool.

    Args:
        storage: The blob storage holding the matter (Windmill resource `azure_blob`).
        manifest: The manifest `ingest` returned.
        llm_pool: OpenAI-compatible Llama endpoints (resource `llm_pool`, or an `openai` resource as a pool of one).
        shard: Which of the manifest's shards this branch runs (0-based).
        force: Recompute windows even when a checkpoint exists for this run.
        max_attempts: Attempts per LLM call across all endpoints, retries and failover included.
        timeout_s: Seconds one LLM call may take.
    """
    run = validate_input(Manifest, manifest, where="manifest")
    params = validate_input(FanoutInput, {"shard": shard, "force": force, "max_attempts": max_attempts, "timeout_s": timeout_s})
    if params.shard >= len(run.plan.shards):
        raise InputError(f"shard {params.shard} does not exist; the plan has {len(run.plan.shards)} shards", where="shard")
    endpoints = endpoints_from_resource(llm_pool)
    policy = RetryPolicy(max_attempts=params.max_attempts, timeout_s=params.timeout_s)
    return asyncio.run(
        _main(BlobStore.from_resource(storage), EndpointPool(endpoints, policy=policy), run, params.shard, params.force)
    )


async def _main(store: BlobStore, pool: EndpointPool, run: Manifest, shard: int, force: bool, progress=None) -> dict:
    started = time.monotonic()
    progress = progress or _windmill_progress()
    mine = set(run.plan.shards[shard])
    windows = [w for w in run.plan.windows if w.index in mine]
    async with store, pool:
        done = set() if force else await checkpointed(store, run)
        todo = [w for w in windows if w.index not in done]
        document = await store.read_document(run.refs.document) if todo else None
        results = await run_windows(store, pool, run, document, todo, shard, force, progress) if todo else []
        summary = summarize(run, shard, windows, results, skipped=len(windows) - len(todo), seconds=time.monotonic() - started)
        # The shard's record, failures included, survives even when this step fails below.
        await store.write_json(shard_ref(run, shard), summary)
    if results and not any(r.status == "ok" for r in results):
        raise EndpointError(
            f"shard {shard}: all {len(results)} windows failed; first reason: {results[0].error}. "
            "Nothing was checkpointed for them; rerun when the endpoints are back."
        )
    return summary


async def checkpointed(store: BlobStore, run: Manifest) -> set[int]:
    """Window indexes whose answer is already in blob for this run_key."""
    names = await store.list_paths(run.refs.windows)
    return {int(name.rsplit("/", 1)[-1][:-5]) for name in names if name.endswith(".json") and name.rsplit("/", 1)[-1][:-5].isdigit()}


def window_ref(run: Manifest, index: int) -> str:
    return f"{run.refs.windows}{index:05d}.json"


def shard_ref(run: Manifest, shard: int) -> str:
    return f"{run.refs.prefix}shards/{shard:02d}.json"


async def run_windows(store, pool, run: Manifest, document: Document, windows: list[Window], shard: int, force: bool, progress) -> list[WindowResult]:
    """All windows at once; the pool's per-endpoint limits decide how many are in flight. A task group owns every
    task: if one raises (storage down), the others are cancelled and nothing is left running."""
    low = low_confidence_pages(document)
    numbers = [page.number for page in document.pages]  # ascending: Document guarantees page order
    finished = 0

    async def one(window: Window) -> WindowResult:
        nonlocal finished
        pages = document.pages[bisect.bisect_left(numbers, window.first) : bisect.bisect_right(numbers, window.last)]
        result = await analyze_window(pool, window, pages, prefer=shard, low_confidence=low)
        if result.status == "ok":
            data = encode_json(result)
            if force:
                await store.write_bytes(window_ref(run, window.index), data, content_type="application/json")
            else:
                await store.write_new(window_ref(run, window.index), data)
        finished += 1
        progress(finished, len(windows))
        return result

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(window)) for window in windows]
    except BaseExceptionGroup as group:  # callers catch our typed errors, not the task group's wrapper
        raise _first_leaf(group) from None
    return [task.result() for task in tasks]


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def low_confidence_pages(document: Document, threshold: float = LOW_CONFIDENCE_WARNING) -> dict[int, float]:
    """Pages whose mean word confidence is below the threshold, computed here so the fan-out does not wait for
    the confidence branch that runs beside it."""
    scores = (score_page(page, threshold) for page in document.pages)
    return {s.page: s.mean_word_confidence for s in scores if s.flagged and s.mean_word_confidence is not None}


def summarize(run: Manifest, shard: int, windows: list[Window], results: list[WindowResult], *, skipped: int, seconds: float) -> dict:
    per_endpoint: dict[str, Usage] = {}
    for result in results:
        for name, usage in result.usage.endpoints.items():
            per_endpoint[name] = per_endpoint.get(name, Usage()).add(usage)
    input_tokens = sum(r.usage.input_tokens for r in results)
    output_tokens = sum(r.usage.output_tokens for r in results)
    sonnet_in, sonnet_out = CLAUDE_SONNET_PRICE_PER_MILLION
    return {
        "shard": shard,
        "run_key": run.run_key,
        "windows": len(windows),
        "ok": sum(1 for r in results if r.status == "ok"),
        "failed": sum(1 for r in results if r.status == "failed"),
        "skipped_checkpointed": skipped,
        "failed_windows": [{"window": r.window.index, "pages": f"{r.window.owned_first}-{r.window.owned_last}", "reason": r.error} for r in results if r.status == "failed"],
        "calls": sum(r.usage.calls for r in results),
        "failed_calls": sum(r.usage.failed_calls for r in results),
        "repaired": sum(1 for r in results if r.repaired),
        "dropped_items": sum(r.dropped_items for r in results),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": round(sum(r.usage.cost_usd for r in results), 6),
        "claude_3_5_sonnet_cost_usd": round((input_tokens * sonnet_in + output_tokens * sonnet_out) / 1e6, 6),
        "per_endpoint": {name: usage.model_dump() for name, usage in sorted(per_endpoint.items())},
        "seconds": round(seconds, 3),
        "checkpoints": run.refs.windows,
    }


def _windmill_progress():
    """Log `done/total windows` and, on a worker, report the percent to Windmill (the job's progress bar)."""
    on_worker = bool(os.environ.get("WM_JOB_ID") and os.environ.get("WM_TOKEN"))
    last = {"percent": -1}

    def report(done: int, total: int) -> None:
        percent = min(99, int(100 * done / max(total, 1)))
        if percent >= last["percent"] + 5 or done == total:
            last["percent"] = percent
            print(f"{done}/{total} windows done", flush=True)
            if on_worker:
                # A short blocking call, at most 20 times a shard; progress is cosmetic, so it never fails a shard.
                with contextlib.suppress(Exception):
                    wmill.set_progress(percent)

    return report
