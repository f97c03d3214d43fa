"""The failure module: a failed run leaves status.json, and no secret in it."""

from __future__ import annotations

import asyncio
import json

from f.matter import on_failure
from f.matter.storage import BlobStore

SOURCE = "matters/M-9/documents/scan.ocr.json"


def read(storage: dict, path: str) -> dict:
    async def get():
        async with BlobStore.from_resource(storage) as store:
            return await store.read_json(path)

    return asyncio.run(get())


def test_a_failed_run_writes_status_beside_the_inputs_results(storage: dict) -> None:
    error = {"message": "matters/M-9/documents/scan.ocr.json: page 3, word 7 ('rent') has confidence NaN", "name": "OcrFormatError", "step_id": "ingest"}
    out = on_failure.main(storage, SOURCE, error, inputs={"blob_path": SOURCE, "window_pages": 8})
    assert out["status_ref"] == "results/matters/M-9/documents/scan.ocr/status.json"
    status = read(storage, out["status_ref"])
    assert status["status"] == "failed" and status["source"] == SOURCE
    assert status["error"] == {"message": error["message"], "name": "OcrFormatError", "step": "ingest"}
    assert status["inputs"] == {"blob_path": SOURCE, "window_pages": 8}


def test_secrets_are_redacted_from_inputs_and_masked_in_the_error(storage: dict) -> None:
    pool = {"endpoints": [{"name": "groq", "base_url": "https://x/v1", "api_key": "gsk-SECRET-998877", "model": "m"}]}
    inputs = {"storage": storage, "llm_pool": pool, "blob_path": SOURCE, "nested": [{"sasToken": "sv=2024&sig=abcdef"}]}
    error = {"message": f"connection to https://x/v1 failed with key gsk-SECRET-998877 and {storage['accessKey']}", "name": "Error"}
    out = on_failure.main(storage, SOURCE, error, inputs=inputs, llm_pool=pool)
    text = json.dumps(read(storage, out["status_ref"])) + json.dumps(out)
    for secret in ("gsk-SECRET-998877", storage["accessKey"], "sv=2024&sig=abcdef"):
        assert secret not in text
    status = read(storage, out["status_ref"])
    assert status["inputs"]["storage"]["accessKey"] == "[redacted]"
    assert status["inputs"]["storage"]["accountName"] == storage["accountName"]
    assert status["inputs"]["llm_pool"]["endpoints"][0]["api_key"] == "[redacted]"
    assert status["inputs"]["nested"][0]["sasToken"] == "[redacted]"
    assert "[redacted]" in status["error"]["message"]


def test_an_error_that_is_not_an_object_is_still_recorded(storage: dict) -> None:
    out = on_failure.main(storage, SOURCE, "boom")  # type: ignore[arg-type]
    assert read(storage, out["status_ref"])["error"]["message"] == "boom"
