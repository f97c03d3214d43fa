"""Tests of the pure core of f.matter.ocr_confidence: score_page, score_document, percentile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f.matter.documents import parse_ocr
from f.matter.models import Document, Page, Word
from f.matter.ocr_confidence import DEFAULT_MIN_CONFIDENCE, percentile, score_document, score_page

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json"))
# Mean word confidence of each fixture, as SOURCES.md states it (4 decimals).
SOURCES_MEAN = {
    "di-v4.0-2024-11-30-prebuilt-layout-bcgov-sdpr-form.json": 0.9800,
    "di-v4.0-2024-11-30-prebuilt-layout-bcgov-lowconf.json": 0.3848,
    "fr-v3-2021-09-30-preview-layout-ocr-form-tools.json": 0.9883,
    "fr-v2.1-layout-sample-layout-output.json": 1.0,
    "fr-v2.1-idDocument-passport-IDResult-Passport.json": 0.6359,
}


def raw_page_confidences(path: Path) -> list[list[float]]:
    """Word confidences per page, read from the raw JSON with the standard library only."""
    root = json.loads(path.read_text(encoding="utf-8"))
    result = root.get("analyzeResult", root)
    if "pages" in result:  # Document Intelligence v3 / v4
        return [[word["confidence"] for word in page.get("words", [])] for page in result["pages"]]
    return [  # Form Recognizer v2.1
        [word["confidence"] for line in page.get("lines", []) for word in line.get("words", [])]
        for page in result["readResults"]
    ]


def document(*pages: list[float]) -> Document:
    """A document whose page n+1 has words with the given confidences."""
    return Document(
        source_format="document-intelligence-v4",
        pages=[
            Page(number=n, words=[Word(f"w{i}", c) for i, c in enumerate(confidences)])
            for n, confidences in enumerate(pages, start=1)
        ],
    )


def test_every_fixture_in_sources_table_is_present():
    assert {path.name for path in FIXTURE_FILES} == set(SOURCES_MEAN)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda path: path.name)
def test_fixture_scores_match_independent_numpy_computation(path):
    per_page = raw_page_confidences(path)
    every_word = np.array([c for page in per_page for c in page], dtype=float)
    page_means = [float(np.mean(page)) for page in per_page if page]

    report = score_document(parse_ocr(path.read_bytes()), DEFAULT_MIN_CONFIDENCE)
    doc = report.document

    assert doc.pages == len(per_page)
    assert doc.words == every_word.size
    assert doc.mean_word_confidence == pytest.approx(np.mean(every_word))
    assert doc.page_weighted_mean == pytest.approx(np.mean(page_means))
    assert doc.min == pytest.approx(np.min(every_word))
    for q, value in ((10, doc.p10), (50, doc.p50), (90, doc.p90)):
        assert value == pytest.approx(np.percentile(every_word, q))
    assert doc.min_page_mean == pytest.approx(min(page_means))
    assert doc.min_confidence == DEFAULT_MIN_CONFIDENCE
    assert doc.flagged_pages == [
        p.page for p in report.pages if p.mean_word_confidence < DEFAULT_MIN_CONFIDENCE
    ]
    assert doc.pages_without_words == []
    for page, confidences in zip(report.pages, per_page, strict=True):
        assert page.words == len(confidences)
        assert page.mean_word_confidence == pytest.approx(np.mean(confidences))
        assert page.below_threshold == int(np.sum(np.array(confidences) < DEFAULT_MIN_CONFIDENCE))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda path: path.name)
def test_fixture_mean_word_confidence_matches_sources_table(path):
    mean = score_document(parse_ocr(path.read_bytes())).document.mean_word_confidence
    assert round(mean, 4) == SOURCES_MEAN[path.name]


def test_low_quality_fixtures_are_flagged_and_clean_ones_are_not():
    flagged = {
        path.name: score_document(parse_ocr(path.read_bytes()), 0.80).document.flagged_pages
        for path in FIXTURE_FILES
    }
    assert {name for name, pages in flagged.items() if pages} == {
        "di-v4.0-2024-11-30-prebuilt-layout-bcgov-lowconf.json",
        "fr-v2.1-idDocument-passport-IDResult-Passport.json",
    }


# ---------------------------------------------------------------------------------------------------------------
# percentile

unit_floats = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(unit_floats, min_size=1, max_size=60), q=st.sampled_from([0, 10, 25, 50, 75, 90, 100]))
def test_percentile_equals_numpy_linear_percentile(values, q):
    ordered = sorted(values)
    assert percentile(ordered, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(unit_floats, min_size=1, max_size=60), q=st.floats(0, 100))
def test_percentile_equals_numpy_for_any_q_and_stays_within_the_values(values, q):
    ordered = sorted(values)
    result = percentile(ordered, q)
    assert result == pytest.approx(float(np.percentile(values, q)), rel=1e-12, abs=1e-12)
    assert ordered[0] <= result <= ordered[-1]


def test_percentile_of_no_values_is_none():
    assert percentile([], 50) is None


# ---------------------------------------------------------------------------------------------------------------
# score_page / score_document on synthetic documents


def test_word_weighted_mean_differs_from_page_weighted_mean_when_pages_differ_in_size():
    doc = score_document(document([1.0, 1.0, 1.0], [0.0])).document
    assert doc.mean_word_confidence == pytest.approx(0.75)  # 3 of 4 words are sure
    assert doc.page_weighted_mean == pytest.approx(0.5)  # one sure page, one unsure page
    assert doc.min_page_mean == 0.0
    assert doc.flagged_pages == [2]


@settings(max_examples=100, deadline=None)
@given(
    big=st.lists(unit_floats, min_size=1, max_size=30),
    small=st.lists(unit_floats, min_size=1, max_size=30),
)
def test_word_mean_weights_words_and_page_mean_weights_pages(big, small):
    doc = score_document(document(big, small)).document
    big_mean, small_mean = np.mean(big), np.mean(small)
    assert doc.mean_word_confidence == pytest.approx(np.mean(big + small))
    assert doc.page_weighted_mean == pytest.approx((big_mean + small_mean) / 2)
    expected_word_mean = (len(big) * big_mean + len(small) * small_mean) / (len(big) + len(small))
    assert doc.mean_word_confidence == pytest.approx(expected_word_mean)


def test_page_without_words_has_no_mean_is_not_flagged_and_is_listed():
    page = score_page(Page(number=7, text="", words=[]), 0.8)
    assert page.mean_word_confidence is None
    assert (page.words, page.below_threshold, page.flagged) == (0, 0, False)

    report = score_document(document([0.9, 0.7], [], [0.1]), 0.8)
    assert report.pages[1].mean_word_confidence is None
    assert report.document.pages_without_words == [2]
    assert report.document.flagged_pages == [3]
    assert report.document.page_weighted_mean == pytest.approx((0.8 + 0.1) / 2)  # the empty page is not a 0
    assert report.document.min_page_mean == pytest.approx(0.1)


def test_page_mean_equal_to_threshold_is_not_flagged_and_word_at_threshold_is_not_below():
    page = score_page(Page(number=1, words=[Word("a", 0.5), Word("b", 0.5)]), 0.5)
    assert (page.flagged, page.below_threshold) == (False, 0)


def test_document_without_pages_has_none_aggregates():
    doc = score_document(Document(source_format="document-intelligence-v4", pages=[])).document
    assert (doc.pages, doc.words) == (0, 0)
    assert doc.mean_word_confidence is doc.page_weighted_mean is doc.min is None
    assert doc.p10 is doc.p50 is doc.p90 is doc.min_page_mean is None
    assert doc.flagged_pages == doc.pages_without_words == []


def test_document_whose_pages_all_lack_words_has_none_aggregates():
    doc = score_document(document([], [])).document
    assert (doc.pages, doc.words) == (2, 0)
    assert (
        doc.mean_word_confidence is doc.page_weighted_mean is doc.min is doc.p50 is doc.min_page_mean is None
    )
    assert doc.flagged_pages == [] and doc.pages_without_words == [1, 2]


@settings(max_examples=150, deadline=None)
@given(pages=st.lists(st.lists(unit_floats, max_size=10), max_size=8), threshold=unit_floats)
def test_flags_and_counts_follow_the_threshold_on_random_documents(pages, threshold):
    report = score_document(document(*pages), threshold)
    assert [p.page for p in report.pages] == list(range(1, len(pages) + 1))
    for scored, confidences in zip(report.pages, pages, strict=True):
        assert scored.words == len(confidences)
        assert scored.below_threshold == sum(1 for c in confidences if c < threshold)
        if confidences:
            assert scored.mean_word_confidence == pytest.approx(math.fsum(confidences) / len(confidences))
        else:
            assert scored.mean_word_confidence is None and not scored.flagged
    doc = report.document
    assert doc.flagged_pages == [
        p.page
        for p in report.pages
        if p.mean_word_confidence is not None and p.mean_word_confidence < threshold
    ]
    assert doc.pages_without_words == [n for n, confidences in enumerate(pages, start=1) if not confidences]
    assert doc.words == sum(map(len, pages))
    every_word = [c for confidences in pages for c in confidences]
    if every_word:
        assert doc.min == min(every_word)
        assert doc.p50 == pytest.approx(float(np.percentile(every_word, 50)), rel=1e-12, abs=1e-12)
        assert doc.min_page_mean == min(p.mean_word_confidence for p in report.pages if p.words)
    else:
        assert doc.mean_word_confidence is None and doc.min is None and doc.min_page_mean is None
