"""Fuzzing the OCR reader: DI-shaped JSON (v4, v3, v2.1/Read shapes, from the real fixtures and the synthetic
generator) with random corruption. Whatever the bytes, `parse_ocr` returns a valid Document or raises one of the
project's own typed errors (f/matter/errors.py), and what it returns can be scored (ocr_confidence), planned
(windows) and staged (document.json) without any other exception.

`make test` runs a bounded number of examples; `make chaos` runs many more, plus a coverage-guided atheris run
when atheris is installed (tests/fuzz_ocr_atheris.py).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from f.matter.documents import parse_ocr
from f.matter.errors import MatterflowError
from f.matter.models import Document
from f.matter.ocr_confidence import score_document
from f.matter.storage import encode_json
from f.matter.windows import plan_document
from matterflow.synth import synthetic_layout_result

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT.parent / "shared" / "fixtures").glob("*.json"))
FAST_EXAMPLES = 300
CHAOS_EXAMPLES = 4000


# ---------------------------------------------------------------------------------------------------------------
# Seeds: the real fixtures cut down to a few pages, lines and words (so each example is cheap) keeping their shape


def _trim(value, depth: int = 0):
    """Keep every key, but at most a few items of each list (pages, words, lines, spans, tables...)."""
    if isinstance(value, dict):
        return {k: _trim(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_trim(v, depth + 1) for v in value[:3 if depth < 4 else 6]]
    return value


@cache
def seeds() -> tuple[dict, ...]:
    found = [_trim(json.loads(path.read_bytes())) for path in FIXTURES]
    found.append(synthetic_layout_result(3, words_per_page=20, seed=1, low_confidence_pages=[2], blank_pages=[3]))
    # v2.1 / Read 3.2 shape without the operation envelope, and a DI v3 result with utf16 offsets
    read = next((s for s in found if "readResults" in (s.get("analyzeResult") or {})), None)
    if read is not None:
        found.append(read["analyzeResult"])
    v4 = copy.deepcopy(found[-2] if read is not None else found[-1])
    v4["analyzeResult"]["stringIndexType"] = "utf16CodeUnit"
    v4["analyzeResult"]["apiVersion"] = "2022-08-31"
    found.append(v4)
    return tuple(found)


def _paths(value, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@cache
def seed_paths(index: int) -> tuple[tuple, ...]:
    return tuple(_paths(seeds()[index]))


# ---------------------------------------------------------------------------------------------------------------
# Corruption


DEEP = re.compile(rb'"__DEEP(\d+)__"')


def _deep(depth: int) -> str:
    """A marker that serialization turns into `depth` nested arrays (deep Python lists would break deepcopy)."""
    return f"__DEEP{depth}__"


nasty_scalars = st.one_of(
    st.just(float("nan")), st.just(float("inf")), st.just(float("-inf")),
    st.just(10**400), st.just(-(10**30)), st.just(2**63), st.just(2**64 + 1), st.just(-1), st.just(0),
    st.just(1e308), st.just(-0.0), st.just(1.0000001), st.just(True), st.just(None),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=30), st.just(""), st.just("\ud800"), st.just("a\x00b"), st.just("\u202e\ufeff"),
    st.builds(lambda: "x" * 300_000),
)
json_values = st.recursive(
    nasty_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["pageNumber", "words", "content", "confidence", "spans", "offset", "length", "page", "lines", "text", "x"]), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_json(draw) -> object:
    index = draw(st.integers(0, len(seeds()) - 1))
    doc = copy.deepcopy(seeds()[index])
    paths = seed_paths(index)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "duplicate", "deep", "empty"]))
        parent, key = _locate(doc, path)
        if parent is None:  # the root
            if op == "replace":
                doc = draw(json_values)
            continue
        try:
            if op == "replace":
                parent[key] = draw(json_values)
            elif op == "delete":
                del parent[key]
            elif op == "duplicate" and isinstance(parent, list):
                parent.insert(key, copy.deepcopy(parent[key]))
            elif op == "deep":
                parent[key] = _deep(draw(st.integers(10, 5000)))
            elif op == "empty":
                parent[key] = type(parent[key])() if isinstance(parent[key], (list, dict, str)) else None
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation moved things: the document is corrupt enough
    return doc


def _locate(doc, path):
    if not path:
        return None, None
    node = doc
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None, None
    return node, path[-1]


def _dumps(value, ensure_ascii: bool) -> bytes:
    data = json.dumps(value, allow_nan=True, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    return DEEP.sub(lambda m: b"[" * int(m.group(1)) + b"1" + b"]" * int(m.group(1)), data)


@st.composite
def corrupt_bytes(draw) -> bytes:
    data = _dumps(draw(mutated_json()), draw(st.booleans()))
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["truncate", "invalid_utf8", "flip", "bom", "utf16", "nest", "splice", "none"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            data = data[:position]
        elif op == "invalid_utf8":
            data = data[:position] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])) + data[position:]
        elif op == "flip":
            data = data[:position] + bytes([draw(st.integers(0, 255))]) + data[position + 1 :]
        elif op == "bom":
            data = b"\xef\xbb\xbf" + data
        elif op == "utf16":
            data = data.decode("utf-8", "replace").encode("utf-16")
        elif op == "nest":
            depth = draw(st.integers(100, 200_000))
            data = b'{"analyzeResult":' * depth + data + b"}" * depth
        elif op == "splice":
            data = data[:position] + draw(st.sampled_from([b"NaN", b"-Infinity", b"1e999", b"-0", b"99999999999999999999999", b'"\\ud800"', b"\\u0000", b"null", b"[]", b"{}", b",,"])) + data[position:]
    return data


# ---------------------------------------------------------------------------------------------------------------
# The property


def _event(text: str) -> None:
    if currently_in_test_context():  # --hypothesis-show-statistics shows how many inputs parsed
        event(text)


def check_one(data: bytes) -> Document | None:
    """The contract: a valid Document that the next steps can use, or a typed matterflow error."""
    try:
        document = parse_ocr(data, source="fuzz.json")
    except MatterflowError as exc:
        _event(f"rejected: {type(exc).__name__}")
        return None
    _event(f"parsed: {document.source_format}")
    assert document.pages, "a document has pages"
    numbers = [page.number for page in document.pages]
    assert numbers == sorted(set(numbers)) and numbers[0] >= 1
    for page in document.pages:
        for word in page.words:
            assert word.content and 0.0 <= word.confidence <= 1.0
    report = score_document(document, 0.8)
    for page in report.pages:
        assert page.mean_word_confidence is None or 0.0 <= page.mean_word_confidence <= 1.0
    for value in (report.document.mean_word_confidence, report.document.min, report.document.p50):
        assert value is None or (math.isfinite(value) and 0.0 <= value <= 1.0)
    staged = encode_json(document)  # document.json, as ingest stages it
    assert msgspec.json.decode(staged, type=Document).pages[-1].number == numbers[-1]
    plan = plan_document(document, window_pages=8, overlap_pages=2, context_tokens=8192, shards=3)
    owned = sorted(p for w in plan.windows for p in range(w.owned_first, w.owned_last + 1) if p in set(numbers))
    assert owned == numbers, "every page is owned by exactly one window"
    return document


def test_the_seeds_themselves_parse() -> None:
    """The strategies start from valid documents of every shape, so corruption is what makes them fail."""
    parsed = [check_one(_dumps(seed, True)) for seed in seeds()]
    assert all(parsed), [i for i, p in enumerate(parsed) if p is None]
    formats = {p.source_format for p in parsed}
    assert {"document-intelligence-v4", "document-intelligence-v3", "form-recognizer-v2.1"} <= formats


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"analyzeResult":' * 5000 + b"1" + b"}" * 5000, id="deep-objects"),
        pytest.param(b'{"a":' + b"[" * 100_000 + b"NaN", id="deep-with-nan"),
        pytest.param(b'{"analyzeResult":{"pages":[{"pageNumber":1,"words":[{"content":"\\ud800","confidence":0.9}]}]}}', id="lone-surrogate-word"),
        pytest.param(
            b'{"analyzeResult":{"stringIndexType":"utf16CodeUnit","content":"ab\\ud800cd","pages":[{"pageNumber":1,'
            b'"words":[{"content":"ab","confidence":0.9}],"spans":[{"offset":0,"length":5}]}]}}',
            id="lone-surrogate-utf16-content",
        ),
        pytest.param(b'{"analyzeResult":{"pages":[{"pageNumber":1,"unit":"\\udc00","words":[]}]}}', id="lone-surrogate-unit"),
        pytest.param(b'{"analyzeResult":{"pages":[{"pageNumber":1},{"pageNumber":100000000000000000000000000}]}}', id="huge-page-number"),
        pytest.param(b'"\\ud800"', id="lone-surrogate-top-level-string"),
        pytest.param(b'{"analyzeResult":{"pages":"\\ud800"}}', id="lone-surrogate-in-a-wrong-type"),
    ],
)
def test_found_by_fuzzing(data: bytes) -> None:
    """Inputs the fuzzer found escaping as RecursionError, UnicodeEncodeError, or planning a range of 10**26 pages."""
    check_one(data)


def test_utf16_offsets_stay_right_around_an_unpaired_surrogate() -> None:
    data = (
        b'{"analyzeResult":{"apiVersion":"2022-08-31","stringIndexType":"utf16CodeUnit","content":"\\ud800ab cd",'
        b'"pages":[{"pageNumber":1,"words":[{"content":"ab","confidence":0.9}],"spans":[{"offset":1,"length":5}]}]}}'
    )
    assert parse_ocr(data).pages[0].text == "ab cd"


# CI replays the same inputs every run (a red build must mean a change broke something, not that the fuzzer got
# lucky); MATTERFLOW_FUZZ_RANDOM=1 explores new ones, and a failure found that way becomes a test_found_by_fuzzing case.
EXPLORE = bool(os.environ.get("MATTERFLOW_FUZZ_RANDOM"))


@settings(max_examples=FAST_EXAMPLES, deadline=None, derandomize=not EXPLORE, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(corrupt_bytes())
def test_corrupted_ocr_json_raises_only_typed_errors(data: bytes) -> None:
    check_one(data)


@pytest.mark.chaos
@pytest.mark.slow
@settings(max_examples=CHAOS_EXAMPLES, deadline=None, derandomize=not EXPLORE, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(corrupt_bytes())
def test_corrupted_ocr_json_raises_only_typed_errors_long(data: bytes) -> None:
    check_one(data)


@pytest.mark.chaos
@pytest.mark.slow
def test_coverage_guided_fuzzing_with_atheris(tmp_path: Path) -> None:
    """libFuzzer (atheris) mutating the real fixtures' bytes for a bounded time; any exception that is not a
    MatterflowError is a crash, reported with the input that caused it."""
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(seeds()):
        (corpus / f"seed-{index}.json").write_bytes(_dumps(seed, index % 2 == 0))
    seconds = int(os.environ.get("MATTERFLOW_ATHERIS_SECONDS", "60" if not EXPLORE else "20"))
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fuzz_ocr_atheris.py")), str(corpus),
         f"-max_total_time={seconds}", *([] if EXPLORE else ["-seed=1", "-runs=150000"]), "-rss_limit_mb=2048", "-timeout=20", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120, check=False,
    )
    report = completed.stderr[-4000:]
    assert completed.returncode == 0, f"atheris found a crash:\n{report}"
    runs = next((int(line.rsplit(":", 1)[1]) for line in completed.stderr.splitlines() if line.startswith("stat::number_of_executed_units")), 0)
    assert runs > 1000, f"atheris barely ran:\n{report}"
