"""flow.yaml checks that `wmill lint` does not make: references, script paths and parameters line up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from matterflow.windmill_parser import parse_scripts

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "f" / "matter" / "process_document__flow" / "flow.yaml"

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def flow() -> dict:
    return yaml.safe_load(FLOW.read_text())


def steps(flow: dict):
    """(top-level position, module) for every script module, branch children included."""
    for position, module in enumerate(flow["value"]["modules"]):
        value = module["value"]
        if value["type"] == "branchall":
            for branch in value["branches"]:
                for child in branch["modules"]:
                    yield position, child
        else:
            yield position, module


def test_step_ids_are_unique(flow: dict) -> None:
    ids = [m["id"] for _, m in steps(flow)] + [m["id"] for m in flow["value"]["modules"] if m["value"]["type"] == "branchall"]
    assert len(ids) == len(set(ids))


def test_results_name_an_earlier_top_level_step_and_flow_inputs_exist(flow: dict) -> None:
    top = [m["id"] for m in flow["value"]["modules"]]
    inputs = set(flow["schema"]["properties"])
    for position, module in steps(flow):
        for name, transform in module["value"]["input_transforms"].items():
            if transform["type"] != "javascript":
                continue
            for ref in re.findall(r"\bresults\.(\w+)", transform["expr"]):
                assert ref in top[:position], f"{module['id']}.{name} reads results.{ref}, not an earlier step"
            for ref in re.findall(r"\bflow_input\.(\w+)", transform["expr"]):
                assert ref in inputs, f"{module['id']}.{name} reads flow_input.{ref}, which the schema lacks"


def test_every_step_calls_an_existing_script_with_its_real_parameters(flow: dict) -> None:
    modules = [m for _, m in steps(flow)] + [flow["value"]["failure_module"]]
    scripts = {m["value"]["path"] for m in modules}
    for path in scripts:
        assert (ROOT / f"{path}.py").exists(), path
    parsed = parse_scripts([ROOT / f"{path}.py" for path in sorted(scripts)], ROOT)
    for module in modules:
        args = {a["name"]: a for a in parsed[module["value"]["path"]]["signature"]["args"]}
        given = set(module["value"]["input_transforms"])
        assert given <= set(args), f"{module['id']} passes {sorted(given - set(args))}, which main() does not take"
        missing = {name for name, arg in args.items() if not arg["has_default"]} - given
        assert not missing, f"{module['id']} does not pass required {sorted(missing)}"


def test_the_flow_form_matches_what_the_steps_expect(flow: dict) -> None:
    schema = flow["schema"]
    assert schema["properties"]["storage"]["format"] == "resource-azure_blob"
    assert schema["properties"]["llm_pool"]["format"] == "resource-llm_pool"
    assert set(schema["order"]) == set(schema["properties"])
    assert all(p.get("description") and p.get("title") for p in schema["properties"].values())
    from f.matter import ingest, ocr_confidence, windows

    defaults = {k: v.get("default") for k, v in schema["properties"].items()}
    assert defaults["window_pages"] == windows.DEFAULT_WINDOW_PAGES
    assert defaults["overlap_pages"] == windows.DEFAULT_OVERLAP_PAGES
    assert defaults["context_tokens"] == windows.DEFAULT_CONTEXT_TOKENS
    assert defaults["model"] == ingest.DEFAULT_MODEL
    assert defaults["min_confidence"] == ocr_confidence.DEFAULT_MIN_CONFIDENCE


def test_branch_all_runs_confidence_beside_one_branch_per_shard(flow: dict) -> None:
    analyse = next(m for m in flow["value"]["modules"] if m["id"] == "analyse")["value"]
    assert analyse["type"] == "branchall" and analyse["parallel"] is True
    shards = [b["modules"][0]["value"]["input_transforms"]["shard"]["value"] for b in analyse["branches"][1:]]
    ingest = next(m for m in flow["value"]["modules"] if m["id"] == "ingest")["value"]
    assert shards == list(range(ingest["input_transforms"]["shards"]["value"]))


def test_the_failure_module_gets_the_error_windmill_hands_it(flow: dict) -> None:
    failure = flow["value"]["failure_module"]
    assert failure["id"] == "failure"
    assert failure["value"]["input_transforms"]["error"]["expr"] == "previous_result.error"
