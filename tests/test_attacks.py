"""A repository is untrusted input. Each test reproduces one row of the hardening
issue's attack table (a booby-trapped or damaged repository, a bad input) and checks
the behaviour asked for: nothing stored runs, nothing is lost, the rest stays usable,
every error is one line that names a command that works."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import assert_bit_equal
from torch import nn

from modelhub_torch.cli import main
from modelhub_torch.errors import (
    DamagedRepositoryError,
    DQLError,
    FormatError,
    ModelHubError,
    PickleRequiredError,
    ReadOnlyError,
    RefNotFoundError,
    WriteFailedError,
)
from modelhub_torch.repository import Repository

OPEN = re.compile(r"\b(io|builtins)\.open\b")  # what the payload's pickle imports


class Net(nn.Module):
    """A small classifier the tests evaluate (importable as tests' ``test_attacks:Net``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: a file appearing means code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _sd(k: int, n: int = 4000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(n, generator=g) + k * 1e-3, "b": torch.full((16,), float(k))}


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if not x.startswith("modelhub: warning:")]
    assert len(lines) == 1 and lines[0].startswith("modelhub: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def four(tmp_path) -> tuple[Path, dict[str, dict]]:
    """m@v1..v4 (reverse deltas: v1..v3 lean on v4; no budget, so one chain) and
    other@v1..v2."""
    root = tmp_path / "repo"
    repo = Repository.init(root, max_load_factor=None)
    expect = {}
    for k in range(4):
        repo.commit(_sd(k), "m", metrics={"k": k})
        expect[f"m@v{k + 1}"] = _sd(k)
    for k in range(2):
        repo.commit(_sd(10 + k, 500), "other")
        expect[f"other@v{k + 1}"] = _sd(10 + k, 500)
    repo.catalog.close()
    return root, expect


def _ref_file(root: Path, model: str, n: int) -> Path:
    return root / "refs" / "models" / model / str(n)


def _manifest_file(root: Path, repo: Repository, ref: str) -> Path:
    oid = repo.refs.manifest_of(repo.resolve(ref))
    return root / "objects" / oid[:2] / oid[2:]


def _loads(root: Path, expect: dict[str, dict], refs: list[str]) -> None:
    repo = Repository(root)
    for ref in refs:
        assert_bit_equal(repo.load(ref), expect[ref], ref)


# ------------------------------------------------------------ nothing stored runs
def test_eval_never_imports_a_class_named_in_metadata(tmp_path, capsys):
    """Row: info={"module": "os.system"}, hparams={"command": ...}, then eval: it ran."""
    root = tmp_path / "repo"
    repo = Repository.init(root)
    marker = tmp_path / "ran"
    repo.commit(Net().state_dict(), "net", info={"module": "os.system"}, hparams={"command": f"touch {marker}"})
    repo.commit(Net().state_dict(), "popen", info={"module": "subprocess.Popen"},
                hparams={"args": ["touch", str(marker)]})
    data = tmp_path / "d.pt"
    torch.save({"x": torch.randn(5, 8), "y": torch.zeros(5, dtype=torch.long)}, data)

    code, _, err = cli(capsys, "--repo", root, "eval", "net@v1", "--data", data)
    line = one_line_error(err)
    assert code == 2 and "--module" in line and "os.system" in line and "never imports" in line
    # even when named by the user, only nn.Module classes are built
    for spec, ref in (("os:system", "net@v1"), ("subprocess:Popen", "popen@v1")):
        code, _, err = cli(capsys, "--repo", root, "eval", ref, "--data", data, "--module", spec)
        assert code == 2 and "not a" in one_line_error(err)
    assert not marker.exists()
    # the same version evaluates with the class its user names
    code, out, err = cli(capsys, "--repo", root, "--json", "eval", "popen@v1", "--data", data,
                         "--module", f"{__name__}:Net")
    assert code == 2 and "hparams" in one_line_error(err)  # Net() takes no 'args'
    repo.commit(Net().state_dict(), "plain")
    code, out, err = cli(capsys, "--repo", root, "--json", "eval", "plain@v1", "--data", data,
                         "--module", f"{__name__}:Net")
    assert code == 0, err
    assert json.loads(out)["inputs"] == 5
    assert not marker.exists()


@pytest.fixture
def trapped(tmp_path) -> tuple[Path, Path]:
    """A repository whose model 'evil' holds a pickled payload (committed with
    allow_pickle=True) next to its weights."""
    root = tmp_path / "repo"
    marker = tmp_path / "payload-ran"
    repo = Repository.init(root)
    for k in range(2):
        repo.commit({"state_dict": Net().state_dict(), "extra": Payload(marker), "k": k}, "evil",
                    allow_pickle=True, graph=Net())
    assert not marker.exists()
    repo.catalog.close()
    return root, marker


def test_no_entry_point_unpickles_a_stored_payload(trapped, tmp_path, capsys):
    """Row: archive --measure (the demo runs it) loaded with weights_only=False."""
    root, marker = trapped
    data = tmp_path / "d.pt"
    torch.save({"x": torch.randn(4, 8), "y": torch.zeros(4, dtype=torch.long)}, data)
    runs = [
        ("list",), ("--json", "list"), ("desc", "evil@v1"), ("diff", "evil@v1", "evil@v2"), ("stats",),
        ("verify",), ("gc",), ("query", 'select m where m.name = "evil"'),
        ("export", "evil@v2", tmp_path / "w.safetensors"),
        ("eval", "evil@v2", "--data", data, "--module", f"{__name__}:Net"),
        ("eval", "evil@v2", "--data", data, "--module", f"{__name__}:Net", "--progressive"),
        ("archive", "--budget", "2", "--measure"),
        ("copy", "evil@v2", "evil-copy"),
    ]
    for args in runs:
        code, _, err = cli(capsys, "--repo", root, *args)
        assert code in (0, 2), (args, err)
        assert not marker.exists(), f"modelhub {' '.join(map(str, args))} unpickled the payload"
    # without the opt-in, a full export refuses (one line, naming the opt-in)
    code, _, err = cli(capsys, "--repo", root, "export", "evil@v2", tmp_path / "full.pt")
    assert code == 2 and "--allow-pickle" in one_line_error(err)
    assert not marker.exists()

    repo = Repository(root)
    with pytest.raises(PickleRequiredError):
        repo.load("evil@v1")
    assert set(repo.load_state_dict("evil@v1")) == set(Net().state_dict())
    assert len(repo.load_tensors("evil@v2")) == 2
    import fsspec

    with pytest.raises(ModelHubError, match="pickled"), fsspec.open(f"modelhub://{root}#evil@v2", "rb") as fh:
        fh.read()
    with pytest.raises(ReadOnlyError), fsspec.open(f"modelhub://{root}#evil@v2", "wb") as fh:
        fh.write(b"x")
    from modelhub_torch.progressive import ProgressiveModel

    ProgressiveModel(Net(), repo, "evil@v2").predict(torch.randn(3, 8), k=1)
    assert not marker.exists()


def test_pickle_opt_in_says_what_it_trusts(trapped, tmp_path, capsys):
    """Row: --allow-pickle on commit / export ran the payload with no warning, and desc
    never said a version holds pickles."""
    root, marker = trapped
    code, out, err = cli(capsys, "--repo", root, "--json", "desc", "evil@v1")
    assert code == 0 and json.loads(out)["holds_pickle"] is True
    code, out, _ = cli(capsys, "--repo", root, "desc", "evil@v1")
    assert "pickle:" in out and OPEN.search(out)
    code, out, _ = cli(capsys, "--repo", root, "list")
    assert "evil@v2" in out and "[pickle]" in out
    code, out, _ = cli(capsys, "--repo", root, "--json", "query", "select m where m.pickle = true")
    assert code == 0 and [r["ref"] for r in json.loads(out)["rows"]] == ["evil@v1", "evil@v2"]

    # the explicit opt-in runs it, and says first what it trusts
    code, _, err = cli(capsys, "--repo", root, "export", "evil@v2", tmp_path / "full.pt", "--allow-pickle")
    # (the payload's result, an open file, cannot be saved again: one line, no traceback)
    assert code == 2 and "cannot write" in err and "Traceback" not in err
    assert err.startswith("modelhub: warning: weights_only=False: unpickling evil@v2")
    assert OPEN.search(err)
    assert marker.exists()
    marker.unlink()
    # a file committed with --allow-pickle: the warning names its imports before loading
    import argparse

    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "file.pt")
    code, _, err = cli(capsys, "--repo", root, "commit", tmp_path / "file.pt", "--model", "f", "--allow-pickle")
    assert code == 0 and "--allow-pickle: unpickling" in err and "argparse.Namespace" in err
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert Repository(root).load("f@v1", weights_only=False)["args"].lr == 0.1
    assert any("argparse.Namespace" in str(w.message) for w in seen)


def test_library_source_has_no_path_from_stored_bytes_to_code():
    """The audit, kept true: the package never unpickles with weights_only=False on its
    own, never imports a name it read, and never evals or execs."""
    pkg = Path(__file__).resolve().parents[1] / "modelhub_torch"
    allowed = {
        # a local file the user passed with --allow-pickle; the user's --module (eval, archive)
        ("checkpoint_files.py", 'torch.load(str(path), map_location="cpu", weights_only=False)'),
        ("evaluation.py", "importlib.import_module(mod_name)"),
        # evaluate's config class_path, from the user's YAML, after the allow-list check
        # (torch.optim.*, modelhub_torch.trials.*, modules the user names with --import)
        ("trials/plan.py", "importlib.import_module(module)"),
        # loading a version's $pickle nodes only when the caller passed weights_only=False
        ("skeleton.py", "pickle.loads("),
        # lazy imports of the package's own submodules by fixed names
        ("callbacks/__init__.py", 'importlib.import_module(f"{__name__}.{module}")'),
    }
    found = set()
    call = re.compile(r"^[^\"'#]*(\bload\(.*weights_only=False|import_module\(|__import__\(|"
                      r"pickle\.loads?\(|(?<![.\w])eval\(|(?<![.\w])exec\()")
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg).as_posix()
        for line in path.read_text().splitlines():
            if call.search(line) and "def " not in line:
                found.add((rel, line.strip()))
    unexpected = {(rel, c) for rel, c in found if not any(rel == a and n in c for a, n in allowed)}
    # __import__ of Lightning's AttributeDict by fixed module names is fine
    unexpected = {(rel, c) for rel, c in unexpected if not (rel == "skeleton.py" and "__import__(mod" in c)}
    assert unexpected == set()


# ------------------------------------------------------ gc and verify on damage
def test_gc_after_a_deleted_newest_ref_loses_nothing(four, capsys):
    """Row: delete the newest version's numbered ref, then gc: verify said ok, gc deleted
    its objects and the 3 older versions (reverse deltas of it) became unloadable."""
    root, expect = four
    _ref_file(root, "m", 4).unlink()
    objects_before = sorted(p for p in (root / "objects").rglob("*") if p.is_file())

    code, out, _ = cli(capsys, "--repo", root, "verify")
    assert code == 1 and "orphaned-version: m@v4" in out and "verify --repair" in out
    code, _, err = cli(capsys, "--repo", root, "gc")
    assert code == 2 and "verify --repair" in one_line_error(err)
    with pytest.raises(DamagedRepositoryError):
        Repository(root).gc()
    assert sorted(p for p in (root / "objects").rglob("*") if p.is_file()) == objects_before
    _loads(root, expect, ["m@v1", "m@v2", "m@v3", "other@v2"])

    code, out, _ = cli(capsys, "--repo", root, "verify", "--repair")
    assert code == 0 and "restored as m@v4" in out
    repo = Repository(root)
    assert [v.ref for v in repo.versions("m")] == ["m@v1", "m@v2", "m@v3", "m@v4"]
    _loads(root, expect, list(expect))
    assert repo.gc()["objects_removed"] == 0
    assert repo.verify() == []


@pytest.mark.parametrize("damage", ["flip-manifest", "delete-manifest", "garbage-version-ref", "garbage-number-ref"])
def test_one_damaged_version_leaves_the_rest_usable(four, damage, capsys):
    """Row: flip or delete one version's manifest or garbage in a ref, then verify
    --rebuild-index: it aborted and the whole repository could no longer be opened."""
    root, expect = four
    repo = Repository(root)
    victim = "other@v1"  # nothing leans on it (other@v1 is the older of its model... see below)
    vid = repo.resolve(victim)
    mfile = _manifest_file(root, repo, victim)
    repo.catalog.close()
    if damage == "flip-manifest":
        data = bytearray(mfile.read_bytes())
        data[len(data) // 2] ^= 0x10
        os.chmod(mfile, 0o644)
        mfile.write_bytes(bytes(data))
    elif damage == "delete-manifest":
        mfile.unlink()
    elif damage == "garbage-version-ref":
        (root / "refs" / "versions" / vid).write_bytes(b"../../../../etc/passwd\n")
    else:
        _ref_file(root, "other", 1).write_bytes(b"\x00\xffnot an id")

    code, out, err = cli(capsys, "--repo", root, "verify", "--rebuild-index")
    assert code == 1 and "Traceback" not in out + err
    assert "verify --repair" in out
    # open, list, load, commit, query work for every intact version
    code, out, err = cli(capsys, "--repo", root, "--json", "list")
    assert code == 0, err
    listed = [v["ref"] for v in json.loads(out)["versions"]]
    assert set(listed) == set(expect) - {victim}
    assert err.count("modelhub: warning:") <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        repo = Repository(root)
        _loads(root, expect, [r for r in expect if r != victim])
        v = repo.commit(_sd(20, 500), "other")
        assert v.ref == "other@v3"
        assert repo.query('select m where m.name = "m"').refs == ["m@v1", "m@v2", "m@v3", "m@v4"]
        with pytest.raises(ModelHubError) as info:
            repo.load(victim)
        assert "Traceback" not in str(info.value)
        with pytest.raises(DamagedRepositoryError, match="verify --repair"):
            repo.gc()

    code, out, err = cli(capsys, "--repo", root, "verify", "--repair")
    assert code == 0, out + err
    repo = Repository(root)
    if damage == "garbage-version-ref":  # the manifest object was still there: restored
        assert "restored other@v1" in out
        assert_bit_equal(repo.load(victim), expect[victim])
    elif damage == "garbage-number-ref":  # the manifest says which version it is
        assert "restored as other@v1" in out and "quarantined" not in out
        assert_bit_equal(repo.load(victim), expect[victim])
    else:
        assert "quarantined" in out
        assert any((root / "quarantine").rglob(vid))
        with pytest.raises(RefNotFoundError):
            repo.load(victim)
    assert repo.verify() == []
    repo.gc()
    _loads(root, expect, [r for r in expect if r != victim or damage.startswith("garbage")])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_place_of_a_file_is_damage_not_a_hang(four, capsys):
    """A FIFO where a manifest or a ref should be would block open() forever: it reads
    as damage, and repair clears it."""
    root, expect = four
    repo = Repository(root)
    mfile = _manifest_file(root, repo, "other@v1")
    repo.catalog.close()
    mfile.unlink()
    os.mkfifo(mfile)
    ref = _ref_file(root, "m", 1)
    vid = ref.read_text().strip()
    ref.unlink()
    os.mkfifo(ref)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("a read blocked on a FIFO"))
    signal.alarm(60)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            repo = Repository(root)
            for victim in ("other@v1", "m@v1"):
                with pytest.raises(ModelHubError):
                    repo.load(victim)
            _loads(root, expect, ["m@v2", "m@v4", "other@v2"])
            problems = repo.verify()
            assert ("corrupt-object", mfile.parent.name + mfile.name) in {(p.kind, p.subject) for p in problems}
            assert any("m@v1" in p.subject + p.detail for p in problems), problems
        code, out, err = cli(capsys, "--repo", root, "verify", "--repair")
        assert code == 0, out + err
        repo = Repository(root)
        assert repo.verify() == []
        assert repo.resolve("m@v1") == vid
        _loads(root, expect, [r for r in expect if r != "other@v1"])
    finally:
        signal.alarm(0)


def test_a_damaged_newest_version_quarantines_what_leans_on_it(four, capsys):
    """Damage to the base of a delta chain: its dependents cannot decode either; repair
    quarantines them all, and the other model and new commits carry on."""
    root, expect = four
    repo = Repository(root)
    mfile = _manifest_file(root, repo, "m@v4")
    repo.catalog.close()
    mfile.unlink()
    code, out, _ = cli(capsys, "--repo", root, "verify", "--repair")
    assert code == 0 and out.count("quarantined") >= 4
    repo = Repository(root)
    assert [v.ref for v in repo.versions()] == ["other@v1", "other@v2"]
    _loads(root, expect, ["other@v1", "other@v2"])
    assert repo.commit(_sd(5), "m").ref == "m@v1"  # the model's numbers start over
    assert repo.verify() == []


def test_corrupt_catalog_page_is_rebuilt_with_one_warning(four, capsys):
    """Row: one corrupt page in the SQLite catalog: sqlite3.DatabaseError tracebacks from
    list/verify/commit; a commit reported failure after it had landed."""
    root, expect = four
    db = root / "index" / "catalog.sqlite"
    Repository(root).catalog.close()
    with sqlite3.connect(db) as c:  # fold the WAL into the file, so pages are there
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 3 * page
    data[2 * page : 3 * page] = os.urandom(page)  # one b-tree page of garbage
    db.write_bytes(bytes(data))

    for args in (("list",), ("verify",), ("query", "select m where m.metrics.k >= 2")):
        code, out, err = cli(capsys, "--repo", root, *args)
        assert code == 0, (args, err)
        assert "Traceback" not in err and "sqlite3" not in err
        assert len(err.splitlines()) <= 1
    torch.save(_sd(9), root.parent / "c.pt")
    code, out, err = cli(capsys, "--repo", root, "--json", "commit", root.parent / "c.pt", "--model", "m")
    assert code == 0, err
    assert json.loads(out)["ref"] == "m@v5"
    repo = Repository(root)
    assert [v.ref for v in repo.versions("m")] == [f"m@v{k}" for k in range(1, 6)]
    _loads(root, expect, list(expect))
    assert repo.verify() == []


def test_commit_lands_even_if_indexing_fails_after_the_commit_point(four, monkeypatch):
    root, _ = four
    repo = Repository(root)

    def broken(*a, **k):
        raise sqlite3.DatabaseError("database disk image is malformed")

    calls = {"n": 0}
    real = repo.catalog.upsert.__wrapped__

    def flaky(self, *a, **k):  # fails once, as a damaged page would
        calls["n"] += 1
        if calls["n"] == 1:
            broken()
        return real(self, *a, **k)

    monkeypatch.setattr(type(repo.catalog), "upsert",
                        __import__("modelhub_torch.store.catalog", fromlist=["_guarded"])._guarded(flaky))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        v = repo.commit(_sd(7), "m")
    assert v.ref == "m@v5"
    assert any("damaged" in str(w.message) for w in seen)
    assert [x.ref for x in Repository(root).versions("m")][-1] == "m@v5"


def test_tampered_catalog_rows_are_caught(four, capsys):
    """Row: tampered catalog rows: list/desc/query showed wrong metadata, verify said ok."""
    root, _ = four
    db = root / "index" / "catalog.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("""UPDATE versions SET metrics='{"k": 99}', message='evil' WHERE model='m' AND number=2""")
    code, out, err = cli(capsys, "--repo", root, "--json", "desc", "m@v2")
    assert code == 0
    doc = json.loads(out)
    assert doc["metrics"] == {"k": 1} and doc["message"] == ""
    assert "index disagreed" in err
    with sqlite3.connect(db) as c:
        c.execute("""UPDATE versions SET metrics='{"k": 99}' WHERE model='m' AND number=3""")
    code, out, _ = cli(capsys, "--repo", root, "verify")
    assert code == 1 and "index-mismatch: m@v3" in out and "re-indexed" in out
    repo = Repository(root)
    assert repo.query("select m where m.metrics.k = 99").refs == []
    assert [v.metrics["k"] for v in repo.versions("m")] == [0, 1, 2, 3]
    assert repo.verify() == []


# --------------------------------------------------------------------------- refs
def test_refs_say_what_they_mean(four, capsys):
    """Row: 'modelhub desc mlp@4' printed mlp@v1: '4' matched the start of v1's id."""
    root, _ = four
    repo = Repository(root)
    ids = {v.ref: v.id for v in repo.versions("m")}
    for n in (1, 4, 9):
        with pytest.raises(RefNotFoundError, match=f"m@v{n}"):
            repo.resolve(f"m@{n}")
    code, _, err = cli(capsys, "--repo", root, "desc", "m@4")
    assert code == 2 and "did you mean m@v4" in one_line_error(err)
    vid = ids["m@v2"]
    for short in range(1, 6):  # fewer than 6 hex digits never resolve
        with pytest.raises(RefNotFoundError):
            repo.resolve(f"m@{vid[:short]}")
        with pytest.raises(RefNotFoundError):
            repo.resolve(vid[:short])
    assert repo.resolve(vid[:6]) == vid
    within = vid[: max(6, re.search("[a-f]", vid).end())]  # after '@', digits alone are a number
    assert repo.resolve(f"m@{within}") == vid
    for alias in ("latest", "v3", "V12", "42"):
        with pytest.raises(ModelHubError, match="reserved"):
            repo.tag("m@v1", alias)


def test_digits_after_the_at_are_never_an_id_prefix(tmp_path):
    """Even 6+ digits that begin an id read as a number after '@' (the issue's rule);
    the error names the version whose id they begin, and the bare prefix still works."""
    repo = Repository.init(tmp_path / "r")
    for k in range(400):  # P(no id among 400 begins with six digits) < 1e-10
        v = repo.commit({"w": torch.full((2,), float(k))}, "m")
        if v.id[:6].isdigit():
            break
    else:
        pytest.fail("no id began with six digits")
    digits = re.match(r"[0-9]+", v.id).group()
    with pytest.raises(RefNotFoundError, match=f"also begins the id of {v.ref}"):
        repo.resolve(f"m@{digits}")
    assert repo.resolve(digits) == v.id and repo.resolve(f"m@{v.id[:len(digits) + 1]}") == v.id


# --------------------------------------------------------------------- bad input
def test_dql_numbers_out_of_range_are_one_line(four, capsys):
    """Row: DQL m.version > 99999999999999999999999999999 and a huge limit: OverflowError
    traceback, 'internal error ... please report it'."""
    root, _ = four
    repo = Repository(root)
    assert repo.query("select m where m.version > 99999999999999999999999999999").refs == []
    for q in ("select m where m.name = \"m\" limit 99999999999999999999999",):
        with pytest.raises(DQLError) as info:
            repo.query(q)
        assert "internal error" not in str(info.value)
    code, _, err = cli(capsys, "--repo", root, "query", "select m limit 99999999999999999999999")
    assert code == 2 and "internal error" not in one_line_error(err)


@pytest.mark.parametrize(
    "setting",
    [{"keyframe_interval": -3}, {"keyframe_interval": "16"}, {"layout": "zigzag"}, {"context_coding": "yes"},
     {"delta": {"op": "none"}}, {"materialize": {"op": "none", "chunk_elems": 0}}, {"cold": "s3://b::file://x"},
     {"surprise": 1}, {"format": 2}],
)
def test_invalid_settings_are_refused_on_open(tmp_path, capsys, setting):
    """Row: keyframe_interval=-3 in modelhub.json was accepted silently."""
    root = tmp_path / "repo"
    Repository.init(root).commit(_sd(0), "m")
    cfg = json.loads((root / "modelhub.json").read_text())
    (root / "modelhub.json").write_text(json.dumps({**cfg, **setting}))
    key = next(iter(setting))
    with pytest.raises(FormatError, match=key):
        Repository(root)
    code, _, err = cli(capsys, "--repo", root, "list")
    assert code == 2 and key in one_line_error(err)


WRITER = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
    from modelhub_torch.cli import main
    sys.exit(main(["--repo", sys.argv[1], *sys.argv[3:]]))
    """
)


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and "index" not in p.parts)


def test_write_failure_mid_commit_is_one_line_and_changes_nothing(four, tmp_path):
    """Row: a write failing mid-commit (file size limit): OSError traceback."""
    root, _ = four
    big = tmp_path / "big.pt"
    torch.save({"w": torch.randn(400_000)}, big)
    before = _files(root)
    r = subprocess.run([sys.executable, "-c", WRITER, str(root), str(256 << 10), "commit", str(big), "--model", "m"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    line = one_line_error(r.stderr)
    assert "commit to 'm' failed" in line and "File too large" in line and "nothing was changed" in line
    assert _files(root) == before  # no temp file, no object, no ref
    repo = Repository(root)
    assert [v.ref for v in repo.versions("m")] == ["m@v1", "m@v2", "m@v3", "m@v4"]
    assert repo.verify() == []
    with pytest.raises(WriteFailedError) as info, repo.store.writes("commit to 'm'"):
        raise OSError(28, "No space left on device")
    assert isinstance(info.value, OSError) and "No space left on device" in str(info.value)


def test_write_failure_mid_archive_is_one_line_and_loses_nothing(tmp_path):
    """The same for archive, which rewrites every version: the one-line error, then
    every version loads bit-exact and verify is clean (gc takes what was written)."""
    root = tmp_path / "repo"
    repo = Repository.init(root)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(300_000, generator=g)
    expect = {}
    for k in range(4):
        w = w + 1e-3 * torch.randn(300_000, generator=g)
        repo.commit({"w": w}, "m")
        expect[f"m@v{k + 1}"] = {"w": w.clone()}
    repo.catalog.close()
    r = subprocess.run([sys.executable, "-c", WRITER, str(root), str(200 << 10), "archive", "--budget", "100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_line_error(r.stderr)
    assert "archive failed" in line and "File too large" in line
    _loads(root, expect, list(expect))
    repo = Repository(root)
    assert [p.kind for p in repo.verify() if p.damage] == []
    repo.gc()
    assert repo.verify() == []
    _loads(root, expect, list(expect))


KILLED = textwrap.dedent(
    """
    import sys, time, torch
    from modelhub_torch.repository import Repository
    repo = Repository(sys.argv[1])
    while True:
        t0 = time.perf_counter()
        repo.commit({"w": torch.randn(4_000_000), "v": torch.randn(4_000_000)}, "big")
        print(time.perf_counter() - t0, flush=True)
    """
)


def test_sigkill_leftovers_are_reported_and_collected(tmp_path, capsys):
    """Row: SIGKILL mid-commit left up to 400 MB in tmp/ that verify did not mention."""
    root = tmp_path / "repo"
    Repository.init(root)
    leftovers: list[str] = []
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", KILLED, str(root)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one commit done: kernels compiled, the next is under way
        deadline = time.monotonic() + 20
        while not os.listdir(root / "tmp") and time.monotonic() < deadline:
            time.sleep(0.0005)  # kill the moment an object is being streamed to tmp/
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        leftovers = os.listdir(root / "tmp")
        if leftovers:
            break
    assert leftovers, "no kill landed mid-write in ten tries"
    code, out, _ = cli(capsys, "--repo", root, "--json", "verify")
    doc = json.loads(out)
    temp = [p for p in doc["problems"] if p["kind"] == "temp-files"]
    assert len(temp) == 1 and temp[0]["damage"] is False and f"{len(leftovers)} files" in temp[0]["detail"]
    assert "modelhub gc" in temp[0]["action"]
    assert not [p for p in doc["problems"] if p["damage"]]
    code, out, _ = cli(capsys, "--repo", root, "--json", "gc")
    assert code == 0 and json.loads(out)["temp_files"] == len(leftovers)
    assert os.listdir(root / "tmp") == []
    assert Repository(root).verify() == []


def test_query_on_an_index_damaged_under_it_is_answered_from_a_rebuilt_one(four, monkeypatch):
    """Damage the open/list paths did not touch, found by a query: rebuilt, asked again."""
    root, _ = four
    repo = Repository(root)
    import modelhub_torch.dql.run as engine  # where Repository.query runs a select

    real, calls = engine.execute_select, {"n": 0}

    def damaged_once(conn, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real(conn, *a, **k)

    monkeypatch.setattr(engine, "execute_select", damaged_once)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        refs = repo.query("select m where m.metrics.k >= 2").refs
    assert refs == ["m@v3", "m@v4"] and calls["n"] == 2
    assert any("damaged" in str(w.message) for w in seen)


def test_integrity_check_runs_after_an_unclean_shutdown(four, monkeypatch):
    """A process that died with the index open leaves its marker: the next open checks
    the file (PRAGMA quick_check) and sets a damaged one aside; a clean open does not."""
    root, expect = four
    from modelhub_torch.store import catalog as catalog_mod

    checks = {"n": 0}
    real = catalog_mod.Catalog._check_integrity

    def counted(self):
        checks["n"] += 1
        return real(self)

    monkeypatch.setattr(catalog_mod.Catalog, "_check_integrity", counted)
    Repository(root)
    assert checks["n"] == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    marker = root / "index" / f"catalog.sqlite.open-{int(dead.stdout)}"
    marker.write_text("")
    repo = Repository(root)
    assert checks["n"] == 1 and not marker.exists()
    assert [v.ref for v in repo.versions("m")] == ["m@v1", "m@v2", "m@v3", "m@v4"]
    _loads(root, expect, ["m@v4"])


def test_gc_keeps_an_unlisted_version_nothing_leans_on_while_its_number_is_free(tmp_path, capsys):
    """A deleted ref of a version stored whole (nothing leans on it): gc keeps it while
    its number is free, verify says how to restore it; once the number is taken by a
    new commit (or after ORPHAN_EXPIRY), gc collects it."""
    root = tmp_path / "repo"
    repo = Repository.init(root)
    g = torch.Generator().manual_seed(1)
    sds = [{"w": torch.randn(2000, generator=g)} for _ in range(2)]  # unrelated: no deltas
    for sd in sds:
        repo.commit(sd, "m")
    vid = repo.resolve("m@v2")
    _ref_file(root, "m", 2).unlink()
    code, out, _ = cli(capsys, "--repo", root, "verify")
    assert code == 1 and "orphaned-version: m@v2" in out and "verify --repair' restores it as m@v2" in out
    assert Repository(root).gc()["orphan_refs"] == 0
    code, out, _ = cli(capsys, "--repo", root, "verify", "--repair")
    assert code == 0 and "restored as m@v2" in out
    assert_bit_equal(Repository(root).load("m@v2"), sds[1])
    # deleted again, then a new commit takes the number: the old one is garbage now
    _ref_file(root, "m", 2).unlink()
    repo = Repository(root)
    repo.commit({"w": torch.zeros(3)}, "m")
    assert repo.resolve("m@v2") != vid
    assert repo.gc()["orphan_refs"] == 1
    assert vid not in repo.refs.version_ids()
    assert repo.verify() == []
