"""The `matterflow` command line: documented JSON, readable tables, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from f.matter.documents import parse_ocr
from f.matter.ocr_confidence import score_document
from matterflow.cli import cli
from matterflow.synth import synthetic_layout_bytes

DOCUMENT_KEYS = {"pages", "words", "mean_word_confidence", "page_weighted_mean", "min", "p10", "p50", "p90", "flagged_pages"}
PAGE_KEYS = {"page", "words", "mean_word_confidence", "below_threshold"}


def matterflow(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a real process, its exit code and its streams."""
    return subprocess.run([sys.executable, "-m", "matterflow", *args], capture_output=True, text=True, env=env, timeout=120)


def test_confidence_json_has_the_documented_interface_for_every_fixture(fixture_files: list[Path]) -> None:
    runner = CliRunner()
    for path in fixture_files:
        result = runner.invoke(cli, ["confidence", str(path), "--json"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output)
        assert payload["document"].keys() >= DOCUMENT_KEYS
        assert all(page.keys() >= PAGE_KEYS for page in payload["pages"])
        expected = score_document(parse_ocr(path.read_bytes()))
        assert payload["document"]["mean_word_confidence"] == pytest.approx(expected.document.mean_word_confidence)
        assert [p["mean_word_confidence"] for p in payload["pages"]] == pytest.approx(
            [p.mean_word_confidence for p in expected.pages]
        )


def test_confidence_table_prints_each_page_value_and_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "matter.json"
    path.write_bytes(synthetic_layout_bytes(6, words_per_page=50, seed=11, low_confidence_pages=[4], blank_pages=[6]))
    expected = score_document(parse_ocr(path.read_bytes()))
    result = CliRunner().invoke(cli, ["confidence", str(path)])
    assert result.exit_code == 0, result.output
    rows = {int(line.split()[0]): line for line in result.output.splitlines() if line.strip()[:1].isdigit()}
    for page in expected.pages:
        mean = "-" if page.mean_word_confidence is None else f"{page.mean_word_confidence:.3f}"
        assert rows[page.page].split()[:4] == [str(page.page), str(page.words), mean, str(page.below_threshold)]
    assert "FLAGGED" in rows[4] and "FLAGGED" not in rows[3]
    assert "no words" in rows[6]
    assert "flagged for review (mean < 0.80): 4" in result.output
    assert "pages without words: 6" in result.output


def test_min_confidence_can_come_from_the_environment(fixture_files: list[Path]) -> None:
    path = next(p for p in fixture_files if "sdpr-form" in p.name)  # mean 0.98
    runner = CliRunner()
    default = json.loads(runner.invoke(cli, ["confidence", str(path), "--json"]).output)
    strict = json.loads(
        runner.invoke(cli, ["confidence", str(path), "--json"], env={"MATTERFLOW_CONFIDENCE_MIN_CONFIDENCE": "0.99"}).output
    )
    assert default["document"]["flagged_pages"] == []
    assert strict["document"]["flagged_pages"] == [1]


def test_windows_for_n_pages_owns_every_page_once() -> None:
    result = CliRunner().invoke(cli, ["windows", "--pages", "37", "--window", "5", "--overlap", "1", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    owned = [p for w in plan["windows"] for p in range(w["owned_first"], w["owned_last"] + 1)]
    assert owned == list(range(1, 38))
    assert plan["settings"] == {"window_pages": 5, "overlap_pages": 1, "token_budget": 8192 - 900 - 2048}


def test_windows_table_for_a_real_document(tmp_path: Path) -> None:
    path = tmp_path / "matter.json"
    path.write_bytes(synthetic_layout_bytes(12, seed=1))
    result = CliRunner().invoke(cli, ["windows", str(path), "--window", "4", "--overlap", "1"])
    assert result.exit_code == 0, result.output
    assert "window 4 pages, overlap 1" in result.output
    assert result.output.count("\n     ") >= 3  # one row per window


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "scan.json"
    bad.write_bytes(b'{"analyzeResult": {"apiVersion": "2024-11-30", "pages": [{"pageNumber": 1, "words": [{"content": "x", "confidence": 2}]}]}}')
    completed = matterflow("confidence", str(bad))
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.strip().splitlines() == [
        f"matterflow: error: {bad}: page 1, word 1 ('x') has confidence 2.0, outside [0, 1]"
    ]


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    completed = matterflow("confidence", str(tmp_path / "nope.json"))
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"matterflow: error: {tmp_path / 'nope.json'}: cannot read the file: No such file or directory"


def test_windows_needs_a_file_or_a_page_count() -> None:
    completed = matterflow("windows")
    assert completed.returncode == 2
    assert "give either a FILE or --pages N" in completed.stderr


def test_help_shows_examples() -> None:
    completed = matterflow("confidence", "--help")
    assert completed.returncode == 0
    assert "matterflow confidence lease.ocr.json" in completed.stdout


def test_run_names_missing_flow_inputs_in_one_line() -> None:
    flow = Path(__file__).resolve().parent.parent / "f" / "matter" / "process_document__flow" / "flow.yaml"
    completed = matterflow("run", str(flow), "--input", '{"blob_path": "x.json"}')
    assert completed.returncode == 2
    assert completed.stderr.strip() == "matterflow: error: flow input: missing required flow inputs: storage, llm_pool"
