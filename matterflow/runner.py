"""`matterflow run`: execute a Windmill flow.yaml locally with Windmill's semantics.

The same flow.yaml that `wmill sync push` deploys, and the same `main()` functions a worker calls. Supported, as
Windmill runs them:
- modules `script` (by path) and `rawscript` (python3): each step in its own Python process, results round-tripped
  through JSON and refused above Windmill's result size; `identity` (passes `previous_result` on);
- `branchall` (`parallel: true` runs branches at the same time; a branch with `skip_failure` puts its error in its
  result slot instead of failing the flow), `branchone` (the first branch whose `expr` is true, else `default`),
  `forloopflow` (`iterator`, `parallel`, `parallelism`, `skip_failures`; steps see `flow_input.iter.value` and
  `flow_input.iter.index`; the result is the list of each iteration's last result, null for a skipped failure);
- module options `retry` (constant and exponential), `timeout` (seconds, as an input transform), `skip_if` (the step
  becomes an identity step, as on Windmill), `stop_after_if` (`result` and `flow_input`; stops the flow early, or
  fails it with `error_message`) on top-level steps, and the flow's `failure_module` (it receives
  `previous_result = {error: {name, message, step_id}}`, and the flow still fails);
- input transforms `static` and `javascript`, the expressions evaluated by a real JS engine (V8, mini-racer) with
  `flow_input`, `results` and `previous_result`;
- `$res:<path>` values resolved from the resources given, `$var:<path>` from the variables given or else the
  environment (`$var:f/matter/api_key` -> API_KEY).
Scripts that call the `wmill` client work unchanged: each run serves the subset of Windmill's API they use on
loopback (matterflow.wmill_api), and each step gets WM_TOKEN, BASE_INTERNAL_URL, WM_WORKSPACE, WM_JOB_ID... as a
worker sets them. Flows a step starts with `wmill.run_flow_async` run in the background, and `run()` waits for them.
Anything else in the flow (other module types, suspend, sleep, cache...) is refused by name, so a flow never
silently runs differently here than on Windmill.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from py_mini_racer import MiniRacer

from f.matter.errors import InputError, MatterflowError
from matterflow.azurite import PROJECT_ROOT
from matterflow.progress import PlainDisplay
from matterflow.wmill_api import WindmillApi

MAX_RESULT_BYTES = 2 * 1024 * 1024  # Windmill truncates or rejects step results above a few MiB
MODULE_KEYS = {"id", "summary", "value", "retry", "timeout", "skip_if", "stop_after_if"}
VALUE_KEYS = {
    "script": {"type", "path", "input_transforms", "hash", "is_trigger", "tag"},
    "rawscript": {"type", "content", "language", "input_transforms", "path", "lock", "tag"},
    "identity": {"type", "flow"},
    "branchall": {"type", "branches", "parallel"},
    "branchone": {"type", "branches", "default"},
    "forloopflow": {"type", "modules", "iterator", "parallel", "parallelism", "skip_failures"},
}
LOG_TAIL_CHARS = 2000
WORKSPACE_PATH = re.compile(r"[fu]/[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)+")


class FlowFailed(MatterflowError):
    """A step failed (after its retries). Carries the step id and the step's own error."""

    def __init__(self, step_id: str, name: str, message: str) -> None:
        self.step_id, self.name, self.message = step_id, name, message
        super().__init__(f"step {step_id} failed: {name}: {message}")

    def as_result(self) -> dict:
        """The shape Windmill gives a failure module (`previous_result`) and a skipped branch's result slot."""
        return {"error": {"name": self.name, "message": self.message, "step_id": self.step_id}}


class _StopFlow(Exception):
    """`stop_after_if` was true: the flow ends here with this result."""

    def __init__(self, result: Any) -> None:
        self.result = result


class RunEvents(Protocol):
    """What the runner tells a display while it runs (see matterflow.progress)."""

    def message(self, line: str) -> None: ...
    def step_started(self, step_id: str, job_id: str) -> None: ...
    def step_log(self, step_id: str, line: str) -> None: ...
    def step_finished(self, step_id: str, *, ok: bool, seconds: float, detail: str = "") -> None: ...


@dataclass(frozen=True)
class StepRun:
    """One attempt of one step, for timings (`Runner.step_runs`)."""

    step_id: str
    job_id: str
    started: float  # time.monotonic()
    ended: float
    ok: bool


@dataclass
class _Scope:
    """What expressions see: the flow input (with `iter` inside a loop) and the results so far."""

    flow_input: dict
    results: dict = field(default_factory=dict)

    def child(self, **flow_input_extra: Any) -> _Scope:
        return _Scope({**self.flow_input, **flow_input_extra}, dict(self.results))


class Runner:
    def __init__(
        self,
        flow: Mapping[str, Any],
        resources: Mapping[str, Any] | None = None,
        *,
        root: Path = PROJECT_ROOT,
        echo: Callable[[str], None] = lambda line: None,
        events: RunEvents | None = None,
        variables: Mapping[str, str] | None = None,
        api: WindmillApi | None = None,
        path: str | None = None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        """One run at a time per Runner (a run owns its job ids and `step_runs`); make one Runner per concurrent run.
        `api`: the Windmill API the steps talk to; by default each run serves its own on loopback.
        `variables`: Windmill variables by path, for `$var:` and `wmill.get_variable` (else the environment)."""
        self.flow = flow
        self.resources = dict(resources or {})
        self.variables = dict(variables or {})
        self.root = root
        self.events: RunEvents = events or PlainDisplay(echo)
        self.api = api
        self.path = path
        self.max_result_bytes = max_result_bytes
        self.step_runs: list[StepRun] = []
        self._flow_job = ""
        self._active_api: WindmillApi | None = None
        self._started_flows: list[threading.Thread] = []
        _check_supported(flow)

    @classmethod
    def from_file(cls, flow_file: Path, **kwargs: Any) -> Runner:
        return cls(yaml.safe_load(flow_file.read_text()), **kwargs)

    @classmethod
    def for_script(cls, script_path: str, argument_names: list[str], **kwargs: Any) -> Runner:
        """A workspace script (`f/matter/sweep`) run the way a schedule or the Run button starts it: one step whose
        arguments are the inputs."""
        transforms = {name: {"type": "javascript", "expr": f"flow_input[{json.dumps(name)}]"} for name in argument_names}
        step = {"id": script_path.rsplit("/", 1)[-1], "value": {"type": "script", "path": script_path, "input_transforms": transforms}}
        return cls({"summary": script_path, "value": {"modules": [step]}}, path=script_path, **kwargs)

    def progress(self, job_id: str) -> int | None:
        """The last percent a running step reported with `wmill.set_progress` (for displays)."""
        api = self._active_api
        values = api.progress.get(job_id) if api else None
        return values[-1] if values else None

    def run(self, flow_input: Mapping[str, Any]) -> Any:
        """Run the flow to its end and return its result; raises FlowFailed (after the failure module ran)."""
        with contextlib.ExitStack() as stack:
            if self.api is None:
                api = WindmillApi(resources=self.resources, variables=self.variables, on_run_flow=self._start_flow)
                self._active_api = stack.enter_context(api)
            else:
                self._active_api = self.api
            # Flows a step started with wmill.run_flow_async keep running, as on Windmill; wait for them here.
            stack.callback(self._join_started_flows)
            return self._run_as_job(flow_input, self._active_api.new_job(kind="flow", path=self.path))

    def _run_as_job(self, flow_input: Mapping[str, Any], job_id: str) -> Any:
        assert self._active_api is not None
        self._flow_job = job_id
        try:
            result = self._run(flow_input)
        except BaseException:
            self._active_api.complete_job(job_id, success=False)
            raise
        self._active_api.complete_job(job_id, result=result)
        return result

    def _start_flow(self, path: str, args: dict[str, Any]) -> str:
        """`wmill.run_flow_async(path, args)` from a step: run that workspace flow in the background."""
        if not WORKSPACE_PATH.fullmatch(path):
            raise InputError(f"{path!r} is not a workspace path like f/folder/name", where="run_flow_async")
        flow_file = self.root / f"{path}__flow" / "flow.yaml"
        if not flow_file.exists():
            raise InputError(f"no flow {path} in this workspace", where="run_flow_async")
        job_id = str(uuid.uuid4())
        child = Runner.from_file(flow_file, resources=self.resources, root=self.root, events=self.events, variables=self.variables, path=path)
        child._active_api = self._active_api
        assert self._active_api is not None
        self._active_api.new_job_with_id(job_id, path=path, kind="flow")

        def run() -> None:
            try:
                child._run_as_job(args, job_id)
                self.events.message(f"flow {path} (job {job_id}) finished")
            except Exception as exc:  # reported like a failed job on Windmill; the starting step goes on
                self.events.message(f"flow {path} (job {job_id}) failed: {exc}")

        thread = threading.Thread(target=run, name=f"flow-{job_id[:8]}")
        self._started_flows.append(thread)
        self.events.message(f"flow {path} started as job {job_id}")
        thread.start()
        return job_id

    def _join_started_flows(self) -> None:
        while self._started_flows:
            self._started_flows.pop().join()

    def _run(self, flow_input: Mapping[str, Any]) -> Any:
        scope = _Scope(self._resolve(self._with_defaults(flow_input)))
        try:
            return self._sequence(self.flow["value"]["modules"], scope, None, top_level=True)
        except _StopFlow as stop:
            return stop.result
        except FlowFailed as failure:
            handler = self.flow["value"].get("failure_module")
            if handler:
                self.events.message(f"running failure module {handler['id']}")
                try:
                    self._module(handler, scope, failure.as_result())
                except FlowFailed as handler_failure:
                    self.events.message(f"the failure module failed too: {handler_failure}")
            raise

    # modules ---------------------------------------------------------------------------------------------------

    def _sequence(self, modules: list, scope: _Scope, previous: Any, *, top_level: bool = False) -> Any:
        for module in modules:
            previous = self._module(module, scope, previous)
            stop = module.get("stop_after_if")
            if top_level and stop and self._eval(stop["expr"], flow_input=scope.flow_input, result=previous):
                if stop.get("error_message") is not None:
                    message = stop["error_message"] or f"stop_after_if of step {module['id']} was true"
                    raise FlowFailed(module["id"], "StopAfterIf", message)
                self.events.message(f"{module['id']}: stop_after_if is true; the flow stops here")
                raise _StopFlow(previous)
        return previous

    def _module(self, module: Mapping[str, Any], scope: _Scope, previous: Any) -> Any:
        value = module["value"]
        skip = module.get("skip_if")
        if skip and self._eval(skip["expr"], flow_input=scope.flow_input, results=scope.results, previous_result=previous):
            self.events.message(f"{module['id']}: skipped (skip_if)")
            kind = "identity"  # Windmill runs a skipped step as an identity job
        else:
            kind = value["type"]
        if kind == "identity":
            result = previous
        elif kind in ("script", "rawscript"):
            result = self._script_with_retry(module, scope, previous)
        elif kind == "branchall":
            result = self._branchall(module, scope, previous)
        elif kind == "branchone":
            result = self._branchone(module, scope, previous)
        else:  # forloopflow (_check_supported refused everything else)
            result = self._forloop(module, scope, previous)
        scope.results[module["id"]] = result
        return result

    def _branchall(self, module: Mapping[str, Any], scope: _Scope, previous: Any) -> list:
        branches = module["value"]["branches"]

        def branch(index: int) -> tuple[Any, dict]:
            inner = scope.child()
            try:
                return self._sequence(branches[index]["modules"], inner, previous), inner.results
            except FlowFailed as failure:
                if not branches[index].get("skip_failure"):
                    raise
                return failure.as_result(), inner.results

        parallel = bool(module["value"].get("parallel"))
        self.events.message(f"{module['id']}: {len(branches)} branches{' in parallel' if parallel else ''}")
        outcomes = self._map(branch, range(len(branches)), workers=len(branches) if parallel else 1)
        for _, inner_results in outcomes:
            scope.results.update(inner_results)
        return [result for result, _ in outcomes]

    def _branchone(self, module: Mapping[str, Any], scope: _Scope, previous: Any) -> Any:
        value = module["value"]
        for index, branch in enumerate(value.get("branches", [])):
            if self._eval(branch["expr"], flow_input=scope.flow_input, results=scope.results, previous_result=previous):
                self.events.message(f"{module['id']}: branch {index} ({branch.get('summary') or branch['expr']})")
                return self._sequence(branch["modules"], scope, previous)
        self.events.message(f"{module['id']}: default branch")
        return self._sequence(value.get("default", []), scope, previous)

    def _forloop(self, module: Mapping[str, Any], scope: _Scope, previous: Any) -> list:
        value = module["value"]
        items = self._transform(value["iterator"], scope, previous)
        if not isinstance(items, list):
            raise FlowFailed(module["id"], "IteratorNotAnArray", f"the iterator gave {type(items).__name__}, not an array")
        workers = 1
        if value.get("parallel"):
            limit = value.get("parallelism")
            if isinstance(limit, Mapping):
                limit = self._transform(limit, scope, previous)
            workers = int(limit) if limit else max(1, len(items))

        def iteration(index: int) -> Any:
            inner = scope.child(iter={"value": items[index], "index": index})
            try:
                return self._sequence(value["modules"], inner, previous)
            except FlowFailed:
                if not value.get("skip_failures"):
                    raise
                return None  # Windmill: "failed iterations return null"

        self.events.message(f"{module['id']}: {len(items)} iterations, {workers} at a time")
        return self._map(iteration, range(len(items)), workers=workers)

    def _map(self, function: Callable[[int], Any], indexes: range, *, workers: int) -> list:
        """Run `function` over `indexes`, `workers` at a time. Like Windmill, waits for every started one before
        failing; sequentially (workers=1) it stops at the first failure."""
        if workers <= 1:
            return [function(i) for i in indexes]
        with ThreadPoolExecutor(max_workers=min(workers, len(indexes)) or 1) as pool:
            futures = [pool.submit(function, i) for i in indexes]
            outcomes: list[Any] = []
            failure: FlowFailed | None = None
            for future in futures:
                try:
                    outcomes.append(future.result())
                except FlowFailed as exc:
                    failure = failure or exc
        if failure:
            raise failure
        return outcomes

    # scripts ---------------------------------------------------------------------------------------------------

    def _script_with_retry(self, module: Mapping[str, Any], scope: _Scope, previous: Any) -> Any:
        value = module["value"]
        args = {name: self._transform(t, scope, previous) for name, t in value.get("input_transforms", {}).items()}
        args = self._resolve(args)
        timeout = module.get("timeout")
        if isinstance(timeout, Mapping):
            timeout = self._transform(timeout, scope, previous)
        delays = _retry_delays(module.get("retry") or {})
        for attempt in range(len(delays) + 1):
            try:
                return self._script(module["id"], value, args, timeout=float(timeout) if timeout else None)
            except FlowFailed as failure:
                if attempt == len(delays):
                    raise
                self.events.message(f"{module['id']}: attempt {attempt + 1} failed ({failure.name}); retrying in {delays[attempt]:.1f} s")
                time.sleep(delays[attempt])  # the retry delay Windmill would wait, not synchronisation
        raise AssertionError("unreachable")

    def _script(self, step_id: str, value: Mapping[str, Any], args: dict, *, timeout: float | None) -> Any:
        api = self._active_api
        assert api is not None
        job_id = api.new_job(parent=self._flow_job, path=value.get("path"))
        env = {**os.environ, **api.env(job_id), "WM_FLOW_STEP_ID": step_id}
        with tempfile.TemporaryDirectory(prefix="matterflow-step-") as tmp:
            args_file, out_file = Path(tmp) / "args.json", Path(tmp) / "out.json"
            args_file.write_text(json.dumps(args, default=str))
            if value["type"] == "rawscript":
                target = Path(tmp) / f"{step_id}.py"
                target.write_text(value["content"])
            else:
                if not (self.root / f"{value['path']}.py").exists():
                    raise InputError(f"step {step_id} calls {value['path']}, which is not a script in this workspace", where="flow.yaml")
                target = value["path"]
            started = time.monotonic()
            self.events.step_started(step_id, job_id)
            tail, returncode = self._run_process(step_id, [sys.executable, "-m", "matterflow.step", str(target), str(args_file), str(out_file)], env, timeout)
            ended = time.monotonic()
            payload = out_file.read_text() if out_file.exists() and returncode is not None else None
        error: tuple[str, str] | None = None
        if returncode is None:
            error = ("TimeoutError", f"the step ran longer than its timeout of {timeout:g} s and was killed")
        elif payload is None:
            error = ("WorkerCrash", tail.strip()[-500:] or f"exit code {returncode}")
        else:
            outcome = json.loads(payload)
            if "error" in outcome:
                error = (outcome["error"]["name"], outcome["error"]["message"])
            elif (size := len(json.dumps(outcome["result"]))) > self.max_result_bytes:
                error = ("ResultTooLarge", f"the result is {size:,} bytes, over Windmill's {self.max_result_bytes:,}")
        self.step_runs.append(StepRun(step_id, job_id, started, ended, error is None))
        api.complete_job(job_id, success=error is None, result=None if error else outcome["result"])
        self.events.step_finished(step_id, ok=error is None, seconds=ended - started, detail=f"{error[0]}: {error[1]}" if error else "")
        if error:
            raise FlowFailed(step_id, *error)
        return outcome["result"]

    def _run_process(self, step_id: str, command: list[str], env: dict, timeout: float | None) -> tuple[str, int | None]:
        """Run one step process, passing its output lines to the display. Returns (the output's tail, exit code),
        exit code None when the timeout killed it."""
        tail: list[str] = []
        with subprocess.Popen(command, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:

            def read() -> None:
                assert process.stdout is not None
                for line in process.stdout:
                    tail.append(line)
                    del tail[:-40]
                    self.events.step_log(step_id, line.rstrip("\n"))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            try:
                returncode: int | None = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                returncode = None
            reader.join()
        return "".join(tail)[-LOG_TAIL_CHARS:], returncode

    # inputs ----------------------------------------------------------------------------------------------------

    def _transform(self, transform: Mapping[str, Any], scope: _Scope, previous: Any) -> Any:
        if transform["type"] == "static":
            return transform.get("value")
        return self._eval(transform["expr"], flow_input=scope.flow_input, results=scope.results, previous_result=previous)

    def _eval(self, expression: str, **names: Any) -> Any:
        """Evaluate a JavaScript expression in V8 with `names` as its variables; the value comes back as JSON."""
        program = (
            f"(function({', '.join(names)}){{ const v = ({expression}); return JSON.stringify(v === undefined ? null : v); }})("
            + ", ".join(json.dumps(v, default=str) for v in names.values())
            + ")"
        )
        try:
            return json.loads(_javascript(program))
        except Exception as exc:
            raise InputError(f"cannot evaluate {expression!r}: {exc}", where="flow.yaml") from None

    def _with_defaults(self, flow_input: Mapping[str, Any]) -> dict:
        schema = self.flow.get("schema") or {}
        values = {name: spec["default"] for name, spec in (schema.get("properties") or {}).items() if "default" in spec}
        values.update(flow_input)
        missing = [name for name in schema.get("required", []) if name not in values]
        if missing:
            raise InputError(f"missing required flow inputs: {', '.join(missing)}", where="flow input")
        return values

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("$res:"):
            path = value[len("$res:") :]
            if path not in self.resources:
                raise InputError(f"no resource {path!r}; known: {sorted(self.resources)}", where="resources")
            return self._resolve(self.resources[path])  # `$var:` inside a resource, as get_value_interpolated does
        if isinstance(value, str) and value.startswith("$var:"):
            if value[len("$var:") :] in self.variables:
                return self.variables[value[len("$var:") :]]
            name = value[len("$var:") :].rsplit("/", 1)[-1].upper()
            if name not in os.environ:
                raise InputError(f"variable {value!r} is not set (environment variable {name})", where="variables")
            return os.environ[name]
        if isinstance(value, Mapping):
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        return value


_V8_LOCK = threading.Lock()
_V8: list[MiniRacer] = []


def _javascript(program: str) -> str:
    """Evaluate in the process's one V8 isolate. mini-racer crashes when isolates are created or closed on several
    threads at once (parallel branches, many runners in threads), so there is one, used under a lock, closed at
    exit (an open isolate would keep the interpreter from exiting)."""
    with _V8_LOCK:
        if not _V8:
            _V8.append(MiniRacer())
            atexit.register(_V8[0].close)
        return _V8[0].eval(program)


def _retry_delays(retry: Mapping[str, Any]) -> list[float]:
    if "constant" in retry:
        spec = retry["constant"]
        return [float(spec.get("seconds", 0))] * int(spec.get("attempts", 0))
    if "exponential" in retry:
        spec = retry["exponential"]
        base, factor = float(spec.get("seconds", 1)), float(spec.get("multiplier", 1))
        jitter = float(spec.get("random_factor", 0)) / 100
        return [base * factor**i * (1 + random.uniform(-jitter, jitter)) for i in range(int(spec.get("attempts", 0)))]
    return []


def _check_supported(flow: Mapping[str, Any]) -> None:
    """Refuse, by name, anything this runner would not run the way Windmill does."""

    def refuse(module: Mapping[str, Any], what: str) -> None:
        raise InputError(f"module {module.get('id')!r} {what}, which `matterflow run` does not support", where="flow.yaml")

    def check_all(modules: list, *, top_level: bool) -> None:
        for module in modules:
            check(module, top_level=top_level)

    def check(module: Mapping[str, Any], *, top_level: bool) -> None:
        extra = set(module) - MODULE_KEYS
        if extra:
            refuse(module, f"uses {sorted(extra)}")
        if "stop_after_if" in module and not top_level:
            refuse(module, "uses stop_after_if inside a branch or loop")
        value = module["value"]
        kind = value.get("type")
        if kind not in VALUE_KEYS:
            refuse(module, f"is of type {kind!r}")
        extra = set(value) - VALUE_KEYS[kind]
        if extra:
            refuse(module, f"uses {sorted(extra)}")
        if kind == "rawscript" and value.get("language") != "python3":
            refuse(module, f"is a rawscript in {value.get('language')!r} (only python3 runs here)")
        if kind == "branchall":
            for branch in value.get("branches", []):
                check_all(branch.get("modules", []), top_level=False)
        elif kind == "branchone":
            for branch in value.get("branches", []):
                check_all(branch.get("modules", []), top_level=False)
            check_all(value.get("default", []), top_level=False)
        elif kind == "forloopflow":
            check_all(value.get("modules", []), top_level=False)
        transforms = dict(value.get("input_transforms") or {})
        transforms.update({key: value[key] for key in ("iterator", "parallelism") if isinstance(value.get(key), Mapping)})
        if isinstance(module.get("timeout"), Mapping):
            transforms["timeout"] = module["timeout"]
        for name, transform in transforms.items():
            if transform.get("type") not in ("static", "javascript"):
                raise InputError(f"input {module.get('id')}.{name} has transform type {transform.get('type')!r}", where="flow.yaml")

    flow_value = flow.get("value") or {}
    unsupported = set(flow_value) - {"modules", "failure_module"}
    if unsupported:
        raise InputError(f"the flow uses {sorted(unsupported)}, which `matterflow run` does not support", where="flow.yaml")
    check_all(flow_value.get("modules", []), top_level=True)
    if flow_value.get("failure_module"):
        check(flow_value["failure_module"], top_level=False)
