"""Page windows: how a long document is cut into many small, parallel LLM calls.

Pages are partitioned into consecutive *owned* blocks of at most `window_pages` pages, as even in size as
possible (17 pages with window 8 -> 6 + 6 + 5, not 8 + 8 + 1: equal calls finish together). Each window reads
its owned block plus up to `overlap_pages` *context* pages on each side, so a clause that runs across a page
break is seen whole; only the owner reports facts found on a page, which is how overlapping windows merge
without duplicates.

A window whose pages do not fit the model's prompt budget is split in halves until they do; a single page
whose context does not fit loses context pages, farthest first; a single page too large on its own becomes a
window of its own flagged `over_budget`. Windows are then dealt into shards (one per parallel flow branch)
balanced by estimated tokens.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from itertools import accumulate, pairwise

from .errors import InputError
from .models import Document, Window, WindowPlan, WindowSettings

DEFAULT_WINDOW_PAGES = 8
DEFAULT_OVERLAP_PAGES = 2
DEFAULT_SHARDS = 3

# Context windows of the models matterflow is meant for. Llama 3 70B has 8K, which is why windows are small.
MODEL_CONTEXT_TOKENS = {
    "llama-3-70b": 8_192,
    "llama-3.1-70b": 131_072,
    "llama-3.3-70b": 131_072,
}
DEFAULT_CONTEXT_TOKENS = MODEL_CONTEXT_TOKENS["llama-3-70b"]
# Reserved out of the context: the instructions and JSON schema (prompt) and the answer (output).
DEFAULT_PROMPT_TOKENS = 900
DEFAULT_OUTPUT_TOKENS = 2_048
MIN_TOKEN_BUDGET = 256

# Llama 3's tokenizer averages ~4 characters a token on English prose; legal text with numbers, citations and
# OCR noise runs denser, so estimate on the safe side. Each page also costs a marker line in the prompt.
CHARS_PER_TOKEN = 3.5
PAGE_MARKER_TOKENS = 12


def estimate_tokens(text: str) -> int:
    """Estimated prompt tokens of one page's text, marker included. No tokenizer download needed."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) + PAGE_MARKER_TOKENS


def token_budget(
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    *,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> int:
    """Tokens a window's page text may use in a model with `context_tokens` of context."""
    budget = context_tokens - prompt_tokens - output_tokens
    if budget < MIN_TOKEN_BUDGET:
        raise InputError(
            f"context_tokens={context_tokens} leaves {budget} tokens for pages after {prompt_tokens} for the "
            f"prompt and {output_tokens} for the answer; at least {MIN_TOKEN_BUDGET} are needed",
            where="context_tokens",
        )
    return budget


def plan_document(
    document: Document,
    *,
    window_pages: int = DEFAULT_WINDOW_PAGES,
    overlap_pages: int = DEFAULT_OVERLAP_PAGES,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    shards: int = DEFAULT_SHARDS,
) -> WindowPlan:
    """The window and shard plan of a normalized document."""
    pages = [(page.number, estimate_tokens(page.text)) for page in document.pages]
    return plan(pages, window_pages=window_pages, overlap_pages=overlap_pages, context_tokens=context_tokens, shards=shards)


def plan(
    pages: Sequence[tuple[int, int]],
    *,
    window_pages: int = DEFAULT_WINDOW_PAGES,
    overlap_pages: int = DEFAULT_OVERLAP_PAGES,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    shards: int = DEFAULT_SHARDS,
) -> WindowPlan:
    """Plan windows and shards for `pages`, a sequence of (page number, estimated tokens) in page order."""
    settings = WindowSettings(
        window_pages=window_pages, overlap_pages=overlap_pages, token_budget=token_budget(context_tokens)
    )
    windows = plan_windows(pages, settings)
    shard_windows, shard_tokens = plan_shards(windows, shards)
    return WindowPlan(settings=settings, windows=windows, shards=shard_windows, shard_tokens=shard_tokens)


def plan_windows(pages: Sequence[tuple[int, int]], settings: WindowSettings) -> list[Window]:
    numbers = [number for number, _ in pages]
    if any(a >= b for a, b in pairwise(numbers)):
        raise InputError("pages must be in ascending page-number order without repeats", where="pages")
    tokens = [max(0, count) for _, count in pages]
    prefix = [0, *accumulate(tokens)]
    last = len(pages) - 1
    budget, overlap = settings.token_budget, settings.overlap_pages
    windows: list[Window] = []

    def cost(first: int, final: int) -> int:
        return prefix[final + 1] - prefix[first]

    def emit(first: int, final: int, before: int, after: int, over_budget: bool = False) -> None:
        windows.append(
            Window(
                index=len(windows) + 1,
                first=numbers[first - before],
                last=numbers[final + after],
                owned_first=numbers[first],
                owned_last=numbers[final],
                pages=final + after - (first - before) + 1,
                estimated_tokens=cost(first - before, final + after),
                over_budget=over_budget,
            )
        )

    def cover(first: int, final: int) -> None:
        before, after = min(overlap, first), min(overlap, last - final)
        if cost(first - before, final + after) <= budget:
            emit(first, final, before, after)
        elif final > first:
            middle = (first + final) // 2
            cover(first, middle)
            cover(middle + 1, final)
        else:
            while (before or after) and cost(first - before, final + after) > budget:
                if before > after:
                    before -= 1
                else:
                    after -= 1
            emit(first, final, before, after, over_budget=tokens[first] > budget)

    for first, final in _even_blocks(len(pages), settings.window_pages):
        cover(first, final)
    return windows


def plan_shards(windows: Sequence[Window], shards: int) -> tuple[list[list[int]], list[int]]:
    """Deal windows into `shards` groups with near-equal token totals (largest first to the lightest shard)."""
    if shards < 1:
        raise InputError(f"shards must be at least 1, got {shards}", where="shards")
    heap = [(0, shard) for shard in range(shards)]
    assigned: list[list[int]] = [[] for _ in range(shards)]
    totals = [0] * shards
    for window in sorted(windows, key=lambda w: (-w.estimated_tokens, w.index)):
        total, shard = heapq.heappop(heap)
        assigned[shard].append(window.index)
        totals[shard] = total + window.estimated_tokens
        heapq.heappush(heap, (totals[shard], shard))
    return [sorted(indexes) for indexes in assigned], totals


def _even_blocks(count: int, size: int) -> list[tuple[int, int]]:
    """`count` positions cut into the fewest blocks of at most `size`, their lengths differing by at most one."""
    if count == 0:
        return []
    blocks = math.ceil(count / size)
    base, extra = divmod(count, blocks)
    spans, start = [], 0
    for block in range(blocks):
        length = base + (1 if block < extra else 0)
        spans.append((start, start + length - 1))
        start += length
    return spans
