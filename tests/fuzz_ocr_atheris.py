"""Coverage-guided fuzzing of the OCR reader with atheris (libFuzzer), run by tests/test_fuzz.py in `make chaos`.

    python tests/fuzz_ocr_atheris.py CORPUS_DIR -max_total_time=60

Every input must give a valid Document that can be scored, staged and planned, or a MatterflowError; anything
else is a crash (libFuzzer writes the input to crash-<sha1> and exits non-zero).
"""

from __future__ import annotations

import sys

import atheris
import msgspec
import pydantic  # noqa: F401 - imported before instrumentation: only matterflow's own code is instrumented

with atheris.instrument_imports(include=["f.matter"]):
    from f.matter.documents import parse_ocr
    from f.matter.errors import MatterflowError
    from f.matter.models import Document
    from f.matter.ocr_confidence import score_document
    from f.matter.storage import encode_json
    from f.matter.windows import plan_document


def one_input(data: bytes) -> None:
    try:
        document = parse_ocr(data, source="fuzz.json")
    except MatterflowError:
        return
    score_document(document, 0.8)
    msgspec.json.decode(encode_json(document), type=Document)
    plan_document(document, window_pages=8, overlap_pages=2, context_tokens=8192, shards=3)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
