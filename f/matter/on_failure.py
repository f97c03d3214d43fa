"""The flow's failure module: no run fails silently.

When any step fails, Windmill runs this with the error. It writes `results/<input without .json>/status.json`
beside the input's results: what failed, in which step, with which inputs, and when. Secrets never reach it:
credential fields are replaced by "[redacted]" and any secret value found in the error text is masked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from .ingest import results_folder
from .models import llm_pool
from .storage import BlobStore, azure_blob, validate_blob_path

# Field names (lowercased, without - and _) that hold credentials: accessKey, api_key, sasToken, connectionString...
SECRET_SUFFIXES = ("key", "token", "secret", "password", "connectionstring")
REDACTED = "[redacted]"


def main(
    storage: azure_blob,
    blob_path: str,
    error: dict,
    inputs: dict | None = None,
    llm_pool: llm_pool | None = None,
) -> dict:
    """Record a failed run in status.json so that nobody has to read worker logs to learn it failed.

    Args:
        storage: The blob storage holding the matter (Windmill resource `azure_blob`).
        blob_path: The OCR result the failed run was started for.
        error: The error Windmill hands the failure module (message, name, step).
        inputs: The flow's inputs, recorded with credentials redacted.
        llm_pool: The endpoint pool, only so that its keys can be masked in the error text.
    """
    secrets = _secret_values(storage) | _secret_values(llm_pool or {})
    record = failure_record(blob_path, error, inputs or {}, secrets)
    validate_blob_path(blob_path)
    return asyncio.run(_main(BlobStore.from_resource(storage), blob_path, record))


async def _main(store: BlobStore, blob_path: str, record: dict) -> dict:
    path = f"{results_folder(blob_path)}status.json"
    async with store:
        await store.write_json(path, record)
    return {"status": "failed", "status_ref": path, "error": record["error"]["message"]}


def failure_record(blob_path: str, error: Mapping[str, Any], inputs: Mapping[str, Any], secrets: set[str]) -> dict:
    error = error if isinstance(error, Mapping) else {"message": str(error)}
    return {
        "status": "failed",
        "source": blob_path,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "error": {
            "message": mask(str(error.get("message") or error.get("error") or "unknown error"), secrets),
            "name": str(error.get("name") or "Error"),
            "step": error.get("step_id") or error.get("step"),
        },
        "inputs": redact(dict(inputs)),
    }


def redact(value: Any) -> Any:
    """Credential fields, at any depth, become "[redacted]"; `$res:` references stay (they are paths)."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def mask(text: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _is_secret_key(key: str) -> bool:
    return key.lower().replace("-", "").replace("_", "").endswith(SECRET_SUFFIXES)


def _secret_values(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, Mapping):
        for k, v in value.items():
            if _is_secret_key(k) and isinstance(v, str) and len(v) >= 6:
                found.add(v)
            else:
                found |= _secret_values(v)
    elif isinstance(value, list):
        for item in value:
            found |= _secret_values(item)
    return found
