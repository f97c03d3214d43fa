"""What every benchmark scenario shares: JSON output, UTC stamps, goals, medians, the latency model, plotting."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

# A vLLM-served Llama 3 70B Instruct replica (4 x H100, tensor parallel, FP8, max-num-seqs 64) under load: ~0.6 s
# to the first token for a ~5k-token window prompt (prefill plus queueing in the batch) and ~50 tokens/s per
# sequence while 64 sequences decode together (~3,200 tokens/s for the replica). Published vLLM / NIM figures for
# 70B models on 4 H100s are 30-60 tokens/s per user at that concurrency; the e2e and many-docs scenarios use it.
# The simulator answers each window with up to `max_tokens` (2,048) tokens on these dense synthetic pages, so a
# call takes ~0.6 + 2,048 / 50 = ~41 s: a long, realistic fan-out.
REALISTIC_LLAMA = {"latency_ms": 600.0, "tokens_per_s": 50.0, "capacity": 64}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2)


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def goal(text: str, value: float | None, target: float, *, at_most: bool = True, unit: str = "") -> dict[str, Any]:
    """One goal and how the measured value compares: `margin` is value / target (<= 1 met for an at-most goal)."""
    met = value is not None and (value <= target if at_most else value >= target)
    return {
        "goal": text,
        "value": value,
        "target": target,
        "at_most": at_most,
        "unit": unit,
        "met": met,
        "margin": round(value / target, 3) if value is not None and target else None,
    }


def goals_md(report: dict) -> str:
    """A short list under a table: each goal, met or missed, and by how much."""
    lines = []
    for g in report.get("goals", []):
        value = g["value"]
        shown = "n/a" if value is None else f"{value:.3g}{g['unit']}"
        verdict = "met" if g["met"] else "missed"
        sign = "<=" if g["at_most"] else ">="
        lines.append(f"- goal {g['goal']} ({sign} {g['target']:g}{g['unit']}): **{verdict}**, measured {shown}")
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def pyplot():
    """matplotlib's pyplot on the file-only backend (the `bench` extra installs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
