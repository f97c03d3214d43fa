"""Last flow step: every window's answer + the OCR confidence -> result.json, report.html and status.json.

Reads what the branches left in blob (window checkpoints, confidence.json, shard summaries) rather than their
step results, so it works the same after a resume. A complete result is written atomically and never replaced by
a partial one (a partial one goes beside it). A rerun of a finished run returns the existing result untouched.
When windows failed, the partial result is written, then the step fails, naming them.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .answers import WindowResult
from .errors import BlobNotFound, EndpointError, StorageError
from .merge import DocumentResult, merge
from .models import ConfidenceReport, Manifest, validate_input
from .report import render
from .storage import BlobStore, azure_blob, encode_json

READ_CONCURRENCY = 32


class PublishInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    min_confidence: float = Field(ge=0.0, le=1.0)
    force: bool


def main(storage: azure_blob, manifest: dict, branches: list | None = None, min_confidence: float = 0.8, force: bool = False) -> dict:
    """Merge the window answers into result.json and report.html.

    Args:
        storage: The blob storage holding the matter (Windmill resource `azure_blob`).
        manifest: The manifest `ingest` returned.
        branches: The branch results (confidence and shard summaries); informational, blob is the source.
        min_confidence: The review threshold drawn on the report's confidence chart.
        force: Rewrite the result even when a complete one exists for this run.
    """
    run = validate_input(Manifest, manifest, where="manifest")
    params = validate_input(PublishInput, {"min_confidence": min_confidence, "force": force})
    return asyncio.run(_main(BlobStore.from_resource(storage), run, params))


async def _main(store: BlobStore, run: Manifest, params: PublishInput) -> dict:
    async with store:
        if not params.force and (existing := await _existing_complete(store, run)) is not None:
            return summary(existing, run, reused=True)
        windows, confidence, shards = await asyncio.gather(read_windows(store, run), _read_confidence(store, run), _read_shards(store, run))
        numbers = None
        if confidence is None:  # the confidence branch left nothing: take the page numbers from the document
            numbers = [page.number for page in (await store.read_document(run.refs.document)).pages]
        result = merge(run, windows, confidence, shards, page_numbers=numbers)
        complete = result.status == "complete"
        written, report = await asyncio.gather(  # independent blobs: write them at the same time
            store.write_final(run.refs.result, encode_json(result.model_dump(mode="json", by_alias=True)), complete=complete),
            store.write_final(run.refs.report, render(result, params.min_confidence).encode(), complete=complete, content_type="text/html; charset=utf-8"),
        )
        await store.write_json(run.refs.status, _status(result, run, written.path, report.path))
    if not complete:
        failed = ", ".join(f"{w.window} (pages {w.pages})" for w in result.failed_windows[:10])
        raise EndpointError(
            f"{len(result.failed_windows)} of {len(run.plan.windows)} windows have no answer: {failed}. "
            f"The partial result is at {written.path}; rerun to retry only those windows."
        )
    return summary(result, run, reused=False)


async def read_windows(store: BlobStore, run: Manifest) -> list[WindowResult]:
    names = [n for n in await store.list_paths(run.refs.windows) if n.endswith(".json")]
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def read(name: str) -> WindowResult:
        async with limit:
            return _validated(WindowResult, await store.read_json(name), store, name)

    return list(await asyncio.gather(*(read(name) for name in names)))


async def _read_confidence(store: BlobStore, run: Manifest) -> ConfidenceReport | None:
    try:
        return _validated(ConfidenceReport, await store.read_json(run.refs.confidence), store, run.refs.confidence)
    except BlobNotFound:
        return None


async def _read_shards(store: BlobStore, run: Manifest) -> list[dict]:
    names = [n for n in await store.list_paths(f"{run.refs.prefix}shards/") if n.endswith(".json")]
    return list(await asyncio.gather(*(store.read_json(name) for name in names)))


async def _existing_complete(store: BlobStore, run: Manifest) -> DocumentResult | None:
    try:
        existing = _validated(DocumentResult, await store.read_json(run.refs.result), store, run.refs.result)
    except BlobNotFound:
        return None
    return existing if existing.status == "complete" and existing.run_key == run.run_key else None


def _validated(model, data, store: BlobStore, path: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise StorageError(
            f"stored {model.__name__} is not in the expected shape ({exc.error_count()} problem(s), first at "
            f"{'.'.join(map(str, exc.errors()[0]['loc']))}); rerun with force=true to recompute it",
            container=store.container,
            path=path,
        ) from exc


def _status(result: DocumentResult, run: Manifest, result_path: str, report_path: str) -> dict:
    return {
        "status": result.status,
        "run_key": run.run_key,
        "source": run.refs.source,
        "result": result_path,
        "report": report_path,
        "failed_windows": [w.model_dump() for w in result.failed_windows],
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def summary(result: DocumentResult, run: Manifest, *, reused: bool) -> dict:
    """Small enough for a flow result; the Windmill UI shows `markdown`."""
    usage = result.usage
    lines = [
        f"**{result.source}**: {result.status}{' (existing result, no LLM calls)' if reused else ''}",
        f"- {len(result.pages)} pages; flagged for review: {', '.join(map(str, result.flagged_pages)) or 'none'}",
        f"- {len(result.entities)} parties/people/organisations, {len(result.timeline)} dates, {len(result.amounts)} amounts, {len(result.issues)} issues",
        f"- {usage.calls} LLM calls, {usage.input_tokens:,} / {usage.output_tokens:,} tokens, ${usage.cost_usd:.4f} "
        f"(Claude 3.5 Sonnet: ${usage.claude_3_5_sonnet_cost_usd:.4f})",
        f"- result: `{run.refs.result}`, report: `{run.refs.report}`",
    ]
    return {
        "markdown": "\n".join(lines),
        "wm_renderer": "markdown",  # Windmill renders `markdown` beside other keys only with this hint
        "status": result.status,
        "reused": reused,
        "run_key": run.run_key,
        "result": run.refs.result,
        "report": run.refs.report,
        "pages": len(result.pages),
        "windows": len(run.plan.windows),
        "flagged_pages": result.flagged_pages,
        "failed_windows": len(result.failed_windows),
        "cost_usd": usage.cost_usd,
    }
