"""Flow branch: OCR quality of a document, per page and for the whole document.

Reads the normalized document that `ingest` staged, scores it, writes `confidence.json` beside it and returns a
small summary. Pages whose mean word confidence is below `min_confidence` are flagged for human review: a
lawyer should not rely on an LLM summary of a page the OCR could barely read.
"""

from __future__ import annotations

import asyncio
import math

from pydantic import BaseModel, ConfigDict, Field

from .models import (
    ConfidenceReport,
    Document,
    DocumentConfidence,
    Manifest,
    Page,
    PageConfidence,
    validate_input,
)
from .storage import BlobStore, azure_blob

DEFAULT_MIN_CONFIDENCE = 0.80


class ConfidenceInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    min_confidence: float = Field(ge=0.0, le=1.0)


def main(storage: azure_blob, manifest: dict, min_confidence: float = 0.8) -> dict:
    """Score the OCR quality of the document `ingest` staged and write confidence.json.

    Args:
        storage: The blob storage holding the matter (Windmill resource `azure_blob`).
        manifest: The manifest `ingest` returned.
        min_confidence: Pages whose mean word confidence is below this are flagged for human review (0..1).
    """
    run = validate_input(Manifest, manifest, where="manifest")
    params = validate_input(ConfidenceInput, {"min_confidence": min_confidence})
    return asyncio.run(_main(BlobStore.from_resource(storage), run, params.min_confidence))


async def _main(store: BlobStore, run: Manifest, min_confidence: float) -> dict:
    async with store:
        document = await store.read_document(run.refs.document)
        report = await asyncio.to_thread(score_document, document, min_confidence)
        await store.write_json(run.refs.confidence, report)
    return summary(report, run.refs.confidence)


def summary(report: ConfidenceReport, ref: str) -> dict:
    """What the flow step returns: the document figures and the flagged pages, not every page."""
    return {"confidence_ref": ref, **report.document.model_dump(mode="json")}


# ---------------------------------------------------------------------------------------------------------------
# Pure core


def score_page(page: Page, min_confidence: float) -> PageConfidence:
    confidences = [word.confidence for word in page.words]
    mean = math.fsum(confidences) / len(confidences) if confidences else None
    return PageConfidence(
        page=page.number,
        words=len(confidences),
        mean_word_confidence=mean,
        below_threshold=sum(1 for value in confidences if value < min_confidence),
        flagged=mean is not None and mean < min_confidence,
    )


def score_document(document: Document, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> ConfidenceReport:
    pages = [score_page(page, min_confidence) for page in document.pages]
    every_word = sorted(word.confidence for page in document.pages for word in page.words)
    page_means = [page.mean_word_confidence for page in pages if page.mean_word_confidence is not None]
    return ConfidenceReport(
        document=DocumentConfidence(
            pages=len(pages),
            words=len(every_word),
            mean_word_confidence=math.fsum(every_word) / len(every_word) if every_word else None,
            page_weighted_mean=math.fsum(page_means) / len(page_means) if page_means else None,
            min=every_word[0] if every_word else None,
            p10=percentile(every_word, 10),
            p50=percentile(every_word, 50),
            p90=percentile(every_word, 90),
            min_page_mean=min(page_means, default=None),
            min_confidence=min_confidence,
            flagged_pages=[page.page for page in pages if page.flagged],
            pages_without_words=[page.page for page in pages if page.words == 0],
        ),
        pages=pages,
    )


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile of already sorted values, linearly interpolated between ranks (numpy's default)."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)
