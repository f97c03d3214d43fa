"""`matterflow bench parse`: what ingest and the confidence step do with the OCR bytes, against generic JSON.

For generated Azure DI v4.0 results (~350 words a page, written to a temporary folder, never committed), three
contenders each run in a fresh process per measurement (`parse_child.py`), alternated round by round so the
machine's noise hits them alike:
- `matterflow`: `documents.parse_ocr` (decode, normalize, validate) + `ocr_confidence.score_document`;
- `orjson`: `orjson.loads` of the same bytes into dicts (the fastest generic JSON tree);
- `json-loop`: `json.loads` + a Python loop computing the same per-page mean word confidence.
Figures per size: the fastest round's seconds and the median round's peak extra memory (VmHWM over VmRSS after
the bytes were read) of each, and the ratios matterflow / orjson (time) and peak extra / file size (memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from matterflow.azurite import PROJECT_ROOT

from .common import goal, md_table, median

CHILD = Path(__file__).with_name("parse_child.py")
KINDS = ("matterflow", "orjson", "json-loop")
MB = 1024 * 1024
# Goals of issue 6: parse + confidence in at most a quarter of orjson.loads' time, peak extra memory at most the
# file's size, both growing linearly with the pages.
TIME_GOAL = 0.25
MEMORY_GOAL = 1.0


def _child(*args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(CHILD), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"parse benchmark child {args[:2]} failed: {completed.stderr.strip()[-800:]}")
    return completed.stdout


def rounds_for(pages: int) -> int:
    return 3 if pages <= 2000 else 2


def measure_size(path: Path, pages: int, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for round_index in range(rounds):
        order = KINDS if round_index % 2 == 0 else tuple(reversed(KINDS))
        for kind in order:
            runs[kind].append(json.loads(_child("measure", kind, str(path)).strip().splitlines()[-1]))
    size = path.stat().st_size
    figures = {
        kind: {
            # time: the fastest of the rounds (the machine's noise only ever adds); memory: the median
            "seconds": round(min(r["seconds"] for r in results), 4),
            "peak_extra_mb": round(median(r["peak_extra_bytes"] for r in results) / MB, 1),
            **({"parse_s": round(min(r["parse_s"] for r in results), 4), "score_s": round(min(r["score_s"] for r in results), 4)} if kind == "matterflow" else {}),
        }
        for kind, results in runs.items()
    }
    ours = figures["matterflow"]
    return {
        "pages": pages,
        "file_mb": round(size / MB, 1),
        "rounds": rounds,
        "ratio_to_orjson": round(ours["seconds"] / figures["orjson"]["seconds"], 3),
        "ratio_to_json_loop": round(ours["seconds"] / figures["json-loop"]["seconds"], 3),
        "peak_extra_mb": ours["peak_extra_mb"],
        "memory_ratio_to_file": round(ours["peak_extra_mb"] * MB / size, 3),
        "ms_per_page": round(1000 * ours["seconds"] / pages, 3),
        "contenders": figures,
        "peak_reset": all(r["peak_reset"] for results in runs.values() for r in results),
    }


def run(pages: list[int] | tuple[int, ...] = (100, 500, 2000, 5000), rounds: int | None = None) -> dict:
    sizes = []
    with tempfile.TemporaryDirectory(prefix="matterflow-bench-parse-") as tmp:
        for count in pages:
            path = Path(tmp) / f"di-v4-{count}-pages.json"
            _child("generate", str(path), str(count))
            sizes.append(measure_size(path, count, rounds or rounds_for(count)))
            path.unlink()
    largest = max(sizes, key=lambda s: s["pages"])
    linear = [s for s in sizes if s["pages"] >= 500] or sizes
    report = {
        "scenario": "parse",
        "settings": {"pages": list(pages), "words_per_page": 350},
        # Top-level figures are the largest size's; every size is in `sizes`.
        "ratio_to_orjson": largest["ratio_to_orjson"],
        "ratio_to_json_loop": largest["ratio_to_json_loop"],
        "peak_extra_mb": largest["peak_extra_mb"],
        "memory_ratio_to_file": largest["memory_ratio_to_file"],
        "seconds": largest["contenders"]["matterflow"]["seconds"],
        "file_mb": largest["file_mb"],
        "pages": largest["pages"],
        # Linear growth: ms per page at the largest size / at the smallest size >= 500 pages (1.0 = linear; above 1
        # the cost per page grows with the document). Memory per MB of file the same way.
        "per_page_growth": round(linear[-1]["ms_per_page"] / linear[0]["ms_per_page"], 3),
        "memory_growth": round(linear[-1]["memory_ratio_to_file"] / linear[0]["memory_ratio_to_file"], 3),
        "sizes": sizes,
    }
    report["goals"] = [
        goal("parse + confidence time / orjson.loads, worst size", max(s["ratio_to_orjson"] for s in sizes), TIME_GOAL, unit="x"),
        goal("peak extra memory / file size, worst size", max(s["memory_ratio_to_file"] for s in sizes), MEMORY_GOAL, unit="x"),
        goal("time per page, largest size / 500 pages (linear: no growth)", report["per_page_growth"], 1.2, unit="x"),
        goal("memory per file MB, largest size / 500 pages (linear: no growth)", report["memory_growth"], 1.2, unit="x"),
    ]
    return report


def table(report: dict) -> str:
    rows = []
    for s in report["sizes"]:
        c = s["contenders"]
        rows.append([
            f"{s['pages']:,}", f"{s['file_mb']:.1f}",
            f"{c['matterflow']['seconds']:.3f} ({c['matterflow']['parse_s']:.3f} + {c['matterflow']['score_s']:.3f})",
            f"{c['orjson']['seconds']:.3f}", f"{c['json-loop']['seconds']:.3f}",
            f"**{s['ratio_to_orjson']:.3f}**", f"{s['ratio_to_json_loop']:.3f}",
            f"{c['matterflow']['peak_extra_mb']:.0f}", f"{c['orjson']['peak_extra_mb']:.0f}", f"{c['json-loop']['peak_extra_mb']:.0f}",
            f"**{s['memory_ratio_to_file']:.2f}**", f"{s['ms_per_page']:.3f}",
        ])
    return md_table(
        ["pages", "file MB", "matterflow s (parse + score)", "orjson s", "json+loop s", "x orjson", "x json+loop",
         "matterflow MB extra", "orjson MB", "json+loop MB", "matterflow MB / file MB", "matterflow ms / page"],
        rows,
    ) + (
        f"\n\nRounds per size: {', '.join(str(s['rounds']) for s in report['sizes'])}, contenders alternated, each measurement in a "
        "fresh process; seconds are the fastest round (noise only adds), memory the median round."
    )


def plot(report: dict, path: Path) -> None:
    from .common import pyplot

    plt = pyplot()
    sizes = report["sizes"]
    pages = [s["pages"] for s in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"matterflow": ("#1f77b4", "o-"), "orjson": ("#ff7f0e", "s--"), "json-loop": ("#7f7f7f", "^:")}
    for kind, (color, style) in styles.items():
        left.plot(pages, [s["contenders"][kind]["seconds"] for s in sizes], style, color=color, label=kind)
        right.plot(pages, [s["contenders"][kind]["peak_extra_mb"] for s in sizes], style, color=color, label=f"{kind} peak extra")
    right.plot(pages, [s["file_mb"] for s in sizes], "k-", lw=0.8, label="file size (the 1x goal)")
    for ax, label in ((left, "seconds"), (right, "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pages (~350 words each)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("time: parse + confidence vs generic JSON")
    right.set_title("peak memory beyond the bytes read")
    worst = max(s["ratio_to_orjson"] for s in sizes)
    fig.suptitle(f"parse: matterflow at worst {worst:.2f}x orjson.loads (goal <= {TIME_GOAL}x)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
