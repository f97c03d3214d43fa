"""Azure OCR results -> the normalized `Document`.

Reads the JSON that Azure Document Intelligence (v4.0, v3.x), Form Recognizer v2.1 and Computer Vision Read 3.2
return, with or without the operation envelope `{status, createdDateTime, analyzeResult}`, detects which one it
is, and normalizes it to a `Document` of `Page`s. Decoding goes straight into typed `msgspec` structs that hold
only the fields matterflow uses: on a 2,000-page result that is ~10x faster and ~15x leaner than a generic JSON
tree. Every rejection is an `OcrFormatError` naming what is wrong and where (page, word, byte offset).
"""

from __future__ import annotations

import itertools
import json
import math
import re

import msgspec

from .errors import OcrFormatError
from .models import Document, Page, Word

# A dense legal page holds ~5,000 characters and ~800 words; these limits are 40x that, so they only stop
# inputs that are not what they claim to be (a whole book as "one page") before they reach a model.
MAX_PAGE_CHARS = 200_000
MAX_PAGE_WORDS = 40_000
MAX_INPUT_BYTES = 2 * 1024**3
# Azure analyses at most 2,000 pages a document and numbers them from 1; a page number far beyond that is not a
# page number (and ranges over page numbers, in the planner and the merge, must stay small).
MAX_PAGE_NUMBER = 100_000

# ---------------------------------------------------------------------------------------------------------------
# Raw shapes: only the fields we read; msgspec skips everything else without materializing it.


class _Span(msgspec.Struct):
    offset: int
    length: int


class _DiWord(msgspec.Struct, gc=False):  # untracked: 700,000 of them need no cycle collection
    content: str | None = None
    confidence: float | None = None


class _DiPage(msgspec.Struct):
    pageNumber: int | None = None
    width: float | None = None
    height: float | None = None
    unit: str | None = None
    words: list[_DiWord] = []
    spans: list[_Span] = []


class _ReadWord(msgspec.Struct, gc=False):
    text: str | None = None
    confidence: float | None = None


class _ReadLine(msgspec.Struct):
    text: str | None = None
    words: list[_ReadWord] = []


class _ReadPage(msgspec.Struct):
    page: int | None = None
    width: float | None = None
    height: float | None = None
    unit: str | None = None
    lines: list[_ReadLine] = []


class _OperationError(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _AnalyzeResult(msgspec.Struct):
    apiVersion: str | None = None  # v3 / v4
    version: str | None = None  # v2.1 / Read 3.2
    stringIndexType: str | None = None
    content: str | None = None
    pages: list[_DiPage] | None = None
    readResults: list[_ReadPage] | None = None


class _Root(_AnalyzeResult):
    """Either an operation envelope (status + analyzeResult) or a bare analyzeResult."""

    status: str | None = None
    analyzeResult: _AnalyzeResult | None = None
    error: _OperationError | None = None


_DECODER = msgspec.json.Decoder(_Root)
_KEYS_DECODER = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENCODER = msgspec.json.Encoder()
# JSON may spell UTF-16 surrogates as escapes (\ud83d\ude00 is one emoji); an unpaired one decodes to a str
# that cannot be written as UTF-8. Only files containing such an escape are checked string by string.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


# ---------------------------------------------------------------------------------------------------------------
# Public API


def parse_ocr(data: bytes, *, source: str = "input") -> Document:
    """Decode an Azure OCR result and normalize it. `source` names the input in error messages."""
    data = _check_bytes(data, source)
    try:
        try:
            root = _DECODER.decode(data)
        except msgspec.ValidationError as exc:
            raise _shape_error(data, exc, source) from None
        except msgspec.DecodeError:
            root = _decode_leniently(data, source)
    except RecursionError:
        raise OcrFormatError("the JSON is nested too deeply to be an Azure OCR result", where=source) from None
    document = normalize(root, source=source, raw=data)
    if _SURROGATE_ESCAPE.search(data):
        _check_unicode(document, source)
    return document


def normalize(root: _Root, *, source: str = "input", raw: bytes | None = None) -> Document:
    """Turn a decoded raw result into a validated `Document`. `raw`, when given, improves shape errors."""
    if root.status is not None and root.status.lower() != "succeeded":
        detail = ""
        if root.error is not None:
            detail = f": {root.error.code or 'error'}: {root.error.message or ''}".rstrip(": ")
        raise OcrFormatError(
            f"the OCR operation has status {root.status!r}, not 'succeeded'{detail}; re-run the analysis",
            where=source,
        )
    result: _AnalyzeResult = root.analyzeResult if root.analyzeResult is not None else root
    if result.pages is not None:
        pages = _di_pages(result, source)
        api = result.apiVersion
        fmt = "document-intelligence-v4" if api is None or api >= "2023-10-31" else "document-intelligence-v3"
    elif result.readResults is not None:
        pages = _read_pages(result.readResults, source)
        api = result.version
        fmt = "read-v3.2" if api and api.startswith("3.") else "form-recognizer-v2.1"
    else:
        raise OcrFormatError(
            "unknown shape: expected an Azure Document Intelligence result with analyzeResult.pages[] (v3/v4) or "
            f"analyzeResult.readResults[] (v2.1, Read 3.2); found {_describe_keys(root, raw)}",
            where=source,
        )
    if not pages:
        raise OcrFormatError("the OCR result has no pages", where=source)
    return Document(source_format=fmt, api_version=api, pages=_in_page_order(pages, source))


# ---------------------------------------------------------------------------------------------------------------
# Format readers


def _di_pages(result: _AnalyzeResult, source: str) -> list[Page]:
    """Normalize v3/v4 pages. Consumes `result.pages` (each raw page is dropped once read)."""
    content = result.content
    utf16 = (result.stringIndexType or "").lower() == "utf16codeunit"
    # surrogatepass: an unpaired surrogate is one UTF-16 code unit, so offsets stay right; slices decode with U+FFFD
    encoded = content.encode("utf-16-le", "surrogatepass") if utf16 and content is not None else None
    pages = []
    raw_pages = result.pages or []
    for position in range(1, len(raw_pages) + 1):
        # Drop each raw page once read, so its words' memory serves the normalized words: the peak stays near
        # one copy of the document instead of two (bench/NOTES.md, parse).
        raw, raw_pages[position - 1] = raw_pages[position - 1], None
        number = _page_number(raw.pageNumber, position, "pageNumber", source)
        words = _words(((w.content, w.confidence) for w in raw.words), number, source)
        if content is None or not raw.spans:
            text = " ".join(word.content for word in words)
        else:
            text = _span_text(content, encoded, raw.spans, number, source)
        pages.append(_page(number, raw.width, raw.height, raw.unit, text, words, source))
    return pages


def _read_pages(read_results: list[_ReadPage], source: str) -> list[Page]:
    pages = []
    for position, raw in enumerate(read_results, start=1):
        number = _page_number(raw.page, position, "page", source)
        words = _words(((w.text, w.confidence) for line in raw.lines for w in line.words), number, source)
        text = "\n".join(line.text if line.text is not None else "" for line in raw.lines)
        pages.append(_page(number, raw.width, raw.height, raw.unit, text, words, source))
    return pages


def _page_number(value: int | None, position: int, field: str, source: str) -> int:
    if value is None:
        raise OcrFormatError(f"page #{position} in the file has no {field!r}", where=source)
    if value < 1:
        raise OcrFormatError(f"page #{position} in the file has {field} {value}; page numbers start at 1", where=source)
    if value > MAX_PAGE_NUMBER:
        raise OcrFormatError(
            f"page #{position} in the file has {field} {value}, over the {MAX_PAGE_NUMBER:,} a document may have",
            where=source,
        )
    return value


def _words(raw_words, page: int, source: str) -> list[Word]:
    words = []
    for index, (content, confidence) in enumerate(raw_words, start=1):
        # `not 0 <= c <= 1` is also true for NaN, so one comparison rejects NaN and out-of-range values.
        if confidence is None or not 0.0 <= confidence <= 1.0 or not content:
            raise _word_error(content, confidence, page, index, source)
        words.append(Word(content, confidence))
    return words


def _word_error(content: str | None, confidence: float | None, page: int, index: int, source: str) -> OcrFormatError:
    where = f"page {page}, word {index}"
    if not content:
        return OcrFormatError(f"{where} has no content (text)", where=source)
    label = f"{where} ({_clip(content)!r})"
    if confidence is None:
        return OcrFormatError(f"{label} has no confidence", where=source)
    if math.isnan(confidence):
        return OcrFormatError(f"{label} has confidence NaN; confidences must be numbers in [0, 1]", where=source)
    return OcrFormatError(f"{label} has confidence {confidence!r}, outside [0, 1]", where=source)


def _span_text(content: str, encoded: bytes | None, spans: list[_Span], page: int, source: str) -> str:
    size = len(encoded) // 2 if encoded is not None else len(content)
    parts = []
    for span in spans:
        if span.offset < 0 or span.length < 0 or span.offset + span.length > size:
            raise OcrFormatError(
                f"page {page} has a span (offset {span.offset}, length {span.length}) outside the document's "
                f"content ({size} characters)",
                where=source,
            )
        if encoded is not None:
            parts.append(encoded[2 * span.offset : 2 * (span.offset + span.length)].decode("utf-16-le", "replace"))
        else:
            # textElements (the REST default) counts grapheme clusters; for text without combining sequences that
            # equals code points, which is what Python slices by.
            parts.append(content[span.offset : span.offset + span.length])
    return "".join(parts) if len(parts) == 1 else "\n".join(parts)


def _page(number, width, height, unit, text: str, words: list[Word], source: str) -> Page:
    if len(text) > MAX_PAGE_CHARS:
        raise OcrFormatError(
            f"page {number} has {len(text):,} characters of text, more than the {MAX_PAGE_CHARS:,} one page may "
            "have; the file is probably not a page-by-page OCR result",
            where=source,
        )
    if len(words) > MAX_PAGE_WORDS:
        raise OcrFormatError(
            f"page {number} has {len(words):,} words, more than the {MAX_PAGE_WORDS:,} one page may have",
            where=source,
        )
    return Page(number=number, width=width, height=height, unit=unit, text=text, words=words)


def _in_page_order(pages: list[Page], source: str) -> list[Page]:
    seen: dict[int, int] = {}
    for position, page in enumerate(pages, start=1):
        if page.number in seen:
            raise OcrFormatError(
                f"page number {page.number} appears twice (pages #{seen[page.number]} and #{position} in the file)",
                where=source,
            )
        seen[page.number] = position
    if all(a.number < b.number for a, b in itertools.pairwise(pages)):
        return pages
    return sorted(pages, key=lambda page: page.number)


def _check_unicode(document: Document, source: str) -> None:
    """Every string must be writable as UTF-8 (document.json): name the first that holds an unpaired surrogate."""
    for page in document.pages:
        try:
            _ENCODER.encode(page)
        except UnicodeEncodeError:
            index = next((i for i, w in enumerate(page.words, 1) if not _is_unicode(w.content)), None)
            what = f"word {index} has" if index is not None else "the text has"
            raise OcrFormatError(
                f"page {page.number}: {what} an unpaired UTF-16 surrogate (a \\uD800-\\uDFFF escape); the file is "
                "not valid Unicode",
                where=source,
            ) from None
    if document.api_version is not None and not _is_unicode(document.api_version):
        raise OcrFormatError("the apiVersion holds an unpaired UTF-16 surrogate", where=source)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Errors: turn decoder failures into messages that say what and where


def _check_bytes(data: bytes, source: str) -> bytes:
    if not data or not data.strip():
        raise OcrFormatError("the file is empty", where=source)
    if len(data) > MAX_INPUT_BYTES:
        raise OcrFormatError(f"the file is {len(data):,} bytes, over the {MAX_INPUT_BYTES:,} limit", where=source)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and (data[0] == 0 or data[1] == 0)):
        raise OcrFormatError("the file is not UTF-8 text (it looks like UTF-16); save it as UTF-8", where=source)
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark, as some Windows tools write
        data = data[3:]
    return data


def _decode_leniently(data: bytes, source: str) -> _Root:
    """The strict decoder failed: find out why, and name the place.

    JSON has no NaN or Infinity, but Python's and .NET's serializers write them; those files are read with the
    standard library (which accepts them) so that validation can name the page and word that holds one.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OcrFormatError(
            f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start:,}"
            f"{_line_col(data, exc.start)})",
            where=source,
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) - 1 or "Unterminated" in exc.msg:
            raise OcrFormatError(
                f"the JSON ends early at line {exc.lineno}, column {exc.colno}: the file is truncated",
                where=source,
            ) from None
        raise OcrFormatError(
            f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", where=source
        ) from None
    if not isinstance(obj, dict):
        raise OcrFormatError(f"unknown shape: the top level is {_json_kind(data)}, not an Azure OCR result object", where=source)
    try:
        return msgspec.convert(obj, _Root)
    except msgspec.ValidationError as exc:
        raise _shape_error(data, exc, source) from None
    except UnicodeEncodeError:  # msgspec cannot encode a lone surrogate escape (\ud800) even in its error message
        raise OcrFormatError("the JSON holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff) outside page text", where=source) from None


def _shape_error(data: bytes, exc: msgspec.ValidationError, source: str) -> OcrFormatError:
    message = str(exc)
    if " - at `$`" in message or message.startswith("Expected `object`"):
        return OcrFormatError(
            f"unknown shape: the top level is {_json_kind(data)}, not an Azure OCR result object", where=source
        )
    text, _, path = message.partition(" - at `")
    path = path.rstrip("`")
    return OcrFormatError(f"{text} at {_friendly_path(path) or path}", where=source)


_PATH_PART = re.compile(r"\.(pages|readResults)\[(\d+)\](?:\.(?:words|lines)\[(\d+)\])?(?:\.words\[(\d+)\])?")


def _friendly_path(path: str) -> str:
    """`$.analyzeResult.pages[2].words[7].confidence` -> `... (page #3 in the file, word #8)`."""
    match = _PATH_PART.search(path)
    if not match:
        return path
    kind, page_index, first, second = match.groups()
    parts = [f"page #{int(page_index) + 1} in the file"]
    if kind == "pages" and first is not None:
        parts.append(f"word #{int(first) + 1}")
    elif first is not None:
        parts.append(f"line #{int(first) + 1}")
        if second is not None:
            parts.append(f"word #{int(second) + 1}")
    return f"{path} ({', '.join(parts)})"


def _describe_keys(root: _Root, raw: bytes | None) -> str:
    if root.analyzeResult is not None:
        return "an analyzeResult without pages or readResults"
    try:
        keys = list(_KEYS_DECODER.decode(raw)) if raw is not None else []
    except msgspec.MsgspecError:
        keys = []
    if not keys:
        return "an object without any of the keys an Azure OCR result has"
    return "an object with keys " + ", ".join(repr(key) for key in keys[:12]) + (", ..." if len(keys) > 12 else "")


def _json_kind(data: bytes) -> str:
    first = data.lstrip()[:1]
    return {b"[": "an array", b'"': "a string", b"t": "a boolean", b"f": "a boolean", b"n": "null"}.get(
        first, "a number"
    )


def _line_col(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f", line {line}, column {column}"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
