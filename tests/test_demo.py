"""`make demo` on embedded defaults, the bundled sample matter it uses, and the flow end to end through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from f.matter.documents import parse_ocr
from matterflow.demo import SAMPLE, SAMPLES, DemoOptions, generated_sample, run_demo

ROOT = Path(__file__).resolve().parent.parent
RESULT_SCHEMA = json.loads((ROOT / "docs" / "result.schema.json").read_text())


def test_bundled_sample_matter_is_what_the_generator_makes() -> None:
    committed = (SAMPLES / SAMPLE.blob_path).read_bytes()
    assert committed == SAMPLE.generate(), f"{SAMPLE.blob_path} is stale: run `make samples`"
    assert len(parse_ocr(committed).pages) == SAMPLE.pages == 60


def assert_a_sound_result(result: dict, pages: int, flagged: list[int], blank: list[int]) -> None:
    jsonschema.validate(result, RESULT_SCHEMA)
    assert result["status"] == "complete" and not result["failed_windows"]
    assert [p["page"] for p in result["pages"]] == list(range(1, pages + 1)), "every page once, in order"
    assert all(p["summary"] and p["analysed"] for p in result["pages"]), "every page summarized by its owner window"
    assert [p["page"] for p in result["pages"] if p["mean_word_confidence"] is None] == blank
    assert result["flagged_pages"] == flagged


@pytest.mark.slow
def test_make_demo_runs_the_flow_on_the_bundled_matter(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run_demo(DemoOptions(out=tmp_path), echo=lines.append)
    result = json.loads(Path(summary["result_json"]).read_text())
    assert_a_sound_result(result, 60, [17, 18, 43], [60])
    assert summary["pages"] == 60 and summary["flagged_pages"] == [17, 18, 43]
    assert summary["calls"] == sum(summary["simulator_calls"].values()) >= summary["windows"] > 3
    assert summary["cost_usd"] < summary["claude_3_5_sonnet_cost_usd"]
    report = Path(summary["report_html"]).read_text()
    assert "<svg" in report and "lease-dispute" in report
    assert any("analyse: 4 branches in parallel" in line for line in lines)


def test_a_generated_matter_with_20_percent_llm_faults_gives_the_same_result_as_a_clean_run(tmp_path: Path) -> None:
    sample = generated_sample(14)
    clean = run_demo(DemoOptions(pages=14, out=tmp_path / "clean", flow_input={"window_pages": 2}), echo=lambda line: None)
    completed = subprocess.run(
        [sys.executable, "-m", "matterflow", "demo", "--pages", "14", "--fault-rate", "0.2", "--window-pages", "2", "--json", "--out", str(tmp_path / "faulty")],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "MATTERFLOW_LLM_POOL": ""},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    faulty = json.loads(completed.stdout)
    assert "shard_0: done in" in completed.stderr, "progress goes to stderr as plain lines under --json"
    clean_result, faulty_result = (json.loads(Path(s["result_json"]).read_text()) for s in (clean, faulty))
    assert_a_sound_result(clean_result, 14, list(sample.low_confidence_pages), [])
    assert_a_sound_result(faulty_result, 14, list(sample.low_confidence_pages), [])
    timings = ("usage",)
    assert {k: v for k, v in faulty_result.items() if k not in timings} == {k: v for k, v in clean_result.items() if k not in timings}
    assert sum(faulty["simulator_faults"].values()) > 0 == sum(clean["simulator_faults"].values())
    assert faulty["calls"] > clean["calls"] == clean["windows"] == 7, "faults cost retries, not answers"
    assert set(faulty) >= {"result_json", "report_html", "simulator_calls", "wall_s", "simulated_llm"}
    assert faulty["simulated_llm"] is True and sum(faulty["simulator_calls"].values()) >= faulty["calls"]


def test_demo_refuses_a_bad_llm_pool_before_starting_anything(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "matterflow", "demo", "--llm-pool", '{"endpoints": [{"name": "a"}]}'],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert completed.returncode != 0
    assert "endpoint #1: base_url" in completed.stderr
    assert "Traceback" not in completed.stderr
