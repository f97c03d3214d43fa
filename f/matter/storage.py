"""Azure Blob Storage for matterflow: one async store over one container.

`BlobStore.from_resource()` takes the Windmill `azure_blob` resource a step receives (or, for development, a
connection string) and owns the connection; use it as `async with`. Every blob path is validated before it
reaches the SDK, and every azure error is translated into a `StorageError` that names the container and path
and never the key or SAS token.

Write kinds, because the pipeline must never lose work:
- `write_bytes` / `write_json`: plain (over)writes, for staged intermediate files.
- `write_new`: create-only (`If-None-Match: *`): a checkpoint that already exists is never replaced.
- `write_final`: a result; it is uploaded whole (never visible half-written) and a complete result is never
  replaced by a partial one. The partial one is kept beside it instead (`result.partial.json`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypedDict

import aiohttp  # noqa: F401 - the azure SDK's async transport needs it; named here so locks include it
import msgspec
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.identity.aio import DefaultAzureCredential
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient

from .errors import BlobNotFound, InputError, StorageError
from .models import Document


class azure_blob(TypedDict):
    """Windmill's built-in `azure_blob` resource. Leave accessKey empty to use the managed identity."""

    accountName: str
    containerName: str
    accessKey: str
    useSSL: bool
    endpoint: str


MAX_BLOB_PATH = 1024
COMPLETE_METADATA_KEY = "matterflow_complete"
# Above this size uploads are streamed in parallel blocks (aiohttp warns that a large body sent as one bytes
# object can stall the event loop). Put Block List commits the blocks atomically, so readers still never see a
# half-written blob.
DEFAULT_SINGLE_PUT_BYTES = 1024 * 1024
DEFAULT_BLOCK_BYTES = 8 * 1024 * 1024
DEFAULT_CHUNK_GET_BYTES = 16 * 1024 * 1024
DEFAULT_TRANSFER_CONCURRENCY = 4

_CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_JSON_ENCODER = msgspec.json.Encoder()
_DOCUMENT_DECODER = msgspec.json.Decoder(Document)


# ---------------------------------------------------------------------------------------------------------------
# Validation


def validate_container_name(name: object) -> str:
    """Azure's rules: 3-63 characters, lowercase letters, digits and single hyphens, starting and ending with a
    letter or digit."""
    if not isinstance(name, str) or not _CONTAINER_NAME.match(name):
        raise InputError(
            f"invalid container name {name!r}: use 3-63 lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit",
            where="storage.containerName",
        )
    return name


def validate_blob_path(path: object, *, where: str = "blob_path") -> str:
    """A relative path inside the container, with no way to climb out of it or to name another container."""
    if not isinstance(path, str) or not path.strip():
        raise InputError("a blob path is required", where=where)
    problem = _blob_path_problem(path)
    if problem is None and "%" in path:
        problem = _blob_path_problem(urllib.parse.unquote(path))
        if problem is not None:
            problem += " once URL-decoded"
    if problem:
        raise InputError(f"invalid blob path {path!r}: {problem}", where=where)
    return path


def _blob_path_problem(path: str) -> str | None:
    if len(path) > MAX_BLOB_PATH:
        return f"longer than {MAX_BLOB_PATH} characters"
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        return "contains control characters"
    if "\\" in path:
        return "contains a backslash; use '/' between folders"
    if path.startswith("/"):
        return "is absolute; give it relative to the container"
    if "://" in path:
        return "is a URL; give the path inside the container"
    if path.endswith("/"):
        return "ends with '/', which names a folder, not a blob"
    segments = path.split("/")
    if any(segment in ("..", ".") for segment in segments):
        return "contains a '.' or '..' segment"
    if any(segment == "" for segment in segments):
        return "contains an empty segment ('//')"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, kw_only=True)
class BlobConfig:
    """Where the container is and how to authenticate. The repr never shows the credential."""

    account_url: str | None = None
    container: str
    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    connection_string: str | None = field(default=None, repr=False)

    @property
    def auth(self) -> str:
        if self.connection_string:
            return "connection-string"
        if self.account_key:
            return "account-key"
        if self.sas_token:
            return "sas"
        return "default-azure-credential"

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> BlobConfig:
        """Read a Windmill `azure_blob` resource, or a dict with `connectionString` + `containerName`.

        accessKey may hold an account key or a SAS token (`sv=...`); empty means DefaultAzureCredential
        (managed identity on an Azure VM, `az login` on a laptop). `endpoint` is a host[:port] or a URL for
        emulators and sovereign clouds; empty means `https://<account>.blob.core.windows.net`.
        """
        if not isinstance(resource, Mapping):
            raise InputError("the storage resource must be an object", where="storage")
        container = validate_container_name(resource.get("containerName"))
        connection_string = resource.get("connectionString")
        if connection_string:
            return cls(container=container, connection_string=str(connection_string))
        account = resource.get("accountName")
        if not isinstance(account, str) or not re.fullmatch(r"[a-z0-9]{3,24}", account):
            raise InputError(
                f"invalid storage account name {account!r}: 3-24 lowercase letters and digits",
                where="storage.accountName",
            )
        key = str(resource.get("accessKey") or "").strip()
        is_sas = key.startswith(("?", "sv=")) or "&sig=" in key
        return cls(
            account_url=_account_url(account, str(resource.get("endpoint") or ""), resource.get("useSSL", True)),
            container=container,
            account_name=account,
            account_key=None if is_sas or not key else key,
            sas_token=key.lstrip("?") if is_sas else None,
        )


def _account_url(account: str, endpoint: str, use_ssl: object) -> str:
    scheme = "http" if use_ssl is False or str(use_ssl).lower() == "false" else "https"
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        return f"{scheme}://{account}.blob.core.windows.net"
    if "://" not in endpoint:
        endpoint = f"{scheme}://{endpoint}"
    parsed = urllib.parse.urlsplit(endpoint)
    # Emulators (Azurite) serve every account on one host and put the account in the path.
    if _is_ip_or_localhost(parsed.hostname or "") and not parsed.path.strip("/"):
        return f"{endpoint}/{account}"
    return endpoint


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class BlobInfo:
    path: str
    etag: str  # changes with every write of the blob
    size: int


@dataclass(frozen=True)
class FinalWrite:
    path: str
    written: bool  # False: a complete result was already there and was kept; `path` is where the data went


class BlobStore:
    """One container. Use `async with BlobStore.from_resource(resource) as store:`."""

    def __init__(self, config: BlobConfig, *, transfer_concurrency: int = DEFAULT_TRANSFER_CONCURRENCY) -> None:
        self.config = config
        self.container = config.container
        self._concurrency = transfer_concurrency
        self._service: BlobServiceClient | None = None
        self._credential: Any = None
        self._closed = False

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any], **kwargs: Any) -> BlobStore:
        return cls(BlobConfig.from_resource(resource), **kwargs)

    def __repr__(self) -> str:
        return f"BlobStore(container={self.container!r}, auth={self.config.auth!r})"

    async def __aenter__(self) -> Self:
        if self._closed:
            raise StorageError("this BlobStore was closed; create a new one", container=self.container)
        if self._service is None:
            self._service = self._connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if self._service is not None:
            await self._service.close()
            self._service = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None

    def _connect(self) -> BlobServiceClient:
        options = {
            "max_single_put_size": DEFAULT_SINGLE_PUT_BYTES,
            "max_block_size": DEFAULT_BLOCK_BYTES,
            # Downloads past the first 32 MiB GET come in ranges of this size (the SDK default is 4 MiB): fewer,
            # larger requests, 0.77x -> ~0.9x of the raw SDK's best against Azurite (bench/NOTES.md, blob).
            "max_chunk_get_size": DEFAULT_CHUNK_GET_BYTES,
        }
        config = self.config
        if config.connection_string:
            try:
                return BlobServiceClient.from_connection_string(config.connection_string, **options)
            except (ValueError, AzureError):
                raise InputError("the storage connection string is malformed", where="storage") from None
        credential: Any
        if config.account_key:
            credential = {"account_name": config.account_name, "account_key": config.account_key}
        elif config.sas_token:
            credential = config.sas_token
        else:
            credential = self._credential = DefaultAzureCredential()
        return BlobServiceClient(config.account_url, credential=credential, **options)

    def _blob(self, path: str):
        if self._service is None:
            raise StorageError("BlobStore used outside `async with`", container=self.container)
        return self._service.get_blob_client(self.container, validate_blob_path(path))

    @contextlib.contextmanager
    def _translate(self, path: str | None, action: str) -> Iterator[None]:
        try:
            yield
        except ResourceNotFoundError as exc:
            if (exc.error_code or "") == "ContainerNotFound":
                raise StorageError(f"cannot {action}: the container does not exist", container=self.container) from exc
            raise BlobNotFound(f"cannot {action}: no such blob", container=self.container, path=path) from exc
        except HttpResponseError as exc:
            code = getattr(exc.error_code, "value", exc.error_code) or exc.reason or ""
            if isinstance(exc, ClientAuthenticationError) or exc.status_code in (401, 403):
                raise StorageError(
                    f"cannot {action}: storage refused the credentials ({self.config.auth}, {code}); check the "
                    "key, SAS token or the managed identity's role on the container",
                    container=self.container,
                    path=path,
                ) from exc
            raise StorageError(
                f"cannot {action}: storage answered {exc.status_code} {code}".rstrip(),
                container=self.container,
                path=path,
            ) from exc
        except AzureError as exc:
            raise StorageError(
                f"cannot {action}: {type(exc).__name__} talking to blob storage"
                f" at {urllib.parse.urlsplit(self._service.url if self._service else '').netloc or '?'}",
                container=self.container,
                path=path,
            ) from exc

    # reads -------------------------------------------------------------------------------------------------

    async def read_bytes(self, path: str) -> bytes:
        blob = self._blob(path)
        with self._translate(path, "read"):
            stream = await blob.download_blob(max_concurrency=self._concurrency)
            return await stream.readall()

    async def read_json(self, path: str) -> Any:
        data = await self.read_bytes(path)
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise StorageError(f"stored JSON is unreadable: {exc}", container=self.container, path=path) from exc

    async def read_document(self, path: str) -> Document:
        """Read a normalized document that ingest staged."""
        data = await self.read_bytes(path)
        try:
            return _DOCUMENT_DECODER.decode(data)
        except msgspec.MsgspecError as exc:
            raise StorageError(f"staged document is unreadable: {exc}", container=self.container, path=path) from exc

    async def exists(self, path: str) -> bool:
        blob = self._blob(path)
        with self._translate(path, "check"):
            return await blob.exists()

    async def list_paths(self, prefix: str = "") -> list[str]:
        if self._service is None:
            raise StorageError("BlobStore used outside `async with`", container=self.container)
        container = self._service.get_container_client(self.container)
        with self._translate(prefix, "list"):
            return [item.name async for item in container.list_blobs(name_starts_with=prefix or None)]

    async def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        """Like `list_paths`, with each blob's ETag and size (from the same listing call, no extra requests)."""
        if self._service is None:
            raise StorageError("BlobStore used outside `async with`", container=self.container)
        container = self._service.get_container_client(self.container)
        with self._translate(prefix, "list"):
            return [
                BlobInfo(path=item.name, etag=item.etag, size=item.size)
                async for item in container.list_blobs(name_starts_with=prefix or None)
            ]

    # writes ------------------------------------------------------------------------------------------------

    async def ensure_container(self) -> None:
        """Create the container if it is missing (demo and tests; production containers come from infra)."""
        if self._service is None:
            raise StorageError("BlobStore used outside `async with`", container=self.container)
        # suppress inside the translation: an existing container is fine, anything else becomes a StorageError
        with self._translate(None, "create the container"), contextlib.suppress(ResourceExistsError):
            await self._service.create_container(self.container)

    async def write_bytes(
        self, path: str, data: bytes, *, content_type: str = "application/octet-stream", overwrite: bool = True
    ) -> None:
        blob = self._blob(path)
        with self._translate(path, "write"):
            await blob.upload_blob(
                data,
                overwrite=overwrite,
                content_settings=ContentSettings(content_type=content_type),
                max_concurrency=self._concurrency,
            )

    async def write_json(self, path: str, value: Any) -> None:
        await self.write_bytes(path, encode_json(value), content_type="application/json")

    async def write_new(self, path: str, data: bytes, *, content_type: str = "application/json") -> bool:
        """Create-only write (If-None-Match: *). Returns False, writing nothing, when the blob already exists."""
        try:
            await self.write_bytes(path, data, content_type=content_type, overwrite=False)
        except StorageError as exc:
            if isinstance(exc.__cause__, ResourceExistsError):
                return False
            raise
        return True

    async def write_final(
        self, path: str, data: bytes, *, complete: bool, content_type: str = "application/json"
    ) -> FinalWrite:
        """Write a result. A complete result already at `path` is never replaced by a partial one: the partial
        one goes to `<name>.partial<ext>` instead. Races with another writer are settled by ETag conditions."""
        blob = self._blob(path)
        metadata = {COMPLETE_METADATA_KEY: "true" if complete else "false"}
        settings = ContentSettings(content_type=content_type)
        for _ in range(5):
            with self._translate(path, "read the properties of"):
                try:
                    properties = await blob.get_blob_properties()
                except ResourceNotFoundError:
                    properties = None
            if properties is not None and properties.metadata.get(COMPLETE_METADATA_KEY) == "true" and not complete:
                partial = partial_path(path)
                await self.write_bytes(partial, data, content_type=content_type)
                return FinalWrite(path=partial, written=False)
            if properties is None:
                conditions: dict[str, Any] = {"overwrite": False}
            else:
                conditions = {"overwrite": True, "etag": properties.etag, "match_condition": MatchConditions.IfNotModified}
            try:
                with self._translate(path, "write"):
                    await blob.upload_blob(
                        data, metadata=metadata, content_settings=settings, max_concurrency=self._concurrency,
                        **conditions,
                    )
            except StorageError as exc:
                if isinstance(exc.__cause__, (ResourceExistsError, ResourceModifiedError)):
                    continue  # another writer got there first: look again
                raise
            return FinalWrite(path=path, written=True)
        raise StorageError("gave up after five write races with another writer", container=self.container, path=path)


def partial_path(path: str) -> str:
    """`.../result.json` -> `.../result.partial.json`."""
    head, slash, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    return f"{head}{slash}{stem}.partial.{ext}" if dot and stem else f"{path}.partial"


def encode_json(value: Any) -> bytes:
    """JSON bytes for dicts, lists, msgspec structs and pydantic models alike."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return _JSON_ENCODER.encode(value)
