"""The GitHub workflows: actionlint, GitHub's workflow schema, checkov, and what the deploy must do.

Each validator also gets a deliberately broken copy, so a pass means something.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
TEST_YML = WORKFLOWS / "test.yml"
DEPLOY_YML = WORKFLOWS / "deploy.yml"
ACTIONLINT = ROOT / "infra" / "tools" / "actionlint.mjs"
WMILL = ROOT / "node_modules" / ".bin" / "wmill"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
CHECKOV = ROOT / ".venv-infra" / "bin" / "checkov"
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


def run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs
    )


def load(path: Path) -> dict:
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on".
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def broken_copy(tmp_path: Path) -> Path:
    """deploy.yml with a job that has no runs-on and an expression naming a context that does not exist."""
    workflow = load(DEPLOY_YML)
    del workflow["jobs"]["deploy"]["runs-on"]
    workflow["jobs"]["deploy"]["steps"].append({"run": "echo ${{ github.no_such_property }}"})
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


@pytest.mark.node
def test_actionlint_passes_on_the_workflows() -> None:
    completed = run(["node", ACTIONLINT, TEST_YML, DEPLOY_YML], cwd=ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "no findings" in completed.stdout


@pytest.mark.node
def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    completed = run(["node", ACTIONLINT, broken_copy(tmp_path)], cwd=ROOT)
    assert completed.returncode == 1
    assert "runs-on" in completed.stdout
    assert "no_such_property" in completed.stdout


def test_workflows_are_valid_against_githubs_workflow_schema() -> None:
    completed = run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.github-workflows", TEST_YML, DEPLOY_YML])
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_workflow_schema_rejects_a_broken_workflow(tmp_path: Path) -> None:
    completed = run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.github-workflows", broken_copy(tmp_path)])
    assert completed.returncode != 0
    assert "jobs.deploy" in completed.stdout


def checkov(directory: Path) -> dict:
    if not CHECKOV.exists():
        message = f"{CHECKOV} is missing: run `make infra-tools` (bash infra/tools/setup.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    completed = run(
        [CHECKOV, "-d", directory, "--framework", "github_actions", "-o", "json", "--skip-download"],
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert completed.stdout.strip(), completed.stderr
    report = json.loads(completed.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.infra
@pytest.mark.slow
def test_checkov_passes_the_workflows() -> None:
    summary = checkov(WORKFLOWS)["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["failed"] == 0 and summary["skipped"] == 0
    assert summary["passed"] > 0


@pytest.mark.infra
@pytest.mark.slow
def test_checkov_rejects_a_workflow_with_write_all_permissions(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "deploy.yml").write_text(
        DEPLOY_YML.read_text()
        .replace("contents: read", "write-all", 1)
        .replace("permissions:\n  write-all", "permissions: write-all")
    )
    report = checkov(workflows)
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert "CKV2_GHA_1" in failed, failed


def uses(workflow: dict) -> list[str]:
    return [
        step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step
    ]


@pytest.mark.parametrize("path", [TEST_YML, DEPLOY_YML], ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_and_the_token_is_read_only(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {"contents": "read"}
    assert uses(workflow)
    for action in uses(workflow):
        assert PINNED_ACTION.match(action), f"{path.name}: {action} is not pinned to a commit"
    for line in path.read_text().splitlines():
        if "uses:" in line and "@" in line:
            assert re.search(r"# v\d+\.\d+\.\d+$", line), f"{path.name}: say which release the SHA is: {line}"
    for job in workflow["jobs"].values():
        if "steps" in job:
            assert job["timeout-minutes"] <= 60
            checkout = next(step for step in job["steps"] if step["uses"].startswith("actions/checkout@"))
            assert checkout["with"]["persist-credentials"] is False


def test_test_workflow_runs_make_test_with_python_311_and_node_20() -> None:
    workflow = load(TEST_YML)
    assert {"pull_request", "workflow_call"} <= set(workflow["on"])
    assert workflow["on"]["push"]["branches-ignore"] == ["main"]
    steps = workflow["jobs"]["test"]["steps"]
    by_action = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    assert by_action["actions/setup-python"]["with"]["python-version"] == "3.11"
    assert by_action["actions/setup-node"]["with"]["node-version"] == "20"
    assert steps[-1]["run"] == "make test"


def test_deploy_runs_the_tests_first_skips_windmill_commits_and_deploys_one_at_a_time() -> None:
    workflow = load(DEPLOY_YML)
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    test, deploy = workflow["jobs"]["test"], workflow["jobs"]["deploy"]
    assert test["uses"] == "./.github/workflows/test.yml"
    assert test["if"] == "${{ !startsWith(github.event.head_commit.message, '[WM]') }}"
    assert deploy["needs"] == "test"


def deploy_command() -> list[str]:
    step = next(
        step for step in load(DEPLOY_YML)["jobs"]["deploy"]["steps"] if "wmill" in step.get("run", "")
    )
    return step["run"].split()


def test_deploy_pushes_with_the_pinned_cli_and_never_variables_secrets_or_resources() -> None:
    workflow = load(DEPLOY_YML)
    steps = workflow["jobs"]["deploy"]["steps"]
    assert any(step.get("run", "").startswith("npm ci") for step in steps)
    command = deploy_command()
    assert command[:5] == ["npx", "--no-install", "wmill", "sync", "push"]
    assert {"--yes", "--skip-variables", "--skip-secrets", "--skip-resources"} <= set(command)
    options = dict(itertools.pairwise(command))
    assert options["--base-url"] == '"$WMILL_URL"'
    assert options["--workspace"] == '"$WMILL_WORKSPACE"'
    assert options["--token"] == '"$WMILL_TOKEN"'
    step = next(step for step in steps if "wmill" in step.get("run", ""))
    assert step["env"] == {
        name: f"${{{{ secrets.{name} }}}}" for name in ("WMILL_URL", "WMILL_WORKSPACE", "WMILL_TOKEN")
    }
    # Secrets reach the command only through the environment, never pasted into the script text.
    assert "secrets." not in step["run"]


@pytest.mark.node
def test_every_flag_of_the_deploy_command_exists_in_the_pinned_cli() -> None:
    completed = run([WMILL, "sync", "push", "--help"], cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    help_text = re.sub(r"\x1b\[[0-9;]*m", "", completed.stdout)
    known = set(re.findall(r"(--[a-z][a-z-]+)", help_text))
    flags = {word for word in deploy_command() if word.startswith("--") and word != "--no-install"}
    assert flags and flags <= known, flags - known
