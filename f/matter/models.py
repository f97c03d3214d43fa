"""The data shapes that pass between matterflow's steps.

Two kinds, on purpose:
- The normalized document (`Document`, `Page`, `Word`) is bulk data: a 2,000-page matter has ~700,000 words.
  It is a `msgspec.Struct` tree, decoded and encoded without building generic dicts or validating each word
  through pydantic (which would cost seconds and hundreds of MB on large documents). It is validated once, in
  `documents.py`, where it is built.
- Everything small that crosses a step boundary or a `main()` signature (window plans, manifests, confidence
  reports) is a pydantic model, so it validates itself and documents its JSON schema.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError

SCHEMA_VERSION = 1
# Part of every run_key: bump it when the window prompt or the answer schema changes, so results computed with
# the old prompt are not reused.
PROMPT_VERSION = 1
# The comparison matterflow was founded on: the same tokens at Claude 3.5 Sonnet's list price ($ per million in/out).
CLAUDE_SONNET_PRICE_PER_MILLION = (3.0, 15.0)


class llm_pool(TypedDict):
    """Windmill resource type `llm_pool` (llm_pool.resource-type.yaml): OpenAI-compatible endpoints."""

    endpoints: list[dict]


# ---------------------------------------------------------------------------------------------------------------
# Normalized document (msgspec: bulk data)


class Word(msgspec.Struct, frozen=True, array_like=True, gc=False):  # a str and a float: no cycles, so untracked
    """One OCR word. Encoded as `[content, confidence]` to keep document.json small."""

    content: str
    confidence: float


class Page(msgspec.Struct, frozen=True, kw_only=True):
    """One page as the OCR engine saw it. `number` is the OCR's 1-based page number."""

    number: int
    width: float | None = None
    height: float | None = None
    unit: str | None = None
    text: str = ""
    words: list[Word] = []


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """A normalized OCR result: pages in ascending page-number order, every word confidence in [0, 1]."""

    schema_version: int = SCHEMA_VERSION
    source_format: str  # e.g. "document-intelligence-v4", "form-recognizer-v2.1", "read-v3.2"
    api_version: str | None = None
    pages: list[Page] = []

    @property
    def word_count(self) -> int:
        return sum(len(page.words) for page in self.pages)


# ---------------------------------------------------------------------------------------------------------------
# Small models (pydantic: cross step boundaries)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PageConfidence(_Model):
    page: int = Field(description="The OCR's 1-based page number.")
    words: int = Field(ge=0, description="Words on the page.")
    mean_word_confidence: float | None = Field(
        description="Mean word confidence on the page; null when the page has no words."
    )
    below_threshold: int = Field(ge=0, description="Words whose confidence is below min_confidence.")
    flagged: bool = Field(description="True when the page's mean is below min_confidence: needs human review.")


class DocumentConfidence(_Model):
    pages: int = Field(ge=0)
    words: int = Field(ge=0)
    mean_word_confidence: float | None = Field(description="Word-weighted mean over every word.")
    page_weighted_mean: float | None = Field(description="Mean of the page means, over pages that have words.")
    min: float | None = Field(description="Lowest word confidence.")
    p10: float | None = Field(description="10th percentile of word confidence (linear interpolation).")
    p50: float | None = Field(description="Median word confidence.")
    p90: float | None = Field(description="90th percentile of word confidence.")
    min_page_mean: float | None = Field(description="Lowest page mean.")
    min_confidence: float = Field(description="The threshold pages and words were compared against.")
    flagged_pages: list[int] = Field(description="Pages whose mean is below min_confidence, for human review.")
    pages_without_words: list[int] = Field(description="Pages where OCR found no words (blank or unreadable).")


class ConfidenceReport(_Model):
    schema_version: int = SCHEMA_VERSION
    document: DocumentConfidence
    pages: list[PageConfidence]


PageNumber = Annotated[int, Field(ge=1)]


class Window(_Model):
    """A run of consecutive pages sent to the model in one call.

    The window owns pages `owned_first..owned_last` (it alone reports facts found there) and reads
    `first..last`, which adds up to `overlap_pages` context pages on each side. Ranges are in page numbers and
    are inclusive; page numbers may have gaps (an OCR run over selected pages).
    """

    index: int = Field(ge=1, description="1-based window number; checkpoints are windows/NNNNN.json.")
    first: PageNumber
    last: PageNumber
    owned_first: PageNumber
    owned_last: PageNumber
    pages: int = Field(ge=1, description="Pages read, context included.")
    estimated_tokens: int = Field(ge=0, description="Estimated prompt tokens of the pages read.")
    over_budget: bool = Field(
        default=False, description="A single page is larger than the token budget on its own."
    )


class WindowSettings(_Model):
    window_pages: int = Field(ge=1, le=200)
    overlap_pages: int = Field(ge=0, le=50)
    token_budget: int = Field(ge=256, description="Prompt tokens a window's pages may use.")


class WindowPlan(_Model):
    settings: WindowSettings
    windows: list[Window]
    shards: list[list[int]] = Field(description="Window indexes of each shard, in page order.")
    shard_tokens: list[int] = Field(description="Estimated tokens of each shard.")

    @property
    def over_budget_windows(self) -> list[int]:
        return [window.index for window in self.windows if window.over_budget]


class ManifestRefs(_Model):
    """Blob paths, inside the storage container, of everything one run reads and writes."""

    source: str = Field(description="The OCR result the run started from.")
    prefix: str = Field(description="results/<source without .json>/<run_key>/")
    document: str
    manifest: str
    confidence: str
    windows: str = Field(description="Folder of the per-window checkpoints windows/NNNNN.json.")
    result: str
    report: str
    status: str


class Manifest(_Model):
    """What `ingest` returns and every later step reads: references and the plan, never the document itself."""

    schema_version: int = SCHEMA_VERSION
    run_key: str = Field(description="Hash of the content, window settings, prompt version and model.")
    content_hash: str = Field(description="sha256 of the OCR result's bytes.")
    container: str
    source_format: str
    api_version: str | None
    pages: int
    words: int
    first_page: int
    last_page: int
    model: str
    prompt_version: int
    plan: WindowPlan
    refs: ManifestRefs


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate_input(model: type[ModelT], values: dict[str, Any], *, where: str | None = None) -> ModelT:
    """Validate `main()` arguments into `model`, turning pydantic's report into one InputError that names each
    bad parameter and the value it got."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            name = ".".join(str(part) for part in error["loc"]) or "input"
            problems.append(f"{name}: {error['msg']} (got {error.get('input')!r:.80})")
        raise InputError("; ".join(problems), where=where) from None
