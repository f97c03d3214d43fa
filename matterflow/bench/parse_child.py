"""One measurement of the parse benchmark, in a fresh process so that its peak memory is its own.

    python matterflow/bench/parse_child.py measure KIND FILE   -> one JSON line
    python matterflow/bench/parse_child.py generate FILE PAGES -> writes a synthetic DI v4.0 result

Run as a file (not `-m matterflow.bench...`) so the benchmark package and its imports stay out of the process.
KIND is `matterflow` (f/matter/documents.parse_ocr + ocr_confidence.score_document: what ingest and the
confidence step do with the bytes), `orjson` (orjson.loads) or `json-loop` (json.loads + a Python loop
computing the same per-page mean word confidence).

Memory: the bytes are read first, the kernel's peak-RSS counter is reset (`/proc/self/clear_refs` 5) and the
peak extra is VmHWM after the work minus VmRSS before it, with the result still alive. tracemalloc would miss
native allocations (msgspec's and orjson's), getrusage's ru_maxrss cannot be reset.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(kind: str, path: Path) -> dict:
    if kind == "matterflow":
        from f.matter.documents import parse_ocr
        from f.matter.ocr_confidence import score_document

        def work(data: bytes):
            started = time.perf_counter()
            document = parse_ocr(data)
            parsed = time.perf_counter()
            report = score_document(document)
            return (document, report), {"parse_s": parsed - started, "score_s": time.perf_counter() - parsed}

    elif kind == "orjson":
        import orjson

        def work(data: bytes):
            return orjson.loads(data), {}

    elif kind == "json-loop":

        def work(data: bytes):
            root = json.loads(data)
            result = root.get("analyzeResult", root)
            means = []
            for page in result["pages"]:
                confidences = [word["confidence"] for word in page.get("words", [])]
                means.append(math.fsum(confidences) / len(confidences) if confidences else None)
            return (root, means), {}

    else:
        raise SystemExit(f"unknown kind {kind!r}")
    data = path.read_bytes()
    gc.collect()
    reset = _reset_peak()
    before = _status("VmRSS")
    started = time.perf_counter()
    result, parts = work(data)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    del result
    return {
        "kind": kind,
        "bytes": len(data),
        "seconds": seconds,
        "peak_extra_bytes": peak - before,
        "peak_reset": reset,
        **parts,
    }


def generate(path: Path, pages: int) -> None:
    from matterflow.synth import synthetic_layout_bytes

    path.write_bytes(synthetic_layout_bytes(pages, words_per_page=350, seed=pages, low_confidence_pages=range(3, pages + 1, 17)))


if __name__ == "__main__":
    if sys.argv[1] == "measure":
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]))))
    elif sys.argv[1] == "generate":
        generate(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
