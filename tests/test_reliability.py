"""Reliability: corrupt or missing objects are caught, crashes and concurrent writers
leave a consistent repository, and the index can be rebuilt from objects and refs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_bit_equal, unique_memory_url

from modelhub_torch.errors import CorruptObjectError
from modelhub_torch.repository import Repository
from modelhub_torch.writer import PACK_SALT_BYTES


def _state(k: int, n: int = 20_000) -> dict[str, torch.Tensor]:
    """Version k of a slowly changing model (deterministic)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=g)
    return {
        "w": w + k * 1e-3,
        "frozen": torch.randn(64, 32, generator=g),  # the same in every version
        "b": torch.full((16,), float(k)),
        "step": torch.tensor(k),
    }


def _object_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


def _oid(path: Path) -> str:
    return path.parent.name + path.name


@pytest.fixture
def small_history(tmp_path):
    """Three versions on disk: one whole, deltas, 'same' links; returns (root, expected)."""
    root = tmp_path / "repo"
    repo = Repository.init(root)
    expected = {}
    for k in range(3):
        repo.commit(_state(k), "m", metrics={"k": k})
        expected[f"m@v{k + 1}"] = _state(k)
    repo.commit({"copy": _state(0)["frozen"].clone(), "own": torch.arange(10)}, "other")
    expected["other@v1"] = {"copy": _state(0)["frozen"], "own": torch.arange(10)}
    assert repo.verify() == []
    return root, expected


def _load_outcomes(root: Path, expected: dict) -> dict[str, str]:
    """Load every version with a fresh Repository: 'ok' (bit-exact) or the error text.
    Any other outcome (wrong data, another exception type) fails the test."""
    repo = Repository(root)
    out = {}
    for ref, sd in expected.items():
        try:
            got = repo.load(ref)
        except CorruptObjectError as exc:
            out[ref] = str(exc)
            continue
        assert_bit_equal(got, sd)
        out[ref] = "ok"
    return out


def test_every_flipped_byte_is_detected(small_history):
    """A flipped byte makes some load fail (never return wrong data) and verify name the
    object — except in a pack's 16-byte random salt, which no load reads: there every
    load stays bit-exact and only verify's re-hash can notice."""
    root, expected = small_history
    files = _object_files(root)
    assert len(files) >= 5
    repo = Repository(root)
    packs = {oid for v in repo.versions() for oid in repo.manifest(v.id).packs if oid}
    rng = random.Random(1234)
    for path in files:
        oid = _oid(path)
        original = path.read_bytes()
        positions = {0, 15, 16, len(original) // 2, len(original) - 1, rng.randrange(len(original))}
        for pos in sorted(p for p in positions if p < len(original)):
            damaged = bytearray(original)
            damaged[pos] ^= 0x10
            path.write_bytes(bytes(damaged))
            try:
                outcomes = _load_outcomes(root, expected)
                failed = [ref for ref, o in outcomes.items() if o != "ok"]
                if oid in packs and pos < PACK_SALT_BYTES:
                    assert not failed, f"a flip in the salt of {oid} broke a load: {failed}"
                else:
                    assert failed, f"flip at {pos} of {oid} went unnoticed by every load"
                problems = Repository(root).verify()
                assert any(p.kind == "corrupt-object" and p.subject == oid for p in problems), problems
                assert all(p.kind in ("corrupt-object", "undecodable-version", "bad-manifest") for p in problems)
            finally:
                path.write_bytes(original)
    assert Repository(root).verify() == []
    assert all(o == "ok" for o in _load_outcomes(root, expected).values())


def test_missing_object_is_named(small_history):
    root, expected = small_history
    for path in _object_files(root):
        oid = _oid(path)
        original = path.read_bytes()
        path.unlink()
        try:
            outcomes = _load_outcomes(root, expected)
            failed = {ref: o for ref, o in outcomes.items() if o != "ok"}
            assert failed, f"deleting {oid} went unnoticed"
            assert any(oid in msg and "missing" in msg for msg in failed.values()), failed
            problems = Repository(root).verify()
            assert any(p.kind == "missing-object" and p.subject == oid for p in problems), problems
        finally:
            path.write_bytes(original)
    assert Repository(root).verify() == []


def test_truncated_object_is_detected(small_history):
    root, expected = small_history
    biggest = max(_object_files(root), key=lambda p: p.stat().st_size)
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) // 3])
    outcomes = _load_outcomes(root, expected)
    assert any(o != "ok" for o in outcomes.values())
    problems = Repository(root).verify()
    assert any(p.subject == _oid(biggest) for p in problems)


# ------------------------------------------------------------------ crashes

WRITER = textwrap.dedent(
    """
    import sys, torch
    from modelhub_torch.repository import Repository
    root, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    repo = Repository(root)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, generator=g)
    frozen = torch.randn(64, 32, generator=g)
    print("ready", flush=True)
    k = start
    while True:
        sd = {"w": w + k * 1e-3, "frozen": frozen, "b": torch.full((16,), float(k)), "step": torch.tensor(k)}
        repo.commit(sd, "big", metrics={"k": k})
        print("committed", k, flush=True)
        k += 1
    """
)

CRASH_ELEMS = 3_000_000  # 12 MB of float32 per version: a commit takes 100-300 ms


def _check_consistent(root: Path, n: int, since: int = 0, full_verify: bool = True) -> list:
    """No half version: numbers run 1..N, each loads bit-exact (from version ``since``
    on: a commit rewrites only its parent, so older versions cannot have changed)."""
    repo = Repository(root)
    versions = repo.versions("big")
    assert [v.number for v in versions] == list(range(1, len(versions) + 1))
    for v in versions:
        if v.number >= since:
            assert_bit_equal(repo.load(v.ref), _state(v.metrics["k"], n))
    if full_verify:
        assert repo.verify() == []
    return versions


def test_sigkill_mid_commit_leaves_a_consistent_repository(tmp_path):
    root = tmp_path / "repo"
    Repository.init(root, keyframe_interval=4)  # short delta chains keep the checks quick
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    start = 0
    previous: set[int] = set()
    trials = []
    for _trial in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(CRASH_ELEMS), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", (line, proc.stderr.read())
            delay = rng.uniform(0.2, 2.0)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        trials.append(delay)
        committed = [int(x.split()[1]) for x in proc.stdout.read().splitlines() if x.startswith("committed")]
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        versions = _check_consistent(root, CRASH_ELEMS, since=len(previous), full_verify=False)
        ks = [v.metrics["k"] for v in versions]
        assert ks == sorted(set(ks)), f"seed {seed} delays {trials}"
        # everything the writer reported as committed is there, plus at most one that it
        # published but was killed before reporting; nothing from earlier trials is lost
        new = set(ks) - previous
        assert previous <= set(ks), (previous, ks, seed, trials)
        assert set(committed) <= new, (committed, ks, seed, trials)
        assert len(new - set(committed)) <= 1, (committed, ks, seed, trials)
        previous = set(ks)
        start = (max(ks) + 1) if ks else 0

    repo = Repository(root)
    before = {v.ref for v in repo.versions()}
    leftovers = len(repo.loc.listdir("tmp"))
    report = repo.gc()
    assert report["temp_files"] == leftovers
    assert repo.loc.listdir("tmp") == []
    assert {v.ref for v in repo.versions()} == before
    # a commit killed before its commit point leaves an unlisted version; gc keeps it
    # only while its number is still free (a deleted ref looks the same, and
    # 'verify --repair' can restore it): that is the next number, nothing else
    listed = [v.number for v in repo.versions("big")]
    unlisted = set(repo.refs.version_ids()) - {v.id for v in repo.versions()}
    assert {repo.manifest(v).number for v in unlisted} <= {max(listed, default=0) + 1}
    # the repository still takes commits after the crashes; the new version takes that
    # number, and then gc removes the version refs of every killed commit
    repo.commit(_state(start, CRASH_ELEMS), "big", metrics={"k": start})
    repo.gc()
    assert set(repo.refs.version_ids()) == {v.id for v in repo.versions()}
    assert repo.gc(dry_run=True) == {"objects_removed": 0, "bytes_freed": 0, "orphan_refs": 0, "temp_files": 0}
    _check_consistent(root, CRASH_ELEMS)


CONCURRENT = textwrap.dedent(
    """
    import sys, torch
    from modelhub_torch.repository import Repository
    root, who = sys.argv[1], int(sys.argv[2])
    repo = Repository(root)
    for k in range(5):
        sd = {"w": torch.full((5000,), float(who * 100 + k)), "who": torch.tensor(who)}
        repo.commit(sd, "shared", metrics={"who": who, "k": k})
    print("done", flush=True)
    """
)


def test_two_processes_commit_concurrently(tmp_path):
    root = tmp_path / "repo"
    Repository.init(root)
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT, str(root), str(who)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for who in (1, 2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "done"
    repo = Repository(root)
    versions = repo.versions("shared")
    assert [v.number for v in versions] == list(range(1, 11))
    seen = set()
    for v in versions:
        who, k = v.metrics["who"], v.metrics["k"]
        seen.add((who, k))
        got = repo.load(v.ref)
        assert_bit_equal(got, {"w": torch.full((5000,), float(who * 100 + k)), "who": torch.tensor(who)})
    assert seen == {(w, k) for w in (1, 2) for k in range(5)}
    # each process's own commits appear in order
    for who in (1, 2):
        ks = [v.metrics["k"] for v in versions if v.metrics["who"] == who]
        assert ks == list(range(5))
    assert repo.verify() == []
    assert repo.gc()["objects_removed"] == 0


READER_RACE_WRITER = textwrap.dedent(
    """
    import sys, torch
    from modelhub_torch.repository import Repository
    repo = Repository(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300_000, generator=g)
    for k in range(15):
        repo.commit({"w": w + k * 1e-3, "b": torch.full((8,), float(k))}, "m", metrics={"k": k})
    """
)


def test_readers_see_whole_versions_while_another_process_commits(tmp_path):
    """Each commit re-encodes its parent and deletes the parent's old packs; a reader
    holding the old manifest must retry, never fail or return other data."""
    root = tmp_path / "repo"
    Repository.init(root)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300_000, generator=g)
    proc = subprocess.Popen([sys.executable, "-c", READER_RACE_WRITER, str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    repo = Repository(root)
    rng = random.Random(0)
    loads = 0
    try:
        while proc.poll() is None:
            versions = repo.versions("m")
            if len(versions) < 2:
                time.sleep(0.02)
                continue
            for v in (versions[-1], versions[-2], rng.choice(versions)):
                got = repo.load(v.ref)
                k = v.metrics["k"]
                assert_bit_equal(got, {"w": w + k * 1e-3, "b": torch.full((8,), float(k))})
                loads += 1
    finally:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert loads > 0
    assert [v.metrics["k"] for v in repo.versions("m")] == list(range(15))
    assert repo.verify() == []


def test_threads_commit_to_one_memory_repository():
    """fsspec repositories are serialised within the process (no file lock there)."""
    url = unique_memory_url()
    Repository.init(url)
    errors: list[BaseException] = []

    def work(who: int) -> None:
        try:
            repo = Repository(url)
            for k in range(4):
                repo.commit({"w": torch.full((3000,), float(who * 100 + k))}, "m", metrics={"who": who, "k": k})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(who,)) for who in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    repo = Repository(url)
    versions = repo.versions("m")
    assert [v.number for v in versions] == list(range(1, 13))
    for v in versions:
        value = float(v.metrics["who"] * 100 + v.metrics["k"])
        assert torch.equal(repo.load(v.ref)["w"], torch.full((3000,), value))
    assert repo.verify() == []


def _catalog_files(root: Path) -> list[Path]:
    return [p for p in (root / "index").iterdir() if p.name.startswith("catalog.sqlite")]


def test_index_is_rebuilt_from_objects_and_refs(small_history):
    root, expected = small_history
    repo = Repository(root)
    repo.tag("m@v2", "best")
    before = [v for v in repo.versions()]
    assert len(before) == 4
    repo.catalog.close()
    del repo
    for p in _catalog_files(root):
        p.unlink()
    assert _catalog_files(root) == []

    repo = Repository(root)
    assert repo.verify(rebuild_index=True) == []
    after = repo.versions()
    assert after == before  # same ids, numbers, parents, metrics, sizes, timestamps
    assert repo.versions("m")[1].metrics == {"k": 1}
    assert repo.tags("m") == {"best": "m@v2"}
    assert repo.stats()["stored_bytes"] == sum(v.stored_bytes for v in before)
    for ref, sd in expected.items():
        assert_bit_equal(repo.load(ref), sd)
    # dedup still finds tensors through the rebuilt index
    v = repo.commit({"again": _state(0)["frozen"].clone()}, "third")
    assert v.stored_bytes < 2000


def test_a_corrupt_index_is_set_aside_and_rebuilt(small_history):
    """Regression: garbage in catalog.sqlite made Repository() raise sqlite3.DatabaseError."""
    root, expected = small_history
    repo = Repository(root)
    before = repo.versions()
    repo.catalog.close()
    del repo
    for p in _catalog_files(root):
        p.unlink()
    (root / "index" / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    repo = Repository(root)
    assert repo.versions() == before
    for ref, sd in expected.items():
        assert_bit_equal(repo.load(ref), sd)
    assert repo.verify() == []


def test_rebuild_index_on_a_live_repository(small_history):
    root, _ = small_history
    repo = Repository(root)
    before = repo.versions()
    with repo.catalog._conn() as c:  # drop rows behind the repository's back
        c.execute("DELETE FROM versions")
    assert repo.verify(rebuild_index=True) == []
    assert repo.versions() == before


@pytest.mark.slow
def test_sigkill_with_large_checkpoints(tmp_path):
    """The same crash test with 30M-float checkpoints (about a second per commit)."""
    root = tmp_path / "repo"
    Repository.init(root)
    n = 30_000_000
    start = 0
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5 + trial * 0.7)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        versions = _check_consistent(root, n)
        start = (max(v.metrics["k"] for v in versions) + 1) if versions else 0
    Repository(root).gc()
    assert Repository(root).loc.listdir("tmp") == []
