"""`matterflow run`: execute a Windmill flow.yaml locally with Windmill's semantics.

The same flow.yaml that `wmill sync push` deploys, and the same `main()` functions a worker calls:
- modules `script` (by path; each step in its own Python process, results round-tripped through JSON and
  refused above Windmill's result size) and `branchall` (`parallel: true` runs branches at the same time;
  `skip_failure` puts the branch's error in its result slot instead of failing the flow);
- input transforms `static` and `javascript`, the expressions evaluated by a real JS engine (V8, mini-racer) with
  `flow_input`, `results` and `previous_result`;
- `$res:<path>` values resolved from the resources given, `$var:<NAME>` from the environment;
- `retry` (constant and exponential) and `failure_module` (it receives `previous_result = {error: {name,
  message, step_id}}`, and the flow still fails).
Anything else in the flow (other module types, skip_if, stop_after_if, suspend, sleep...) is refused by name, so
a flow never silently runs differently here than on Windmill.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from py_mini_racer import MiniRacer

from f.matter.errors import InputError, MatterflowError
from matterflow.azurite import PROJECT_ROOT

MAX_RESULT_BYTES = 2 * 1024 * 1024  # Windmill truncates or rejects step results above a few MiB
MODULE_KEYS = {"id", "summary", "value", "retry"}
SCRIPT_KEYS = {"type", "path", "input_transforms", "hash", "is_trigger"}
BRANCHALL_KEYS = {"type", "branches", "parallel"}


class FlowFailed(MatterflowError):
    """A step failed (after its retries). Carries the step id and the step's own error."""

    def __init__(self, step_id: str, name: str, message: str) -> None:
        self.step_id, self.name, self.message = step_id, name, message
        super().__init__(f"step {step_id} failed: {name}: {message}")

    def as_result(self) -> dict:
        """The shape Windmill gives a failure module (`previous_result`) and a skipped branch's result slot."""
        return {"error": {"name": self.name, "message": self.message, "step_id": self.step_id}}


class Runner:
    def __init__(
        self,
        flow: Mapping[str, Any],
        resources: Mapping[str, Any] | None = None,
        *,
        root: Path = PROJECT_ROOT,
        echo: Callable[[str], None] = lambda line: None,
        max_result_bytes: int = MAX_RESULT_BYTES,
    ) -> None:
        self.flow = flow
        self.resources = dict(resources or {})
        self.root = root
        self.echo = echo
        self.max_result_bytes = max_result_bytes
        self._js_lock = threading.Lock()
        _check_supported(flow)

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> Runner:
        return cls(yaml.safe_load(path.read_text()), **kwargs)

    def run(self, flow_input: Mapping[str, Any]) -> Any:
        inputs = self._resolve(self._with_defaults(flow_input))
        results: dict[str, Any] = {}
        previous: Any = None
        with MiniRacer() as self._js:
            try:
                for module in self.flow["value"]["modules"]:
                    previous = self._module(module, inputs, results, previous)
                return previous
            except FlowFailed as failure:
                handler = self.flow["value"].get("failure_module")
                if handler:
                    self.echo(f"running failure module {handler['id']}")
                    try:
                        self._module(handler, inputs, results, failure.as_result())
                    except FlowFailed as handler_failure:
                        self.echo(f"the failure module failed too: {handler_failure}")
                raise

    # modules ---------------------------------------------------------------------------------------------------

    def _module(self, module: Mapping[str, Any], inputs: dict, results: dict, previous: Any) -> Any:
        value = module["value"]
        if value["type"] == "script":
            result = self._script_with_retry(module, inputs, results, previous)
        else:  # branchall (_check_supported refused everything else)
            result = self._branchall(module, inputs, results, previous)
        results[module["id"]] = result
        return result

    def _branchall(self, module: Mapping[str, Any], inputs: dict, results: dict, previous: Any) -> list:
        branches = module["value"]["branches"]

        def branch(index: int) -> Any:
            last = previous
            try:
                for child in branches[index]["modules"]:
                    last = self._module(child, inputs, results, last)
            except FlowFailed as failure:
                if not branches[index].get("skip_failure"):
                    raise
                return failure.as_result()
            return last

        self.echo(f"{module['id']}: {len(branches)} branches{' in parallel' if module['value'].get('parallel') else ''}")
        if not module["value"].get("parallel"):
            return [branch(i) for i in range(len(branches))]
        with ThreadPoolExecutor(max_workers=len(branches)) as pool:
            futures = [pool.submit(branch, i) for i in range(len(branches))]
            outcomes = []
            for future in futures:  # wait for every branch before failing, as Windmill does
                try:
                    outcomes.append(future.result())
                except FlowFailed as failure:
                    outcomes.append(failure)
        failed = next((o for o in outcomes if isinstance(o, FlowFailed)), None)
        if failed:
            raise failed
        return outcomes

    def _script_with_retry(self, module: Mapping[str, Any], inputs: dict, results: dict, previous: Any) -> Any:
        args = {name: self._transform(t, inputs, results, previous) for name, t in module["value"].get("input_transforms", {}).items()}
        args = self._resolve(args)
        delays = _retry_delays(module.get("retry") or {})
        for attempt in range(len(delays) + 1):
            started = time.monotonic()
            try:
                result = self._script(module["id"], module["value"]["path"], args)
                self.echo(f"{module['id']}: done in {time.monotonic() - started:.1f} s")
                return result
            except FlowFailed as failure:
                if attempt == len(delays):
                    self.echo(f"{module['id']}: failed: {failure.name}: {failure.message}")
                    raise
                self.echo(f"{module['id']}: attempt {attempt + 1} failed ({failure.name}); retrying in {delays[attempt]:.1f} s")
                time.sleep(delays[attempt])  # the retry delay Windmill would wait, not synchronisation
        raise AssertionError("unreachable")

    def _script(self, step_id: str, path: str, args: dict) -> Any:
        if not (self.root / f"{path}.py").exists():
            raise InputError(f"step {step_id} calls {path}, which is not a script in this workspace", where="flow.yaml")
        with tempfile.TemporaryDirectory(prefix="matterflow-step-") as tmp:
            args_file, out_file = Path(tmp) / "args.json", Path(tmp) / "out.json"
            args_file.write_text(json.dumps(args, default=str))
            completed = subprocess.run(
                [sys.executable, "-m", "matterflow.step", path, str(args_file), str(out_file)],
                cwd=self.root,
                env={**os.environ, "WM_FLOW_STEP_ID": step_id},
                capture_output=True,
                text=True,
                check=False,
            )
            if not out_file.exists():
                raise FlowFailed(step_id, "WorkerCrash", completed.stderr.strip()[-500:] or f"exit code {completed.returncode}")
            payload = out_file.read_text()
        if len(payload) > self.max_result_bytes:
            raise FlowFailed(step_id, "ResultTooLarge", f"the result is {len(payload):,} bytes, over Windmill's {self.max_result_bytes:,}")
        outcome = json.loads(payload)
        if "error" in outcome:
            raise FlowFailed(step_id, outcome["error"]["name"], outcome["error"]["message"])
        return outcome["result"]

    # inputs ----------------------------------------------------------------------------------------------------

    def _transform(self, transform: Mapping[str, Any], inputs: dict, results: dict, previous: Any) -> Any:
        if transform["type"] == "static":
            return transform.get("value")
        expression = transform["expr"]
        program = (
            "(function(flow_input, results, previous_result){ const v = (" + expression + "); "
            "return JSON.stringify(v === undefined ? null : v); })("
            + ", ".join(json.dumps(v, default=str) for v in (inputs, results, previous))
            + ")"
        )
        with self._js_lock:
            try:
                return json.loads(self._js.eval(program))
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
            return self.resources[path]
        if isinstance(value, str) and value.startswith("$var:"):
            name = value[len("$var:") :].rsplit("/", 1)[-1].upper()
            if name not in os.environ:
                raise InputError(f"variable {value!r} is not set (environment variable {name})", where="variables")
            return os.environ[name]
        if isinstance(value, Mapping):
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        return value


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

    def check(module: Mapping[str, Any], where: str) -> None:
        extra = set(module) - MODULE_KEYS
        if extra:
            raise InputError(f"module {module.get('id')!r} uses {sorted(extra)}, which `matterflow run` does not support", where=where)
        value = module["value"]
        kind = value.get("type")
        if kind == "script":
            allowed = SCRIPT_KEYS
        elif kind == "branchall":
            allowed = BRANCHALL_KEYS
            for branch in value.get("branches", []):
                for child in branch.get("modules", []):
                    check(child, where)
        else:
            raise InputError(f"module {module.get('id')!r} is of type {kind!r}, which `matterflow run` does not support", where=where)
        extra = set(value) - allowed
        if extra:
            raise InputError(f"module {module.get('id')!r} uses {sorted(extra)}, which `matterflow run` does not support", where=where)
        for name, transform in (value.get("input_transforms") or {}).items():
            if transform.get("type") not in ("static", "javascript"):
                raise InputError(f"input {module.get('id')}.{name} has transform type {transform.get('type')!r}", where=where)

    flow_value = flow.get("value") or {}
    unsupported = set(flow_value) - {"modules", "failure_module"}
    if unsupported:
        raise InputError(f"the flow uses {sorted(unsupported)}, which `matterflow run` does not support", where="flow.yaml")
    for module in flow_value.get("modules", []):
        check(module, "flow.yaml")
    if flow_value.get("failure_module"):
        check(flow_value["failure_module"], "flow.yaml")
