"""`make demo` on embedded defaults, and the bundled sample matter it uses."""

from __future__ import annotations

from f.matter.documents import parse_ocr
from matterflow.demo import SAMPLE_MATTER, SAMPLES, run_demo


def test_bundled_sample_matter_is_what_the_generator_makes() -> None:
    for sample in SAMPLE_MATTER:
        committed = (SAMPLES / sample.blob_path).read_bytes()
        assert committed == sample.generate(), f"{sample.blob_path} is stale: run `make samples`"
        assert len(parse_ocr(committed).pages) == sample.pages


def test_demo_runs_every_sample_document_through_the_existing_steps() -> None:
    lines: list[str] = []
    summaries = run_demo(echo=lines.append)
    assert [s["manifest"]["refs"]["source"] for s in summaries] == [s.blob_path for s in SAMPLE_MATTER]
    by_source = {s["manifest"]["refs"]["source"]: s for s in summaries}
    filing = by_source["matters/M-1042/documents/court-filing.ocr.json"]
    assert filing["confidence"]["flagged_pages"] == [3, 4]
    assert filing["confidence"]["pages_without_words"] == [9]
    assert any("pages flagged for review: 3, 4" in line for line in lines)
