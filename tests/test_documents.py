"""OCR result parsing: every supported shape, the real fixtures, and every malformed input named precisely."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f.matter.documents import MAX_PAGE_CHARS, parse_ocr
from f.matter.errors import InputError, OcrFormatError
from matterflow.synth import synthetic_layout_bytes

# From shared/fixtures/SOURCES.md: words on the (single) page of each file.
EXPECTED = {
    "di-v4.0-2024-11-30-prebuilt-layout-bcgov-sdpr-form.json": ("document-intelligence-v4", 432),
    "di-v4.0-2024-11-30-prebuilt-layout-bcgov-lowconf.json": ("document-intelligence-v4", 370),
    "fr-v3-2021-09-30-preview-layout-ocr-form-tools.json": ("document-intelligence-v3", 44),
    "fr-v2.1-layout-sample-layout-output.json": ("form-recognizer-v2.1", 425),
    "fr-v2.1-idDocument-passport-IDResult-Passport.json": ("form-recognizer-v2.1", 109),
}


def di(pages: list[dict], **result: object) -> bytes:
    return json.dumps({"status": "succeeded", "analyzeResult": {"apiVersion": "2024-11-30", **result, "pages": pages}}).encode()


def page(number: int | None = 1, words: list | None = None, **extra: object) -> dict:
    body = {"words": [{"content": "Lease", "confidence": 0.9}] if words is None else words, **extra}
    if number is not None:
        body["pageNumber"] = number
    return body


def test_every_shared_fixture_parses_to_its_documented_shape(fixture_files: list[Path]) -> None:
    assert {path.name for path in fixture_files} == set(EXPECTED)
    for path in fixture_files:
        document = parse_ocr(path.read_bytes(), source=path.name)
        fmt, words = EXPECTED[path.name]
        assert document.source_format == fmt, path.name
        assert [p.number for p in document.pages] == [1]
        assert len(document.pages[0].words) == words, path.name
        assert document.pages[0].text.strip(), path.name
        assert document.pages[0].unit in ("pixel", "inch")


def test_page_text_comes_from_the_page_spans_into_content(fixture_files: list[Path]) -> None:
    path = next(p for p in fixture_files if p.name.startswith("fr-v3"))
    raw = json.loads(path.read_bytes())["analyzeResult"]
    span = raw["pages"][0]["spans"][0]
    document = parse_ocr(path.read_bytes())
    assert document.pages[0].text == raw["content"][span["offset"] : span["offset"] + span["length"]]


def test_a_bare_analyze_result_parses_like_its_envelope(fixture_files: list[Path]) -> None:
    for path in fixture_files:
        enveloped = parse_ocr(path.read_bytes())
        bare = parse_ocr(json.dumps(json.loads(path.read_bytes())["analyzeResult"]).encode())
        assert bare == enveloped, path.name


def test_read_3_2_results_are_recognised(fixture_files: list[Path]) -> None:
    path = next(p for p in fixture_files if "layout-sample" in p.name)
    raw = json.loads(path.read_bytes())
    raw["analyzeResult"]["version"] = "3.2.0"
    document = parse_ocr(json.dumps(raw).encode())
    assert document.source_format == "read-v3.2"
    assert document.pages[0].text.startswith("UNITED STATES\n")


def test_utf16_code_unit_spans_are_sliced_in_utf16() -> None:
    content = "Clause 😀 one\nSecond page"
    first_len = len("Clause 😀 one".encode("utf-16-le")) // 2  # the emoji is two UTF-16 code units
    pages = [
        page(1, spans=[{"offset": 0, "length": first_len}]),
        page(2, spans=[{"offset": first_len + 1, "length": len("Second page")}]),
    ]
    document = parse_ocr(di(pages, content=content, stringIndexType="utf16CodeUnit"))
    assert [p.text for p in document.pages] == ["Clause 😀 one", "Second page"]


def test_pages_are_returned_in_page_number_order_with_gaps_allowed() -> None:
    document = parse_ocr(di([page(7), page(3), page(4)]))
    assert [p.number for p in document.pages] == [3, 4, 7]


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    assert parse_ocr(b"\xef\xbb\xbf" + di([page(1)])).pages[0].words[0].content == "Lease"


def test_a_large_synthetic_document_parses_with_every_page_and_word() -> None:
    data = synthetic_layout_bytes(60, words_per_page=120, seed=3, blank_pages=[10])
    document = parse_ocr(data)
    assert len(document.pages) == 60
    assert document.word_count == 59 * 120
    assert document.pages[9].words == [] and document.pages[9].text == ""


confidences = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
word_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(word_text, confidences), max_size=15), min_size=1, max_size=8))
def test_words_and_confidences_survive_parsing_unchanged(pages_words: list[list[tuple[str, float]]]) -> None:
    pages = [page(i + 1, [{"content": w, "confidence": c} for w, c in words]) for i, words in enumerate(pages_words)]
    document = parse_ocr(di(pages))
    assert [[(w.content, w.confidence) for w in p.words] for p in document.pages] == pages_words


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.from_regex(rb'\{"(analyzeResult|pages|readResults)": ?[\[\{].{0,80}', fullmatch=True))
def test_arbitrary_bytes_raise_only_the_typed_error(data: bytes) -> None:
    with contextlib.suppress(OcrFormatError):
        parse_ocr(data)


# ---------------------------------------------------------------------------------------------------------------
# Malformed inputs: each gets a specific error naming what is wrong and where.

BIG_PAGE_TEXT = "x" * (50 * 1024 * 1024)

MALFORMED = {
    "empty file": (b"", "the file is empty"),
    "whitespace only": (b"  \n ", "the file is empty"),
    "not JSON": (b"Lease agreement between the parties", "not valid JSON: Expecting value at line 1, column 1"),
    "truncated JSON": (di([page(1)])[:-7], "truncated"),
    "non-UTF-8 bytes": (di([page(1, [{"content": "caf\u00e9", "confidence": 0.9}])]).replace(b"\\u00e9", b"\xe9"), "not valid UTF-8 (byte 0xe9 at offset"),
    "UTF-16 file": (json.dumps({"pages": []}).encode("utf-16"), "looks like UTF-16"),
    "top-level array": (b"[1, 2, 3]", "unknown shape: the top level is an array"),
    "unknown shape": (b'{"documents": [], "kind": "invoice"}', "found an object with keys 'documents', 'kind'"),
    "analyzeResult without pages": (b'{"status": "succeeded", "analyzeResult": {"modelId": "x"}}', "an analyzeResult without pages or readResults"),
    "failed operation": (b'{"status": "failed", "error": {"code": "InvalidImage", "message": "corrupt"}}', "status 'failed', not 'succeeded': InvalidImage: corrupt"),
    "no pages": (di([]), "the OCR result has no pages"),
    "page number missing": (di([page(1), page(None)]), "page #2 in the file has no 'pageNumber'"),
    "page number repeated": (di([page(1), page(2), page(2)]), "page number 2 appears twice (pages #2 and #3 in the file)"),
    "page number zero": (di([page(0)]), "page #1 in the file has pageNumber 0"),
    "confidence NaN": (di([page(1, [{"content": "a", "confidence": 0.5}, {"content": "Tenant", "confidence": float("nan")}])]), "page 1, word 2 ('Tenant') has confidence NaN"),
    "confidence Infinity": (di([page(3, [{"content": "rent", "confidence": float("inf")}])]), "page 3, word 1 ('rent') has confidence inf, outside [0, 1]"),
    "confidence negative": (di([page(4, [{"content": "rent", "confidence": -0.2}])]), "page 4, word 1 ('rent') has confidence -0.2, outside [0, 1]"),
    "confidence above 1": (di([page(2, [{"content": "due", "confidence": 1.5}])]), "page 2, word 1 ('due') has confidence 1.5, outside [0, 1]"),
    "confidence missing": (di([page(2, [{"content": "due"}])]), "page 2, word 1 ('due') has no confidence"),
    "confidence not a number": (di([page(2, [{"content": "due", "confidence": "high"}])]), "got `str` at $.analyzeResult.pages[0].words[0].confidence (page #1 in the file, word #1)"),
    "word without content": (di([page(5, [{"content": "a", "confidence": 0.9}, {"confidence": 0.9}])]), "page 5, word 2 has no content"),
    "word with empty content": (di([page(5, [{"content": "", "confidence": 0.9}])]), "page 5, word 1 has no content"),
    "v2.1 word out of range": (b'{"analyzeResult": {"version": "2.1.0", "readResults": [{"page": 1, "lines": [{"text": "x", "words": [{"text": "x", "confidence": 7}]}]}]}}', "page 1, word 1 ('x') has confidence 7.0, outside [0, 1]"),
    "span outside content": (di([page(1, spans=[{"offset": 0, "length": 99}])], content="short"), "page 1 has a span (offset 0, length 99) outside the document's content (5 characters)"),
    "50 MB single page": (di([page(1, spans=[{"offset": 0, "length": len(BIG_PAGE_TEXT)}])], content=BIG_PAGE_TEXT), f"page 1 has 52,428,800 characters of text, more than the {MAX_PAGE_CHARS:,}"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_gets_a_specific_error(case: str) -> None:
    data, expected = MALFORMED[case]
    with pytest.raises(OcrFormatError) as info:
        parse_ocr(data, source="matters/M-1/doc.json")
    message = str(info.value)
    assert expected in message
    assert message.startswith("matters/M-1/doc.json: "), "the error names the input"
    assert isinstance(info.value, InputError)


def test_nan_in_a_large_file_still_names_page_and_word() -> None:
    pages = [page(n, [{"content": f"w{n}", "confidence": 0.9}] * 50) for n in range(1, 200)]
    pages[150]["words"][7] = {"content": "breach", "confidence": math.nan}
    with pytest.raises(OcrFormatError, match=r"page 151, word 8 \('breach'\) has confidence NaN"):
        parse_ocr(di(pages))


def test_decoded_document_round_trips_through_msgspec(fixture_files: list[Path]) -> None:
    from f.matter.models import Document

    document = parse_ocr(fixture_files[0].read_bytes())
    assert msgspec.json.decode(msgspec.json.encode(document), type=Document) == document
