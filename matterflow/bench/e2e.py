"""`matterflow bench e2e`: `matterflow run` on generated 10, 100 and 500-page documents, wall time split by step.

The flow (f/matter/process_document__flow/flow.yaml) runs with the local runner as `matterflow demo` runs it:
a real Azurite, three simulator processes with a realistic latency model (`common.REALISTIC_LLAMA`: a vLLM Llama 3
70B replica's time to first token and per-sequence tokens/s, 64 sequences at once), default window settings
(8 owned pages, 2 context pages each side, 8K context), `force` so nothing is reused. Documents have ~350 words a
page. Each size's wall time is split into the steps' own work (ingest, fan-out, publish), the step processes'
start and imports, and the runner's own time (see `flowrun.py`). Goals: the fan-out's share dominates; the
runner's overhead (everything but the steps' own work) is under 10% of the wall time at 100 pages.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from matterflow.azurite import Azurite
from matterflow.sim import SimulatorProcess
from matterflow.synth import synthetic_layout_bytes

from . import flowrun
from .common import REALISTIC_LLAMA, goal, md_table

PRICES = {"price_per_million_input": 0.59, "price_per_million_output": 0.79}


def run(pages: list[int] | tuple[int, ...] = (10, 100, 500), latency: dict | None = None, words_per_page: int = 350) -> dict:
    latency = latency or REALISTIC_LLAMA
    sims = [SimulatorProcess(name=f"llama-{i}", seed=i, **latency) for i in range(3)]
    sizes = []
    with Azurite() as azurite:
        for sim in sims:
            sim.start()
        try:
            storage = azurite.resource(f"e2e-{uuid.uuid4().hex[:12]}")
            resources = {"f/matter/storage": storage, "f/matter/llm_pool": {"endpoints": [sim.endpoint(**PRICES) for sim in sims]}}
            documents = {f"matters/BENCH/documents/e2e-{n}-pages.ocr.json": synthetic_layout_bytes(n, words_per_page=words_per_page, seed=n) for n in pages}
            flowrun.upload(storage, documents)
            with flowrun.step_timer() as timings:
                for count, path in zip(pages, documents, strict=True):
                    for sim in sims:
                        sim.reset()
                    done = flowrun.run_flow(resources, path)
                    steps = [s for s in flowrun.read_steps(timings) if s["source"] == path]
                    stats = [sim.stats() for sim in sims]
                    result = done.result or {}
                    sizes.append({
                        "pages": count,
                        "failed_windows": result.get("failed_windows"),
                        "cost_usd": result.get("cost_usd"),
                        "llm_calls": sum(s["calls"] for s in stats),
                        "max_active_per_sim": [s["max_active"] for s in stats],
                        "status": result.get("status"),
                        **flowrun.breakdown(done, steps),
                    })
        finally:
            for sim in sims:
                sim.stop()
    at_100 = next((s for s in sizes if s["pages"] == 100), sizes[len(sizes) // 2])
    report = {
        "scenario": "e2e",
        "settings": {"pages": list(pages), "words_per_page": words_per_page, "simulator": latency, "simulators": 3,
                     "window_pages": 8, "overlap_pages": 2, "context_tokens": 8192},
        "fanout_share_at_100": at_100.get("fanout_share"),
        "runner_overhead_share_at_100": at_100.get("runner_overhead_share"),
        "sizes": sizes,
    }
    report["goals"] = [
        goal(f"fan-out share of the wall time at {at_100['pages']} pages (dominates)", at_100.get("fanout_share"), 0.5, at_most=False, unit=""),
        goal(f"runner overhead share of the wall time at {at_100['pages']} pages", at_100.get("runner_overhead_share"), 0.10, unit=""),
    ]
    return report


def table(report: dict) -> str:
    rows = []
    for s in report["sizes"]:
        if "error" in s:
            rows.append([f"{s['pages']:,}", f"{s['wall_s']:.1f}", f"failed: {s['error']}", "", "", "", "", "", "", ""])
            continue
        rows.append([
            f"{s['pages']:,}", f"{s['wall_s']:.1f}", f"{s['ingest_s']:.2f}", f"{s['fanout_s']:.2f}", f"{s['publish_s']:.2f}",
            f"{s['process_s']:.2f}", f"{s['runner_s']:.2f}", f"**{s['fanout_share']:.0%}**", f"**{s['runner_overhead_share']:.0%}**",
            f"{s['llm_calls']}",
        ])
    latency = report["settings"]["simulator"]
    return (
        f"3 simulators, {latency['latency_ms']:.0f} ms to first token + {latency['tokens_per_s']:.0f} tokens/s, "
        f"{latency['capacity']} sequences each; window 8 + 2 context pages, 8K context.\n\n"
        + md_table(
            ["pages", "wall s", "ingest s", "fan-out s (slowest shard)", "publish s", "step processes s (start, imports)",
             "runner s (in its own process)", "fan-out share", "runner overhead share", "LLM calls"],
            rows,
        )
    )


def plot(report: dict, path: Path) -> None:
    from .common import pyplot

    plt = pyplot()
    sizes = [s for s in report["sizes"] if "error" not in s]
    labels = [f"{s['pages']} pages\n({s['wall_s']:.0f} s)" for s in sizes]
    parts = [("runner_s", "runner, own process", "#555555"), ("process_s", "step processes: start + imports", "#bbbbbb"),
             ("ingest_s", "ingest", "#ff7f0e"), ("fanout_s", "fan-out (slowest shard)", "#1f77b4"), ("publish_s", "publish", "#2ca02c")]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    left = [0.0] * len(sizes)
    for key, label, color in parts:
        shares = [max(0.0, s[key]) / s["wall_s"] for s in sizes]
        ax.barh(labels, shares, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.axvline(0.10, color="red", lw=1.0, ls=":", label="goal: runner overhead (greys) < 10%")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("share of the flow's wall time")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    ax.set_title("e2e: where a document's wall time goes (matterflow run, 3 simulators)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
