"""Merging window answers and publishing result.json + report.html (pure merge, then against Azurite)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from f.matter import ingest, llm_fanout, ocr_confidence, publish
from f.matter.analysis import WindowAnalysis, WindowResult, WindowUsage
from f.matter.errors import EndpointError
from f.matter.merge import DocumentResult, merge, normalize_name
from f.matter.models import Manifest, Window
from f.matter.storage import BlobStore
from matterflow.synth import synthetic_layout_bytes

SOURCE = "matters/M-3003/documents/filing.ocr.json"


def window_result(index: int, owned: tuple[int, int], analysis: dict, usage: dict | None = None) -> WindowResult:
    window = Window(index=index, first=owned[0], last=owned[1], owned_first=owned[0], owned_last=owned[1], pages=owned[1] - owned[0] + 1, estimated_tokens=10)
    return WindowResult(window=window, status="ok", analysis=WindowAnalysis.model_validate(analysis), usage=WindowUsage.model_validate(usage or {}))


def plan_manifest(windows: list[tuple[int, int]]) -> Manifest:
    plan_windows = [
        {"index": i + 1, "first": a, "last": b, "owned_first": a, "owned_last": b, "pages": b - a + 1, "estimated_tokens": 10}
        for i, (a, b) in enumerate(windows)
    ]
    return Manifest.model_validate(
        {
            "run_key": "k1", "content_hash": "h", "container": "c", "source_format": "document-intelligence-v4",
            "api_version": None, "pages": windows[-1][1], "words": 1, "first_page": 1, "last_page": windows[-1][1],
            "model": "llama-3-70b", "prompt_version": 1,
            "plan": {"settings": {"window_pages": 2, "overlap_pages": 0, "token_budget": 5000}, "windows": plan_windows, "shards": [[w["index"] for w in plan_windows]], "shard_tokens": [0]},
            "refs": {k: f"results/x/k1/{k}" for k in ("source", "prefix", "document", "manifest", "confidence", "windows", "result", "report", "status")},
        }
    )


def test_merge_joins_facts_across_windows_by_normalized_name_and_lists_failed_windows() -> None:
    manifest = plan_manifest([(1, 2), (3, 4), (5, 6)])
    first = window_result(1, (1, 2), {
        "pages": [{"page": 1, "summary": "one"}, {"page": 2, "summary": "two"}],
        "entities": [{"name": "Northwind Holdings, LLC", "kind": "organisation", "role": "Landlord", "pages": [1]}],
        "dates": [{"date": "2024-05-01", "description": "Lease starts", "pages": [2]}],
        "issues": [{"issue": "Breach of contract", "pages": [2]}],
    }, {"calls": 2, "input_tokens": 100, "output_tokens": 50, "cost_usd": 0.01, "endpoints": {"a": {"calls": 2, "input_tokens": 100, "output_tokens": 50, "cost_usd": 0.01}}})
    second = window_result(2, (3, 4), {
        "pages": [{"page": 3, "summary": "three"}, {"page": 4, "summary": "four"}],
        "entities": [{"name": "northwind holdings llc", "kind": "organisation", "role": "Lessor", "pages": [4]}],
        "dates": [{"date": "2023-01-15", "description": "Notice sent", "deadline": False, "pages": [3]}, {"date": "by Friday", "description": "as written", "pages": [4]}],
        "issues": [{"issue": "breach of contract", "pages": [4]}],
    }, {"calls": 1, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.001, "endpoints": {"b": {"calls": 1, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.001}}})
    failed = WindowResult(window=manifest.plan.windows[2], status="failed", error="all 6 attempts failed (server_error x6)")

    result = merge(manifest, [second, first, failed], None, [{"seconds": 3.5}, {"seconds": 7.25}])

    assert result.status == "partial"
    assert [(p.page, p.summary, p.analysed) for p in result.pages] == [
        (1, "one", True), (2, "two", True), (3, "three", True), (4, "four", True), (5, None, False), (6, None, False)
    ]
    assert [(e.name, e.roles, e.pages) for e in result.entities] == [("Northwind Holdings, LLC", ["Landlord", "Lessor"], [1, 4])]
    assert [t.date for t in result.timeline] == ["2023-01-15", "2024-05-01", "by Friday"]
    assert [(i.issue, i.pages) for i in result.issues] == [("Breach of contract", [2, 4])]
    assert [(w.window, w.pages, w.reason) for w in result.failed_windows] == [(3, "5-6", "all 6 attempts failed (server_error x6)")]
    assert result.usage.calls == 3 and result.usage.input_tokens == 110 and result.usage.cost_usd == pytest.approx(0.011)
    assert result.usage.claude_3_5_sonnet_cost_usd == pytest.approx((110 * 3 + 55 * 15) / 1e6)
    assert set(result.usage.per_endpoint) == {"a", "b"} and result.usage.fanout_seconds == 7.25


def test_normalize_name() -> None:
    assert normalize_name("Northwind  Holdings, L.L.C.") == normalize_name("northwind holdings llc") == "northwind holdings llc"


# ---------------------------------------------------------------------------------------------------------------
# Against Azurite and the simulators: the steps in flow order


def blob(storage: dict, action):
    async def go():
        async with BlobStore.from_resource(storage) as store:
            return await action(store)

    return asyncio.run(go())


def run_steps(storage: dict, llm_pool: dict, pages: int = 30) -> dict:
    data = synthetic_layout_bytes(pages, words_per_page=200, seed=33, low_confidence_pages=[7])
    blob(storage, lambda store: store.write_bytes(SOURCE, data))
    manifest = ingest.main(storage, SOURCE, window_pages=4)
    with ThreadPoolExecutor(4) as pool:  # the branch-all: confidence beside the three shards
        branches = [pool.submit(ocr_confidence.main, storage, manifest)] + [
            pool.submit(llm_fanout.main, storage, manifest, llm_pool, shard=i) for i in range(3)
        ]
        for branch in branches:
            branch.result()
    return manifest


def test_publish_writes_a_complete_result_report_and_status(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = run_steps(storage, llm_pool)
    out = publish.main(storage, manifest)

    result = DocumentResult.model_validate(blob(storage, lambda s: s.read_json(manifest["refs"]["result"])))
    assert out["status"] == result.status == "complete" and not out["reused"]
    assert [p.page for p in result.pages] == list(range(1, 31)) and all(p.summary for p in result.pages)
    assert result.flagged_pages == [7] and result.pages[6].flagged_for_review
    assert result.entities and result.timeline and result.amounts
    assert result.usage.input_tokens > 0 and result.usage.claude_3_5_sonnet_cost_usd > result.usage.cost_usd
    report = blob(storage, lambda s: s.read_bytes(manifest["refs"]["report"])).decode()
    assert report.startswith("<!doctype html>") and "<svg" in report and "<script" not in report
    assert result.entities[0].name in report
    status = blob(storage, lambda s: s.read_json(manifest["refs"]["status"]))
    assert status["status"] == "complete" and status["result"] == manifest["refs"]["result"]
    assert "markdown" in out and "complete" in out["markdown"]


def test_a_rerun_returns_the_existing_result_without_rewriting_it(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = run_steps(storage, llm_pool, pages=12)
    publish.main(storage, manifest)
    before = blob(storage, lambda s: s.read_bytes(manifest["refs"]["result"]))
    calls = sum(sim.stats()["calls"] for sim in simulators)
    again = [llm_fanout.main(storage, manifest, {"endpoints": [s.endpoint() for s in simulators]}, shard=i) for i in range(3)]
    out = publish.main(storage, manifest)
    assert out["reused"] and sum(a["calls"] for a in again) == 0
    assert sum(sim.stats()["calls"] for sim in simulators) == calls
    assert blob(storage, lambda s: s.read_bytes(manifest["refs"]["result"])) == before


def test_a_partial_result_never_replaces_the_complete_one_and_the_step_fails(storage: dict, llm_pool: dict, simulators: list) -> None:
    manifest = run_steps(storage, llm_pool, pages=12)
    publish.main(storage, manifest)
    good = blob(storage, lambda s: s.read_bytes(manifest["refs"]["result"]))
    # A later forced run loses a window: its result is partial.
    first_window = f"{manifest['refs']['windows']}00001.json"

    async def drop(store):
        blob_client = store._service.get_blob_client(store.container, first_window)
        await blob_client.delete_blob()

    blob(storage, drop)
    with pytest.raises(EndpointError, match=r"1 of \d+ windows have no answer: 1 \(pages 1-\d\)"):
        publish.main(storage, manifest, force=True)
    assert blob(storage, lambda s: s.read_bytes(manifest["refs"]["result"])) == good
    partial = blob(storage, lambda s: s.read_json(manifest["refs"]["result"].replace("result.json", "result.partial.json")))
    assert partial["status"] == "partial" and partial["failed_windows"][0]["window"] == 1
    status = blob(storage, lambda s: s.read_json(manifest["refs"]["status"]))
    assert status["status"] == "partial" and status["result"].endswith("result.partial.json")


def test_report_escapes_document_and_model_text() -> None:
    from f.matter.report import render

    manifest = plan_manifest([(1, 1)])
    hostile = window_result(1, (1, 1), {"pages": [{"page": 1, "summary": "<script>alert(1)</script> & <b>x</b>"}],
                                        "entities": [{"name": "<img src=x onerror=alert(1)>", "kind": "person", "pages": [1]}]})
    html = render(merge(manifest, [hostile], None), 0.8)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;x&lt;/b&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_a_malformed_checkpoint_is_a_storage_error_naming_the_blob(storage: dict, llm_pool: dict, simulators: list) -> None:
    from f.matter.errors import StorageError

    manifest = run_steps(storage, llm_pool, pages=8)
    bad = f"{manifest['refs']['windows']}00001.json"
    blob(storage, lambda s: s.write_json(bad, {"window": "not a window"}))
    with pytest.raises(StorageError, match=r"stored WindowResult is not in the expected shape .*00001\.json"):
        publish.main(storage, manifest, force=True)


def test_without_confidence_the_pages_are_the_documents_own_numbers() -> None:
    manifest = plan_manifest([(1, 2), (3, 10)])  # an OCR run over pages 1, 2, 3 and 10 only
    answered = [window_result(1, (1, 2), {"pages": [{"page": 1, "summary": "a"}]}), window_result(2, (3, 10), {"pages": [{"page": 10, "summary": "z"}]})]
    result = merge(manifest, answered, None, page_numbers=[1, 2, 3, 10])
    assert [(p.page, p.summary, p.analysed) for p in result.pages] == [(1, "a", True), (2, None, True), (3, None, True), (10, "z", True)]


def test_the_confidence_chart_has_axes_a_bar_per_page_and_marks_pages_without_words() -> None:
    from f.matter.merge import PageResult
    from f.matter.report import confidence_chart

    pages = [PageResult(page=n, summary="s", mean_word_confidence=c, flagged_for_review=c is not None and c < 0.8, analysed=True)
             for n, c in zip(range(1, 31), [0.95] * 6 + [0.5] + [0.9] * 22 + [None], strict=True)]
    result = DocumentResult.model_construct(pages=pages)
    svg = confidence_chart(result, 0.8)
    titles = re.findall(r"<title>page (\d+): ([^<]+)</title>", svg)
    assert [int(n) for n, _ in titles] == list(range(1, 31))
    assert dict(titles)["7"] == "0.500" and dict(titles)["30"] == "no words"
    assert svg.count('fill="#c0392b"') == 1, "one page below the threshold is red"
    assert ">0.0</text>" in svg and ">1.0</text>" in svg and ">1</text>" in svg and ">30</text>" in svg
