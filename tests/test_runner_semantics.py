"""Windmill semantics of the local runner, each on a small flow of its own built from python3 rawscript steps.

Concurrency is proven by rendezvous, not by sleeps: a step that waits for a file its sibling writes can only finish
if the sibling runs at the same time (a sequential runner would hit the step's deadline and fail the test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from f.matter.errors import InputError
from matterflow.runner import FlowFailed, Runner

# A step that marks itself running, meets its partner (if any), and reports its interval and the peak number of
# steps it saw running at once.
RENDEZVOUS = '''
import os, time
from pathlib import Path

def main(folder: str, me: str, partner: str = "", work_s: float = 0.0):
    folder = Path(folder)
    started = time.time()
    (folder / f"{me}.running").touch()
    (folder / f"{me}.arrived").touch()
    seen = len(list(folder.glob("*.running")))
    deadline = time.monotonic() + 20
    while partner and not (folder / f"{partner}.arrived").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{me} never met {partner}: the two did not run at the same time")
        seen = max(seen, len(list(folder.glob("*.running"))))
        time.sleep(0.01)
    end_work = time.monotonic() + work_s
    while time.monotonic() < end_work:
        seen = max(seen, len(list(folder.glob("*.running"))))
        time.sleep(0.01)
    seen = max(seen, len(list(folder.glob("*.running"))))
    (folder / f"{me}.running").unlink()
    return {"me": me, "started": started, "ended": time.time(), "seen_running": seen}
'''

ECHO = '''
def main(value=None, **rest):
    return {"value": value, **rest}
'''

FAIL_IF = '''
def main(value=None, bad=None):
    if value == bad:
        raise ValueError(f"bad value {value!r}")
    return value
'''

COUNT_ATTEMPTS = '''
from pathlib import Path

def main(counter: str, succeed_on: int):
    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt < succeed_on:
        raise RuntimeError(f"attempt {attempt} fails on purpose")
    return attempt
'''

RECORD = '''
import json
from pathlib import Path

def main(out: str, payload=None):
    Path(out).write_text(json.dumps(payload))
    return "recorded"
'''

HANG = '''
import os, time
from pathlib import Path

def main(pid_file: str):
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)
'''


def raw(step_id: str, content: str, **inputs: dict) -> dict:
    return {"id": step_id, "value": {"type": "rawscript", "language": "python3", "content": content, "input_transforms": inputs}}


def static(value) -> dict:
    return {"type": "static", "value": value}


def js(expr: str) -> dict:
    return {"type": "javascript", "expr": expr}


def run(*modules: dict, flow_input: dict | None = None, failure_module: dict | None = None, **runner_options) -> object:
    value = {"modules": list(modules)}
    if failure_module:
        value["failure_module"] = failure_module
    flow = {"summary": "test", "value": value, "schema": {"type": "object", "properties": {}}}
    return Runner(flow, **runner_options).run(flow_input or {})


def overlap(a: dict, b: dict) -> bool:
    return a["started"] < b["ended"] and b["started"] < a["ended"]


def test_parallel_branchall_runs_its_branches_at_the_same_time(tmp_path: Path) -> None:
    folder = static(str(tmp_path))
    result = run(
        {
            "id": "both",
            "value": {
                "type": "branchall",
                "parallel": True,
                "branches": [
                    {"modules": [raw("left", RENDEZVOUS, folder=folder, me=static("left"), partner=static("right"))]},
                    {"modules": [raw("right", RENDEZVOUS, folder=folder, me=static("right"), partner=static("left"))]},
                ],
            },
        }
    )
    left, right = result
    assert (left["me"], right["me"]) == ("left", "right"), "results keep the branches' order"
    assert overlap(left, right)


def test_sequential_branchall_runs_one_branch_after_the_other(tmp_path: Path) -> None:
    folder = static(str(tmp_path))
    first, second = run(
        {
            "id": "both",
            "value": {
                "type": "branchall",
                "parallel": False,
                "branches": [
                    {"modules": [raw("a", RENDEZVOUS, folder=folder, me=static("a"))]},
                    {"modules": [raw("b", RENDEZVOUS, folder=folder, me=static("b"))]},
                ],
            },
        }
    )
    assert first["ended"] <= second["started"]
    assert first["seen_running"] == second["seen_running"] == 1


def test_skip_failure_puts_the_error_in_the_branch_slot_and_the_flow_goes_on() -> None:
    result = run(
        {
            "id": "both",
            "value": {
                "type": "branchall",
                "parallel": True,
                "branches": [
                    {"skip_failure": True, "modules": [raw("breaks", FAIL_IF, value=static("x"), bad=static("x"))]},
                    {"modules": [raw("works", ECHO, value=static(1))]},
                ],
            },
        },
        raw("after", ECHO, value=js("results.both")),
    )
    broken, worked = result["value"]
    assert broken["error"]["step_id"] == "breaks" and broken["error"]["name"] == "ValueError"
    assert "bad value 'x'" in broken["error"]["message"]
    assert worked == {"value": 1}


def test_a_failing_branch_without_skip_failure_fails_the_flow() -> None:
    with pytest.raises(FlowFailed, match="step breaks failed: ValueError"):
        run(
            {
                "id": "both",
                "value": {"type": "branchall", "parallel": True, "branches": [{"modules": [raw("breaks", FAIL_IF, value=static(1), bad=static(1))]}]},
            }
        )


def loop(items, *modules: dict, parallel: bool = True, parallelism=None, skip_failures: bool = False) -> dict:
    value = {"type": "forloopflow", "iterator": static(items), "parallel": parallel, "skip_failures": skip_failures, "modules": list(modules)}
    if parallelism is not None:
        value["parallelism"] = parallelism
    return {"id": "each", "value": value}


def test_forloop_runs_at_most_parallelism_iterations_at_once_and_really_overlaps(tmp_path: Path) -> None:
    # Pairs (0, 1) and (2, 3) must meet, so two iterations run together; the bound says never three.
    pairs = {"0": "1", "1": "0", "2": "3", "3": "2"}
    result = run(
        loop(
            ["0", "1", "2", "3"],
            raw(
                "meet",
                RENDEZVOUS,
                folder=static(str(tmp_path)),
                me=js("flow_input.iter.value"),
                partner=js(f"({json.dumps(pairs)})[flow_input.iter.value]"),
                work_s=static(0.3),
            ),
            parallelism=js("1 + 1"),
        )
    )
    assert [r["me"] for r in result] == ["0", "1", "2", "3"], "results keep the iterator's order"
    assert max(r["seen_running"] for r in result) == 2
    assert overlap(result[0], result[1]) and overlap(result[2], result[3])


def test_forloop_steps_see_the_iteration_value_and_index() -> None:
    result = run(loop(["a", "b", "c"], raw("echo", ECHO, value=js("flow_input.iter.value"), index=js("flow_input.iter.index")), parallel=False))
    assert result == [{"value": "a", "index": 0}, {"value": "b", "index": 1}, {"value": "c", "index": 2}]


def test_forloop_skip_failures_gives_null_for_the_failed_iteration() -> None:
    step = raw("check", FAIL_IF, value=js("flow_input.iter.value"), bad=static(2))
    assert run(loop([1, 2, 3], step, skip_failures=True, parallelism=static(3))) == [1, None, 3]
    with pytest.raises(FlowFailed, match="bad value 2"):
        run(loop([1, 2, 3], step, skip_failures=False))


def test_forloop_iterator_must_be_an_array() -> None:
    with pytest.raises(FlowFailed, match="IteratorNotAnArray: the iterator gave dict"):
        run({"id": "each", "value": {"type": "forloopflow", "iterator": js("({a: 1})"), "skip_failures": False, "modules": []}})


def test_branchone_runs_the_first_true_branch_or_the_default() -> None:
    def choose(n: int):
        return run(
            raw("start", ECHO, value=static(n)),
            {
                "id": "pick",
                "value": {
                    "type": "branchone",
                    "branches": [
                        {"expr": "results.start.value > 10", "modules": [raw("big", ECHO, value=static("big"))]},
                        {"expr": "previous_result.value > 5", "modules": [raw("medium", ECHO, value=static("medium"))]},
                    ],
                    "default": [raw("small", ECHO, value=static("small"))],
                },
            },
        )

    assert [choose(n)["value"] for n in (50, 7, 1)] == ["big", "medium", "small"]


def test_identity_and_a_skipped_step_pass_the_previous_result_on(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run(
        raw("start", ECHO, value=static("kept")),
        {"id": "same", "value": {"type": "identity"}},
        {"id": "maybe", "skip_if": {"expr": "flow_input.skip"}, "value": raw("x", RECORD, out=static(str(marker)))["value"]},
        raw("end", ECHO, value=js("[results.same.value, results.maybe.value, previous_result.value]")),
        flow_input={"skip": True},
    )
    assert result == {"value": ["kept", "kept", "kept"]}
    assert not marker.exists(), "a skipped step does not run"


def test_stop_after_if_ends_the_flow_with_that_steps_result(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run(
        {**raw("first", ECHO, value=static(3)), "stop_after_if": {"expr": "result.value == 3 && flow_input.stop", "skip_if_stopped": True}},
        raw("later", RECORD, out=static(str(marker))),
        flow_input={"stop": True},
    )
    assert result == {"value": 3}
    assert not marker.exists()


def test_stop_after_if_with_an_error_message_fails_the_flow_and_runs_the_failure_module(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    with pytest.raises(FlowFailed, match="step first failed: StopAfterIf: nothing to do"):
        run(
            {**raw("first", ECHO, value=static(0)), "stop_after_if": {"expr": "result.value == 0", "error_message": "nothing to do"}},
            failure_module=raw("on_failure", RECORD, out=static(str(seen)), payload=js("previous_result")),
        )
    assert json.loads(seen.read_text()) == {"error": {"name": "StopAfterIf", "message": "nothing to do", "step_id": "first"}}


def test_retry_reruns_a_failing_step_until_it_succeeds_or_attempts_run_out(tmp_path: Path) -> None:
    def attempts(succeed_on: int, retries: int, name: str):
        counter = tmp_path / name
        step = {**raw("flaky", COUNT_ATTEMPTS, counter=static(str(counter)), succeed_on=static(succeed_on)), "retry": {"constant": {"attempts": retries, "seconds": 0}}}
        try:
            return run(step)
        finally:
            assert int(counter.read_text()) == min(succeed_on, retries + 1)

    assert attempts(succeed_on=3, retries=2, name="enough") == 3
    with pytest.raises(FlowFailed, match="attempt 2 fails on purpose"):
        attempts(succeed_on=3, retries=1, name="too-few")


def test_the_failure_module_gets_the_error_and_the_flow_still_fails(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    with pytest.raises(FlowFailed, match="step breaks failed"):
        run(
            raw("breaks", FAIL_IF, value=static("v"), bad=static("v")),
            failure_module=raw("on_failure", RECORD, out=static(str(seen)), payload=js("previous_result")),
        )
    error = json.loads(seen.read_text())["error"]
    assert error["step_id"] == "breaks" and error["name"] == "ValueError" and "bad value 'v'" in error["message"]


def test_javascript_expressions_see_flow_input_results_and_previous_result() -> None:
    result = run(
        raw("numbers", ECHO, value=js("flow_input.values")),
        raw(
            "shaped",
            ECHO,
            value=js("results.numbers.value.map(x => x * 2).filter(x => x > 2)"),
            label=js("`${flow_input.name}-${previous_result.value.length}`"),
            missing=js("flow_input.nothing"),
        ),
        flow_input={"values": [1, 2, 3], "name": "m"},
    )
    assert result == {"value": [4, 6], "label": "m-3", "missing": None}


def test_a_bad_expression_is_an_input_error_naming_it() -> None:
    with pytest.raises(InputError, match=r"cannot evaluate 'results\.nope\.x'"):
        run(raw("a", ECHO, value=js("results.nope.x")))


def test_a_timeout_kills_the_step_and_fails_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(FlowFailed, match="TimeoutError: the step ran longer than its timeout of 1 s"):
        run({**raw("hangs", HANG, pid_file=static(str(pid_file))), "timeout": static(1)})
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_results_round_trip_through_json_and_a_large_result_is_refused() -> None:
    converts = "import datetime\ndef main():\n    return {'when': datetime.date(2024, 5, 1), 'pair': (1, 2)}\n"
    assert run(raw("c", converts)) == {"when": "2024-05-01", "pair": [1, 2]}
    big = "def main():\n    return 'x' * 5000\n"
    with pytest.raises(FlowFailed, match="ResultTooLarge: the result is 5,002 bytes, over Windmill's 4,096"):
        run(raw("big", big), max_result_bytes=4096)


def test_a_step_crash_reports_the_tail_of_its_output() -> None:
    crashes = "import os\ndef main():\n    print('about to crash', flush=True)\n    os._exit(3)\n"
    with pytest.raises(FlowFailed, match="WorkerCrash: about to crash"):
        run(raw("crash", crashes))


def test_each_step_attempt_is_timed() -> None:
    runner = Runner({"summary": "t", "value": {"modules": [raw("a", ECHO, value=static(1)), raw("b", ECHO, value=static(2))]}})
    runner.run({})
    runner_steps = runner.step_runs
    assert [s.step_id for s in runner_steps] == ["a", "b"]
    assert all(s.ok and s.ended >= s.started for s in runner_steps)
    assert runner_steps[0].ended <= runner_steps[1].started


USES_WMILL = '''
import os
import wmill

def main():
    wmill.set_progress(40)
    wmill.set_state({"seen": 1})
    return {
        "resource": wmill.get_resource("f/t/conn"),
        "variable": wmill.get_variable("f/t/greeting"),
        "state": wmill.get_state(),
        "job": os.environ["WM_JOB_ID"],
        "flow": os.environ["WM_FLOW_JOB_ID"],
        "workspace": os.environ["WM_WORKSPACE"],
    }
'''


def test_steps_reach_windmills_api_on_loopback_as_on_a_worker() -> None:
    runner = Runner(
        {"summary": "t", "value": {"modules": [raw("talks", USES_WMILL)]}},
        resources={"f/t/conn": {"host": "db.example", "port": 5432}},
        variables={"f/t/greeting": "hello"},
    )
    result = runner.run({})
    assert result["resource"] == {"host": "db.example", "port": 5432}
    assert result["variable"] == "hello"
    assert result["state"] == {"seen": 1}
    assert result["workspace"] == "matterflow" and result["job"] != result["flow"]
    assert runner.progress(result["job"]) == 40
    assert [run.job_id for run in runner.step_runs] == [result["job"]]


STARTS_A_FLOW = '''
import wmill

def main(out: str):
    return wmill.run_flow_async("f/t/child", {"out": out, "word": "started"})
'''


def test_a_flow_started_with_run_flow_async_runs_and_run_waits_for_it(tmp_path: Path) -> None:
    child = tmp_path / "f" / "t" / "child__flow" / "flow.yaml"
    child.parent.mkdir(parents=True)
    child.write_text(
        json.dumps(
            {
                "summary": "child",
                "value": {"modules": [raw("write", RECORD, out={"type": "javascript", "expr": "flow_input.out"}, payload=js("flow_input.word"))]},
                "schema": {"type": "object", "properties": {"out": {"type": "string"}, "word": {"type": "string"}}, "required": ["out"]},
            }
        )
    )
    out = tmp_path / "child-wrote.json"
    runner = Runner({"summary": "t", "value": {"modules": [raw("start", STARTS_A_FLOW, out=static(str(out)))]}}, root=tmp_path)
    job_id = runner.run({})
    assert json.loads(out.read_text()) == "started", "the child flow ran before run() returned"
    assert [r.step_id for r in runner.step_runs] == ["start"]
    assert len(job_id) == 36


def test_many_runners_on_many_threads_share_one_javascript_engine_safely() -> None:
    """mini-racer segfaults when isolates are made on several threads at once; runners in threads must not."""
    program = """
import threading
from matterflow.runner import Runner
flow = {"summary": "t", "value": {"modules": [
    {"id": f"s{i}", "skip_if": {"expr": "flow_input.n * 2 > 1000"}, "value": {"type": "identity"}} for i in range(40)]}}
failures = []
def go(n):
    try:
        Runner(flow).run({"n": n})
    except Exception as exc:
        failures.append(exc)
threads = [threading.Thread(target=go, args=(n,)) for n in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print("failures", len(failures))
"""
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "failures 0"


def test_run_flow_async_starts_only_flows_named_by_a_workspace_path(tmp_path: Path) -> None:
    for path in ("f/t/..child", "g/t/child", "f/t/missing"):
        starts = f"import wmill\n\ndef main():\n    return wmill.run_flow_async({path!r}, {{}})\n"
        with pytest.raises(FlowFailed, match=f"could not start flow {path}"):
            run(raw("start", starts), root=tmp_path)
