"""`matterflow bench`: benchmark scenarios, each a module with one job, every figure a ratio measured side by
side in one run (the machine is shared and noisy), recorded with the command that produced it.

Scenario modules expose `run(...) -> dict` (the JSON report), `table(report) -> str` (Markdown) and
`plot(report, path)` (a PNG). `run_all` (`make bench`) runs them all, writes `results/<scenario>.json`,
`plots/<scenario>.png` and rewrites `RESULTS.md`.

- fanout: the fan-out vs gather, semaphore, LangChain and raw aiohttp on the same simulators (`fanout.py`);
- parse: parse + normalize + confidence vs orjson.loads and json + a loop, time and peak memory (`parse.py`);
- blob: staging and reading 50 MB through BlobStore vs the raw azure-storage-blob SDK (`blob.py`);
- e2e: `matterflow run` on 10, 100 and 500-page documents, wall time split by step (`e2e.py`);
- cost: tokens per page by window and overlap, dollars per 1,000 pages vs Claude 3.5 Sonnet (`cost.py`);
- many-docs: 50 documents through the runner at once vs the simulators' capacity (`many_docs.py`).
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .common import dumps, goals_md, utc_now

__all__ = ["SCENARIOS", "dumps", "run_all", "run_fanout", "table", "throttled", "write_results_md"]


@dataclass(frozen=True)
class Scenario:
    command: str
    module_name: str  # imported when needed: a spawned worker importing this package stays light
    call: Callable[[ModuleType], dict]

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module_name}")

    def run(self) -> dict:
        return self.call(self.module)


SCENARIOS: dict[str, Scenario] = {
    "fanout-2s": Scenario("matterflow bench fanout --windows 1000 --latency-ms 2000", "fanout", lambda m: m.fanout(1000, 2000.0)),
    "fanout-200ms": Scenario("matterflow bench fanout --windows 1000 --latency-ms 200", "fanout", lambda m: m.fanout(1000, 200.0)),
    "fanout-throttled": Scenario("matterflow bench fanout --throttled --windows 300 --rpm 600", "fanout", lambda m: m.throttled(300, 600)),
    "parse": Scenario("matterflow bench parse --pages 100,500,2000,5000", "parse", lambda m: m.run([100, 500, 2000, 5000])),
    "blob": Scenario("matterflow bench blob --mb 50 --rounds 5", "blob", lambda m: m.run(50, 5)),
    "e2e": Scenario("matterflow bench e2e --pages 10,100,500", "e2e", lambda m: m.run([10, 100, 500])),
    "cost": Scenario("matterflow bench cost --pages 200", "cost", lambda m: m.run(200)),
    "many-docs": Scenario("matterflow bench many-docs --docs 50 --pages 20 --workers 25", "many_docs", lambda m: m.run(50, 20, workers=25)),
}


def __getattr__(name: str) -> Any:
    """Kept importable from here for callers of the former single-module `matterflow.bench`."""
    aliases = {"table": "table", "run_fanout": "fanout", "throttled": "throttled"}
    if name in aliases:
        return getattr(importlib.import_module(f"{__name__}.fanout"), aliases[name])
    raise AttributeError(name)


def run_all(out_dir: Path, only: list[str] | None = None, echo: Callable[[str], None] = print) -> Path:
    """Run every scenario (or `only` those), keep each JSON report in `out_dir/results/` and a plot in
    `out_dir/plots/`, and rewrite `out_dir/RESULTS.md` from every report present."""
    results_dir, plots_dir = out_dir / "results", out_dir / "plots"
    results_dir.mkdir(parents=True, exist_ok=True)
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name, scenario in SCENARIOS.items():
        if only and name not in only:
            continue
        echo(f"bench {name}: {scenario.command}")
        started = time.monotonic()
        report = scenario.run()
        report["command"] = scenario.command
        report["recorded"] = utc_now()
        report["bench_seconds"] = round(time.monotonic() - started, 1)
        (results_dir / f"{name}.json").write_text(dumps(report) + "\n")
        scenario.module.plot(report, plots_dir / f"{name}.png")
        echo(f"bench {name}: done in {report['bench_seconds']:.0f} s")
    return write_results_md(out_dir)


def write_results_md(out_dir: Path) -> Path:
    sections = [RESULTS_HEADER]
    for name, scenario in SCENARIOS.items():
        path = out_dir / "results" / f"{name}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        parts = [f"### {name}", f"`{report.get('command', scenario.command)}` ({report.get('recorded', '')})", scenario.module.table(report)]
        if report.get("goals"):
            parts.append(goals_md(report))
        if (out_dir / "plots" / f"{name}.png").exists():
            parts.append(f"![{name}](plots/{name}.png)")
        sections.append("\n\n".join(parts) + "\n")
    target = out_dir / "RESULTS.md"
    target.write_text("\n".join(sections))
    return target


RESULTS_HEADER = """# Benchmark results

Written by `make bench` (`matterflow bench all`); every figure in a table was measured in the same run as the
others in that table, side by side, on this project's 2-core machine class (shared, so absolute times vary from
run to run; the ratios are what to compare). The JSON reports are in `results/`, one plot per scenario in
`plots/`. Notes on the goals (met or missed, and why) are in `NOTES.md`.
"""
