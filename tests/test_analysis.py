"""One window's prompt and the checks on its answer (pure parts), plus the split when a prompt does not fit."""

from __future__ import annotations

import asyncio
import json

from f.matter.analysis import (
    RESPONSE_FORMAT,
    WindowAnalysis,
    analyze_window,
    build_messages,
    keep_owned,
    parse_answer,
)
from f.matter.llm import Endpoint, EndpointPool, RetryPolicy
from f.matter.models import Page, Window, Word


def page(number: int, text: str) -> Page:
    return Page(number=number, text=text, words=[Word(w, 0.9) for w in text.split()])


WINDOW = Window(index=4, first=10, last=15, owned_first=12, owned_last=13, pages=6, estimated_tokens=100)
PAGES = [page(n, f"Text of page {n}. Northwind Holdings LLC paid $1,000.00 on March {n}, 2024.") for n in range(10, 16)]


def test_prompt_marks_owned_and_context_pages_and_warns_about_weak_ocr() -> None:
    system, user = build_messages(WINDOW, PAGES, {12: 0.61, 14: 0.4})
    assert system["role"] == "system" and "OWNED" in system["content"] and "CONTEXT" in system["content"]
    content = user["content"]
    assert "You own pages 12-13." in content
    assert "=== PAGE 12 (OWNED) ===" in content and "=== PAGE 13 (OWNED) ===" in content
    assert "=== PAGE 11 (CONTEXT) ===" in content and "=== PAGE 14 (CONTEXT) ===" in content
    assert "LOW OCR CONFIDENCE on owned pages: 12 (mean word confidence 0.61)." in content
    assert "14 (mean" not in content, "only owned pages are flagged to the model"
    assert content.index("PAGE 10") < content.index("PAGE 12") < content.index("PAGE 15")


def test_response_format_is_the_window_analysis_json_schema() -> None:
    assert RESPONSE_FORMAT["type"] == "json_schema"
    schema = RESPONSE_FORMAT["json_schema"]["schema"]
    assert set(schema["properties"]) == {"pages", "entities", "dates", "amounts", "issues"}


def test_parse_answer_accepts_fenced_json_and_rejects_truncated_or_invalid_answers() -> None:
    good = json.dumps({"pages": [{"page": 12, "summary": "s"}], "issues": [{"issue": "breach", "pages": [12]}]})
    assert parse_answer(f"```json\n{good}\n```", "stop")[0].issues[0].issue == "breach"
    assert parse_answer(good, "length") == (None, "the answer was cut off (finish_reason=length)")
    analysis, problem = parse_answer('{"entities": [{"name": "X", "kind": "alien", "pages": [12]}]}', "stop")
    assert analysis is None and problem.startswith("entities.0.kind:")
    assert parse_answer('{"pages": [', "stop")[0] is None


def test_keep_owned_removes_foreign_citations_and_counts_dropped_items() -> None:
    answer = WindowAnalysis.model_validate(
        {
            "pages": [{"page": 12, "summary": "a"}, {"page": 14, "summary": "context"}, {"page": 12, "summary": "dup"}],
            "entities": [
                {"name": "Northwind Holdings LLC", "kind": "organisation", "pages": [11, 12, 13]},
                {"name": "Someone Else", "kind": "person", "pages": [15]},
            ],
            "amounts": [{"text": "$1,000.00", "description": "rent", "pages": [10, 14]}],
        }
    )
    kept, dropped = keep_owned(answer, {12, 13})
    assert [s.summary for s in kept.pages] == ["a"]
    assert [(e.name, e.pages) for e in kept.entities] == [("Northwind Holdings LLC", [12, 13])]
    assert kept.amounts == []
    assert dropped == 2 + 1 + 1  # two page summaries, one entity, one amount


def test_a_prompt_too_long_for_the_context_splits_the_window(simulators: list) -> None:
    """The simulator refuses prompts over its context like vLLM does; the window is asked in halves."""
    sim = simulators[0]
    window = Window(index=1, first=1, last=4, owned_first=1, owned_last=4, pages=4, estimated_tokens=1000)
    pages = [page(n, " ".join(["Tenant shall pay rent of $2,500.00 to Northwind Holdings LLC."] * 25)) for n in range(1, 5)]
    whole = sum(len(m["content"]) for m in build_messages(window, pages, {})) // 4
    # The whole window does not fit; two pages do. Each answer takes 300 ms, so halves asked one after the other
    # would never be in the simulator at the same time.
    sim.configure(context_tokens=whole + 2048 - 200, latency_ms=300.0)

    async def go():
        async with EndpointPool([Endpoint.model_validate(sim.endpoint())], policy=RetryPolicy(base_delay_s=0.01)) as pool:
            return await analyze_window(pool, window, pages)

    result = asyncio.run(go())
    assert result.status == "ok" and result.splits == 1
    assert [s.page for s in result.analysis.pages] == [1, 2, 3, 4]
    assert result.usage.failed_calls == 1 and result.usage.calls == 3
    assert sim.stats()["status"]["400"] == 1
    assert sim.stats()["max_active"] == 2, "the two halves are asked at the same time"


def test_a_one_page_window_whose_context_does_not_fit_is_asked_about_its_page_alone(simulators: list) -> None:
    sim = simulators[0]
    window = Window(index=2, first=1, last=3, owned_first=2, owned_last=2, pages=3, estimated_tokens=1000)
    pages = [page(n, " ".join([f"Page {n}: the Tenant shall pay $2,500.00."] * 40)) for n in range(1, 4)]
    whole = sum(len(m["content"]) for m in build_messages(window, pages, {})) // 4
    sim.configure(context_tokens=whole + 2048 - 300)

    async def go():
        async with EndpointPool([Endpoint.model_validate(sim.endpoint())], policy=RetryPolicy(base_delay_s=0.01)) as pool:
            return await analyze_window(pool, window, pages)

    result = asyncio.run(go())
    assert result.status == "ok" and result.splits == 1
    assert [s.page for s in result.analysis.pages] == [2]
