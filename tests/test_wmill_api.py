"""The loopback Windmill API, driven through the installed `wmill` client exactly as a step on a worker drives it."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest
import wmill

from matterflow.wmill_api import REDACTED, ApiCall, FlowRun, WindmillApi

SECRET = "acct-key-SECRET-7f3a91"


@pytest.fixture
def api():
    with WindmillApi(
        workspace="legal",
        resources={
            "f/matter/storage": {"accountName": "devstoreaccount1", "containerName": "matters", "accessKey": "$var:f/matter/storage_key"},
            "f/matter/plain": {"endpoint": "http://127.0.0.1:10000", "nested": {"pool": "$res:f/matter/pool"}},
            "f/matter/pool": {"endpoints": [{"name": "sim-0"}]},
        },
        variables={"f/matter/storage_key": SECRET, "f/matter/region": "westeurope"},
    ) as server:
        yield server


def test_set_progress_looks_up_the_job_and_posts_the_percent_with_its_flow(api: WindmillApi) -> None:
    flow = api.new_job()
    job = api.new_job(parent=flow)
    with api.activated(job):
        wmill.set_progress(42)
        wmill.set_progress(77)
        assert wmill.get_progress() == 77
    assert api.progress == {job: [42, 77]}
    assert api.calls[:2] == [
        ApiCall("GET", f"/api/w/legal/jobs_u/get/{job}", None),
        ApiCall("POST", f"/api/w/legal/job_metrics/set_progress/{job}", {"percent": 42, "flow_job_id": flow}),
    ]
    assert api.rejected == []


def test_set_progress_of_a_job_without_a_flow_sends_no_flow_id(api: WindmillApi) -> None:
    job = api.new_job()
    with api.activated(job):
        wmill.set_progress(5)
    assert api.calls[-1].body == {"percent": 5, "flow_job_id": None}


def test_get_resource_interpolates_variables_and_nested_resources(api: WindmillApi) -> None:
    with api.activated(api.new_job()):
        storage = wmill.get_resource("f/matter/storage")
        same = wmill.get_resource("$res:f/matter/storage")
        plain = wmill.get_resource("f/matter/plain")
        raw = wmill.get_resource("f/matter/storage", interpolated=False)
        missing = wmill.get_resource("f/matter/nothing", none_if_undefined=True)
    assert storage == same == {"accountName": "devstoreaccount1", "containerName": "matters", "accessKey": SECRET}
    assert plain == {"endpoint": "http://127.0.0.1:10000", "nested": {"pool": {"endpoints": [{"name": "sim-0"}]}}}
    assert raw["accessKey"] == "$var:f/matter/storage_key"
    assert missing is None
    assert [call.path for call in api.calls[:2]] == ["/api/w/legal/resources/get_value_interpolated/f/matter/storage"] * 2


def test_a_missing_resource_raises_in_the_client_and_is_recorded_as_404(api: WindmillApi) -> None:
    with api.activated(api.new_job()), pytest.raises(Exception, match="404"):
        wmill.get_resource("f/matter/nothing")
    assert api.rejected == [(404, ApiCall("GET", "/api/w/legal/resources/get_value_interpolated/f/matter/nothing", None))]


def test_get_and_set_variable(api: WindmillApi) -> None:
    with api.activated(api.new_job()):
        assert wmill.get_variable("f/matter/region") == "westeurope"
        wmill.set_variable("f/matter/region", "northeurope")
        wmill.set_variable("f/matter/new", "fresh")
        assert wmill.get_variable("f/matter/region") == "northeurope"
        assert wmill.get_variable("f/matter/new") == "fresh"
    assert api.variables["f/matter/new"] == "fresh"
    assert ApiCall("POST", "/api/w/legal/variables/update/f/matter/region", {"value": REDACTED}) in api.calls


def test_state_is_a_resource_at_the_state_path_created_then_updated(api: WindmillApi) -> None:
    job = api.new_job(path="f/matter/sweep")
    with api.activated(job) as env:
        assert wmill.get_state() is None
        wmill.set_state({"cursor": 1})
        assert wmill.get_state() == {"cursor": 1}
        wmill.set_state({"cursor": 2})
        assert wmill.get_state() == {"cursor": 2}
    path = env["WM_STATE_PATH_NEW"]
    assert api.state[path] == {"cursor": 2}
    assert api.resource_types[path] == "state"
    writes = [call for call in api.calls if call.method == "POST"]
    assert writes == [
        ApiCall("POST", "/api/w/legal/resources/create", {"path": path, "value": REDACTED, "resource_type": "state"}),
        ApiCall("POST", f"/api/w/legal/resources/update_value/{path}", {"value": REDACTED}),
    ]


def test_set_resource_creates_a_resource_get_resource_reads(api: WindmillApi) -> None:
    with api.activated(api.new_job()):
        wmill.set_resource("f/matter/checkpoint", {"done": 3}, resource_type="any")
        assert wmill.get_resource("f/matter/checkpoint") == {"done": 3}
    assert api.state["f/matter/checkpoint"] == {"done": 3}


def test_run_flow_async_returns_a_new_job_id_and_records_the_run(api: WindmillApi) -> None:
    args = {"blob_path": "matters/M-1/lease.ocr.json", "storage": "$res:f/matter/storage"}
    with api.activated(api.new_job()):
        first = wmill.run_flow_async("f/matter/process_document", args)
        second = wmill.run_flow_async("f/matter/process_document", {"blob_path": "matters/M-1/deed.ocr.json"})
        assert wmill.get_job_status(first) == "RUNNING"
        api.complete_job(first)
        assert wmill.get_job_status(first) == "COMPLETED"
    assert str(uuid.UUID(first)) == first and first != second
    assert api.flow_runs[0] == FlowRun(first, "f/matter/process_document", args)
    assert [run.job_id for run in api.flow_runs] == [first, second]
    assert ApiCall("POST", "/api/w/legal/jobs/run/f/f/matter/process_document", args) in api.calls


def test_run_flow_async_asks_on_run_flow_for_the_job_id() -> None:
    started: list[tuple[str, dict]] = []

    def start(path: str, args: dict) -> str:
        started.append((path, args))
        return f"job-{len(started)}"

    with WindmillApi(on_run_flow=start) as api, api.activated(api.new_job()):
        assert wmill.run_flow_async("f/matter/process_document", {"blob_path": "a.json"}) == "job-1"
        assert wmill.get_job("job-1")["parent_job"] is None
    assert started == [("f/matter/process_document", {"blob_path": "a.json"})]
    assert api.flow_runs == [FlowRun("job-1", "f/matter/process_document", {"blob_path": "a.json"})]


def test_a_failing_on_run_flow_fails_the_call_without_recording_a_run() -> None:
    def start(path: str, args: dict) -> str:
        raise RuntimeError("queue full")

    with WindmillApi(on_run_flow=start) as api, api.activated(api.new_job()), pytest.raises(Exception, match="500"):
        wmill.run_flow_async("f/matter/process_document", {})
    assert api.flow_runs == []
    assert [status for status, _ in api.rejected] == [500]


def test_whoami_version_root_job_and_workspace(api: WindmillApi) -> None:
    root = api.new_job()
    child = api.new_job(parent=api.new_job(parent=root))
    with api.activated(child) as env:
        assert wmill.whoami()["username"] == "matterflow"
        assert wmill.get_workspace() == "legal"
        assert wmill.get_root_job_id() == root
        assert wmill.Windmill().version == "v1.850.0-matterflow-local"
    assert env["WM_ROOT_FLOW_JOB_ID"] == root
    assert env["WM_FLOW_JOB_ID"] == api.jobs[child].parent


def test_env_points_the_client_at_this_server(api: WindmillApi) -> None:
    job = api.new_job(path="f/matter/ingest")
    env = api.env(job)
    assert env["BASE_INTERNAL_URL"] == env["WM_BASE_URL"] == api.base_url
    assert env["WM_TOKEN"] == api.token and env["WM_WORKSPACE"] == "legal" and env["WM_JOB_ID"] == job
    assert env["WM_JOB_PATH"] == "f/matter/ingest"
    assert "WM_FLOW_JOB_ID" not in env
    with pytest.raises(KeyError, match="no job"):
        api.env("not-a-job")


def test_requests_without_the_bearer_token_answer_401_and_are_recorded(api: WindmillApi) -> None:
    url = f"{api.base_url}/api/w/legal/variables/get_value/f/matter/region"
    anonymous = httpx.get(url)
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token"})
    right = httpx.get(url, headers={"Authorization": f"Bearer {api.token}"})
    assert (anonymous.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert anonymous.json()["error"]["status"] == 401
    assert right.json() == "westeurope"
    assert [status for status, _ in api.rejected] == [401, 401]
    assert len(api.calls) == 3


def test_the_client_with_a_wrong_token_is_refused(api: WindmillApi, monkeypatch: pytest.MonkeyPatch) -> None:
    client = wmill.Windmill(base_url=api.base_url, token="stolen", workspace="legal")
    with pytest.raises(Exception, match="401"):
        client.get_variable("f/matter/region")
    client.client.close()
    assert api.rejected[0][0] == 401


def test_unknown_endpoints_answer_404_json_and_are_recorded(api: WindmillApi) -> None:
    headers = {"Authorization": f"Bearer {api.token}"}
    unknown = httpx.post(f"{api.base_url}/api/w/legal/jobs/run/p/f/matter/ingest", headers=headers, json={"x": 1})
    other_workspace = httpx.get(f"{api.base_url}/api/w/admins/variables/get_value/f/matter/region", headers=headers)
    assert unknown.status_code == other_workspace.status_code == 404
    assert "no such endpoint" in unknown.json()["error"]["message"]
    assert api.rejected == [
        (404, ApiCall("POST", "/api/w/legal/jobs/run/p/f/matter/ingest", {"x": 1})),
        (404, ApiCall("GET", "/api/w/admins/variables/get_value/f/matter/region", None)),
    ]


def test_secrets_never_reach_the_record_the_repr_or_the_logs(api: WindmillApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with api.activated(api.new_job()):
        assert wmill.get_resource("f/matter/storage")["accessKey"] == SECRET
        assert wmill.get_variable("f/matter/storage_key") == SECRET
        wmill.set_resource("f/matter/copy", {"accessKey": SECRET})
        wmill.set_variable("f/matter/other_key", SECRET)
        with pytest.raises(Exception, match="404"):
            wmill.get_resource("f/matter/missing")
    assert api.state["f/matter/copy"] == {"accessKey": SECRET}
    assert "resources/get_value_interpolated/f/matter/storage" in caplog.text + repr(api.calls)
    for text in (repr(api.calls), repr(api.rejected), repr(api), caplog.text):
        assert SECRET not in text
        assert api.token not in text


def test_the_server_stops_when_the_block_ends() -> None:
    with WindmillApi() as api:
        assert httpx.get(f"{api.base_url}/api/version", headers={"Authorization": f"Bearer {api.token}"}).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api.base_url}/api/version")
    with pytest.raises(RuntimeError, match="closed"):
        api.__enter__()
