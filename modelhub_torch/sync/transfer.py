"""One transfer between two stores: negotiate, then per version encode thin, receive,
publish; aliases last.

Each version is published on its own (under the destination's lock), so an
interrupted transfer leaves every version either fully there or absent, and running
it again sends only the versions still missing. Frames of a version cut short stay
unreferenced in the destination until its ``gc``.
"""

from __future__ import annotations

import time

from modelhub_torch.errors import ModelHubError
from modelhub_torch.progress import byte_bar
from modelhub_torch.reader import open_reader
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.sync.negotiate import Destination, plan
from modelhub_torch.sync.receive import fits
from modelhub_torch.sync.report import SyncReport
from modelhub_torch.sync.sinks import sink_for
from modelhub_torch.sync.thin import encode_thin
from modelhub_torch.sync.tracking import last_tags, remember_tags


def transfer(
    src: RepoStore,
    dst: RepoStore,
    refs: list[str] | None = None,
    planes: int | None = None,
    progress: bool = False,
    local: RepoStore | None = None,
) -> SyncReport:
    """Copy the versions ``refs`` names (default: all) from ``src`` to ``dst``.
    ``local``: the side running the transfer (``src`` for a push, ``dst`` for a pull),
    which remembers the aliases it saw on the other side (tracking.py)."""
    if planes is not None and (not isinstance(planes, int) or isinstance(planes, bool) or planes < 1):
        raise ModelHubError(f"planes must be a positive number of byte planes, got {planes!r}")
    if src.url == dst.url:
        raise ModelHubError(f"source and destination are the same repository ({src.url})")
    started = time.perf_counter()
    report = SyncReport(source=src.url, destination=dst.url, planes=planes)
    src.sync_index()
    dst.sync_index()
    local = local or dst
    other = src if local is dst else dst
    todo = plan(src, dst, refs, planes, last_tags(local, other.url))
    report.skipped = list(todo.skipped)
    reader = open_reader(src, cache_bytes=256 << 20)  # a parent decoded as base is reused as the next version
    state = Destination(dst)
    sink = sink_for(dst)
    from modelhub_torch.hub.fs import is_hub
    from modelhub_torch.hub.packs import fetch_pack

    packer = src.loc.fs.client if planes is not None and is_hub(src) else None
    held = set(dst.refs.version_ids()) if packer is not None else set()  # what a partial may lean on
    sent: set[str] = set()
    raw = sum(src.manifest(w.vid).raw_bytes for w in todo.wants)
    bar = byte_bar(raw, f"{'pull' if dst.loc.is_local else 'push'} to {dst.url}", progress)
    try:
        for want in todo.wants:

            def linkable(vid: str) -> bool:
                return vid in sent or (state.holds(vid) if planes is not None else state.complete(vid))

            def encode(target, want=want, linkable=linkable):
                if packer is not None:  # a hub cuts the planes where the data is (hub/packs.py)
                    return fetch_pack(packer, src.url, target, want.vid, want.model, want.number,
                                      want.base, sent | held, planes)
                return encode_thin(src, reader, target, want.vid, want.base, linkable, planes,
                                   fits=lambda wire: fits(dst, wire))

            thin, landed = sink.put_version(encode, f"receiving {want.model}@v{want.number}")
            sent.add(want.vid)
            report.versions.append(landed.ref)
            if thin.partial:
                report.partial.append(landed.ref)
            report.objects += thin.objects + 1
            report.bytes += landed.moved
            bar.update(landed.raw_bytes)
        if todo.tags:
            for model, alias, vid, before in todo.tags:
                sink.move_tag(model, alias, vid, before)
                report.tags.append(f"{model}@{alias}")
        seen = {f"{m}@{a}": v for m in {w.model for w in todo.wants} | {t[0] for t in todo.tags}
                for a, v in src.refs.tags(m).items()}
        if seen:
            remember_tags(local, other.url, {**last_tags(local, other.url), **seen})
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report
