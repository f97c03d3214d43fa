"""Scheduled sweep: start one process_document flow run per document that has no result yet.

Lists the OCR results (`*.json`, anything outside `results/`) under a prefix of the storage container, in path
order, and starts the flow for each document that has no `result.json` for the current settings, at most `limit`
per sweep. Sweeps may overlap (a slow sweep and the next schedule tick, or a manual run): a document is never
started twice, because a start needs a claim that only one sweep can create.

Skip rule. A document is done when `results/<document>/<run_key>/result.json` exists, complete or partial (a
partial result is rerun by hand or with `force`, not by the sweep). The run_key is computed exactly as `ingest`
computes it (`ingest.run_key`: the sha256 of the OCR bytes, the window settings, the prompt version and the
model), so a changed document, setting, prompt or model is swept again. Hashing needs the bytes, and OCR results
can be 100 MB, so the hash is cached per ETag in `results/<document>/sweep/source.json`: a document is
downloaded once per content change (the ETag changes with every write), and every later sweep costs one small
read. The MD5 that Azure may keep is not used: it is missing for block uploads and is not the run_key's hash.

Claims. Before starting a flow the sweep creates `results/<document>/sweep/<run_key>.<NNNNN>.claim.json`
create-only (If-None-Match: *); of two sweeps that try the same name, exactly one succeeds and the other reports
the document as claimed by another sweep. The claim records the sweep's and the flow's job ids and expires after
`claim_ttl_minutes`. While a claim is live the document is skipped (its run is in progress or just finished);
once it has expired without a result (the flow failed, or the sweep crashed between claim and start), the next
sweep creates claim NNNNN+1, again create-only, so exactly one sweep retakes it. When Windmill refuses to start
the flow, the claim is released at once (rewritten as expired) so the next sweep retries; the sweep then fails
after finishing the other documents, so the schedule shows the error. A flow that fails is retried once per TTL;
its `results/<document>/status.json` says why. The TTL should exceed a flow's longest run: a run still going when
its claim expires would be started a second time (it resumes from the checkpoints, but pays the unfinished
windows twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import wmill
from pydantic import Field

from .errors import InputError, MatterflowError, StorageError
from .ingest import RESULTS_ROOT, RunSettings, result_refs, results_folder, run_key
from .models import validate_input
from .storage import BlobInfo, BlobStore, azure_blob, encode_json, validate_blob_path

DEFAULT_FLOW_PATH = "f/matter/process_document"
DEFAULT_LIMIT = 20
DEFAULT_CLAIM_TTL_MINUTES = 240
# Documents examined at once, and OCR results downloaded at once to be hashed (they may be 100 MB each).
DEFAULT_CONCURRENCY = 8
DEFAULT_DOWNLOADS = 2
# Lists in the summary are cut here (Windmill truncates large results); the counts are always complete.
SUMMARY_LIST_CAP = 100
_WINDMILL_PATH = re.compile(r"^[ufg]/[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)+$")

StartFlow = Callable[[str, dict[str, Any]], str]


class SweepInput(RunSettings):
    prefix: str = Field(max_length=1024)
    limit: int = Field(ge=1, le=1000)
    suffix: str = Field(min_length=1, max_length=64)
    min_confidence: float = Field(ge=0, le=1)
    storage_resource: str
    llm_pool: str
    flow_path: str
    claim_ttl_minutes: int = Field(ge=1, le=7 * 24 * 60)
    dry_run: bool


def main(
    storage: azure_blob,
    prefix: str = "matters/",
    limit: int = 20,
    suffix: str = ".json",
    window_pages: int = 8,
    overlap_pages: int = 2,
    context_tokens: int = 8192,
    model: str = "llama-3-70b",
    min_confidence: float = 0.8,
    storage_resource: str = "f/matter/storage",
    llm_pool: str = "f/matter/llm_pool",
    flow_path: str = "f/matter/process_document",
    claim_ttl_minutes: int = 240,
    dry_run: bool = False,
) -> dict:
    """Start the flow for documents under a prefix that have no result for these settings yet.

    Args:
        storage: The blob storage holding the matters (Windmill resource `azure_blob`), listed by the sweep.
        prefix: Folder of the container to sweep, e.g. matters/ or matters/M-1042/ (never results/).
        limit: Flow runs one sweep starts at most; the rest wait for the next sweep.
        suffix: Blob names that are OCR results end with this, e.g. .json or .ocr.json.
        window_pages: Pages each LLM call owns; passed to the flow and part of the run key.
        overlap_pages: Context pages on each side of a window; passed to the flow and part of the run key.
        context_tokens: Context size of the model; passed to the flow and part of the run key.
        model: Model family; passed to the flow and part of the run key.
        min_confidence: Pages below this mean OCR confidence are flagged; passed to the flow.
        storage_resource: Path of the same storage resource, which the flow receives as `$res:<path>` so that
            no credential is copied into the flow's arguments.
        llm_pool: Path of the `llm_pool` resource the flow receives as `$res:<path>`.
        flow_path: The flow to start for each document.
        claim_ttl_minutes: How long a started document is left alone; after that a document still without a
            result (its run failed) is started again. Keep it above the longest run.
        dry_run: Report what would be started, and write and start nothing.
    """
    params = validate_input(
        SweepInput,
        {
            "prefix": prefix, "limit": limit, "suffix": suffix, "window_pages": window_pages,
            "overlap_pages": overlap_pages, "context_tokens": context_tokens, "model": model,
            "min_confidence": min_confidence, "storage_resource": resource_path(storage_resource, "storage_resource"),
            "llm_pool": resource_path(llm_pool, "llm_pool"), "flow_path": flow_path,
            "claim_ttl_minutes": claim_ttl_minutes, "dry_run": dry_run,
        },
    )
    validate_params(params)
    summary = asyncio.run(
        sweep(
            BlobStore.from_resource(storage),
            params,
            wmill.run_flow_async,
            sweep_id=os.environ.get("WM_JOB_ID") or f"local-{uuid.uuid4()}",
        )
    )
    if summary["failed"]:
        # After every other document was handled: the schedule shows red, and the summary says what was done.
        raise MatterflowError(
            f"{summary['counts'].get('start_failed', 0)} flow starts failed and {summary['counts'].get('error', 0)} "
            f"documents could not be examined; {len(summary['started'])} started. First: {summary['failed'][0]}"
        )
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Pure core


def resource_path(value: str, where: str) -> str:
    """`f/matter/x` or `$res:f/matter/x` -> `f/matter/x`."""
    path = value.removeprefix("$res:") if isinstance(value, str) else value
    if not isinstance(path, str) or not _WINDMILL_PATH.match(path):
        raise InputError(f"expected a Windmill resource path like f/matter/storage, got {value!r:.80}", where=where)
    return path


def validate_params(params: SweepInput) -> None:
    if params.prefix:
        validate_blob_path(params.prefix.rstrip("/") or "/", where="prefix")
    if params.prefix.startswith(f"{RESULTS_ROOT}/") or params.prefix == RESULTS_ROOT:
        raise InputError(f"{params.prefix!r} is where matterflow writes results, not documents", where="prefix")
    if not _WINDMILL_PATH.match(params.flow_path):
        raise InputError(f"expected a flow path like {DEFAULT_FLOW_PATH}, got {params.flow_path!r:.80}", where="flow_path")
    params.window_settings()  # names the problem when the context leaves no room for pages


def is_document(path: str, suffix: str) -> bool:
    return path.endswith(suffix) and not path.startswith(f"{RESULTS_ROOT}/")


def settings_run_key(content_hash: str, params: SweepInput) -> str:
    """The run_key ingest will compute for this content with these settings."""
    return run_key(content_hash, params.window_settings(), params.model)


def sweep_folder(blob_path: str) -> str:
    return f"{results_folder(blob_path)}sweep/"


def hash_cache_path(blob_path: str) -> str:
    return f"{sweep_folder(blob_path)}source.json"


def claim_path(blob_path: str, key: str, attempt: int) -> str:
    return f"{sweep_folder(blob_path)}{key}.{attempt:05d}.claim.json"


def claim_attempts(names: list[str], blob_path: str, key: str) -> list[int]:
    """Attempt numbers of the claims made for this document and run_key, ascending."""
    head = f"{sweep_folder(blob_path)}{key}."
    found = []
    for name in names:
        middle = name[len(head) : -len(".claim.json")] if name.startswith(head) and name.endswith(".claim.json") else ""
        if middle.isdigit():
            found.append(int(middle))
    return sorted(found)


def claim_is_live(claim: Any, now: float) -> bool:
    expires = claim.get("expires_at") if isinstance(claim, dict) else None
    return isinstance(expires, int | float) and now < expires


def new_claim(blob_path: str, key: str, attempt: int, params: SweepInput, sweep_id: str, now: float) -> dict:
    expires = now + params.claim_ttl_minutes * 60
    return {
        "source": blob_path,
        "run_key": key,
        "attempt": attempt,
        "state": "claimed",
        "sweep_job": sweep_id,
        "flow_path": params.flow_path,
        "flow_job": None,
        "claimed_at": _iso(now),
        "expires_at": expires,
        "expires": _iso(expires),
    }


def flow_args(blob_path: str, params: SweepInput) -> dict[str, Any]:
    """The flow's inputs: resources as `$res:` paths, which Windmill resolves when each step runs."""
    return {
        "blob_path": blob_path,
        "storage": f"$res:{params.storage_resource}",
        "llm_pool": f"$res:{params.llm_pool}",
        "min_confidence": params.min_confidence,
        "window_pages": params.window_pages,
        "overlap_pages": params.overlap_pages,
        "context_tokens": params.context_tokens,
        "model": params.model,
        "force": False,
    }


@dataclass(frozen=True)
class Outcome:
    blob_path: str
    status: str  # started | would_start | done | claimed | claimed_by_other | deferred | start_failed | error
    run_key: str | None = None
    job_id: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"blob_path": self.blob_path}
        if self.run_key:
            entry["run_key"] = self.run_key
        if self.job_id:
            entry["job_id"] = self.job_id
        if self.detail:
            entry["detail"] = self.detail
        return entry


SKIPPED = ("done", "claimed", "deferred")
FAILED = ("start_failed", "error")


def summarize(outcomes: list[Outcome], params: SweepInput, documents: int) -> dict[str, Any]:
    outcomes = sorted(outcomes, key=lambda o: o.blob_path)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1

    def listed(*statuses: str, reason: bool = False) -> list[dict[str, Any]]:
        chosen = [o for o in outcomes if o.status in statuses][:SUMMARY_LIST_CAP]
        return [o.as_dict() | ({"reason": o.status} if reason else {}) for o in chosen]

    return {
        "prefix": params.prefix,
        "dry_run": params.dry_run,
        "limit": params.limit,
        "documents": documents,
        "counts": dict(sorted(counts.items())),
        "started": listed("started"),
        "would_start": listed("would_start"),
        "claimed_by_other": listed("claimed_by_other"),
        "skipped": listed(*SKIPPED, reason=True),
        "failed": listed(*FAILED, reason=True),
    }


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _short_error(exc: BaseException) -> str:
    # The wmill client puts the URL and the server's answer in its message; neither carries the token.
    return f"{type(exc).__name__}: {str(exc)[:300]}"


# ---------------------------------------------------------------------------------------------------------------
# I/O


class _Budget:
    """Flow starts left in this sweep. Taken synchronously (no await between check and take), so tasks sharing
    one event loop never overspend it. A failed start keeps its slot: when Windmill refuses starts, one sweep
    should not try every document in the container."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    @property
    def spent(self) -> bool:
        return self.left <= 0

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def sweep(
    store: BlobStore,
    params: SweepInput,
    start_flow: StartFlow,
    *,
    sweep_id: str,
    now: Callable[[], float] = time.time,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict[str, Any]:
    """List, select, claim and start. `start_flow(path, args) -> job id` is called in a thread (it blocks).

    Documents are examined concurrently, but the limit is spent in path order: each document waits for the one
    before it to take or not take a slot, so a sweep starts the first `limit` documents that need it."""
    async with store:
        listing = await store.list_blobs(params.prefix)
        documents = sorted((blob for blob in listing if is_document(blob.path, params.suffix)), key=lambda b: b.path)
        budget = _Budget(params.limit)
        gate = asyncio.Semaphore(concurrency)
        downloads = asyncio.Semaphore(DEFAULT_DOWNLOADS)
        decided = [asyncio.Event() for _ in documents]

        async def one(index: int, blob: BlobInfo) -> Outcome:
            try:
                async with gate:
                    found = await _examine(store, blob, params, budget, downloads, now)
                if index:
                    await decided[index - 1].wait()
                if isinstance(found, _Candidate) and not budget.take():
                    found = Outcome(found.blob_path, "deferred", run_key=found.run_key)
            finally:
                decided[index].set()
            if isinstance(found, Outcome):
                return found
            async with gate:
                outcome = await _claim_and_start(store, found, params, start_flow, sweep_id, now)
            if outcome.status == "claimed_by_other":
                budget.left += 1  # the other sweep starts it; the slot can go to a later document
            return outcome

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(index, blob)) for index, blob in enumerate(documents)]
        except BaseExceptionGroup as group:  # callers catch the error itself, not the task group's wrapper
            raise _first_leaf(group) from None
    return summarize([task.result() for task in tasks], params, len(documents))


@dataclass(frozen=True)
class _Candidate:
    blob_path: str
    run_key: str
    attempt: int  # the claim number to create


async def _examine(
    store: BlobStore,
    blob: BlobInfo,
    params: SweepInput,
    budget: _Budget,
    downloads: asyncio.Semaphore,
    now: Callable[[], float],
) -> Outcome | _Candidate:
    if budget.spent:
        return Outcome(blob.path, "deferred")  # not examined: nothing is downloaded for a full sweep
    try:
        path = validate_blob_path(blob.path)
        names = await store.list_paths(sweep_folder(path))
        content_hash = await _content_hash(store, blob, names, downloads, write_cache=not params.dry_run)
        key = settings_run_key(content_hash, params)
        if await store.exists(result_refs(path, key).result):
            return Outcome(path, "done", run_key=key)
        attempts = claim_attempts(names, path, key)
        if attempts:
            latest = await _read_record(store, claim_path(path, key, attempts[-1]))
            if claim_is_live(latest, now()):
                return Outcome(path, "claimed", run_key=key, job_id=latest.get("flow_job"), detail=f"until {latest.get('expires')}")
    except MatterflowError as exc:
        return Outcome(blob.path, "error", detail=str(exc)[:300])
    return _Candidate(path, key, (attempts[-1] if attempts else 0) + 1)


async def _claim_and_start(
    store: BlobStore, found: _Candidate, params: SweepInput, start_flow: StartFlow, sweep_id: str, now: Callable[[], float]
) -> Outcome:
    path, key = found.blob_path, found.run_key
    if params.dry_run:
        return Outcome(path, "would_start", run_key=key)
    claim_ref = claim_path(path, key, found.attempt)
    claim = new_claim(path, key, found.attempt, params, sweep_id, now())
    try:
        if not await store.write_new(claim_ref, encode_json(claim)):
            return Outcome(path, "claimed_by_other", run_key=key)
    except MatterflowError as exc:
        return Outcome(path, "error", run_key=key, detail=str(exc)[:300])
    try:
        job_id = await asyncio.to_thread(start_flow, params.flow_path, flow_args(path, params))
    except Exception as exc:  # whatever the client raises: release the claim so the next sweep retries at once
        error = _short_error(exc)
        released = claim | {"state": "released", "expires_at": now(), "expires": _iso(now()), "error": error}
        try:
            await store.write_json(claim_ref, released)
        except MatterflowError as storage_exc:
            error += f"; the claim could not be released and holds until {claim['expires']}: {storage_exc}"
        return Outcome(path, "start_failed", run_key=key, detail=error)
    try:
        await store.write_json(claim_ref, claim | {"state": "started", "flow_job": job_id})
    except MatterflowError as exc:  # the flow runs and the claim still holds: only its record lacks the job id
        return Outcome(path, "started", run_key=key, job_id=job_id, detail=f"claim not updated with the job id: {exc}")
    return Outcome(path, "started", run_key=key, job_id=job_id)


async def _content_hash(
    store: BlobStore, blob: BlobInfo, names: list[str], downloads: asyncio.Semaphore, *, write_cache: bool
) -> str:
    cache_ref = hash_cache_path(blob.path)
    if cache_ref in names:
        cached = await _read_record(store, cache_ref)
        if cached.get("etag") == blob.etag and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    async with downloads:
        data = await store.read_bytes(blob.path)
    digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    if write_cache:
        # The ETag comes from the listing; if the blob changed since, the next sweep sees a new ETag and rehashes.
        await store.write_json(cache_ref, {"source": blob.path, "etag": blob.etag, "size": len(data), "sha256": digest})
    return digest


async def _read_record(store: BlobStore, path: str) -> dict:
    """A claim or hash record of the sweep's own. One that does not decode counts as empty (an expired claim, an
    unknown hash), so it never blocks a document; a storage failure is raised, since reading a live claim as
    expired would start the document twice."""
    try:
        value = await store.read_json(path)
    except StorageError as exc:
        if isinstance(exc.__cause__, msgspec.DecodeError):
            return {}
        raise
    return value if isinstance(value, dict) else {}
