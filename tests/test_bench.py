"""Every benchmark scenario runs at a tiny size and returns its documented JSON keys with sane values.

The figures themselves come from `make bench` (bench/RESULTS.md); these tests keep the scenarios runnable. orjson
and matplotlib come with the `bench` extra, so the tests that need them skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from matterflow import bench
from matterflow.bench import blob, common, cost, e2e, fanout, flowrun, many_docs, parse
from matterflow.cli import cli

FAST = {"latency_ms": 5.0, "tokens_per_s": 20000.0, "capacity": 64}


def _plots(module, report: dict, tmp_path: Path) -> None:
    target = tmp_path / f"{report['scenario']}.png"
    module.plot(report, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_cli_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "parse", "--pages", "12", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ratio_to_orjson"] > 0 and report["ratio_to_json_loop"] > 0
    assert report["peak_extra_mb"] >= 0 and report["file_mb"] > 0
    (size,) = report["sizes"]
    assert size["pages"] == 12 and set(size["contenders"]) == {"matterflow", "orjson", "json-loop"}
    assert size["contenders"]["matterflow"]["parse_s"] > 0 and size["peak_reset"]
    assert {g["goal"] for g in report["goals"]}
    assert "x orjson" in parse.table(report)
    _plots(parse, report, tmp_path)


def test_parse_child_counts_memory_beyond_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    parse._child("generate", str(path), "30")
    figures = json.loads(parse._child("measure", "json-loop", str(path)))
    assert figures["bytes"] == path.stat().st_size
    # a generic JSON tree of a DI result is several times its bytes
    assert figures["peak_extra_bytes"] > figures["bytes"]


def test_cost_tokens_per_page_grow_with_overlap(tmp_path: Path) -> None:
    documents = cost.matter(30)
    assert sum(len(d.pages) for d in documents) == 30
    per_page = [cost.plan_tokens(documents, 8, overlap)["input_tokens"] for overlap in cost.OVERLAP_PAGES]
    assert per_page == sorted(per_page) and per_page[-1] > per_page[0]
    claude = cost.sonnet(documents, output_per_page=400.0)
    assert claude["calls"] >= len(documents) and claude["usd_per_1000_pages"] > 0


def test_cost_run_measures_the_estimate_against_the_simulator(tmp_path: Path) -> None:
    report = cost.run(12)
    assert report["ratio_estimated_to_actual"] > 0
    assert report["measured"]["ok_windows"] == report["measured"]["windows"]
    assert len(report["rows"]) == len(cost.WINDOW_PAGES) * len(cost.OVERLAP_PAGES)
    default = report["default"]
    assert default["usd_per_1000_pages"]["Groq"] > 0 and report["sonnet"]["usd_per_1000_pages"] > 0
    for row in report["rows"]:
        if row["overlap_pages"] == 0:
            assert row["overlap_price"] == 0
    assert "Sonnet" in cost.table(report)
    _plots(cost, report, tmp_path)


@pytest.mark.azurite
def test_blob_ratios(tmp_path: Path) -> None:
    report = blob.run(mb=2, rounds=1)
    for key in ("upload_mib_s", "sdk_upload_mib_s", "download_mib_s", "sdk_download_mib_s", "upload_ratio", "download_ratio"):
        assert report[key] > 0, key
    assert report["settings"]["sdk_best_upload"] in blob.UPLOAD_CONFIGS
    assert report["settings"]["sdk_best_download"] in blob.DOWNLOAD_CONFIGS
    assert "matterflow / SDK" in blob.table(report)
    _plots(blob, report, tmp_path)


@pytest.mark.azurite
def test_fanout_still_runs(tmp_path: Path) -> None:
    report = fanout.fanout(windows=6, latency_ms=5.0, peers=False)
    assert report["ok"] == 6 and report["ratio_to_ideal"] > 0
    _plots(fanout, report, tmp_path)


@pytest.mark.azurite
@pytest.mark.slow
def test_e2e_splits_the_wall_time(tmp_path: Path) -> None:
    report = e2e.run([3], latency=FAST, words_per_page=60)
    (size,) = report["sizes"]
    assert size["status"] == "complete", size
    parts = size["ingest_s"] + size["fanout_s"] + size["publish_s"] + size["runner_overhead_s"]
    assert parts == pytest.approx(size["wall_s"], abs=0.05)
    assert 0 < size["fanout_share"] < 1 and 0 < size["runner_overhead_share"] < 1
    _plots(e2e, report, tmp_path)


@pytest.mark.azurite
@pytest.mark.slow
def test_many_docs_throughput_against_capacity(tmp_path: Path) -> None:
    report = many_docs.run(docs=2, pages=2, latency=FAST, words_per_page=60, workers=2)
    assert report["documents_complete"] == 2, report["errors"]
    assert report["pages_per_s"] > 0 and report["capacity_pages_per_s"] > 0
    assert 0 < report["ratio_to_capacity"] < 1
    assert report["step_processes"] == 2 * 6
    _plots(many_docs, report, tmp_path)


def test_breakdown_from_runner_echo_and_step_stamps() -> None:
    run = flowrun.FlowRun(source="d.json", started=100.0, ended=120.0)
    run.events = [
        (103.0, "ingest: done in 2.0 s"),
        (103.1, "analyse: 4 branches in parallel"),
        (105.0, "confidence: done in 1.5 s"),
        *((114.0 + i, f"shard_{i}: done in {10.5 + i} s") for i in range(3)),
        (119.5, "publish: done in 3.0 s"),
    ]
    steps = [
        {"step": "ingest", "main_start": 102.0, "main_end": 102.5, "process_start": 101.2},
        {"step": "confidence", "main_start": 104.0, "main_end": 104.5, "process_start": 103.5},
        *({"step": f"shard_{i}", "main_start": 105.0, "main_end": 113.0 + i, "process_start": 103.6} for i in range(3)),
        {"step": "publish", "main_start": 117.5, "main_end": 119.0, "process_start": 116.8},
    ]
    split = flowrun.breakdown(run, steps)
    assert split["wall_s"] == 20.0
    assert split["fanout_s"] == 10.0 and split["ingest_s"] == 0.5 and split["publish_s"] == 1.5
    assert split["ingest_s"] + split["fanout_s"] + split["publish_s"] + split["runner_overhead_s"] == pytest.approx(20.0)
    assert split["runner_s"] == pytest.approx(20.0 - 2.0 - (116.0 - 103.1) - 3.0)
    # the same run as the runner's `step_runs` report it (process spans), without echo lines
    spanned = flowrun.FlowRun(source="d.json", started=100.0, ended=120.0)
    spanned.spans = {"ingest": (101.0, 103.0), "confidence": (103.5, 105.0), "publish": (116.5, 119.5)}
    spanned.spans |= {f"shard_{i}": (103.2, 114.0 + i) for i in range(3)}
    split = flowrun.breakdown(spanned, steps)
    assert split["fanout_s"] == 10.0
    assert split["runner_s"] == pytest.approx(20.0 - 2.0 - (116.0 - 103.2) - 3.0)
    assert flowrun.breakdown(flowrun.FlowRun(source="x", error="boom"), [])["error"] == "boom"


def test_goal_and_results_md(tmp_path: Path) -> None:
    assert common.goal("x", 0.2, 0.25)["met"] and not common.goal("x", 0.3, 0.25)["met"]
    assert common.goal("y", 0.95, 0.9, at_most=False)["met"]
    (tmp_path / "results").mkdir()
    report = {"scenario": "cost", "command": "matterflow bench cost --pages 12", "recorded": common.utc_now(), **cost.run(12)}
    (tmp_path / "results" / "cost.json").write_text(common.dumps(report))
    text = bench.write_results_md(tmp_path).read_text()
    assert "### cost" in text and "`matterflow bench cost --pages 12`" in text and "UTC" in text
    assert "goal" in text
    assert set(bench.SCENARIOS) >= {"fanout-2s", "fanout-200ms", "fanout-throttled", "parse", "blob", "e2e", "cost", "many-docs"}
