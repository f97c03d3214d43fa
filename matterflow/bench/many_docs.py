"""`matterflow bench many-docs`: many documents through the local runner at once, against the pool's capacity.

`docs` generated documents of `pages` pages each are uploaded to one Azurite; one `Runner` per document runs
flow.yaml in a pool of `workers` runner processes (25: the step processes of 50 runners at once would need ~18 GB;
the runner has no forloopflow yet, and threads are not possible, see `flowrun.run_many`), against three simulators with the
realistic latency model (`common.REALISTIC_LLAMA`). Throughput is pages per second over the whole batch's wall
time. The simulators' combined capacity, from their latency model, is

    capacity (pages/s) = slots x owned pages per call / seconds per call,
    seconds per call   = time to first token + mean completion tokens / tokens per second,

with slots = 3 x 64 and the mean completion tokens and calls taken from the simulators' own counters for this
run. The ratio throughput / capacity says how much of what the LLM replicas could do the runner turns into pages.
Because a finite batch cannot fill every slot all the time, `ideal_s` (ceil(calls / slots) x seconds per call) is
reported beside it.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

from matterflow.azurite import Azurite
from matterflow.sim import SimulatorProcess
from matterflow.synth import synthetic_layout_bytes

from . import flowrun
from .common import REALISTIC_LLAMA, md_table, median

PRICES = {"price_per_million_input": 0.59, "price_per_million_output": 0.79}
# Runner processes at once. Each document's flow starts six step processes of ~90 MB each (four at a time in the
# branch-all); 50 runners at once would hold ~200 of them (~18 GB) on this shared 24 GB machine; 25 hold ~100.
WORKERS = 25


def run(docs: int = 50, pages: int = 20, latency: dict | None = None, words_per_page: int = 350, workers: int = WORKERS) -> dict:
    latency = latency or REALISTIC_LLAMA
    sims = [SimulatorProcess(name=f"llama-{i}", seed=i, **latency) for i in range(3)]
    with Azurite() as azurite:
        for sim in sims:
            sim.start()
        try:
            storage = azurite.resource(f"many-{uuid.uuid4().hex[:12]}")
            resources = {"f/matter/storage": storage, "f/matter/llm_pool": {"endpoints": [sim.endpoint(**PRICES) for sim in sims]}}
            documents = {
                f"matters/BENCH/documents/doc-{i:03d}.ocr.json": synthetic_layout_bytes(pages, words_per_page=words_per_page, seed=1000 + i)
                for i in range(docs)
            }
            flowrun.upload(storage, documents)
            for sim in sims:
                sim.reset()
            with flowrun.step_timer() as timings:
                started = time.time()
                runs = flowrun.run_many(resources, list(documents), workers)
                wall = time.time() - started
                steps = flowrun.read_steps(timings)
            stats = [sim.stats() for sim in sims]
        finally:
            for sim in sims:
                sim.stop()

    ok = [r for r in runs if r.error is None and (r.result or {}).get("status") == "complete"]
    calls = sum(s["ok"] for s in stats)
    completion = sum(s["completion_tokens"] for s in stats)
    slots = sum(s["config"]["capacity"] for s in stats)
    mean_completion = completion / calls if calls else 0.0
    call_s = latency["latency_ms"] / 1000 + mean_completion / latency["tokens_per_s"]
    pages_done = pages * len(ok)
    pages_per_call = pages * docs / calls if calls else 0.0
    capacity = slots * pages_per_call / call_s if call_s else 0.0
    throughput = pages_done / wall
    ideal_s = math.ceil(calls / slots) * call_s if calls else 0.0
    imports = [s["main_start"] - s["process_start"] for s in steps]
    mains = {}
    for s in steps:
        mains.setdefault(s["script"], []).append(s["main_end"] - s["main_start"])
    doc_walls = [r.ended - r.started for r in runs]
    report = {
        "scenario": "many-docs",
        "settings": {"docs": docs, "pages": pages, "workers": min(workers, docs), "words_per_page": words_per_page, "simulator": latency, "simulators": 3},
        "wall_s": round(wall, 2),
        "documents_complete": len(ok),
        "errors": sorted({r.error for r in runs if r.error})[:5],
        "pages_per_s": round(throughput, 3),
        "capacity_pages_per_s": round(capacity, 3),
        "ratio_to_capacity": float(f"{throughput / capacity:.4g}") if capacity else None,
        "ideal_s": round(ideal_s, 2),
        "ratio_to_ideal": round(wall / ideal_s, 3) if ideal_s else None,
        "llm_calls": calls,
        "slots": slots,
        "mean_completion_tokens": round(mean_completion, 1),
        "seconds_per_call": round(call_s, 2),
        "pages_per_call": round(pages_per_call, 3),
        "max_active_per_sim": [s["max_active"] for s in stats],
        "max_queued_per_sim": [s["max_queued"] for s in stats],
        "step_processes": len(steps),
        "step_import_s": {"mean": round(sum(imports) / len(imports), 2) if imports else None, "max": round(max(imports), 2) if imports else None},
        "step_main_s_median": {name: round(median(values), 2) for name, values in sorted(mains.items())},
        "document_wall_s": {"median": round(median(doc_walls), 1), "max": round(max(doc_walls), 1)},
    }
    return report  # issue 6 sets no target here: the ratio is the figure


def table(report: dict) -> str:
    s = report["settings"]
    latency = s["simulator"]
    rows = [
        ["documents complete", f"{report['documents_complete']} / {s['docs']} ({s['pages']} pages each)"],
        ["wall time", f"{report['wall_s']:.1f} s (ideal {report['ideal_s']:.1f} s: **{report['ratio_to_ideal']:.2f}x**)"],
        ["throughput", f"{report['pages_per_s']:.2f} pages/s"],
        ["simulators' capacity", f"{report['capacity_pages_per_s']:.2f} pages/s = {report['slots']} slots x {report['pages_per_call']:.2f} pages per call / {report['seconds_per_call']:.1f} s per call"],
        ["throughput / capacity", f"**{report['ratio_to_capacity']:.3g}**"],
        ["LLM calls, mean completion tokens", f"{report['llm_calls']}, {report['mean_completion_tokens']:.0f}"],
        ["most requests at once per simulator (of 64)", ", ".join(map(str, report["max_active_per_sim"]))],
        ["step processes; their start + imports, mean / max", f"{report['step_processes']}; {report['step_import_s']['mean']} s / {report['step_import_s']['max']} s"],
        ["steps' own main() time, median", ", ".join(f"{k.rsplit('.', 1)[-1]} {v} s" for k, v in report["step_main_s_median"].items())],
        ["one document's wall time, median / max", f"{report['document_wall_s']['median']} s / {report['document_wall_s']['max']} s"],
    ]
    head = (
        f"{s['docs']} documents, {s['workers']} runner processes at a time, 3 simulators ({latency['latency_ms']:.0f} ms to first token + "
        f"{latency['tokens_per_s']:.0f} tokens/s, {latency['capacity']} sequences each).\n\n"
    )
    return head + md_table(["figure", "value"], rows)


def plot(report: dict, path: Path) -> None:
    from .common import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.bar(["measured", "simulators' capacity"], [report["pages_per_s"], report["capacity_pages_per_s"]], color=["#1f77b4", "#999999"])
    left.set_ylabel("pages per second")
    left.set_title(f"throughput: {report['ratio_to_capacity']:.3g}x capacity")
    right.bar(["measured wall", "ideal for the batch"], [report["wall_s"], report["ideal_s"]], color=["#1f77b4", "#999999"])
    right.set_ylabel("seconds")
    right.set_title(f"{report['settings']['docs']} x {report['settings']['pages']} pages: {report['ratio_to_ideal']:.2f}x the ideal")
    fig.suptitle("many-docs: documents through the local runner at once vs the LLM pool")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
