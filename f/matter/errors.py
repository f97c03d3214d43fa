"""The one exception tree of matterflow.

Every error a step raises on purpose is a `MatterflowError`; third-party errors (azure, openai, msgspec) are
translated at the boundary with `raise ... from exc`, so callers never catch library exceptions. Messages say
what is wrong and where (the page, the word, the blob path) and never contain secrets.

    MatterflowError
    +-- InputError          the caller's input is wrong: the OCR file, a parameter, a blob path
    |   +-- OcrFormatError  the OCR result cannot be read as a supported Azure Document Intelligence shape
    +-- StorageError        blob storage failed or refused
    |   +-- BlobNotFound    the named blob does not exist
    +-- EndpointError       an LLM endpoint failed (see llm.py)
"""

from __future__ import annotations


class MatterflowError(Exception):
    """Root of every error matterflow raises on purpose."""


class InputError(MatterflowError, ValueError):
    """The caller's input is wrong. `where` names the file, blob or parameter it was found in."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class OcrFormatError(InputError):
    """The OCR result cannot be read as a supported Azure Document Intelligence result."""


class StorageError(MatterflowError):
    """Blob storage failed or refused an operation. Carries the container and blob path, never credentials."""

    def __init__(self, message: str, *, container: str | None = None, path: str | None = None) -> None:
        self.container = container
        self.path = path
        location = "/".join(part for part in (container, path) if part)
        super().__init__(f"{message} (blob {location})" if location else message)


class BlobNotFound(StorageError, InputError):
    """The named blob does not exist. Also an InputError: usually the caller named the wrong path."""

    def __init__(self, message: str, *, container: str | None = None, path: str | None = None) -> None:
        StorageError.__init__(self, message, container=container, path=path)
        self.where = path


class EndpointError(MatterflowError):
    """An LLM endpoint failed in a way retries and failover could not absorb."""
