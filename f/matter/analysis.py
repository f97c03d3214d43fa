"""One window, one LLM call: the prompt, the answer schema, and how an answer is checked.

The model sees the window's pages between page markers, is told which pages it owns and which are context only,
and is warned about pages the OCR read badly. It answers a `WindowAnalysis` (sent as a `json_schema`
response_format). The answer is validated; facts citing pages the window does not own are removed and counted
(that is how overlapping windows merge without duplicates); an invalid answer gets one repair re-ask, then the
window is recorded as failed with the reason. A prompt too long for an endpoint splits the window in two.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pydantic import ValidationError

from .answers import RESPONSE_FORMAT, PageSummary, WindowAnalysis, WindowResult, WindowUsage
from .llm import CallRecord, ContextLengthExceeded, EndpointCallFailed, EndpointPool
from .models import Page, Window
from .windows import DEFAULT_OUTPUT_TOKENS, DEFAULT_PROMPT_TOKENS, estimate_tokens

MAX_ANSWER_TOKENS = DEFAULT_OUTPUT_TOKENS  # the planner reserved this much of the context for the answer
# A model asked for MAX_ANSWER_TOKENS cannot write more than this (16 characters a token is far above any
# tokenizer's average); a longer answer comes from a server that ignores max_tokens and is refused unparsed.
MAX_ANSWER_CHARS = MAX_ANSWER_TOKENS * 16


SYSTEM_PROMPT = """You are a careful legal analyst reading OCR text of one part of a long legal document.
Extract what a lawyer needs: a short summary of each OWNED page; the parties, people and organisations with their
roles; dates and deadlines; monetary amounts; key legal issues. Cite the page numbers every item comes from.
Report facts found on OWNED pages only. CONTEXT pages are there so you can read sentences that cross a page break:
never cite them. Text marked LOW OCR CONFIDENCE may contain misread words: do not guess numbers or names you cannot
read. Answer with one JSON object only:
{"pages":[{"page":1,"summary":"..."}],"entities":[{"name":"...","kind":"party|person|organisation","role":"...","pages":[1]}],
"dates":[{"date":"YYYY-MM-DD","description":"...","deadline":false,"pages":[1]}],
"amounts":[{"text":"$1,000.00","value":1000.0,"currency":"USD","description":"...","pages":[1]}],
"issues":[{"issue":"...","pages":[1]}]}"""


# ---------------------------------------------------------------------------------------------------------------
# The prompt


def owned_pages(window: Window, pages: Sequence[Page]) -> list[int]:
    return [p.number for p in pages if window.owned_first <= p.number <= window.owned_last]


def build_messages(window: Window, pages: Sequence[Page], low_confidence: dict[int, float]) -> list[dict[str, str]]:
    """`pages` are the pages the window reads, in order."""
    owned = set(owned_pages(window, pages))
    header = [
        f"Window {window.index}: pages {window.first}-{window.last}. You own pages {window.owned_first}-{window.owned_last}.",
    ]
    weak = [f"{n} (mean word confidence {low_confidence[n]:.2f})" for n in sorted(owned) if n in low_confidence]
    if weak:
        header.append("LOW OCR CONFIDENCE on owned pages: " + ", ".join(weak) + ".")
    body = []
    for page in pages:
        role = "OWNED" if page.number in owned else "CONTEXT"
        body.append(f"=== PAGE {page.number} ({role}) ===\n{page.text.strip()}")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(header) + "\n\n" + "\n\n".join(body)},
    ]


# ---------------------------------------------------------------------------------------------------------------
# Checking an answer


def parse_answer(text: str, finish_reason: str | None) -> tuple[WindowAnalysis | None, str | None]:
    """(analysis, None) or (None, why it is not acceptable)."""
    if finish_reason == "length":
        return None, "the answer was cut off (finish_reason=length)"
    if len(text) > MAX_ANSWER_CHARS:
        return None, f"the answer is {len(text):,} characters, more than {MAX_ANSWER_TOKENS} tokens can hold"
    try:
        return WindowAnalysis.model_validate_json(_strip_fences(text)), None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "answer"
        return None, f"{where}: {first['msg']} ({exc.error_count()} problem(s))"


def _strip_fences(text: str) -> str:
    """Some servers wrap json_object answers in ```json fences."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


def keep_owned(analysis: WindowAnalysis, owned: set[int]) -> tuple[WindowAnalysis, int]:
    """Remove citations of pages the window does not own; drop items left without any. Returns the count dropped."""
    dropped = 0

    def cited(items: list) -> list:
        nonlocal dropped
        kept = []
        for item in items:
            pages = sorted({p for p in item.pages if p in owned})
            if pages:
                kept.append(item.model_copy(update={"pages": pages}))
            else:
                dropped += 1
        return kept

    summaries: dict[int, PageSummary] = {}
    for summary in analysis.pages:
        if summary.page in owned and summary.page not in summaries:
            summaries[summary.page] = summary
        else:
            dropped += 1
    return (
        WindowAnalysis(
            pages=[summaries[p] for p in sorted(summaries)],
            entities=cited(analysis.entities),
            dates=cited(analysis.dates),
            amounts=cited(analysis.amounts),
            issues=cited(analysis.issues),
        ),
        dropped,
    )


# ---------------------------------------------------------------------------------------------------------------
# The window task


async def analyze_window(
    pool: EndpointPool,
    window: Window,
    pages: Sequence[Page],
    *,
    prefer: int = 0,
    low_confidence: dict[int, float] | None = None,
) -> WindowResult:
    """Ask the pool about one window. Never raises for endpoint or answer trouble: a failed result says why."""
    started = time.monotonic()
    records: list[CallRecord] = []
    state = {"repaired": False, "dropped": 0, "splits": 0}
    try:
        analysis = await _ask(pool, window, list(pages), prefer, low_confidence or {}, records, state)
        status, error = "ok", None
    except _WindowFailed as exc:
        analysis, status, error = None, "failed", str(exc)
    return WindowResult(
        window=window,
        status=status,
        analysis=analysis,
        error=error,
        dropped_items=state["dropped"],
        repaired=state["repaired"],
        splits=state["splits"],
        seconds=round(time.monotonic() - started, 3),
        usage=WindowUsage.from_records(records),
    )


class _WindowFailed(Exception):
    pass


async def _ask(pool, window, pages, prefer, low_confidence, records, state) -> WindowAnalysis:
    messages = build_messages(window, pages, low_confidence)
    owned = set(owned_pages(window, pages))
    try:
        completion = await _complete(pool, messages, prefer, window, records)
        analysis, problem = parse_answer(completion.text, completion.finish_reason)
        if problem is not None:
            state["repaired"] = True
            repair = [
                *messages,
                {"role": "assistant", "content": completion.text[:4000]},
                {"role": "user", "content": f"That answer is not acceptable: {problem}. Reply again with only the JSON object, shorter if needed."},
            ]
            completion = await _complete(pool, repair, prefer, window, records)
            analysis, problem = parse_answer(completion.text, completion.finish_reason)
            if problem is not None:
                raise _WindowFailed(f"invalid answer after one repair re-ask: {problem}")
    except ContextLengthExceeded as exc:
        if len(owned) >= 2:
            state["splits"] += 1
            return await _ask_in_halves(pool, window, pages, prefer, low_confidence, records, state)
        if len(pages) > len(owned):  # one owned page with context: try the page alone
            state["splits"] += 1
            alone = [p for p in pages if p.number in owned]
            number = alone[0].number
            solo = window.model_copy(update={"first": number, "last": number, "pages": 1})
            return await _ask(pool, solo, alone, prefer, low_confidence, records, state)
        raise _WindowFailed(f"a single page does not fit the model's context: {exc}") from None
    except EndpointCallFailed as exc:
        raise _WindowFailed(str(exc)) from None
    kept, dropped = keep_owned(analysis, owned)
    state["dropped"] += dropped
    return kept


async def _complete(pool, messages, prefer, window, records):
    try:
        completion = await pool.complete(
            messages,
            prefer=prefer,
            response_format=RESPONSE_FORMAT,
            max_tokens=MAX_ANSWER_TOKENS,
            estimated_input_tokens=window.estimated_tokens + DEFAULT_PROMPT_TOKENS,
        )
    except EndpointCallFailed as exc:  # ContextLengthExceeded too: its attempts were paid for all the same
        records.extend(exc.records)
        raise
    records.extend(completion.records)
    return completion


async def _ask_in_halves(pool, window, pages, prefer, low_confidence, records, state) -> WindowAnalysis:
    """Both halves at once, each with its own token estimate (the tpm bucket charges what is really sent)."""
    numbers = owned_pages(window, pages)
    middle = numbers[(len(numbers) - 1) // 2]
    questions = []
    for first, last in ((numbers[0], middle), (numbers[numbers.index(middle) + 1], numbers[-1])):
        sub_pages = [p for p in pages if first <= p.number <= last]
        sub = window.model_copy(
            update={
                "first": first, "last": last, "owned_first": first, "owned_last": last, "pages": len(sub_pages),
                "estimated_tokens": sum(estimate_tokens(p.text) for p in sub_pages),
            }
        )
        questions.append((sub, sub_pages))
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_ask(pool, sub, sub_pages, prefer, low_confidence, records, state)) for sub, sub_pages in questions]
    except* _WindowFailed as failed:  # one half failing fails the window; the other half was cancelled
        raise failed.exceptions[0] from None
    halves = [task.result() for task in tasks]
    return WindowAnalysis(
        pages=[s for half in halves for s in half.pages],
        entities=[e for half in halves for e in half.entities],
        dates=[d for half in halves for d in half.dates],
        amounts=[a for half in halves for a in half.amounts],
        issues=[i for half in halves for i in half.issues],
    )
