"""``archive``: re-plan how a whole repository is stored (the paper's PAS storage plan).

Steps, all under the repository lock: measure the matrix storage graph (``graph.py``)
with a calibrated recreation model (``costs.py``); give every snapshot the budget
``alpha x`` its shortest-path recreation cost; solve (``pas/planner.py``); write every
version's new manifest and packs (``rewrite.py``); commit through one journal file
(``store/switch.py``); switch the refs; delete what only the old layout used. A crash
before the journal leaves the old layout (plus garbage ``gc`` removes); after it, the
next open finishes the switch.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from modelhub_torch.archive.costs import DecodeModel
from modelhub_torch.archive.graph import GraphBuilder, RepoGraph
from modelhub_torch.archive.rewrite import Rewriter
from modelhub_torch.errors import ModelHubError
from modelhub_torch.pas import lossy as lossy_mod
from modelhub_torch.pas.codec import RepoCodecs
from modelhub_torch.pas.planner import ALGORITHMS, SCHEMES, Plan, solve
from modelhub_torch.publish import apply_switch
from modelhub_torch.reader import open_reader
from modelhub_torch.resolution import resolve
from modelhub_torch.store.lease import held_leases
from modelhub_torch.store.objects import ObjectStore
from modelhub_torch.store.repo import RepoStore

# on a shared remote, archive holds every model's repack lease while it re-plans (a
# repack switching a version meanwhile could close a cycle of deltas with the plan);
# long, as archive does not renew them: a crashed archive blocks repacks this long
ARCHIVE_LEASE_SECONDS = 6 * 3600.0

__all__ = ["ArchiveReport", "archive", "plan_repository"]


@dataclass(frozen=True)
class ArchiveReport:
    """What an archive did, with the figures ``modelhub archive`` prints."""

    algorithm: str
    scheme: str
    alpha: float
    versions: int
    matrices: int
    edges: int
    stored_before: int  # bytes of manifests and packs, both tiers
    stored_after: int
    cold_after: int  # of stored_after, bytes in the cold tier
    planned_storage: float  # the plan's storage cost (cold bytes weighted by cold_price)
    mst_storage: float
    spt_storage: float
    recreation_mean_s: float  # modelled snapshot recreation under the plan
    recreation_max_s: float
    spt_recreation_mean_s: float
    spt_recreation_max_s: float
    feasible: bool
    lossy: dict[str, str] = field(default_factory=dict)  # ref -> scheme
    seconds: float = 0.0
    dry_run: bool = False
    decode_model: dict[str, float] = field(default_factory=dict)
    cold_before: int = 0  # of stored_before, bytes in the cold tier

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_repository(
    store: RepoStore,
    *,
    alpha: float = 2.0,
    scheme: str = "independent",
    algorithm: str = "pas-mt",
    lossy: dict[str, str] | None = None,
    cold: ObjectStore | None = None,
    hot_planes: int = 2,
    cold_price: float = 0.25,
    sample_bytes: int = 4 << 20,
    decode_model: DecodeModel | None = None,
) -> tuple[RepoGraph, Plan, Plan, Plan, DecodeModel]:
    """Measure the storage graph and solve it (no writes): ``(graph, plan, spt, mst, model)``.
    ``cold``: the cold tier's store, when edges may place planes there."""
    if scheme not in SCHEMES:
        raise ModelHubError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if algorithm not in ALGORITHMS:
        raise ModelHubError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if not (alpha >= 1.0):
        raise ModelHubError(f"the budget factor alpha must be >= 1 (1 = every snapshot at its fastest), got {alpha}")
    if hot_planes < 1:
        raise ModelHubError(f"hot_planes must be at least 1, got {hot_planes}")
    order = [
        vid
        for model in sorted(store.refs.models())
        for _, vid in sorted(store.refs.numbers(model).items())
    ]
    if not order:
        raise ModelHubError(f"{store.url} holds no versions; there is nothing to archive")
    manifests = {vid: store.manifest(vid) for vid in order}
    schemes: dict[str, lossy_mod.LossyScheme] = {}
    for ref, text in (lossy or {}).items():
        schemes[resolve(store, ref)] = lossy_mod.parse_scheme(text)
    if decode_model is None:
        c = RepoCodecs.from_settings(store.settings)
        decode_model = DecodeModel.calibrate(store.objects, c.materialize, c.delta, cold)
    elif cold is not None and not decode_model.cold_read_Bps:
        raise ModelHubError("the decode model given has no cold-tier figures; calibrate it with the cold store")
    reader = open_reader(store)
    builder = GraphBuilder(
        store, reader, decode_model, lossy=schemes, cold=cold is not None, hot_planes=hot_planes,
        cold_price=cold_price, sample_bytes=sample_bytes,
    )
    rg = builder.build(manifests, order)
    spt = solve(rg.graph, algorithm="spt", scheme=scheme)
    mst = solve(rg.graph, algorithm="mst", scheme=scheme)
    budgets = {g: alpha * c for g, c in spt.group_costs.items()}
    # LAST knows no groups: epsilon = alpha - 1 bounds every tensor's path by alpha x its
    # shortest, hence every snapshot by alpha x its fastest (the paper's comparison)
    plan = spt if algorithm == "spt" else solve(
        rg.graph, budgets, scheme=scheme, algorithm=algorithm, epsilon=alpha - 1.0
    )
    return rg, plan, spt, mst, decode_model


def archive(
    store: RepoStore,
    *,
    alpha: float = 2.0,
    scheme: str = "independent",
    algorithm: str = "pas-mt",
    lossy: dict[str, str] | None = None,
    cold: str | None = None,
    hot_planes: int = 2,
    cold_price: float = 0.25,
    sample_bytes: int = 4 << 20,
    dry_run: bool = False,
    decode_model: DecodeModel | None = None,
) -> ArchiveReport:
    """Re-plan the whole repository's storage; see ``Repository.archive``."""
    t0 = time.perf_counter()
    with store.lock, held_leases(store.loc, store.refs.models(), not store.lock.across_processes, "archive",
                                 seconds=ARCHIVE_LEASE_SECONDS):
        store.sync_index()
        cold_store = store.objects.cold
        if cold is not None:
            cold_store = _cold_store(store, cold, record=not dry_run)
        before = _stored(store)
        rg, plan, spt, mst, model = plan_repository(
            store, alpha=alpha, scheme=scheme, algorithm=algorithm, lossy=lossy,
            cold=cold_store,
            hot_planes=hot_planes, cold_price=cold_price, sample_bytes=sample_bytes, decode_model=decode_model,
        )
        cold_before = sum(store.manifest(v).cold_bytes() for v in rg.order)
        if not dry_run:
            reader = open_reader(store)
            new = Rewriter(store, reader, rg, plan, hot_planes).run()
            _switch(store, new)
        after = _stored(store) if not dry_run else before
        cold_after = sum(store.manifest(v).cold_bytes() for v in rg.order) if not dry_run else cold_before
    costs = list(plan.group_costs.values())
    spt_costs = list(spt.group_costs.values())
    return ArchiveReport(
        algorithm=algorithm, scheme=scheme, alpha=alpha, versions=len(rg.order), matrices=len(rg.graph),
        edges=len(rg.graph.edges), stored_before=before, stored_after=after, cold_after=cold_after, cold_before=cold_before,
        planned_storage=plan.storage_cost, mst_storage=mst.storage_cost, spt_storage=spt.storage_cost,
        recreation_mean_s=statistics.fmean(costs), recreation_max_s=max(costs),
        spt_recreation_mean_s=statistics.fmean(spt_costs), spt_recreation_max_s=max(spt_costs),
        feasible=plan.feasible, lossy={rg.manifests[v].ref: text for v, text in _lossy_refs(store, lossy).items()},
        seconds=time.perf_counter() - t0, dry_run=dry_run, decode_model=model.to_json(),
    )


def _lossy_refs(store: RepoStore, lossy: dict[str, str] | None) -> dict[str, str]:
    return {resolve(store, ref): text for ref, text in (lossy or {}).items()}


def _stored(store: RepoStore) -> int:
    return sum(r["stored_bytes"] for r in store.catalog.rows())


def _cold_store(store: RepoStore, url: str, record: bool) -> ObjectStore:
    """The cold tier at ``url``, recorded in the settings (before any object is written
    there) unless ``record`` is false (a dry run)."""
    loc = store.location_for(url)  # the repository's storage options on the same kind of store
    have = store.settings.get("cold")
    if have and store.location_for(have).url != loc.url:
        raise ModelHubError(
            f"{store.url} already keeps its cold tier at {have}; a repository has one cold tier: "
            f"archive with --cold {have} (or without --cold, which keeps using it)"
        )
    if loc.url == store.loc.url:
        raise ModelHubError("the cold tier must be another location than the repository itself")
    loc.makedirs("tmp")  # the calibration probe goes there
    cold_objects = ObjectStore(loc)
    if record:
        loc.makedirs("objects")
        if not have:
            store.update_settings(cold=loc.url)
        store.objects.cold = cold_objects
    return cold_objects


def _switch(store: RepoStore, new: list) -> None:
    """New manifests in, journal written (the commit point), refs switched, old objects out."""
    from modelhub_torch.store.switch import write_switch

    store.record_features(new)
    mapping = {m.id: store.objects.put(m.to_bytes()) for m in new}
    write_switch(store.loc, mapping, "archive")
    apply_switch(store, mapping)
