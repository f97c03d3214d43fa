"""`make demo` on embedded defaults, and the bundled sample matter it uses."""

from __future__ import annotations

from f.matter.documents import parse_ocr
from matterflow.demo import SAMPLE_MATTER, SAMPLES, run_demo


def test_bundled_sample_matter_is_what_the_generator_makes() -> None:
    for sample in SAMPLE_MATTER:
        committed = (SAMPLES / sample.blob_path).read_bytes()
        assert committed == sample.generate(), f"{sample.blob_path} is stale: run `make samples`"
        assert len(parse_ocr(committed).pages) == sample.pages


def test_demo_runs_the_flow_on_every_sample_document() -> None:
    lines: list[str] = []
    summaries = run_demo(echo=lines.append)
    assert [s["status"] for s in summaries] == ["complete"] * len(SAMPLE_MATTER)
    filing = next(s for s in summaries if "court-filing" in s["result"])
    assert filing["flagged_pages"] == [3, 4]
    assert all(s["cost_usd"] > 0 for s in summaries)
    assert any("analyse: 4 branches in parallel" in line for line in lines)
