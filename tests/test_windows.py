"""Tests of f.matter.windows: page windows, token budgets and shards."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f.matter import windows
from f.matter.errors import InputError
from f.matter.models import Document, Page, WindowPlan, Word

RESERVED = windows.DEFAULT_PROMPT_TOKENS + windows.DEFAULT_OUTPUT_TOKENS
MIN_CONTEXT = RESERVED + windows.MIN_TOKEN_BUDGET


def context_for(budget: int) -> int:
    """The context_tokens that leaves exactly `budget` tokens for page text."""
    return budget + RESERVED


@st.composite
def page_lists(draw) -> list[tuple[int, int]]:
    """(page number, tokens): numbers strictly increasing from >= 1, with gaps; tokens 0..5000."""
    count = draw(st.integers(0, 40))
    number = draw(st.integers(1, 5))
    pages = []
    for _ in range(count):
        pages.append((number, draw(st.integers(0, 5000))))
        number += draw(st.integers(1, 4))
    return pages


plan_settings = st.fixed_dictionaries(
    {
        "window_pages": st.integers(1, 20),
        "overlap_pages": st.integers(0, 5),
        # small budgets (256..3000 tokens, below the 5000-token pages) or large ones (up to Llama 3.1's 128K)
        "context_tokens": st.one_of(
            st.integers(MIN_CONTEXT, context_for(3000)), st.integers(MIN_CONTEXT, 131_072)
        ),
        "shards": st.integers(1, 8),
    }
)


def owned_numbers(window, numbers: list[int]) -> list[int]:
    return [n for n in numbers if window.owned_first <= n <= window.owned_last]


@settings(max_examples=300, deadline=None)
@given(pages=page_lists(), options=plan_settings)
def test_plan_invariants_hold_for_random_pages_and_settings(pages, options):
    result = windows.plan(pages, **options)
    budget = result.settings.token_budget
    assert budget == options["context_tokens"] - RESERVED
    numbers = [n for n, _ in pages]
    tokens = dict(pages)
    position = {n: i for i, n in enumerate(numbers)}

    # windows are in page order with consecutive 1-based indexes
    assert [w.index for w in result.windows] == list(range(1, len(result.windows) + 1))
    # every page is owned by exactly one window, in page order
    owned = [n for w in result.windows for n in owned_numbers(w, numbers)]
    assert owned == numbers

    for w in result.windows:
        block = owned_numbers(w, numbers)
        assert 1 <= len(block) <= options["window_pages"]
        assert w.first <= w.owned_first <= w.owned_last <= w.last
        read = numbers[position[w.first] : position[w.last] + 1]
        assert w.pages == len(read)
        assert position[w.owned_first] - position[w.first] <= options["overlap_pages"]
        assert position[w.last] - position[w.owned_last] <= options["overlap_pages"]
        assert w.estimated_tokens == sum(tokens[n] for n in read)
        if w.estimated_tokens > budget:
            assert len(block) == 1 and tokens[block[0]] > budget
            assert w.over_budget and w.pages == 1
        else:
            assert not w.over_budget
    assert result.over_budget_windows == [w.index for w in result.windows if w.over_budget]


@settings(max_examples=300, deadline=None)
@given(pages=page_lists(), options=plan_settings)
def test_shards_partition_windows_and_balance_tokens_within_lpt_bound(pages, options):
    result = windows.plan(pages, **options)
    by_index = {w.index: w.estimated_tokens for w in result.windows}
    assert len(result.shards) == len(result.shard_tokens) == options["shards"]
    dealt = [index for shard in result.shards for index in shard]
    assert sorted(dealt) == sorted(by_index)  # each window in exactly one shard
    assert len(dealt) == len(set(dealt))
    for shard, total in zip(result.shards, result.shard_tokens, strict=True):
        assert shard == sorted(shard)
        assert total == sum(by_index[i] for i in shard)
    largest = max(by_index.values(), default=0)
    assert max(result.shard_tokens) - min(result.shard_tokens) <= largest


@settings(max_examples=100, deadline=None)
@given(pages=page_lists(), options=plan_settings)
def test_plan_round_trips_through_json(pages, options):
    result = windows.plan(pages, **options)
    assert WindowPlan.model_validate_json(result.model_dump_json()) == result


# ---------------------------------------------------------------------------------------------------------------
# Documented behaviour, by example


def owned_blocks(result) -> list[tuple[int, int]]:
    return [(w.owned_first, w.owned_last) for w in result.windows]


def test_seventeen_pages_with_window_eight_are_owned_six_six_five():
    result = windows.plan([(n, 10) for n in range(1, 18)], window_pages=8, overlap_pages=0, shards=1)
    assert owned_blocks(result) == [(1, 6), (7, 12), (13, 17)]


def test_overlap_context_is_truncated_at_document_edges():
    result = windows.plan([(n, 10) for n in range(1, 11)], window_pages=5, overlap_pages=2)
    first, second = result.windows
    assert (first.first, first.owned_first, first.owned_last, first.last) == (1, 1, 5, 7)
    assert (second.first, second.owned_first, second.owned_last, second.last) == (4, 6, 10, 10)
    assert (first.pages, second.pages) == (7, 7)


def test_overlap_context_counts_pages_not_page_numbers_when_numbers_have_gaps():
    pages = [(1, 10), (5, 10), (9, 10), (20, 10)]
    result = windows.plan(pages, window_pages=2, overlap_pages=1)
    assert [(w.first, w.owned_first, w.owned_last, w.last) for w in result.windows] == [
        (1, 1, 5, 9),
        (5, 9, 20, 20),
    ]


def test_block_over_budget_is_split_in_halves():
    pages = [(n, 1000) for n in range(1, 6)]
    result = windows.plan(pages, window_pages=5, overlap_pages=0, context_tokens=context_for(3000))
    assert owned_blocks(result) == [(1, 3), (4, 5)]
    assert [w.estimated_tokens for w in result.windows] == [3000, 2000]

    result = windows.plan(pages[:4], window_pages=4, overlap_pages=0, context_tokens=context_for(2999))
    assert owned_blocks(result) == [(1, 2), (3, 4)]


def test_single_page_whose_context_does_not_fit_loses_farthest_context_first():
    pages = [(n, 300) for n in range(1, 6)]
    result = windows.plan(pages, window_pages=1, overlap_pages=2, context_tokens=context_for(1000))
    reads = {w.owned_first: (w.first, w.last) for w in result.windows}
    # page 2 could read 1..4 (1200 tokens): page 4, two pages away, goes before page 1, one page away
    assert reads[2] == (1, 3)
    # page 3 could read 1..5 (1500 tokens): one page off each far end
    assert reads[3] == (2, 4)
    assert reads[4] == (3, 5)
    assert all(w.estimated_tokens <= 1000 and not w.over_budget for w in result.windows)


def test_single_page_larger_than_budget_is_a_window_of_its_own_flagged_over_budget():
    pages = [(1, 100), (2, 5000), (3, 100)]
    result = windows.plan(pages, window_pages=3, overlap_pages=1, context_tokens=context_for(1000))
    big = next(w for w in result.windows if w.owned_first == 2)
    assert (big.first, big.last, big.pages, big.estimated_tokens, big.over_budget) == (2, 2, 1, 5000, True)
    assert result.over_budget_windows == [big.index]


def test_zero_shards_raises_input_error_naming_shards():
    with pytest.raises(InputError, match="shards") as caught:
        windows.plan([(1, 10)], shards=0)
    assert caught.value.where == "shards"


def test_context_too_small_for_prompt_and_answer_raises_input_error_naming_context_tokens():
    with pytest.raises(InputError, match="context_tokens") as caught:
        windows.plan([(1, 10)], context_tokens=MIN_CONTEXT - 1)
    assert caught.value.where == "context_tokens"
    assert windows.token_budget(MIN_CONTEXT) == windows.MIN_TOKEN_BUDGET


def test_pages_out_of_order_or_repeated_raise_input_error_naming_pages():
    for pages in ([(2, 10), (1, 10)], [(1, 10), (1, 10)]):
        with pytest.raises(InputError) as caught:
            windows.plan(pages)
        assert caught.value.where == "pages"


def test_no_pages_plan_no_windows_and_empty_shards():
    result = windows.plan([], shards=3)
    assert result.windows == [] and result.shards == [[], [], []] and result.shard_tokens == [0, 0, 0]


def test_estimate_tokens_counts_a_page_marker_for_empty_text():
    assert windows.estimate_tokens("") == windows.PAGE_MARKER_TOKENS


@settings(max_examples=100, deadline=None)
@given(short=st.text(max_size=500), extra=st.text(min_size=1, max_size=500))
def test_estimate_tokens_grows_with_text_length(short, extra):
    longer = short + extra
    assert windows.estimate_tokens(longer) >= windows.estimate_tokens(short)
    assert (
        windows.estimate_tokens(longer)
        == math.ceil(len(longer) / windows.CHARS_PER_TOKEN) + windows.PAGE_MARKER_TOKENS
    )
    if len(extra) >= 4:
        assert windows.estimate_tokens(longer) > windows.estimate_tokens(short)


def test_plan_document_plans_a_document_built_from_models():
    texts = {1: "x" * 350, 2: "", 4: "y" * 700, 5: "z" * 35}
    document = Document(
        source_format="document-intelligence-v4",
        pages=[Page(number=n, text=t, words=[Word("w", 0.9)]) for n, t in texts.items()],
    )
    result = windows.plan_document(document, window_pages=2, overlap_pages=1, shards=2)
    expected_tokens = {n: windows.estimate_tokens(t) for n, t in texts.items()}
    assert expected_tokens == {1: 112, 2: 12, 4: 212, 5: 22}
    assert owned_blocks(result) == [(1, 2), (4, 5)]
    assert [(w.first, w.last) for w in result.windows] == [(1, 4), (2, 5)]
    assert [w.estimated_tokens for w in result.windows] == [112 + 12 + 212, 12 + 212 + 22]
    assert result.settings.window_pages == 2 and result.settings.overlap_pages == 1
    assert result.settings.token_budget == windows.DEFAULT_CONTEXT_TOKENS - RESERVED
    assert sorted(i for shard in result.shards for i in shard) == [1, 2]
