"""The model registry on a local folder and on the S3-compatible server (moto over HTTP):
monotonic versions never overwritten, atomic aliases, rollback, verification, and readers
racing writers never seeing a partial state."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from patchray import storage
from patchray.errors import IntegrityError, RegistryError
from patchray.registry.card import CARD_JSON
from patchray.registry.store import ModelRegistry, ModelRef
from tests.unit.registry.test_card import make_card

pytestmark = pytest.mark.integration

NAME = "cnn2-synthetic"


@pytest.fixture(params=["local", "s3"])
def registry(request, tmp_path) -> ModelRegistry:
    if request.param == "local":
        return ModelRegistry(str(tmp_path / "registry"))
    server = request.getfixturevalue("s3_server")
    return ModelRegistry(server.uri(f"registry-{uuid.uuid4().hex[:8]}"))


def model_files(tmp_path, tag: str, size: int = 2048):
    d = tmp_path / f"build-{tag}"
    d.mkdir()
    (d / "model.xml").write_text(f"<net name='{tag}'/>")
    (d / "model.bin").write_bytes(os.urandom(size))
    return d


def test_versions_are_assigned_in_order_and_published_with_hashes(registry, tmp_path):
    cards = [registry.register(model_files(tmp_path, str(i)), make_card()) for i in range(3)]
    assert [c.version for c in cards] == [1, 2, 3]
    assert registry.versions(NAME) == [1, 2, 3] and registry.names() == [NAME]
    assert set(cards[0].files) == {"model.xml", "model.bin"}
    assert registry.resolve(NAME).version == 3  # a bare name is the latest
    assert registry.resolve(f"{NAME}@2") == cards[1]
    assert storage.exists(registry.uri(NAME, 2, "card.md"))
    assert registry.verify(NAME, 1) == cards[0].files


def test_a_version_claimed_but_never_published_is_skipped_not_reused(registry, tmp_path):
    registry.register(model_files(tmp_path, "a"), make_card())
    # A writer that died after claiming 2: its number stays taken, it is not a version.
    assert storage.create_object(registry.uri(NAME, 2, "_claim.json"), b"{}")
    assert not storage.create_object(registry.uri(NAME, 2, "_claim.json"), b"{}")
    assert registry.versions(NAME) == [1]
    assert registry.register(model_files(tmp_path, "b"), make_card()).version == 3


def test_concurrent_registrations_never_share_a_version(registry, tmp_path):
    builds = [model_files(tmp_path, f"w{i}") for i in range(4)]
    got: list[int] = []
    threads = [threading.Thread(target=lambda b=b: got.append(
        registry.register(b, make_card()).version)) for b in builds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1, 2, 3, 4]
    for v in got:  # each version holds its own writer's files
        registry.verify(NAME, v)


def test_promote_rollback_and_their_history(registry, tmp_path):
    for i in range(3):
        registry.register(model_files(tmp_path, str(i)), make_card())
    registry.promote(NAME, 1, "production")
    registry.promote(NAME, 3, "production")
    assert registry.resolve(f"{NAME}@production").version == 3
    record = registry.rollback(NAME, "production")
    assert record.version == 1 and record.history == [1]
    assert [e["action"] for e in record.events] == ["promote", "promote", "rollback"]
    assert record.events[-1]["from"] == 3
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback(NAME, "production")
    with pytest.raises(RegistryError, match=r"cnn2-synthetic@7 is not in the registry .*1, 2, 3"):
        registry.promote(NAME, 7, "production")
    with pytest.raises(RegistryError, match="has no alias 'staging' .*aliases: production"):
        registry.resolve(f"{NAME}@staging")
    with pytest.raises(RegistryError, match="alias 'Prod!' is not valid"):
        ModelRef.parse(f"{NAME}@Prod!")


def test_verify_and_promote_refuse_a_tampered_file(registry, tmp_path):
    registry.register(model_files(tmp_path, "a"), make_card())
    storage.write_bytes(registry.uri(NAME, 1, "model.bin"), b"not the weights")
    with pytest.raises(IntegrityError, match=r"cnn2-synthetic@1 .* model.bin: sha256"):
        registry.verify(NAME, 1)
    with pytest.raises(IntegrityError):
        registry.promote(NAME, 1, "production")
    assert registry.alias(NAME, "production") is None


def race(read_once, write) -> list[str]:
    """Call ``read_once`` in a loop on another thread while ``write()`` runs; return what
    the reader failed with (its first failure ends it)."""
    done, errors = threading.Event(), []

    def read() -> None:
        while not done.is_set():
            try:
                read_once()
            except Exception as e:  # any failure is the finding
                errors.append(repr(e))
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        write()
    finally:
        done.set()
        reader.join(timeout=60)
    return errors


def test_a_reader_racing_promotions_always_sees_one_whole_version(registry, tmp_path):
    for i in range(2):
        registry.register(model_files(tmp_path, str(i), size=64 * 1024), make_card())
    registry.promote(NAME, 1, "production")
    seen = set()

    def read_once() -> None:
        card = registry.resolve(f"{NAME}@production")
        # The alias names a published version whose files are exactly its card's.
        assert registry.verify(card.name, card.version) == card.files
        seen.add(card.version)

    def flip() -> None:
        for i in range(30):
            registry.promote(NAME, 2 if i % 2 == 0 else 1, "production", verify=False)

    errors = race(read_once, flip)
    assert not errors, errors[:3]
    assert seen  # the reader really read (both versions on most runs)


def test_a_reader_racing_a_registration_never_lists_a_partial_version(registry, tmp_path):
    registry.register(model_files(tmp_path, "a"), make_card())

    def read_once() -> None:
        for v in registry.versions(NAME):
            registry.verify(NAME, v)

    def register() -> None:
        for i in range(3):
            registry.register(model_files(tmp_path, f"big{i}", size=4 << 20), make_card())

    errors = race(read_once, register)
    assert not errors, errors[:3]
    assert registry.versions(NAME) == [1, 2, 3, 4]


def test_concurrent_promoters_lose_no_event(registry, tmp_path):
    for i in range(2):
        registry.register(model_files(tmp_path, str(i)), make_card())

    def promote(version: int) -> None:
        for _ in range(8):
            registry.promote(NAME, version, "staging", verify=False)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(registry.alias(NAME, "staging").events) == 16


def test_a_local_copy_is_verified_and_complete(registry, tmp_path):
    card = registry.register(model_files(tmp_path, "a"), make_card())
    local = registry.local_dir(card, cache=tmp_path / "cache")
    assert (local / CARD_JSON).is_file()
    assert {p.name for p in local.iterdir()} >= {"model.xml", "model.bin"}
    assert registry.local_dir(card, cache=tmp_path / "cache") == local


def test_a_precision_that_failed_its_gate_is_not_registered(registry, tmp_path):
    build = model_files(tmp_path, "a")
    (build / "model-int8.xml").write_text("<net/>")
    (build / "model-int8.bin").write_bytes(b"int8")
    card = registry.register(build, make_card())  # make_card's int8 failed its gate
    assert set(card.files) == {"model.xml", "model.bin"}
    assert not storage.exists(registry.uri(NAME, card.version, "model-int8.xml"))
    assert card.precisions["int8"].reason.startswith("val AUC 0.9000")  # kept, with why
