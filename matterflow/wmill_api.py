"""A loopback stand-in for the part of Windmill's HTTP API that workspace scripts reach through the `wmill` client.

On a worker, a step finds Windmill through environment variables (`BASE_INTERNAL_URL`, `WM_TOKEN`, `WM_WORKSPACE`,
`WM_JOB_ID`, ...) and the `wmill` client turns each call into one HTTP request. `WindmillApi` answers those
requests on 127.0.0.1 with the same paths, methods and bodies as the installed client (wmill 1.850, read from its
source), keeps the resources, variables, progress and flow runs they touch, and records every request in order.
Tests use it to see what a script asked of Windmill; the local runner gives each step `env(job_id)`.

Served (under /api):
    GET  version, users/whoami
    GET  w/{ws}/jobs_u/get/{id}, w/{ws}/jobs_u/get_root_job_id/{id}       job lookup (set_progress reads parent_job)
    POST w/{ws}/job_metrics/set_progress/{id}                           {"percent", "flow_job_id"}
    GET  w/{ws}/job_metrics/get_progress/{id}
    GET  w/{ws}/resources/get_value_interpolated/{path}                 get_resource, get_state ($var:/$res: resolved)
    GET  w/{ws}/resources/get_value/{path}, resources/get/{path}, resources/exists/{path}
    POST w/{ws}/resources/create, resources/update_value/{path}         set_resource, set_state
    GET  w/{ws}/variables/get_value/{path}, variables/get/{path}
    POST w/{ws}/variables/create, variables/update/{path}               set_variable
    POST w/{ws}/jobs/run/f/{path}                                       run_flow_async: a job id as text (201)
Anything else answers 404 with a JSON error; a request without `Authorization: Bearer <token>` answers 401. Both
are recorded in `calls` and in `rejected`.

Secrets: resource and variable values are never recorded (request bodies that carry them are stored with the
value replaced by "[redacted]"), never logged (the log names method, path and status only) and never in a repr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Self

log = logging.getLogger("matterflow.wmill_api")

REDACTED = "[redacted]"
DEFAULT_WORKSPACE = "matterflow"
USERNAME = "matterflow"
EMAIL = "matterflow@localhost"
VERSION = "v1.850.0-matterflow-local"


class ApiCall(NamedTuple):
    method: str
    path: str  # without the query string
    body: Any  # the JSON body (None when there was none), resource and variable values redacted


class FlowRun(NamedTuple):
    job_id: str
    path: str
    args: dict[str, Any]


@dataclass
class Job:
    id: str
    parent: str | None = None
    path: str | None = None
    kind: str = "script"
    completed: bool = False
    success: bool | None = None
    result: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Reply(Exception):
    """Raised by a route to answer with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WindmillApi:
    """`with WindmillApi(resources={...}) as api:` serves until the block ends; `api.env(api.new_job())` is what a
    worker would put in a step's environment."""

    def __init__(
        self,
        *,
        workspace: str = DEFAULT_WORKSPACE,
        resources: Mapping[str, Any] | None = None,
        variables: Mapping[str, str] | None = None,
        on_run_flow: Callable[[str, dict[str, Any]], str] | None = None,
    ) -> None:
        self.workspace = workspace
        self.token = secrets.token_urlsafe(24)
        self.calls: list[ApiCall] = []
        self.rejected: list[tuple[int, ApiCall]] = []
        self.progress: dict[str, list[int]] = {}
        self.flow_runs: list[FlowRun] = []
        self.state: dict[str, Any] = dict(resources or {})
        self.resource_types: dict[str, str] = dict.fromkeys(self.state, "any")
        self.variables: dict[str, str] = dict(variables or {})
        self.jobs: dict[str, Job] = {}
        self._on_run_flow = on_run_flow
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._closed = False
        self.base_url = f"http://127.0.0.1:{self._server.server_port}"

    def __repr__(self) -> str:
        return f"WindmillApi(base_url={self.base_url!r}, workspace={self.workspace!r}, calls={len(self.calls)})"

    # lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._closed:
            raise RuntimeError("this WindmillApi was closed; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="wmill-api", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    # jobs and environments -----------------------------------------------------------------------------------

    def new_job(self, *, parent: str | None = None, path: str | None = None, kind: str = "script") -> str:
        """Register a job (a uuid, like Windmill's) that steps can report progress for."""
        if parent is not None and parent not in self.jobs:
            self.new_job_with_id(parent, kind="flow")
        job_id = str(uuid.uuid4())
        self.new_job_with_id(job_id, parent=parent, path=path, kind=kind)
        return job_id

    def new_job_with_id(self, job_id: str, *, parent: str | None = None, path: str | None = None, kind: str = "script") -> Job:
        with self._lock:
            job = self.jobs.setdefault(job_id, Job(id=job_id, parent=parent, path=path, kind=kind))
        return job

    def complete_job(self, job_id: str, *, success: bool = True, result: Any = None) -> None:
        with self._lock:
            job = self._job(job_id)
            job.completed, job.success, job.result = True, success, result

    def root_of(self, job_id: str) -> str:
        with self._lock:
            job = self._job(job_id)
            while job.parent is not None and job.parent in self.jobs:
                job = self.jobs[job.parent]
            return job.id

    def env(self, job_id: str) -> dict[str, str]:
        """The variables a Windmill worker sets for a job, pointing the `wmill` client at this server."""
        with self._lock:
            job = self._job(job_id)
        root = self.root_of(job_id)
        env = {
            "BASE_INTERNAL_URL": self.base_url,
            "WM_BASE_URL": self.base_url,
            "WM_TOKEN": self.token,
            "WM_WORKSPACE": self.workspace,
            "WM_JOB_ID": job.id,
            "WM_USERNAME": USERNAME,
            "WM_EMAIL": EMAIL,
            "WM_PERMISSIONED_AS": f"u/{USERNAME}",
            # get_state/set_state need one of these; per script and trigger on Windmill, per job path here.
            "WM_STATE_PATH": self.state_path(job),
            "WM_STATE_PATH_NEW": self.state_path(job),
        }
        if job.path:
            env["WM_JOB_PATH"] = job.path
        if job.parent is not None:
            env["WM_FLOW_JOB_ID"] = job.parent
            env["WM_ROOT_FLOW_JOB_ID"] = root
        return env

    @staticmethod
    def state_path(job: Job) -> str:
        return f"{job.path}/state" if job.path else f"u/{USERNAME}/state/{job.id}"

    @contextlib.contextmanager
    def activated(self, job_id: str) -> Iterator[dict[str, str]]:
        """Run `wmill` calls in this process as job `job_id`: the environment of `env()` for the block, and a fresh
        `wmill` client before and after it (the client caches one global instance built from the environment)."""
        import wmill.client

        env = self.env(job_id)
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        _drop_wmill_client(wmill.client)
        try:
            yield env
        finally:
            _drop_wmill_client(wmill.client)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id!r} on this WindmillApi; create it with new_job()")
        return job

    # request handling ----------------------------------------------------------------------------------------

    def _record(self, method: str, path: str, body: Any, status: int) -> None:
        call = ApiCall(method, path, _redacted_body(path, body))
        with self._lock:
            self.calls.append(call)
            if status >= 400:
                self.rejected.append((status, call))

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any, str]:
        """-> (status, payload, content type). Raises _Reply for errors."""
        if path == "/api/version" and method == "GET":
            return 200, VERSION, "text/plain"
        if path == "/api/users/whoami" and method == "GET":
            return 200, {"username": USERNAME, "email": EMAIL, "is_admin": False, "is_super_admin": False}, "json"
        match = re.fullmatch(r"/api/w/([^/]+)/(.+)", path)
        if not match:
            raise _Reply(404, f"no such endpoint: {method} {path}")
        workspace, rest = match.groups()
        if workspace != self.workspace:
            raise _Reply(404, f"workspace {workspace!r} not found")
        for pattern, route_method, handler in self._routes():
            found = re.fullmatch(pattern, rest)
            if found and route_method == method:
                return handler(*found.groups(), body=body, query=query)
        raise _Reply(404, f"no such endpoint: {method} {path}")

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Any, str]]]]:
        return [
            (r"jobs_u/get/([^/]+)", "GET", self._get_job),
            (r"jobs_u/get_root_job_id/([^/]+)", "GET", self._get_root_job_id),
            (r"job_metrics/set_progress/([^/]+)", "POST", self._set_progress),
            (r"job_metrics/get_progress/([^/]+)", "GET", self._get_progress),
            (r"resources/get_value_interpolated/(.+)", "GET", self._get_resource_interpolated),
            (r"resources/get_value/(.+)", "GET", self._get_resource_value),
            (r"resources/get/(.+)", "GET", self._get_resource),
            (r"resources/exists/(.+)", "GET", self._resource_exists),
            (r"resources/create", "POST", self._create_resource),
            (r"resources/update_value/(.+)", "POST", self._update_resource),
            (r"variables/get_value/(.+)", "GET", self._get_variable_value),
            (r"variables/get/(.+)", "GET", self._get_variable),
            (r"variables/create", "POST", self._create_variable),
            (r"variables/update/(.+)", "POST", self._update_variable),
            (r"jobs/run/f/(.+)", "POST", self._run_flow),
        ]

    # jobs

    def _job_json(self, job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "type": "CompletedJob" if job.completed else "QueuedJob",
            "running": not job.completed,
            "success": job.success,
            "workspace_id": self.workspace,
            "parent_job": job.parent,
            "root_job": None if job.parent is None else self.root_of(job.id),
            "script_path": job.path,
            "job_kind": job.kind,
            "permissioned_as": f"u/{USERNAME}",
            "email": EMAIL,
        }

    def _known_job(self, job_id: str) -> Job:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise _Reply(404, f"Job {job_id} not found")
        return job

    def _get_job(self, job_id: str, **_: Any) -> tuple[int, Any, str]:
        return 200, self._job_json(self._known_job(job_id)), "json"

    def _get_root_job_id(self, job_id: str, **_: Any) -> tuple[int, Any, str]:
        self._known_job(job_id)
        return 200, self.root_of(job_id), "json"

    def _set_progress(self, job_id: str, *, body: Any, **_: Any) -> tuple[int, Any, str]:
        self._known_job(job_id)
        percent = body.get("percent") if isinstance(body, dict) else None
        if not isinstance(percent, int) or isinstance(percent, bool):
            raise _Reply(400, "percent must be an integer")
        with self._lock:
            self.progress.setdefault(job_id, []).append(percent)
        return 200, "", "text/plain"

    def _get_progress(self, job_id: str, **_: Any) -> tuple[int, Any, str]:
        self._known_job(job_id)
        with self._lock:
            values = self.progress.get(job_id) or [None]
        return 200, values[-1], "json"

    def _run_flow(self, path: str, *, body: Any, **_: Any) -> tuple[int, Any, str]:
        args = body if isinstance(body, dict) else {}
        if self._on_run_flow is not None:
            try:
                job_id = self._on_run_flow(path, args)
            except Exception as exc:
                log.warning("on_run_flow failed for %s: %s", path, type(exc).__name__)
                raise _Reply(500, f"could not start flow {path}: {type(exc).__name__}") from None
        else:
            job_id = str(uuid.uuid4())
        self.new_job_with_id(job_id, path=path, kind="flow")
        with self._lock:
            self.flow_runs.append(FlowRun(job_id, path, args))
        return 201, job_id, "text/plain"

    # resources

    def _resource(self, path: str) -> Any:
        with self._lock:
            if path not in self.state:
                raise _Reply(404, f"Not found: resource {path} not found")
            return self.state[path]

    def _get_resource_interpolated(self, path: str, **_: Any) -> tuple[int, Any, str]:
        return 200, self._interpolate(self._resource(path), depth=0), "json"

    def _get_resource_value(self, path: str, **_: Any) -> tuple[int, Any, str]:
        return 200, self._resource(path), "json"

    def _get_resource(self, path: str, **_: Any) -> tuple[int, Any, str]:
        value = self._resource(path)
        return 200, {"workspace_id": self.workspace, "path": path, "value": value,
                     "resource_type": self.resource_types.get(path, "any"), "is_oauth": False}, "json"

    def _resource_exists(self, path: str, **_: Any) -> tuple[int, Any, str]:
        with self._lock:
            return 200, path in self.state, "json"

    def _create_resource(self, *, body: Any, **_: Any) -> tuple[int, Any, str]:
        if not isinstance(body, dict) or not isinstance(body.get("path"), str) or "value" not in body:
            raise _Reply(400, "resources/create needs path and value")
        path = body["path"]
        with self._lock:
            if path in self.state:
                raise _Reply(400, f"resource {path} already exists")
            self.state[path] = body["value"]
            self.resource_types[path] = str(body.get("resource_type") or "any")
        return 201, path, "text/plain"

    def _update_resource(self, path: str, *, body: Any, **_: Any) -> tuple[int, Any, str]:
        self._resource(path)
        if not isinstance(body, dict) or "value" not in body:
            raise _Reply(400, "resources/update_value needs value")
        with self._lock:
            self.state[path] = body["value"]
        return 200, f"value of resource {path} updated", "text/plain"

    def _interpolate(self, value: Any, *, depth: int) -> Any:
        """Windmill resolves `$var:` and `$res:` references inside a resource's value when it is fetched."""
        if depth > 10:
            raise _Reply(400, "resource references nest too deeply")
        if isinstance(value, dict):
            return {k: self._interpolate(v, depth=depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self._interpolate(v, depth=depth) for v in value]
        if isinstance(value, str) and value.startswith("$var:"):
            return self._variable(value[5:])
        if isinstance(value, str) and value.startswith("$res:"):
            return self._interpolate(self._resource(value[5:]), depth=depth + 1)
        return value

    # variables

    def _variable(self, path: str) -> str:
        with self._lock:
            if path not in self.variables:
                raise _Reply(404, f"Not found: variable {path} not found")
            return self.variables[path]

    def _get_variable_value(self, path: str, **_: Any) -> tuple[int, Any, str]:
        return 200, self._variable(path), "json"

    def _get_variable(self, path: str, **_: Any) -> tuple[int, Any, str]:
        self._variable(path)
        return 200, {"workspace_id": self.workspace, "path": path, "is_secret": True, "value": None}, "json"

    def _create_variable(self, *, body: Any, **_: Any) -> tuple[int, Any, str]:
        if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not isinstance(body.get("value"), str):
            raise _Reply(400, "variables/create needs path and a string value")
        with self._lock:
            if body["path"] in self.variables:
                raise _Reply(400, f"variable {body['path']} already exists")
            self.variables[body["path"]] = body["value"]
        return 201, body["path"], "text/plain"

    def _update_variable(self, path: str, *, body: Any, **_: Any) -> tuple[int, Any, str]:
        self._variable(path)
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise _Reply(400, "variables/update needs a string value")
        with self._lock:
            self.variables[path] = body["value"]
        return 200, f"variable {path} updated", "text/plain"


def _drop_wmill_client(module: Any) -> None:
    client, module._client = module._client, None
    if client is not None:
        client.client.close()  # its pooled sockets would otherwise be closed by the garbage collector, with a warning


_VALUE_BODIES = re.compile(r"/api/w/[^/]+/(resources/(create|update_value/.+)|variables/(create|update/.+))")


def _redacted_body(path: str, body: Any) -> Any:
    if isinstance(body, dict) and "value" in body and _VALUE_BODIES.fullmatch(path):
        return {**body, "value": REDACTED}
    return body


def _handler_for(api: WindmillApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "matterflow-wmill-api"

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def _handle(self, method: str) -> None:
            split = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(split.path)
            query = dict(urllib.parse.parse_qsl(split.query))
            status, payload, kind = 500, {"error": {"status": 500, "message": "internal error"}}, "json"
            body: Any = None
            try:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise _Reply(400, "the body is not JSON") from None
                if self.headers.get("Authorization", "") != f"Bearer {api.token}":
                    raise _Reply(401, "missing or wrong bearer token")
                status, payload, kind = api._route(method, path, query, body)
            except _Reply as reply:
                status, payload, kind = reply.status, {"error": {"status": reply.status, "message": reply.message}}, "json"
            except Exception as exc:  # a bug here must answer, not hang the client
                log.exception("WindmillApi failed on %s %s", method, path)
                payload = {"error": {"status": 500, "message": type(exc).__name__}}
            api._record(method, path, body, status)
            data = payload.encode() if kind == "text/plain" else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if kind == "text/plain" else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            log.debug("%s %s -> %s", self.command, urllib.parse.urlsplit(self.path).path, code)

    return Handler
