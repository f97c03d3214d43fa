"""`matterflow bench cost`: tokens per page by window size and overlap, and dollars per 1,000 pages.

A generated matter (three documents, ~350 words a page) is planned with the project's own planner
(`f/matter/windows.plan_document`, Llama 3 70B's 8K context) for every window_pages x overlap_pages setting. Input
tokens are the planner's estimator (characters / 3.5, `windows.CHARS_PER_TOKEN`) applied to each window's real
prompt (`analysis.build_messages`: system prompt, header, page markers, owned and context pages); output tokens
per page come from the measured part below (an answer covers owned pages only, so overlap costs input tokens
only). Dollars per 1,000 pages follow for each Llama 3 70B price in `LLAMA_PRICES`, against one long-context
Claude 3.5 Sonnet call per document (`llm.CLAUDE_SONNET_PRICE_PER_MILLION`; 200K context and 8,192 output tokens
a call, so a larger document takes several calls).

Measured: one simulator answers every window of the default plan (8 owned + 2 context pages); the planner's
input estimate is compared with the prompt tokens the simulator reports (ratio estimated / actual), and its
completion tokens give the output tokens per page.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from f.matter.analysis import SYSTEM_PROMPT, analyze_window, build_messages
from f.matter.documents import parse_ocr
from f.matter.llm import Endpoint, EndpointPool, RetryPolicy
from f.matter.models import CLAUDE_SONNET_PRICE_PER_MILLION, Document
from f.matter.windows import CHARS_PER_TOKEN, DEFAULT_CONTEXT_TOKENS, DEFAULT_OUTPUT_TOKENS, plan_document
from matterflow.sim import SimulatorProcess
from matterflow.synth import synthetic_layout_bytes

from .common import REALISTIC_LLAMA, goal, md_table

WINDOW_PAGES = (2, 4, 8, 16)
OVERLAP_PAGES = (0, 1, 2, 4)
DEFAULT_SETTING = (8, 2)

# Published Llama 3 70B Instruct (8K context) prices, $ per million input / output tokens, as listed in 2024:
# - Groq, llama3-70b-8192: $0.59 / $0.79 (groq.com/pricing);
# - Amazon Bedrock, Meta Llama 3 70B Instruct, on demand: $2.65 / $3.50 (aws.amazon.com/bedrock/pricing);
# - Azure AI serverless API (models-as-a-service), Meta-Llama-3-70B-Instruct: $3.78 / $11.34 (Azure Marketplace
#   offer at launch, April 2024; later Llama 3.x 70B offers are cheaper);
# - self-hosted vLLM, an estimate: 4 x H100 at ~$10/hour for the node, with the benchmark's latency model
#   (64 sequences x 50 tokens/s = 3,200 output tokens/s, prefill ~10,000 tokens/s): $10 / 3,600 s over 3,200 tokens/s
#   = $0.87 per million output tokens, and over 10,000 tokens/s = $0.28 per million input tokens, at full load.
LLAMA_PRICES: dict[str, tuple[float, float]] = {
    "Groq": (0.59, 0.79),
    "Amazon Bedrock": (2.65, 3.50),
    "Azure AI serverless": (3.78, 11.34),
    "self-hosted vLLM (est.)": (0.28, 0.87),
}
SONNET_CONTEXT_TOKENS = 200_000
SONNET_MAX_OUTPUT_TOKENS = 8_192
MATTER_SHARES = (0.6, 0.3, 0.1)  # three documents: 60%, 30% and 10% of the matter's pages


def estimate(text: str) -> int:
    """The planner's estimator (characters / 3.5), applied to a whole prompt."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def matter(pages: int, words_per_page: int = 350) -> list[Document]:
    sizes = [max(1, round(pages * share)) for share in MATTER_SHARES]
    sizes[0] += pages - sum(sizes)
    return [parse_ocr(synthetic_layout_bytes(n, words_per_page=words_per_page, seed=500 + i)) for i, n in enumerate(sizes)]


def window_prompts(document: Document, window_pages: int, overlap_pages: int):
    """(window, its messages) for every window the planner makes of `document`."""
    plan = plan_document(document, window_pages=window_pages, overlap_pages=overlap_pages, context_tokens=DEFAULT_CONTEXT_TOKENS, shards=3)
    by_number = {p.number: p for p in document.pages}
    for window in plan.windows:
        pages = [by_number[n] for n in range(window.first, window.last + 1) if n in by_number]
        yield window, build_messages(window, pages, {})


def plan_tokens(documents: list[Document], window_pages: int, overlap_pages: int) -> dict:
    windows = input_tokens = page_tokens = 0
    for document in documents:
        for window, messages in window_prompts(document, window_pages, overlap_pages):
            windows += 1
            page_tokens += window.estimated_tokens
            input_tokens += sum(estimate(m["content"]) for m in messages)
    return {"windows": windows, "input_tokens": input_tokens, "page_tokens": page_tokens}


def measure_with_simulator(documents: list[Document]) -> dict:
    """Answer every window of the default plan with one simulator; compare the planner's estimate with its usage."""
    window_pages, overlap_pages = DEFAULT_SETTING
    work = [(w, m, d) for d in documents for w, m in window_prompts(d, window_pages, overlap_pages)]
    estimated = sum(estimate(m["content"]) for _, messages, _ in work for m in messages)
    planner_pages = sum(w.estimated_tokens for w, _, _ in work)
    with SimulatorProcess(name="cost", latency_ms=5.0, tokens_per_s=1e6, capacity=256) as sim:
        endpoint = Endpoint.model_validate(sim.endpoint(max_concurrency=256))

        async def go() -> list:
            async with EndpointPool([endpoint], policy=RetryPolicy(timeout_s=60)) as pool:
                results = []
                for document in documents:
                    by_number = {p.number: p for p in document.pages}
                    plan = plan_document(document, window_pages=window_pages, overlap_pages=overlap_pages, context_tokens=DEFAULT_CONTEXT_TOKENS, shards=3)
                    results += await asyncio.gather(
                        *(analyze_window(pool, w, [by_number[n] for n in range(w.first, w.last + 1) if n in by_number]) for w in plan.windows)
                    )
                return results

        results = asyncio.run(go())
        stats = sim.stats()
    pages = sum(len(d.pages) for d in documents)
    calls = stats["calls"]
    return {
        "windows": len(work),
        "calls": calls,
        "ok_windows": sum(1 for r in results if r.status == "ok"),
        "estimated_input_tokens": estimated,
        "planner_page_tokens": planner_pages,
        "actual_input_tokens": stats["prompt_tokens"],
        "actual_output_tokens": stats["completion_tokens"],
        "ratio_estimated_to_actual": round(estimated / stats["prompt_tokens"], 3) if stats["prompt_tokens"] else None,
        "output_tokens_per_page": round(stats["completion_tokens"] / pages, 1),
        "output_tokens_per_call": round(stats["completion_tokens"] / calls, 1) if calls else None,
        "answers_at_max_tokens": sum(1 for r in results if r.usage.output_tokens >= DEFAULT_OUTPUT_TOKENS),
    }


def dollars_per_1000_pages(input_per_page: float, output_per_page: float, price: tuple[float, float]) -> float:
    return 1000 * (input_per_page * price[0] + output_per_page * price[1]) / 1e6


def sonnet(documents: list[Document], output_per_page: float) -> dict:
    """One long-context Claude 3.5 Sonnet call per document; more when it exceeds 200K context or 8,192 output."""
    calls = input_tokens = output_tokens = 0
    prompt = estimate(SYSTEM_PROMPT) + 50  # instructions + a header, once per call
    for document in documents:
        page_tokens = sum(estimate(f"=== PAGE {p.number} ===\n{p.text.strip()}") for p in document.pages)
        output = output_per_page * len(document.pages)
        n = max(math.ceil(page_tokens / (SONNET_CONTEXT_TOKENS - prompt - SONNET_MAX_OUTPUT_TOKENS)), math.ceil(output / SONNET_MAX_OUTPUT_TOKENS), 1)
        calls += n
        input_tokens += page_tokens + n * prompt
        output_tokens += output
    pages = sum(len(d.pages) for d in documents)
    return {
        "calls": calls,
        "input_tokens_per_page": round(input_tokens / pages, 1),
        "output_tokens_per_page": round(output_tokens / pages, 1),
        "usd_per_1000_pages": round(dollars_per_1000_pages(input_tokens / pages, output_tokens / pages, CLAUDE_SONNET_PRICE_PER_MILLION), 3),
    }


def run(pages: int = 200, words_per_page: int = 350) -> dict:
    documents = matter(pages, words_per_page)
    total_pages = sum(len(d.pages) for d in documents)
    measured = measure_with_simulator(documents)
    output_per_page = measured["output_tokens_per_page"]
    settings = []
    base_input: dict[int, float] = {}
    for window_pages in WINDOW_PAGES:
        for overlap_pages in OVERLAP_PAGES:
            t = plan_tokens(documents, window_pages, overlap_pages)
            input_per_page = t["input_tokens"] / total_pages
            if overlap_pages == 0:
                base_input[window_pages] = input_per_page
            settings.append({
                "window_pages": window_pages,
                "overlap_pages": overlap_pages,
                "windows": t["windows"],
                "input_tokens_per_page": round(input_per_page, 1),
                "output_tokens_per_page": output_per_page,
                "tokens_per_page": round(input_per_page + output_per_page, 1),
                "overlap_price": round(input_per_page / base_input[window_pages] - 1, 3),
                "usd_per_1000_pages": {name: round(dollars_per_1000_pages(input_per_page, output_per_page, price), 3) for name, price in LLAMA_PRICES.items()},
            })
    claude = sonnet(documents, output_per_page)
    default = next(s for s in settings if (s["window_pages"], s["overlap_pages"]) == DEFAULT_SETTING)
    ratios = {name: round(usd / claude["usd_per_1000_pages"], 3) for name, usd in default["usd_per_1000_pages"].items()}
    report = {
        "scenario": "cost",
        "settings": {"pages": total_pages, "documents": [len(d.pages) for d in documents], "words_per_page": words_per_page,
                     "context_tokens": DEFAULT_CONTEXT_TOKENS, "prices_per_million": {**LLAMA_PRICES, "Claude 3.5 Sonnet": CLAUDE_SONNET_PRICE_PER_MILLION},
                     "simulator_latency_model": REALISTIC_LLAMA},
        "measured": measured,
        "ratio_estimated_to_actual": measured["ratio_estimated_to_actual"],
        "default": default,
        "sonnet": claude,
        "default_cost_ratio_to_sonnet": ratios,
        "rows": settings,
    }
    report["goals"] = [
        goal("planner's input estimate / simulator-reported prompt tokens (errs on the safe side)", measured["ratio_estimated_to_actual"], 1.0, at_most=False, unit="x"),
        goal("Groq Llama 3 70B $ / Claude 3.5 Sonnet $ at the default 8 + 2 windows", ratios.get("Groq"), 1.0, unit="x"),
    ]
    return report


def table(report: dict) -> str:
    names = list(report["settings"]["prices_per_million"])[:-1]
    rows = [
        [s["window_pages"], s["overlap_pages"], s["windows"], f"{s['input_tokens_per_page']:.0f}", f"{s['output_tokens_per_page']:.0f}",
         f"+{s['overlap_price']:.0%}", *(f"{s['usd_per_1000_pages'][n]:.2f}" for n in names)]
        for s in report["rows"]
    ]
    c = report["sonnet"]
    rows.append(["Sonnet: 1 call / doc", "-", c["calls"], f"{c['input_tokens_per_page']:.0f}", f"{c['output_tokens_per_page']:.0f}", "-",
                 *([f"{c['usd_per_1000_pages']:.2f} (Claude 3.5 Sonnet)"] + [""] * (len(names) - 1))])
    m = report["measured"]
    s = report["settings"]
    head = (
        f"A generated matter of {s['pages']} pages ({' + '.join(map(str, s['documents']))}), Llama 3 70B 8K context. "
        f"Measured on the simulator for the default 8 + 2 plan: {m['windows']} windows, planner's input estimate "
        f"{m['estimated_input_tokens']:,} vs {m['actual_input_tokens']:,} prompt tokens reported (**{m['ratio_estimated_to_actual']:.3f}x**); "
        f"{m['output_tokens_per_page']:.0f} output tokens per page ({m['answers_at_max_tokens']} of {m['windows']} answers at the "
        f"{DEFAULT_OUTPUT_TOKENS:,}-token cap).\n\n"
    )
    ratio_line = "\n\nDefault plan (8 + 2) vs Claude 3.5 Sonnet: " + ", ".join(f"{n} {r:.2f}x" for n, r in report["default_cost_ratio_to_sonnet"].items())
    return head + md_table(
        ["window pages", "overlap pages", "windows / calls", "input tok / page", "output tok / page", "overlap's price (input)", *(f"$ / 1,000 pages {n}" for n in names)],
        rows,
    ) + ratio_line


def plot(report: dict, path: Path) -> None:
    from .common import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for window_pages in WINDOW_PAGES:
        rows = [s for s in report["rows"] if s["window_pages"] == window_pages]
        left.plot([s["overlap_pages"] for s in rows], [s["input_tokens_per_page"] for s in rows], "o-", label=f"window {window_pages} pages")
    left.axhline(report["sonnet"]["input_tokens_per_page"], color="black", ls=":", lw=0.8, label="Sonnet, 1 call / document")
    left.set_xlabel("overlap pages (context on each side)")
    left.set_ylabel("input tokens per page")
    left.set_xticks(list(OVERLAP_PAGES))
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    left.set_title("what the overlap costs (planner's estimate)")
    default = report["default"]["usd_per_1000_pages"]
    names = [*default, "Claude 3.5 Sonnet"]
    values = [*default.values(), report["sonnet"]["usd_per_1000_pages"]]
    bars = right.barh(names, values, color=["#1f77b4"] * len(default) + ["#d62728"])
    right.bar_label(bars, labels=[f"${v:.2f}" for v in values], fontsize=8, padding=2)
    right.invert_yaxis()
    right.set_xlabel("$ per 1,000 pages (window 8 + 2 context pages)")
    right.set_xlim(0, max(values) * 1.2)
    right.set_title("Llama 3 70B pool vs one long Sonnet call per document")
    fig.suptitle(f"cost: a {report['settings']['pages']}-page generated matter")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
