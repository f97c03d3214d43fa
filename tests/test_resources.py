"""resources/: the local resource files and the production templates are valid for the scripts that read them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from f.matter.llm import endpoints_from_resource
from f.matter.storage import BlobConfig
from matterflow.runner import Runner

RESOURCES = Path(__file__).resolve().parent.parent / "resources"


def load(relative: str) -> dict:
    return json.loads((RESOURCES / relative).read_text())


def test_local_resources_point_at_azurite_and_three_simulators() -> None:
    storage = BlobConfig.from_resource(load("f/matter/storage.json"))
    assert storage.container == "matters" and "127.0.0.1:10000" in storage.account_url
    assert [e.base_url for e in endpoints_from_resource(load("f/matter/llm_pool.json"))] == [
        f"http://127.0.0.1:{port}/v1" for port in (8001, 8002, 8003)
    ]


def test_templates_hold_no_secret_values_only_variable_links() -> None:
    storage = load("templates/storage.managed-identity.json")
    assert storage["accessKey"] == "" and BlobConfig.from_resource({**storage, "accountName": "acct"}).auth == "default-azure-credential"
    keys = [e.get("api_key") for e in load("templates/llm_pool.json")["endpoints"]]
    assert all(key is None or key.startswith("$var:") for key in keys)


def test_var_links_inside_a_resource_are_resolved_as_windmill_interpolates_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-test-value")
    step = {
        "id": "keys",
        "value": {
            "type": "rawscript", "language": "python3",
            "content": "def main(pool):\n    return [e.get('api_key') for e in pool['endpoints']]\n",
            "input_transforms": {"pool": {"type": "static", "value": "$res:f/matter/llm_pool"}},
        },
    }
    runner = Runner({"summary": "t", "value": {"modules": [step]}}, resources={"f/matter/llm_pool": load("templates/llm_pool.json")})
    assert runner.run({}) == [None, "gsk-test-value"]
    endpoints_from_resource({"endpoints": [{**e, "api_key": "x"} for e in load("templates/llm_pool.json")["endpoints"]]})
