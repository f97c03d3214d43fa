"""Flow step 1: OCR result in blob -> normalized document staged in blob + the run's manifest.

Downloads the Azure Document Intelligence result named by `blob_path`, normalizes it (any supported OCR
version), derives the `run_key` from the content and the settings, plans the page windows and the shards,
stages `document.json` and `manifest.json` under `results/<blob_path without .json>/<run_key>/` and returns
the manifest. Later steps read the document from blob: flow results stay small (Windmill truncates large ones).
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from .documents import parse_ocr
from .errors import InputError
from .models import PROMPT_VERSION, Document, Manifest, ManifestRefs, WindowSettings, validate_input
from .storage import BlobStore, azure_blob, encode_json, validate_blob_path
from .windows import plan_document, token_budget

DEFAULT_MODEL = "llama-3-70b"
RESULTS_ROOT = "results"


class RunSettings(BaseModel):
    """The settings that, with the document, decide a run_key; ingest and the sweep validate them alike."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    window_pages: int = Field(ge=1, le=200)
    overlap_pages: int = Field(ge=0, le=50)
    context_tokens: int = Field(ge=1024, le=2_000_000)
    model: str = Field(min_length=1, max_length=200)

    def window_settings(self) -> WindowSettings:
        return WindowSettings(window_pages=self.window_pages, overlap_pages=self.overlap_pages, token_budget=token_budget(self.context_tokens))


class IngestInput(RunSettings):
    blob_path: str
    shards: int = Field(ge=1, le=64)
    force: bool


# Windmill reads defaults from the source text and sees only literals, so main()'s defaults are spelled out;
# tests/test_workspace.py checks they equal the DEFAULT_* constants.
def main(
    storage: azure_blob,
    blob_path: str,
    window_pages: int = 8,
    overlap_pages: int = 2,
    context_tokens: int = 8192,
    model: str = "llama-3-70b",
    shards: int = 3,
    force: bool = False,
) -> dict:
    """Stage an OCR result for processing and plan its page windows.

    Args:
        storage: The blob storage holding the matter (Windmill resource `azure_blob`).
        blob_path: Path of the OCR result (Azure Document Intelligence JSON) inside the container,
            e.g. matters/M-1042/documents/lease.ocr.json.
        window_pages: Pages each LLM call owns (1-200).
        overlap_pages: Context pages read on each side of a window, for clauses across page breaks (0-50).
        context_tokens: Context size of the model (Llama 3 70B: 8192, Llama 3.1 70B: 131072).
        model: Model family the windows are planned for; part of the run key.
        shards: Parallel LLM branches the windows are dealt into.
        force: Restage even when this exact document and settings were staged before.
    """
    params = validate_input(
        IngestInput,
        {
            "blob_path": blob_path, "window_pages": window_pages, "overlap_pages": overlap_pages,
            "context_tokens": context_tokens, "model": model, "shards": shards, "force": force,
        },
    )
    validate_source_path(params.blob_path)
    return asyncio.run(_main(BlobStore.from_resource(storage), params))


async def _main(store: BlobStore, params: IngestInput) -> dict:
    async with store:
        data = await store.read_bytes(params.blob_path)
        document = await asyncio.to_thread(parse_ocr, data, source=params.blob_path)
        manifest = build_manifest(document, hashlib.sha256(data).hexdigest(), store.container, params)
        document_json = await asyncio.to_thread(encode_json, document)
        if params.force:
            await store.write_bytes(manifest.refs.document, document_json, content_type="application/json")
        else:
            # Same run_key means the same content: a document staged before is already right.
            await store.write_new(manifest.refs.document, document_json)
        await store.write_json(manifest.refs.manifest, manifest)
    return manifest.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------------------------
# Pure core


def build_manifest(document: Document, content_hash: str, container: str, params: IngestInput) -> Manifest:
    plan = plan_document(
        document,
        window_pages=params.window_pages,
        overlap_pages=params.overlap_pages,
        context_tokens=params.context_tokens,
        shards=params.shards,
    )
    key = run_key(content_hash, plan.settings, params.model)
    return Manifest(
        run_key=key,
        content_hash=content_hash,
        container=container,
        source_format=document.source_format,
        api_version=document.api_version,
        pages=len(document.pages),
        words=document.word_count,
        first_page=document.pages[0].number,
        last_page=document.pages[-1].number,
        model=params.model,
        prompt_version=PROMPT_VERSION,
        plan=plan,
        refs=result_refs(params.blob_path, key),
    )


def run_key(content_hash: str, settings: WindowSettings, model: str) -> str:
    """Same document, window settings, prompt and model -> same key -> finished windows are reused."""
    identity = {
        "content": content_hash,
        "windows": settings.model_dump(mode="json"),
        "prompt_version": PROMPT_VERSION,
        "model": model,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def validate_source_path(blob_path: str) -> str:
    validate_blob_path(blob_path)
    if blob_path.startswith(f"{RESULTS_ROOT}/"):
        raise InputError(f"{blob_path!r} is inside {RESULTS_ROOT}/, where matterflow writes its results", where="blob_path")
    return blob_path


def results_folder(blob_path: str) -> str:
    """`matters/M-1/lease.ocr.json` -> `results/matters/M-1/lease.ocr/`: every run of that input lives below."""
    stem = blob_path[: -len(".json")] if blob_path.lower().endswith(".json") else blob_path
    return f"{RESULTS_ROOT}/{stem}/"


def result_refs(blob_path: str, key: str) -> ManifestRefs:
    prefix = f"{results_folder(blob_path)}{key}/"
    validate_blob_path(prefix + "windows/00000.json", where="blob_path")
    return ManifestRefs(
        source=blob_path,
        prefix=prefix,
        document=prefix + "document.json",
        manifest=prefix + "manifest.json",
        confidence=prefix + "confidence.json",
        windows=prefix + "windows/",
        result=prefix + "result.json",
        report=prefix + "report.html",
        status=prefix + "status.json",
    )
