"""Window answers -> one document result. Pure functions; `publish.py` does the I/O.

Each page is owned by exactly one window and windows only keep facts cited on pages they own, so merging never
has to guess which of two overlapping answers is right: page summaries come from their owner, and facts are
merged across windows only where they are the same fact (an entity by normalized name, an issue by its text, a
dated event by date and description), with the union of their pages.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, Field

from .answers import Usage, WindowResult
from .models import CLAUDE_SONNET_PRICE_PER_MILLION, SCHEMA_VERSION, ConfidenceReport, Manifest

RESULT_SCHEMA = "matterflow.result/1"


class PageResult(BaseModel):
    page: int
    summary: str | None = Field(description="null when the page's window failed")
    mean_word_confidence: float | None
    flagged_for_review: bool
    analysed: bool


class MergedEntity(BaseModel):
    name: str
    kind: str
    roles: list[str]
    pages: list[int]


class TimelineEntry(BaseModel):
    date: str
    description: str
    deadline: bool
    pages: list[int]


class MergedAmount(BaseModel):
    text: str
    value: float | None
    currency: str | None
    description: str
    pages: list[int]


class MergedIssue(BaseModel):
    issue: str
    pages: list[int]


class FailedWindow(BaseModel):
    window: int
    pages: str
    reason: str


class RunUsage(Usage):
    """Usage of every answered window, summed (from the checkpoints)."""

    claude_3_5_sonnet_cost_usd: float = 0.0
    fanout_seconds: float = Field(default=0.0, description="Wall time of the slowest shard.")
    per_endpoint: dict[str, dict] = Field(default_factory=dict)


class DocumentResult(BaseModel):
    """result.json. Keys are only added while `schema` stays matterflow.result/1."""

    schema_: str = Field(default=RESULT_SCHEMA, alias="schema")
    schema_version: int = SCHEMA_VERSION
    status: str = Field(description="complete, or partial when some windows failed")
    run_key: str
    source: str
    source_format: str
    model: str
    prompt_version: int
    pages: list[PageResult]
    flagged_pages: list[int]
    entities: list[MergedEntity]
    timeline: list[TimelineEntry]
    amounts: list[MergedAmount]
    issues: list[MergedIssue]
    failed_windows: list[FailedWindow]
    usage: RunUsage

    model_config = {"populate_by_name": True}


def normalize_name(name: str) -> str:
    """`Northwind Holdings, L.L.C.` and `northwind holdings llc` -> `northwind holdings llc`."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = re.sub(r"[^\w\s]", "", text)
    return " ".join(text.split())


def merge(
    manifest: Manifest,
    windows: Sequence[WindowResult],
    confidence: ConfidenceReport | None,
    shard_summaries: Iterable[dict] = (),
    page_numbers: Sequence[int] | None = None,
) -> DocumentResult:
    """`page_numbers` (the document's own) are needed only when `confidence` is missing: page numbers may have
    gaps that the windows' ranges do not show."""
    ok = sorted((w for w in windows if w.status == "ok" and w.analysis is not None), key=lambda w: w.window.index)
    done = {w.window.index for w in ok}
    failed = [
        FailedWindow(window=w.index, pages=f"{w.owned_first}-{w.owned_last}", reason=_reason(w.index, windows))
        for w in manifest.plan.windows
        if w.index not in done
    ]
    return DocumentResult(
        status="complete" if not failed else "partial",
        run_key=manifest.run_key,
        source=manifest.refs.source,
        source_format=manifest.source_format,
        model=manifest.model,
        prompt_version=manifest.prompt_version,
        pages=_pages(manifest, ok, confidence, page_numbers),
        flagged_pages=confidence.document.flagged_pages if confidence else [],
        entities=_entities(ok),
        timeline=_timeline(ok),
        amounts=_amounts(ok),
        issues=_issues(ok),
        failed_windows=failed,
        usage=_usage(ok, shard_summaries),
    )


def _reason(index: int, windows: Sequence[WindowResult]) -> str:
    result = next((w for w in windows if w.window.index == index), None)
    return result.error if result and result.error else "no answer was checkpointed for this window"


def _pages(
    manifest: Manifest, ok: Sequence[WindowResult], confidence: ConfidenceReport | None, page_numbers: Sequence[int] | None
) -> list[PageResult]:
    summaries = {s.page: s.summary for w in ok for s in w.analysis.pages}
    owned_by_ok = {p for w in ok for p in range(w.window.owned_first, w.window.owned_last + 1)}
    scores = {p.page: p for p in confidence.pages} if confidence else {}
    if scores:
        numbers = sorted(scores)
    elif page_numbers is not None:
        numbers = sorted(page_numbers)
    else:
        numbers = sorted({p for w in manifest.plan.windows for p in range(w.owned_first, w.owned_last + 1)})
    return [
        PageResult(
            page=n,
            summary=summaries.get(n),
            mean_word_confidence=scores[n].mean_word_confidence if n in scores else None,
            flagged_for_review=scores[n].flagged if n in scores else False,
            analysed=n in owned_by_ok,
        )
        for n in numbers
    ]


def _entities(ok: Sequence[WindowResult]) -> list[MergedEntity]:
    groups: dict[str, dict] = {}
    for window in ok:
        for entity in window.analysis.entities:
            group = groups.setdefault(normalize_name(entity.name), {"names": Counter(), "kinds": Counter(), "roles": set(), "pages": set()})
            group["names"][entity.name] += 1
            group["kinds"][entity.kind] += 1
            if entity.role:
                group["roles"].add(entity.role)
            group["pages"].update(entity.pages)
    merged = [
        MergedEntity(
            name=g["names"].most_common(1)[0][0],
            kind=g["kinds"].most_common(1)[0][0],
            roles=sorted(g["roles"]),
            pages=sorted(g["pages"]),
        )
        for g in groups.values()
    ]
    return sorted(merged, key=lambda e: (-len(e.pages), e.pages[0], e.name))


def _timeline(ok: Sequence[WindowResult]) -> list[TimelineEntry]:
    events: dict[tuple, TimelineEntry] = {}
    for window in ok:
        for fact in window.analysis.dates:
            key = (fact.date, fact.deadline, " ".join(fact.description.split()).casefold())
            if key in events:
                events[key] = events[key].model_copy(update={"pages": sorted(set(events[key].pages) | set(fact.pages))})
            else:
                events[key] = TimelineEntry(date=fact.date, description=fact.description, deadline=fact.deadline, pages=sorted(fact.pages))
    # ISO dates sort as text; anything else (as written) goes after them, in page order.
    return sorted(events.values(), key=lambda e: (not re.fullmatch(r"\d{4}-\d{2}-\d{2}", e.date), e.date if re.fullmatch(r"\d{4}-\d{2}-\d{2}", e.date) else "", e.pages[0]))


def _amounts(ok: Sequence[WindowResult]) -> list[MergedAmount]:
    amounts: dict[tuple, MergedAmount] = {}
    for window in ok:
        for fact in window.analysis.amounts:
            key = (fact.text, " ".join(fact.description.split()).casefold())
            if key in amounts:
                amounts[key] = amounts[key].model_copy(update={"pages": sorted(set(amounts[key].pages) | set(fact.pages))})
            else:
                amounts[key] = MergedAmount(text=fact.text, value=fact.value, currency=fact.currency, description=fact.description, pages=sorted(fact.pages))
    return sorted(amounts.values(), key=lambda a: (a.pages[0], a.text))


def _issues(ok: Sequence[WindowResult]) -> list[MergedIssue]:
    issues: dict[str, MergedIssue] = {}
    for window in ok:
        for fact in window.analysis.issues:
            key = normalize_name(fact.issue)
            if key in issues:
                issues[key] = issues[key].model_copy(update={"pages": sorted(set(issues[key].pages) | set(fact.pages))})
            else:
                issues[key] = MergedIssue(issue=fact.issue, pages=sorted(fact.pages))
    return sorted(issues.values(), key=lambda i: (-len(i.pages), i.pages[0]))


def _usage(ok: Sequence[WindowResult], shard_summaries: Iterable[dict]) -> RunUsage:
    """Tokens and cost from the checkpointed answers themselves, so a resumed run still counts the windows its
    first attempt paid for; the fan-out time from the shards' last summaries."""
    per_endpoint: dict[str, Usage] = {}
    for window in ok:
        for name, usage in window.usage.endpoints.items():
            per_endpoint[name] = per_endpoint.get(name, Usage()).add(usage)
    total = sum(per_endpoint.values(), Usage())
    sonnet_in, sonnet_out = CLAUDE_SONNET_PRICE_PER_MILLION
    return RunUsage(
        calls=total.calls,
        failed_calls=total.failed_calls,
        input_tokens=total.input_tokens,
        output_tokens=total.output_tokens,
        cost_usd=round(total.cost_usd, 6),
        claude_3_5_sonnet_cost_usd=round((total.input_tokens * sonnet_in + total.output_tokens * sonnet_out) / 1e6, 6),
        fanout_seconds=max((summary.get("seconds", 0.0) for summary in shard_summaries), default=0.0),
        per_endpoint={name: usage.model_dump() for name, usage in sorted(per_endpoint.items())},
    )
