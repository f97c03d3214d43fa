"""Windmill fidelity, checked with Windmill's own tools: `wmill lint` and Windmill's Python parser."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from f.matter import ingest, llm, ocr_confidence, windows
from matterflow.windmill_parser import parse_scripts

ROOT = Path(__file__).resolve().parent.parent
WMILL = ROOT / "node_modules" / ".bin" / "wmill"
SCRIPTS = sorted((ROOT / "f").rglob("*.py"))
# Scripts that Windmill runs (they have main()); every other module under f/ is a library Windmill imports.
RUNNABLE = {
    "f/matter/ingest", "f/matter/ocr_confidence", "f/matter/llm_fanout", "f/matter/publish", "f/matter/on_failure",
    "f/matter/sweep",
}

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict]:
    return parse_scripts(SCRIPTS, ROOT)


def wmill_lint(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WMILL), "lint", str(directory)], capture_output=True, text=True, cwd=directory, timeout=300)


def test_wmill_lint_passes_on_the_repository() -> None:
    completed = wmill_lint(ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Lint passed" in completed.stdout


def test_every_script_has_a_lock_as_wmill_requires_for_push() -> None:
    completed = subprocess.run([str(WMILL), "lint", "--locks-required", str(ROOT)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_windmill_metadata_is_current() -> None:
    """`.script.yaml` schemas (Windmill's parser) and `.script.lock` pins match the code and constraints.txt."""
    from matterflow.metadata import stale

    assert stale() == [], "run `make metadata`"


def test_script_metadata_explains_every_parameter() -> None:
    for path in SCRIPTS:
        meta = yaml.safe_load(path.with_suffix(".script.yaml").read_text())
        assert meta["summary"], path.name
        assert meta["lock"] == f"!inline {path.relative_to(ROOT).with_suffix('')}.script.lock"
        assert all(prop["description"] for prop in meta["schema"]["properties"].values()), path.name
    ingest_meta = yaml.safe_load((ROOT / "f/matter/ingest.script.yaml").read_text())
    assert ingest_meta["schema"]["properties"]["storage"]["format"] == "resource-azure_blob"
    assert ingest_meta["schema"]["required"] == ["storage", "blob_path"]


def test_locks_pin_the_real_azure_package_not_the_name_windmill_guesses() -> None:
    lock = (ROOT / "f/matter/ingest.script.lock").read_text().splitlines()
    names = {line.split("==")[0] for line in lock}
    assert {"azure-storage-blob", "azure-identity", "aiohttp", "msgspec", "pydantic"} <= names
    assert "azure" not in names
    fanout = {line.split("==")[0] for line in (ROOT / "f/matter/llm_fanout.script.lock").read_text().splitlines()}
    assert {"openai", "wmill", "azure-storage-blob"} <= fanout


def test_wmill_lint_with_our_settings_rejects_a_broken_flow(tmp_path: Path) -> None:
    """Proves the lint above looks at flows at all: without nonDottedPaths it would silently skip them."""
    shutil.copy(ROOT / "wmill.yaml", tmp_path / "wmill.yaml")
    flow = tmp_path / "f" / "matter" / "broken__flow" / "flow.yaml"
    flow.parent.mkdir(parents=True)
    flow.write_text("summary: broken\nvalue:\n  modules:\n    - id: a\n      value:\n        type: nosuchmodule\nschema: {}\n")
    completed = wmill_lint(tmp_path)
    assert completed.returncode == 1
    assert "broken__flow/flow.yaml" in completed.stdout


def test_sync_settings_deploy_only_the_workspace_tree() -> None:
    settings = yaml.safe_load((ROOT / "wmill.yaml").read_text())
    assert settings["nonDottedPaths"] is True
    assert settings["includes"] == ["f/**"]
    assert settings["skipSecrets"] is True
    assert settings["includeSchedules"] is True and settings["includeTriggers"] is True
    assert any("test" in pattern for pattern in settings["excludes"])


def test_windmill_sees_the_runnable_scripts_and_the_libraries(parsed: dict[str, dict]) -> None:
    runnable = {path for path, entry in parsed.items() if entry["signature"].get("auto_kind") != "lib"}
    assert runnable == RUNNABLE
    assert all(entry["signature"].get("type") != "Invalid" for entry in parsed.values())


def _args(parsed: dict[str, dict], script: str) -> dict[str, dict]:
    return {arg["name"]: arg for arg in parsed[script]["signature"]["args"]}


def test_ingest_form_has_a_storage_picker_and_the_documented_defaults(parsed: dict[str, dict]) -> None:
    args = _args(parsed, "f/matter/ingest")
    assert args["storage"]["typ"] == {"resource": "azure_blob"}
    assert not args["storage"]["has_default"] and not args["blob_path"]["has_default"]
    defaults = {name: arg["default"] for name, arg in args.items() if arg["has_default"]}
    assert defaults == {
        "window_pages": windows.DEFAULT_WINDOW_PAGES,
        "overlap_pages": windows.DEFAULT_OVERLAP_PAGES,
        "context_tokens": windows.DEFAULT_CONTEXT_TOKENS,
        "model": ingest.DEFAULT_MODEL,
        "shards": windows.DEFAULT_SHARDS,
        "force": False,
    }
    assert args["window_pages"]["typ"] == "int" and args["force"]["typ"] == "bool"


def test_ocr_confidence_form(parsed: dict[str, dict]) -> None:
    args = _args(parsed, "f/matter/ocr_confidence")
    assert args["storage"]["typ"] == {"resource": "azure_blob"}
    assert args["manifest"]["typ"] == {"object": {"name": None, "props": []}}
    assert args["min_confidence"]["typ"] == "float"
    assert args["min_confidence"]["default"] == ocr_confidence.DEFAULT_MIN_CONFIDENCE


def test_llm_fanout_form_has_storage_and_pool_pickers(parsed: dict[str, dict]) -> None:
    args = _args(parsed, "f/matter/llm_fanout")
    assert args["storage"]["typ"] == {"resource": "azure_blob"}
    assert args["llm_pool"]["typ"] == {"resource": "llm_pool"}
    defaults = {name: arg["default"] for name, arg in args.items() if arg["has_default"]}
    assert defaults == {
        "shard": 0,
        "force": False,
        "max_attempts": llm.DEFAULT_POLICY.max_attempts,
        "timeout_s": llm.DEFAULT_POLICY.timeout_s,
    }


def test_llm_pool_resource_type_describes_every_endpoint_field() -> None:
    """The resource type the UI shows and the Endpoint model the code validates must agree."""
    spec = yaml.safe_load((ROOT / "llm_pool.resource-type.yaml").read_text())
    item = spec["schema"]["properties"]["endpoints"]["items"]
    assert set(item["properties"]) == set(llm.Endpoint.model_fields)
    assert set(item["required"]) == {n for n, f in llm.Endpoint.model_fields.items() if f.is_required()}
    assert all(prop.get("description") for prop in item["properties"].values())


def test_relative_imports_resolve_to_workspace_scripts(parsed: dict[str, dict]) -> None:
    """Windmill fetches each imported module as a deployed script; `from . import x` would resolve to the folder."""
    existing = set(parsed)
    for path, entry in parsed.items():
        imports = entry["relative_imports"]
        assert isinstance(imports, list), f"{path}: {imports}"
        missing = [target for target in imports if target not in existing]
        assert not missing, f"{path} imports {missing}, which are not scripts in f/"
    assert {"f/matter/documents", "f/matter/storage", "f/matter/windows"} <= set(parsed["f/matter/ingest"]["relative_imports"])


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_follow_windmill_import_rules(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    # Windmill's parser reads imports only from the text before `def main(`; later imports would miss the lock.
    main_line = next((node.lineno for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"), None)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            assert main_line is None or node.lineno < main_line, f"{path.name}:{node.lineno} imports after main()"
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.module, f"{path.name}:{node.lineno}: use `from .module import name`, not `from . import`"
    assert path.stem.isidentifier()


def test_no_package_markers_in_the_workspace_tree() -> None:
    """wmill would push an __init__.py as a script; the tree is a namespace package instead."""
    assert not list((ROOT / "f").rglob("__init__.py"))
