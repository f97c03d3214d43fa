"""Blob storage: path and resource validation, and every write kind against a real Azurite."""

from __future__ import annotations

import asyncio
import os

import pytest

from f.matter.errors import BlobNotFound, InputError, StorageError
from f.matter.storage import (
    BlobConfig,
    BlobStore,
    partial_path,
    validate_blob_path,
    validate_container_name,
)
from matterflow.azurite import ACCOUNT_KEY, Azurite


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------------------------
# Validation (no emulator needed)


@pytest.mark.parametrize(
    "path", ["matters/M-1042/documents/lease.ocr.json", "a.json", "results/x/y/windows/00001.json", "a b/c%20d.json"]
)
def test_relative_blob_paths_are_accepted(path: str) -> None:
    assert validate_blob_path(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "a blob path is required"),
        ("../other/secret.json", "'..'"),
        ("matters/../../etc/passwd", "'..'"),
        ("matters/./doc.json", "'.' or '..' segment"),
        ("/matters/doc.json", "is absolute"),
        ("matters\\doc.json", "backslash"),
        ("matters//doc.json", "empty segment"),
        ("matters/", "ends with '/'"),
        ("matters/%2e%2e/%2e%2e/x.json", "once URL-decoded"),
        ("matters%2f..%2fx.json", "once URL-decoded"),
        ("https://other.blob.core.windows.net/c/x.json", "is a URL"),
        ("matters/doc\x00.json", "control characters"),
        ("a/" * 600 + "x.json", "longer than 1024"),
    ],
)
def test_escaping_or_malformed_blob_paths_are_rejected_with_the_reason(path: str, reason: str) -> None:
    with pytest.raises(InputError, match="blob_path") as info:
        validate_blob_path(path)
    assert reason in str(info.value)


@pytest.mark.parametrize("name", ["abc", "matters", "m-1042-docs", "a" * 63, "123"])
def test_valid_container_names(name: str) -> None:
    assert validate_container_name(name) == name


@pytest.mark.parametrize("name", ["ab", "a" * 64, "Matters", "m--x", "-mx", "mx-", "m_x", "m.x", "", None])
def test_invalid_container_names_are_rejected(name: object) -> None:
    with pytest.raises(InputError, match=r"storage\.containerName: invalid container name"):
        validate_container_name(name)


def test_real_azure_account_url_is_derived_from_the_account_name() -> None:
    config = BlobConfig.from_resource({"accountName": "lexstore", "containerName": "matters", "accessKey": "a2V5"})
    assert config.account_url == "https://lexstore.blob.core.windows.net"
    assert config.auth == "account-key"


def test_emulator_endpoint_gets_the_account_in_the_path_and_http_when_ssl_is_off() -> None:
    bare = BlobConfig.from_resource(
        {"accountName": "devstoreaccount1", "containerName": "m-x", "accessKey": "k", "useSSL": False, "endpoint": "127.0.0.1:10000"}
    )
    assert bare.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    full = BlobConfig.from_resource(
        {"accountName": "devstoreaccount1", "containerName": "m-x", "accessKey": "k", "endpoint": "http://localhost:10000/devstoreaccount1"}
    )
    assert full.account_url == "http://localhost:10000/devstoreaccount1"


def test_sas_token_and_managed_identity_are_told_apart_from_account_keys() -> None:
    sas = BlobConfig.from_resource({"accountName": "lexstore", "containerName": "matters", "accessKey": "?sv=2024-01-01&sig=abc"})
    assert sas.auth == "sas" and sas.sas_token == "sv=2024-01-01&sig=abc" and sas.account_key is None
    identity = BlobConfig.from_resource({"accountName": "lexstore", "containerName": "matters", "accessKey": ""})
    assert identity.auth == "default-azure-credential"


def test_config_repr_never_shows_the_credentials() -> None:
    config = BlobConfig.from_resource({"accountName": "lexstore", "containerName": "matters", "accessKey": "TOPSECRETKEY"})
    connection = BlobConfig.from_resource({"connectionString": "AccountKey=TOPSECRETKEY;", "containerName": "matters"})
    for text in (repr(config), repr(connection), repr(BlobStore(config))):
        assert "TOPSECRETKEY" not in text


def test_bad_account_name_is_named() -> None:
    with pytest.raises(InputError, match=r"storage\.accountName: invalid storage account name 'Lex_Store'"):
        BlobConfig.from_resource({"accountName": "Lex_Store", "containerName": "matters"})


def test_partial_path_sits_beside_the_result() -> None:
    assert partial_path("results/a/k/result.json") == "results/a/k/result.partial.json"
    assert partial_path("results/a/k/report") == "results/a/k/report.partial"


# ---------------------------------------------------------------------------------------------------------------
# Against Azurite


def test_bytes_and_json_round_trip_and_list(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            await store.write_bytes("m/a.bin", b"\x00\x01binary")
            await store.write_json("m/b.json", {"pages": [1, 2], "ok": True})
            return (
                await store.read_bytes("m/a.bin"),
                await store.read_json("m/b.json"),
                await store.exists("m/b.json"),
                await store.exists("m/c.json"),
                await store.list_paths("m/"),
            )

    assert run(scenario()) == (b"\x00\x01binary", {"pages": [1, 2], "ok": True}, True, False, ["m/a.bin", "m/b.json"])


def test_a_20_mb_blob_uploaded_in_blocks_reads_back_identical(storage: dict) -> None:
    data = os.urandom(20 * 1024 * 1024 + 17)

    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            await store.write_bytes("big/doc.bin", data)
            final = await store.write_final("big/result.bin", data, complete=True)
            return await store.read_bytes("big/doc.bin"), await store.read_bytes("big/result.bin"), final

    doc, result, final = run(scenario())
    assert doc == data and result == data and final.written


def test_checkpoint_writes_never_overwrite(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            first = await store.write_new("w/00001.json", b'{"answer": 1}')
            second = await store.write_new("w/00001.json", b'{"answer": 2}')
            return first, second, await store.read_json("w/00001.json")

    assert run(scenario()) == (True, False, {"answer": 1})


def test_concurrent_checkpoint_writers_leave_exactly_one_winner(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            outcomes = await asyncio.gather(*(store.write_new("w/race.json", b'{"writer": %d}' % i) for i in range(8)))
            return outcomes, await store.read_json("w/race.json")

    outcomes, stored = run(scenario())
    assert outcomes.count(True) == 1
    assert stored == {"writer": outcomes.index(True)}


def test_a_partial_result_never_replaces_a_complete_one(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            good = await store.write_final("r/result.json", b'{"v": "complete"}', complete=True)
            partial = await store.write_final("r/result.json", b'{"v": "partial"}', complete=False)
            return good, partial, await store.read_json("r/result.json"), await store.read_json("r/result.partial.json")

    good, partial, kept, aside = run(scenario())
    assert good.written and good.path == "r/result.json"
    assert not partial.written and partial.path == "r/result.partial.json"
    assert kept == {"v": "complete"}
    assert aside == {"v": "partial"}, "the partial result is kept beside, not lost"


def test_a_complete_result_replaces_a_partial_or_older_complete_one(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            await store.write_final("r/result.json", b'{"v": 1}', complete=False)
            await store.write_final("r/result.json", b'{"v": 2}', complete=False)
            after_partials = await store.read_json("r/result.json")
            await store.write_final("r/result.json", b'{"v": 3}', complete=True)
            await store.write_final("r/result.json", b'{"v": 4}', complete=True)
            return after_partials, await store.read_json("r/result.json")

    assert run(scenario()) == ({"v": 2}, {"v": 4})


def test_racing_complete_and_partial_writers_always_end_with_the_complete_result(storage: dict) -> None:
    async def scenario(round_: int):
        path = f"race/{round_}/result.json"
        async with BlobStore.from_resource(storage) as store:
            await asyncio.gather(
                store.write_final(path, b'{"v": "partial"}', complete=False),
                store.write_final(path, b'{"v": "complete"}', complete=True),
                store.write_final(path, b'{"v": "partial"}', complete=False),
            )
            return await store.read_json(path)

    for round_ in range(5):
        assert run(scenario(round_)) == {"v": "complete"}


def test_missing_blob_is_a_typed_error_naming_container_and_path(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            await store.read_bytes("matters/none/missing.json")

    with pytest.raises(BlobNotFound) as info:
        run(scenario())
    assert f"{storage['containerName']}/matters/none/missing.json" in str(info.value)
    assert isinstance(info.value, InputError)


def test_missing_container_is_named(azurite: Azurite) -> None:
    async def scenario():
        async with BlobStore.from_resource(azurite.resource("no-such-container")) as store:
            await store.read_bytes("a.json")

    with pytest.raises(StorageError, match="the container does not exist"):
        run(scenario())


def test_wrong_key_is_reported_without_the_key(storage: dict) -> None:
    wrong = "WRONG" + ACCOUNT_KEY[5:]

    async def scenario():
        async with BlobStore.from_resource({**storage, "accessKey": wrong}) as store:
            await store.read_bytes("a.json")

    with pytest.raises(StorageError, match="refused the credentials") as info:
        run(scenario())
    assert wrong not in str(info.value) and ACCOUNT_KEY not in str(info.value)


def test_connection_string_resource_works(azurite: Azurite, storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource({"connectionString": azurite.connection_string, "containerName": storage["containerName"]}) as store:
            await store.write_json("cs.json", [1])
            return await store.read_json("cs.json")

    assert run(scenario()) == [1]


def test_a_closed_store_refuses_reuse(storage: dict) -> None:
    async def scenario():
        store = BlobStore.from_resource(storage)
        async with store:
            pass
        async with store:
            pass

    with pytest.raises(StorageError, match="was closed"):
        run(scenario())


def test_invalid_path_is_rejected_before_any_request(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            await store.read_bytes("../other-container/x.json")

    with pytest.raises(InputError, match=r"'\.\.'"):
        run(scenario())


def test_a_sas_token_in_access_key_authenticates(azurite: Azurite, storage: dict) -> None:
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        account_name=storage["accountName"],
        container_name=storage["containerName"],
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, write=True, create=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )

    async def scenario():
        async with BlobStore.from_resource({**storage, "accessKey": "?" + sas}) as store:
            assert store.config.auth == "sas"
            await store.write_json("sas/x.json", {"via": "sas"})
            return await store.read_json("sas/x.json")

    assert run(scenario()) == {"via": "sas"}


def test_ensure_container_accepts_an_existing_container(storage: dict) -> None:
    async def scenario():
        async with BlobStore.from_resource(storage) as store:
            await store.ensure_container()  # the fixture created it already
            await store.ensure_container()
            return await store.list_paths()

    assert run(scenario()) == []
