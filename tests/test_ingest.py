"""ingest and ocr_confidence `main()`, called as Windmill calls them, against a real Azurite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from f.matter import ingest, ocr_confidence
from f.matter.documents import parse_ocr
from f.matter.errors import BlobNotFound, InputError, OcrFormatError
from f.matter.models import ConfidenceReport, Document, Manifest
from f.matter.ocr_confidence import score_document
from f.matter.storage import BlobStore
from f.matter.windows import plan_document
from matterflow.synth import synthetic_layout_bytes

SOURCE = "matters/M-1042/documents/lease.ocr.json"


def upload(storage: dict, path: str, data: bytes) -> None:
    async def put():
        async with BlobStore.from_resource(storage) as store:
            await store.write_bytes(path, data)

    asyncio.run(put())


def read(storage: dict, path: str) -> bytes:
    async def get():
        async with BlobStore.from_resource(storage) as store:
            return await store.read_bytes(path)

    return asyncio.run(get())


def listing(storage: dict, prefix: str) -> list[str]:
    async def ls():
        async with BlobStore.from_resource(storage) as store:
            return await store.list_paths(prefix)

    return asyncio.run(ls())


def windmill_round_trip(result: dict) -> dict:
    """What a Windmill worker does with a step's result before the next step sees it."""
    return json.loads(json.dumps(result, default=str))


def test_ingest_stages_the_normalized_document_and_returns_a_small_manifest(storage: dict) -> None:
    data = synthetic_layout_bytes(40, seed=7, low_confidence_pages=[12])
    upload(storage, SOURCE, data)

    manifest = Manifest.model_validate(windmill_round_trip(ingest.main(storage, SOURCE)))

    prefix = f"results/matters/M-1042/documents/lease.ocr/{manifest.run_key}/"
    assert manifest.refs.prefix == prefix
    assert manifest.pages == 40 and manifest.first_page == 1 and manifest.last_page == 40
    staged = msgspec.json.decode(read(storage, manifest.refs.document), type=Document)
    assert staged == parse_ocr(data)
    assert Manifest.model_validate_json(read(storage, manifest.refs.manifest)) == manifest
    assert manifest.plan == plan_document(staged, window_pages=8, overlap_pages=2, context_tokens=8192, shards=3)
    assert sorted(listing(storage, prefix)) == [prefix + "document.json", prefix + "manifest.json"]


def test_manifest_of_a_2000_page_document_stays_far_below_windmill_result_limits(storage: dict) -> None:
    upload(storage, "matters/big/doc.json", synthetic_layout_bytes(2000, words_per_page=40, seed=1))
    manifest = ingest.main(storage, "matters/big/doc.json", window_pages=8, overlap_pages=2)
    size = len(json.dumps(manifest))
    assert manifest["pages"] == 2000
    assert size < 512 * 1024, f"manifest is {size} bytes"


def test_manifest_window_plan_owns_every_page_exactly_once(storage: dict) -> None:
    upload(storage, SOURCE, synthetic_layout_bytes(53, seed=2))
    manifest = Manifest.model_validate(ingest.main(storage, SOURCE, window_pages=6, overlap_pages=1, shards=4))
    owned = [page for w in manifest.plan.windows for page in range(w.owned_first, w.owned_last + 1)]
    assert owned == list(range(1, 54))
    assert sorted(i for shard in manifest.plan.shards for i in shard) == [w.index for w in manifest.plan.windows]
    assert len(manifest.plan.shards) == 4


def test_run_key_is_stable_and_changes_with_what_changes_the_answers(storage: dict) -> None:
    upload(storage, SOURCE, synthetic_layout_bytes(10, seed=4))
    upload(storage, "matters/M-1042/documents/other.json", synthetic_layout_bytes(10, seed=5))
    key = ingest.main(storage, SOURCE)["run_key"]
    assert ingest.main(storage, SOURCE)["run_key"] == key
    assert ingest.main(storage, SOURCE, shards=5)["run_key"] == key, "sharding does not change window answers"
    assert ingest.main(storage, SOURCE, window_pages=4)["run_key"] != key
    assert ingest.main(storage, SOURCE, overlap_pages=0)["run_key"] != key
    assert ingest.main(storage, SOURCE, model="llama-3.1-70b", context_tokens=131072)["run_key"] != key
    assert ingest.main(storage, "matters/M-1042/documents/other.json")["run_key"] != key


def test_restaging_without_force_keeps_the_staged_document_and_force_rewrites_it(storage: dict) -> None:
    upload(storage, SOURCE, synthetic_layout_bytes(5, seed=4))
    manifest = ingest.main(storage, SOURCE)
    upload(storage, manifest["refs"]["document"], b'{"marker": "staged earlier"}')
    ingest.main(storage, SOURCE)
    assert read(storage, manifest["refs"]["document"]) == b'{"marker": "staged earlier"}'
    ingest.main(storage, SOURCE, force=True)
    assert msgspec.json.decode(read(storage, manifest["refs"]["document"]), type=Document).pages[0].number == 1


@pytest.mark.parametrize("fixture", ["bcgov-lowconf", "sdpr-form", "ocr-form-tools", "layout-sample", "Passport"])
def test_every_shared_fixture_flows_through_ingest_and_confidence(storage: dict, fixture_files: list[Path], fixture: str) -> None:
    path = next(p for p in fixture_files if fixture in p.name)
    upload(storage, f"matters/M-7/{path.name}", path.read_bytes())

    manifest = windmill_round_trip(ingest.main(storage, f"matters/M-7/{path.name}"))
    summary = windmill_round_trip(ocr_confidence.main(storage, manifest, min_confidence=0.8))

    expected = score_document(parse_ocr(path.read_bytes()), 0.8)
    stored = ConfidenceReport.model_validate_json(read(storage, manifest["refs"]["confidence"]))
    assert stored == expected
    assert summary["mean_word_confidence"] == pytest.approx(expected.document.mean_word_confidence)
    assert summary["flagged_pages"] == ([1] if fixture in ("bcgov-lowconf", "Passport") else [])
    assert summary["confidence_ref"] == manifest["refs"]["confidence"]


def test_confidence_threshold_is_validated(storage: dict) -> None:
    upload(storage, SOURCE, synthetic_layout_bytes(3, seed=1))
    manifest = ingest.main(storage, SOURCE)
    with pytest.raises(InputError, match=r"min_confidence: Input should be less than or equal to 1 \(got 1.5\)"):
        ocr_confidence.main(storage, manifest, min_confidence=1.5)


def test_confidence_rejects_something_that_is_not_a_manifest(storage: dict) -> None:
    with pytest.raises(InputError, match=r"^manifest: .*run_key: Field required"):
        ocr_confidence.main(storage, {"refs": {}})


# Bad input through ingest: a typed error naming what and where, nothing staged.


def test_missing_blob_is_named(storage: dict) -> None:
    with pytest.raises(BlobNotFound, match=r"matters/M-9/absent\.json"):
        ingest.main(storage, "matters/M-9/absent.json")


@pytest.mark.parametrize(
    ("blob_path", "message"),
    [
        ("matters/../../secrets.json", "contains a '.' or '..' segment"),
        ("/matters/doc.json", "is absolute"),
        ("results/matters/x/document.json", "inside results/"),
    ],
)
def test_bad_blob_paths_are_rejected_before_any_download(storage: dict, blob_path: str, message: str) -> None:
    with pytest.raises(InputError, match="blob_path") as info:
        ingest.main(storage, blob_path)
    assert message in str(info.value)


def test_invalid_container_name_is_named(storage: dict) -> None:
    with pytest.raises(InputError, match="invalid container name 'Matters_2024'"):
        ingest.main({**storage, "containerName": "Matters_2024"}, SOURCE)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"window_pages": 0}, "window_pages: Input should be greater than or equal to 1 (got 0)"),
        ({"overlap_pages": -1}, "overlap_pages: Input should be greater than or equal to 0 (got -1)"),
        ({"context_tokens": 512}, "context_tokens: Input should be greater than or equal to 1024 (got 512)"),
        ({"shards": 0}, "shards: Input should be greater than or equal to 1 (got 0)"),
        ({"window_pages": "eight"}, "window_pages: Input should be a valid integer"),
    ],
)
def test_bad_settings_are_named(storage: dict, arguments: dict, message: str) -> None:
    with pytest.raises(InputError) as info:
        ingest.main(storage, SOURCE, **arguments)
    assert message in str(info.value)


def test_a_corrupt_ocr_blob_is_named_and_nothing_is_staged(storage: dict) -> None:
    upload(storage, "matters/M-3/broken.json", b'{"status": "succeeded", "analyzeResult": {"pages": [{"pageNumber": 1, "wor')
    with pytest.raises(OcrFormatError, match=r"^matters/M-3/broken\.json: the JSON ends early"):
        ingest.main(storage, "matters/M-3/broken.json")
    assert listing(storage, "results/") == []
