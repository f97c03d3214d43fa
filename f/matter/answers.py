"""What a window's answer is, and what is stored of it: the shapes that publish, merge and the fan-out share.

Kept apart from `analysis` (which asks the model) so that a step that only reads answers, like `publish`, does
not import the OpenAI SDK and its HTTP stack: each Windmill step is a fresh process, and those imports cost about
0.7 s of its start-up (bench/NOTES.md, e2e).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from .models import PROMPT_VERSION, SCHEMA_VERSION, Window

if TYPE_CHECKING:
    from .llm import CallRecord


# ---------------------------------------------------------------------------------------------------------------
# The answer schema


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Cited(_Answer):
    pages: list[int] = Field(min_length=1, description="Page numbers the item comes from (owned pages only).")


class PageSummary(_Answer):
    page: int
    summary: str = Field(max_length=1200, description="Two or three sentences on what the page says.")


class Entity(_Cited):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["party", "person", "organisation"]
    role: str | None = Field(default=None, max_length=200, description="e.g. Landlord, Tenant, plaintiff, witness.")


class DateFact(_Cited):
    date: str = Field(min_length=1, max_length=60, description="ISO 8601 (YYYY-MM-DD) when the text allows it.")
    description: str = Field(max_length=400)
    deadline: bool = Field(default=False, description="True when something must happen by this date.")


class Amount(_Cited):
    text: str = Field(min_length=1, max_length=60, description="The amount as written, e.g. $12,500.00.")
    value: float | None = None
    currency: str | None = Field(default=None, max_length=8)
    description: str = Field(max_length=400)


class LegalIssue(_Cited):
    issue: str = Field(min_length=1, max_length=300)


class WindowAnalysis(_Answer):
    pages: list[PageSummary] = []
    entities: list[Entity] = []
    dates: list[DateFact] = []
    amounts: list[Amount] = []
    issues: list[LegalIssue] = []


RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "window_analysis", "schema": WindowAnalysis.model_json_schema()},
}

# ---------------------------------------------------------------------------------------------------------------
# What a window's run cost and produced


class Usage(BaseModel):
    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in Usage.model_fields})

    __add__ = add


class WindowUsage(Usage):
    endpoints: dict[str, Usage] = Field(default_factory=dict, description="The same figures per endpoint.")

    @classmethod
    def from_records(cls, records: Sequence[CallRecord]) -> WindowUsage:
        """Totals and per-endpoint figures of the attempts one window made."""
        endpoints: dict[str, Usage] = {}
        total = Usage()
        for record in records:
            one = Usage(
                calls=1,
                failed_calls=0 if record.ok else 1,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
                cost_usd=record.cost_usd,
            )
            endpoints[record.endpoint] = endpoints.get(record.endpoint, Usage()).add(one)
            total = total.add(one)
        return cls(**total.model_dump(), endpoints=endpoints)


class WindowResult(BaseModel):
    """What windows/NNNNN.json holds (only `ok` results are checkpointed; failures are retried on rerun)."""

    schema_version: int = SCHEMA_VERSION
    prompt_version: int = PROMPT_VERSION
    window: Window
    status: Literal["ok", "failed"]
    analysis: WindowAnalysis | None = None
    error: str | None = None
    dropped_items: int = 0
    repaired: bool = False
    splits: int = Field(default=0, description="Times the window was split because a prompt did not fit.")
    seconds: float = 0.0
    usage: WindowUsage = WindowUsage()
