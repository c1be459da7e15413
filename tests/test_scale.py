"""Costs that must not grow with the number of versions (counted, not timed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelhub_torch import Repository
from modelhub_torch.store.refs import RefStore


@pytest.fixture
def many_versions(tmp_path: Path) -> Repository:
    repo = Repository.init(tmp_path / "repo")
    for k in range(40):
        repo.commit({"w": torch.full((16,), float(k))}, "m")
    repo.wait()  # the last commit's background repack reads refs too
    return repo


def _count_ref_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    reads: list[tuple[str, ...]] = []
    original = RefStore._read

    def counting(self: RefStore, *parts: str) -> str | None:
        reads.append(parts)
        return original(self, *parts)

    monkeypatch.setattr(RefStore, "_read", counting)
    return reads


def test_resolving_a_ref_reads_one_ref_file(many_versions: Repository, monkeypatch) -> None:
    reads = _count_ref_reads(monkeypatch)
    for ref in ("m@latest", "m@v7", "m"):
        reads.clear()
        many_versions.resolve(ref)
        assert len([r for r in reads if r[0] == "models"]) == 1, (ref, reads)


def test_opening_and_listing_read_no_ref_files_when_indexed(many_versions: Repository, monkeypatch) -> None:
    reads = _count_ref_reads(monkeypatch)
    repo = Repository(many_versions.url)
    assert len(repo.versions("m")) == 40
    assert [r for r in reads if r[0] == "models"] == []


def test_a_version_missing_from_the_index_is_found_by_its_ref(many_versions: Repository, monkeypatch) -> None:
    many_versions.catalog.remove([many_versions.resolve("m@v13")])
    reads = _count_ref_reads(monkeypatch)
    assert [v.number for v in Repository(many_versions.url).versions("m")] == list(range(1, 41))
    assert [r for r in reads if r[0] == "models"] == [("models", "m", "13")]
