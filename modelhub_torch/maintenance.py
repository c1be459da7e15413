"""verify, repair and gc: keep a repository whole, and never lose data tidying it.

A repository is untrusted and may be damaged (a deleted ref, a flipped byte, a
tampered index). The rules here:

- ``scan`` reads every ref and manifest without decoding tensors and says what is
  damaged, what is merely left over and which versions other versions need.
- ``gc`` deletes nothing while ``scan`` finds damage, and never an object that any
  kept manifest needs — a live version's, or an unlisted version's that a live one
  leans on (reverse deltas point at newer versions).
- ``verify`` adds the expensive checks (re-hash every object, decode every version) and
  the index check (the index is a cache: wrong rows are re-indexed on the spot);
  ``repair`` restores refs from manifests (refs carry nothing a manifest lacks) and
  moves what cannot be restored to ``quarantine/``, so the rest stays usable.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from modelhub_torch.errors import DamagedRepositoryError, ModelHubError
from modelhub_torch.manifest import DROPPED, Manifest
from modelhub_torch.reader import open_reader
from modelhub_torch.records import Problem
from modelhub_torch.store.catalog import Catalog, link_targets, row_disagreements
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.validate import is_object_id

QUARANTINE = "quarantine"
# how long gc keeps an unlisted version that nothing leans on while its number is free
# (git's gc.pruneExpire): a deleted ref can be restored ('verify --repair') until then
ORPHAN_EXPIRY = _dt.timedelta(days=14)
# on a location other processes write without a common lock, gc leaves alone what was
# written this recently (git's rule for loose objects): objects and refs of a commit
# or repack in flight look unreferenced until its refs land
REMOTE_GC_GRACE = _dt.timedelta(hours=1)
REPAIR = "run 'modelhub verify --repair'"


def stats(store: RepoStore) -> dict[str, Any]:
    """Raw vs stored bytes for the whole repository, per model and per plane."""
    store.sync_index()
    rows = [Catalog.decode_row(r) for r in store.catalog.rows()]
    per_model: dict[str, dict[str, int]] = {}
    for r in rows:
        pm = per_model.setdefault(r["model"], {"versions": 0, "raw_bytes": 0, "stored_bytes": 0})
        pm["versions"] += 1
        pm["raw_bytes"] += r["raw_bytes"]
        pm["stored_bytes"] += r["stored_bytes"]
    raw = sum(r["raw_bytes"] for r in rows)
    stored = sum(r["stored_bytes"] for r in rows)
    return {
        "versions": len(rows),
        "models": len(per_model),
        "raw_bytes": raw,
        "stored_bytes": stored,
        "ratio": raw / stored if stored else None,
        "planes": store.catalog.plane_totals(),
        "per_model": per_model,
    }


def _problem(kind: str, subject: str, detail: str, damage: bool = True, action: str = "") -> Problem:
    return Problem(kind, subject, detail, damage, action)


@dataclass
class Scan:
    """What the refs and manifests of a repository say, read without decoding tensors."""

    live: dict[str, str] = field(default_factory=dict)  # version id -> "model@vN"
    manifests: dict[str, Manifest] = field(default_factory=dict)  # every readable one
    manifest_oids: dict[str, str] = field(default_factory=dict)
    orphans: set[str] = field(default_factory=set)  # present, but no numbered ref
    needed: set[str] = field(default_factory=set)  # orphans that kept versions lean on
    bad: dict[str, str] = field(default_factory=dict)  # live ref -> why it cannot be read
    problems: list[Problem] = field(default_factory=list)

    @property
    def damaged(self) -> list[Problem]:
        return [p for p in self.problems if p.damage]

    def kept(self) -> set[str]:
        """Versions whose objects must stay: live ones and the orphans they need."""
        return set(self.live) | self.needed


def scan(store: RepoStore) -> Scan:
    s = Scan()
    _scan_refs(store, s)
    _scan_manifests(store, s)
    _scan_links(s)
    _scan_objects(store, s)
    _scan_tags(store, s)
    temps = _temp_files(store)
    if temps:
        size = sum(_size(store, f"tmp/{t}") for t in temps)
        s.problems.append(_problem(
            "temp-files", "tmp/", f"{len(temps)} files ({size:,} bytes) left by interrupted writes",
            damage=False, action="'modelhub gc' removes them",
        ))
    return s


def _temp_files(store: RepoStore) -> list[str]:
    """Leftovers of interrupted writes in tmp/; writers never name one with a leading
    dot, so a ``.keep`` (an empty folder's placeholder in a git checkout) is not one."""
    return [t for t in store.loc.listdir("tmp") if not t.startswith(".")]


def _size(store: RepoStore, rel: str) -> int:
    try:
        return store.loc.size(rel)
    except OSError:
        return 0


def _scan_refs(store: RepoStore, s: Scan) -> None:
    damaged: dict[str, str] = {}
    for model in store.refs.models():
        for n, vid in store.refs.numbers(model, damaged).items():
            ref = f"{model}@v{n}"
            if vid in s.live:
                s.problems.append(_problem("duplicate-ref", ref, f"names the same version as {s.live[vid]}",
                                           action=REPAIR))
                continue
            s.live[vid] = ref
    for path, why in damaged.items():
        s.problems.append(_problem("damaged-ref", path, why, action=REPAIR))


def _scan_manifests(store: RepoStore, s: Scan) -> None:
    for vid in sorted(set(store.refs.version_ids()) | set(s.live)):
        ref = s.live.get(vid, vid)
        try:
            moid = store.refs.manifest_of(vid)
        except ModelHubError as exc:
            s.problems.append(_problem("damaged-ref", f"refs/versions/{vid}", str(exc), action=REPAIR))
            s.bad[ref] = str(exc)
            continue
        if moid is None:
            if vid not in s.live:
                continue  # a name in refs/versions/ with no ref file in it: nothing to keep
            s.problems.append(_problem("missing-manifest-ref", ref, "refs/versions entry missing", action=REPAIR))
            s.bad[ref] = "no manifest ref"
            continue
        s.manifest_oids[vid] = moid
        try:
            m = store.manifest(vid)
        except ModelHubError as exc:
            if not store.objects.exists(moid):
                s.problems.append(_problem("missing-object", moid, f"the manifest of {ref}; referenced but absent",
                                           action=REPAIR))
            elif not store.objects.check(moid):
                s.problems.append(_problem("corrupt-object", moid, f"the manifest of {ref}; bytes do not hash "
                                           "to the name", action=REPAIR))
            else:
                s.problems.append(_problem("bad-manifest", ref, str(exc), action=REPAIR))
            s.bad[ref] = str(exc)
            continue
        if vid in s.live and m.ref != s.live[vid]:
            s.problems.append(_problem("ref-mismatch", s.live[vid], f"its manifest says it is {m.ref}",
                                       action=REPAIR))
            s.bad[ref] = f"manifest says {m.ref}"
            continue
        s.manifests[vid] = m
        if vid not in s.live:
            s.orphans.add(vid)


def _scan_links(s: Scan) -> None:
    """Orphans a kept version leans on (transitively) are needed: never collected."""
    todo = [v for v in s.live if v in s.manifests]
    seen = set(todo)
    while todo:
        vid = todo.pop()
        for target in sorted(link_targets(s.manifests[vid])):
            if target not in s.manifests:
                if target in s.live or any(p.subject == target for p in s.problems):
                    continue  # already reported as unreadable
                s.problems.append(_problem(
                    "broken-link", s.live.get(vid, vid), f"needs version {target}, whose manifest is gone",
                    action=REPAIR,
                ))
                continue
            if target in s.orphans:
                s.needed.add(target)
            if target not in seen:
                seen.add(target)
                todo.append(target)
    for vid in sorted(s.orphans):
        m = s.manifests[vid]
        slot_free = repo_slot_free(s, m)
        if vid in s.needed:
            users = sum(1 for v in s.live if v in s.manifests and vid in link_targets(s.manifests[v]))
            s.problems.append(_problem(
                "orphaned-version", f"{m.ref} ({vid})",
                f"its ref refs/models/{m.model}/{m.number} is gone, but other versions lean on it "
                f"({users} directly)", action=REPAIR + " to restore the ref",
            ))
        else:
            s.problems.append(_problem(
                "orphaned-version", f"{m.ref} ({vid})",
                "not listed: a commit interrupted before its commit point, or a deleted ref",
                damage=False,
                action=(f"'modelhub verify --repair' restores it as {m.ref}; 'modelhub gc' keeps it "
                        f"until {m.ref} is taken or for {ORPHAN_EXPIRY.days} days")
                if slot_free else "'modelhub gc' removes it (its number is taken)",
            ))


def repo_slot_free(s: Scan, m: Manifest) -> bool:
    return m.ref not in set(s.live.values())


def _scan_objects(store: RepoStore, s: Scan) -> None:
    # remote: one listing instead of a request (or two) per object; an object the
    # listing lacks is asked for again (it may have been written since)
    listed = None if store.loc.is_local else set(store.objects)

    def exists(oid: str) -> bool:
        return (listed is not None and oid in listed) or store.objects.exists(oid)

    for vid in sorted(s.kept()):
        m = s.manifests.get(vid)
        if m is None:
            continue
        for oid in sorted(m.local_objects()):
            if not exists(oid):
                s.problems.append(_problem("missing-object", oid, f"{s.live.get(vid, m.ref)} needs it",
                                           action=REPAIR))
                s.bad.setdefault(s.live.get(vid, m.ref), f"object {oid} is missing")


def _scan_tags(store: RepoStore, s: Scan) -> None:
    for model in store.refs.models():
        damaged: dict[str, str] = {}
        for alias, vid in store.refs.tags(model, damaged).items():
            if vid not in s.live:
                s.problems.append(_problem("dangling-tag", f"{model}@{alias}", f"points at {vid}, no listed version",
                                           action=REPAIR))
        for path, why in damaged.items():
            s.problems.append(_problem("damaged-ref", path, why, action=REPAIR))


# ------------------------------------------------------------------------ verify
def verify(store: RepoStore, rebuild_index: bool = False, repair: bool = False,
           progress: bool = False) -> list[Problem]:
    """Every problem of the repository: refs, manifests, objects (re-hashed), every
    version decoded, leftovers and the index; ``repair`` fixes what it can."""
    from tqdm.auto import tqdm

    s = scan(store)
    problems = list(s.problems)
    referenced: dict[str, str] = {}
    for vid in s.kept():
        if vid in s.manifests:
            referenced[s.manifest_oids[vid]] = s.live.get(vid, vid)
            for oid in s.manifests[vid].local_objects():
                referenced.setdefault(oid, s.live.get(vid, vid))
    for oid in tqdm(sorted(referenced), desc="objects", disable=not progress, unit="obj"):
        if store.objects.exists(oid) and not store.objects.check(oid):
            problems.append(_problem("corrupt-object", oid, "bytes do not hash to the name", action=REPAIR))
            s.bad.setdefault(referenced[oid], f"object {oid} is corrupt")
    undecodable = _decode_all(store, s, progress)
    problems += undecodable
    if repair:
        problems = _repair(store, s, problems)
    problems += _check_index(store, rebuild_index or repair)
    return problems


def _decode_all(store: RepoStore, s: Scan, progress: bool) -> list[Problem]:
    """Decode every live version, newest first through one reader: reverse deltas point
    at newer versions, so each base is decoded (and its digest checked) once."""
    from tqdm.auto import tqdm

    out = []
    reader = open_reader(store)
    reader.complete = None  # verify checks what is here: it never fetches missing planes

    def newest_first(kv: tuple[str, str]) -> tuple[str, int]:
        model, _, n = kv[1].rpartition("@v")
        return model, -int(n)

    live = [(v, r) for v, r in s.live.items() if v in s.manifests and r not in s.bad]
    for vid, ref in tqdm(sorted(live, key=newest_first), desc="versions", disable=not progress, unit="ver"):
        try:
            m = s.manifests[vid]
            for i, rec in enumerate(m.tensors):
                if rec["data"]["kind"] != DROPPED and not reader.lacks_planes(vid, i):
                    reader.decode(vid, i)
        except ModelHubError as exc:
            out.append(_problem("undecodable-version", ref, str(exc), action=REPAIR))
            s.bad[ref] = str(exc)
    return out


def _check_index(store: RepoStore, rebuild: bool) -> list[Problem]:
    """The index is a cache: a damaged file or a row that disagrees with the refs and
    manifests is reported and fixed on the spot."""
    out = []
    cat = store.catalog
    broken = cat.integrity_problems()
    if broken:
        out.append(_problem("index-damaged", cat.path, "; ".join(broken)[:200], damage=False,
                            action="set aside and rebuilt"))
        cat.recover(sqlite3.DatabaseError("; ".join(broken)[:200]))
    if rebuild:
        cat.clear()
        store.damaged.clear()
    store.sync_index()
    live: dict[str, str] = {}
    for model in store.refs.models():
        for n, vid in store.refs.numbers(model).items():
            live[vid] = f"{model}@v{n}"
    for (model, n), vid in cat.numbered().items():
        if live.get(vid) != f"{model}@v{n}":
            out.append(_problem("index-stale", f"{model}@v{n}", "the index lists a version the refs do not",
                                damage=False, action="removed from the index"))
            cat.remove([vid])
    for vid, ref in live.items():
        if ref in store.damaged:
            continue
        try:
            m = store.manifest(vid)
            moid = store.refs.manifest_of(vid)
        except ModelHubError:
            continue
        row = cat.row(vid)
        wrong = row_disagreements(row, m, moid) if row is not None else ["missing"]
        if wrong:
            if not rebuild:
                out.append(_problem("index-mismatch", ref, f"the index disagreed with the manifest: {', '.join(wrong)}",
                                    damage=False, action="re-indexed"))
            store.index(vid)
    return out


# ------------------------------------------------------------------------ repair
def _repair(store: RepoStore, s: Scan, problems: list[Problem]) -> list[Problem]:
    """Restore refs from manifests; quarantine versions that cannot be restored."""
    out = [p for p in problems if not p.damage]
    by_ref = _manifests_on_disk(store, s) if any(p.kind in ("damaged-ref", "missing-manifest-ref", "bad-manifest")
                                              for p in problems) else {}
    restored: set[str] = set()
    with store.lock:
        # 1. orphans: their numbered ref comes back where the slot is free
        for vid in sorted(s.orphans):
            m = s.manifests[vid]
            if repo_slot_free(s, m) and store.refs.version_at_or_none(m.model, m.number) is None:
                store.refs.set_number(m.model, m.number, vid)
                s.live[vid] = m.ref
                restored.add(m.ref)
                out.append(_problem("orphaned-version", f"{m.ref} ({vid})", "its ref was gone",
                                    damage=False, action=f"restored as {m.ref}"))
        # 2. versions whose manifest ref is damaged or gone: a complete manifest of
        # the same version found among the objects takes its place
        for vid, ref in list(s.live.items()):
            if ref in s.bad and vid in by_ref:
                store.refs.set_manifest(vid, by_ref[vid])
                store.invalidate(vid)
                s.bad.pop(ref)
                restored.add(ref)
                out.append(_problem("damaged-ref", f"refs/versions/{vid}", "pointed at no usable manifest",
                                    damage=False, action=f"restored {ref} from manifest {by_ref[vid][:12]}"))
        # 3. damaged numbered refs: a manifest claiming that slot restores it
        claims = {m.ref: vid for vid, m in s.manifests.items()}
        for p in problems:
            if p.kind == "damaged-ref" and p.subject.startswith("refs/models/"):
                model, n = p.subject.split("/")[2:4]
                vid = claims.get(f"{model}@v{n}")
                if vid is not None and s.live.get(vid) == f"{model}@v{n}":
                    continue  # restored above, as an unlisted version claiming this number
                if vid is not None and vid not in s.live:
                    store.refs.set_number(model, int(n), vid)
                    s.live[vid] = f"{model}@v{n}"
                    restored.add(f"{model}@v{n}")
                    out.append(_problem("damaged-ref", p.subject, "garbage in a numbered ref", damage=False,
                                        action=f"restored {model}@v{n} from its manifest"))
                else:
                    out.append(_quarantine(store, [p.subject], p, "no manifest claims this version"))
        # 4. what is still damaged goes to quarantine, with the tags pointing at it
        for ref, why in sorted(s.bad.items()):
            if ref in restored:
                continue
            vid = next((v for v, r in s.live.items() if r == ref), ref)
            paths = [f"refs/versions/{vid}"]
            if "@v" in ref:
                model, _, n = ref.rpartition("@v")
                paths.append(f"refs/models/{model}/{n}")
            out.append(_quarantine(store, paths, _problem("damaged-version", ref, why), "it cannot be restored"))
        for p in problems:
            if p.kind in ("dangling-tag",) or (p.kind == "damaged-ref" and p.subject.startswith("refs/tags/")):
                path = p.subject if p.subject.startswith("refs/") else "refs/tags/" + p.subject.replace("@", "/", 1)
                out.append(_quarantine(store, [path], p, "it names no listed version"))
        for p in problems:
            if p.kind in ("broken-link", "missing-object", "corrupt-object", "duplicate-ref", "ref-mismatch") \
                    and not any(q.subject == p.subject for q in out):
                out.append(_problem(p.kind, p.subject, p.detail, damage=False,
                                    action="the versions it affects were quarantined"))
    store.damaged.clear()
    store.invalidate_all()
    return out


def _quarantine(store: RepoStore, paths: Iterable[str], p: Problem, why: str) -> Problem:
    """Move refs out of the repository's namespace (kept under quarantine/ with a note)
    so the rest of the repository works; nothing is deleted."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    moved = []
    for path in paths:
        if store.loc.exists(path):
            store.loc.move(path, f"{QUARANTINE}/{stamp}/{path}")
            moved.append(path)
    note = f"{p.kind}: {p.subject}: {p.detail}\nmoved here by 'modelhub verify --repair' because {why}\n"
    store.loc.write_atomic(f"{QUARANTINE}/{stamp}/NOTES-{abs(hash(p.subject)) % 10**8}.txt", note.encode())
    return _problem(p.kind, p.subject, p.detail, damage=False,
                    action=f"quarantined ({', '.join(moved) or 'nothing left to move'} -> {QUARANTINE}/{stamp}/)")


def _manifests_on_disk(store: RepoStore, s: Scan) -> dict[str, str]:
    """Version id -> a manifest object among the objects whose every pack exists and
    whose links resolve (a replaced layout that gc has not collected still decodes)."""
    found: dict[str, str] = {}
    for oid in store.objects:
        try:
            if store.objects.size(oid) > 64 << 20:
                continue
            m = Manifest.from_bytes(store.objects.get(oid), where=f"object {oid}")
        except (ModelHubError, OSError):
            continue
        if all(store.objects.exists(o) for o in m.objects()) and m.id not in found:
            found[m.id] = oid
    return found


# ---------------------------------------------------------------------------- gc
def gc(store: RepoStore, dry_run: bool = False, grace: _dt.timedelta | None = None) -> dict[str, Any]:
    """Delete objects no kept manifest needs, temp files and orphan refs no kept
    version needs — and nothing at all while the repository is damaged.

    ``grace``: what was written more recently is kept even if nothing names it yet.
    Default: none on a local disk (gc holds the lock every writer takes) and
    ``REMOTE_GC_GRACE`` where other processes may be committing or repacking at the
    same time (their new objects are unreferenced until their refs land)."""
    if grace is None:
        grace = _dt.timedelta(0) if store.lock.across_processes else REMOTE_GC_GRACE
    cutoff = _dt.datetime.now(_dt.timezone.utc).timestamp() - grace.total_seconds()

    def old(mtime: float | None) -> bool:  # unknown write times count as recent
        return not grace or (mtime is not None and mtime < cutoff)

    with store.lock:
        s = scan(store)
        if s.damaged:
            first = s.damaged[0]
            raise DamagedRepositoryError(
                f"gc deletes nothing while the repository is damaged ({len(s.damaged)} problems, first: "
                f"{first.kind} {first.subject}); run 'modelhub verify' to see them and "
                "'modelhub verify --repair' to fix them, then gc"
            )
        orphans = sorted(v for v in s.orphans - s.needed if _expired(s, v, grace))
        keep: set[str] = set()
        for vid in s.kept() | (s.orphans - set(orphans)):
            keep.add(s.manifest_oids[vid])
            keep.update(s.manifests[vid].objects())
        keep |= _quarantined_objects(store)
        removed = freed = 0
        for oid, mtime in list(store.objects.with_mtimes()):
            if oid not in keep and old(mtime):
                freed += store.objects.size(oid)
                removed += 1
                if not dry_run:
                    store.objects.delete(oid)
        temps = [f"tmp/{t}" for t in _temp_files(store)]
        if grace:  # another process's upload in flight may be there
            temps = [rel for rel, mtime in store.loc.walk_mtimes("tmp") if old(mtime) and rel in temps]
        if not dry_run:
            for v in orphans:
                store.refs.delete_version(v)
            for t in temps:
                store.loc.delete(t)
        return {"objects_removed": removed, "bytes_freed": freed, "orphan_refs": len(orphans),
                "temp_files": len(temps)}


def _age(m: Manifest) -> _dt.timedelta | None:
    try:
        created = _dt.datetime.fromisoformat(m.created_at)
    except (TypeError, ValueError):
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=_dt.timezone.utc)
    return _dt.datetime.now(_dt.timezone.utc) - created


def _expired(s: Scan, vid: str, grace: _dt.timedelta = _dt.timedelta(0)) -> bool:
    """An unlisted version nothing leans on may go once another version took its number
    (what a commit killed before its commit point leaves, once the next commit ran) or
    once it is older than ORPHAN_EXPIRY; until then 'verify --repair' can restore it.
    Never within ``grace`` of its creation (a racing commit moving to the next number
    leaves such a version for a moment)."""
    m = s.manifests[vid]
    age = _age(m)
    if grace and (age is None or age < grace):
        return False
    if not repo_slot_free(s, m):
        return True
    return age is not None and age > ORPHAN_EXPIRY


def _quarantined_objects(store: RepoStore) -> set[str]:
    """Objects that quarantined versions name: kept, so an expert can still look."""
    out: set[str] = set()
    for rel in store.loc.walk_files(QUARANTINE):
        if "/refs/versions/" not in rel.replace("\\", "/"):
            continue
        try:
            oid = store.loc.read(rel).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if is_object_id(oid):
            out.add(oid)
            try:
                out.update(Manifest.from_bytes(store.objects.get(oid)).objects())
            except ModelHubError:
                pass
    return out
