"""Where a transfer writes: a repository it can write itself (a path, a bucket), or a
hub, which receives each version through its API and checks it as its own receiver.

A sink takes one thin version at a time (``put_version``) and the aliases to move
(``move_tag``). For a hub the frames are coded into an in-memory staging store, the
objects the hub lacks are uploaded in batches (one request per about 64 MiB, never one
per tensor), then the manifest: the hub decodes every tensor against its digest before
the version becomes visible, exactly as sync/receive.py does here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelhub_torch.errors import ConflictError, DivergedError, HubRequestError
from modelhub_torch.store.location import Location
from modelhub_torch.store.objects import ObjectStore
from modelhub_torch.store.refs import check_alias
from modelhub_torch.store.repo import RepoStore
from modelhub_torch.sync.receive import receive
from modelhub_torch.sync.thin import ThinVersion


@dataclass
class Landed:
    """A version as the destination stored it."""

    ref: str
    raw_bytes: int
    moved: int  # bytes written to the destination: frames the hub lacked, and the manifest


Encode = Callable[[Any], ThinVersion]  # codes the version into a target (.settings, .objects)


class StoreSink:
    """A destination this process writes itself, under its lock."""

    def __init__(self, dst: RepoStore):
        self.dst = dst

    def put_version(self, encode: Encode, what: str) -> tuple[ThinVersion, Landed]:
        dst = self.dst
        with dst.lock, dst.writes(what):
            thin = encode(dst)
            try:
                stored, manifest_bytes = receive(dst, thin.manifest, checked=thin.checked)
            except BaseException:
                for oid in thin.manifest.objects():
                    dst.objects.delete(oid)
                raise
        return thin, Landed(stored.ref, stored.raw_bytes, thin.bytes + manifest_bytes)

    def move_tag(self, model: str, alias: str, vid: str, before: str | None) -> None:
        """Compare-and-swap an alias: one moved at the destination since the plan is
        not overwritten (unless it already points where this transfer wanted it)."""
        dst = self.dst
        with dst.lock, dst.writes("moving aliases"):
            try:
                dst.refs.set_tag(model, check_alias(alias), vid, expect=before)
            except ConflictError:
                if dst.refs.tags(model).get(alias) != vid:
                    raise _moved(model, alias, dst.url) from None


class Staging:
    """What encode_thin writes into for a hub: the hub's settings, objects in memory,
    packs salted by version and base (the same transfer coded again is the same
    objects: a push cut short resends only what did not arrive)."""

    stable_packs = True

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.loc = Location(f"memory://modelhub-staging/{uuid.uuid4().hex}")
        self.objects = ObjectStore(self.loc)

    def drop(self) -> None:
        try:
            self.loc.fs.rm(self.loc.root, recursive=True)
        except FileNotFoundError:
            pass


class HubSink:
    """A hub: the objects it lacks uploaded (so a push cut short resends only what did
    not arrive), then the manifest, which the hub checks and publishes."""

    def __init__(self, dst: RepoStore):
        self.dst = dst
        self.client = dst.loc.fs.client

    def put_version(self, encode: Encode, what: str) -> tuple[ThinVersion, Landed]:
        staging = Staging(self.dst.settings)
        try:
            thin = encode(staging)
            m = thin.manifest
            wanted = sorted(m.objects())
            missing = set(self.client.missing(m.model, wanted))
            sent = self.client.upload(
                m.model,
                [(oid, staging.objects.size(oid)) for oid in wanted if oid in missing],
                lambda oid: staging.objects.get(oid, verify=False),
            )
            doc = m.to_bytes()
            try:
                landed = self.client.send_version(doc)
            except HubRequestError as exc:
                if exc.status == 409:
                    raise DivergedError(str(exc)) from None
                raise
        finally:
            staging.drop()
            self.dst.loc.fs.forget_refs()  # this process changed them
        self.dst.invalidate(m.id)
        return thin, Landed(str(landed["ref"]), int(landed["raw_bytes"]), sent + len(doc))

    def move_tag(self, model: str, alias: str, vid: str, before: str | None) -> None:
        resp = self.client.set_tag(model, check_alias(alias), vid, before)
        self.dst.loc.fs.forget_refs()
        if resp.status_code == 409:
            if self.dst.refs.tags(model).get(alias) != vid:
                raise _moved(model, alias, self.dst.url)
            return
        self.client.check(resp, f"moving {model}@{alias}")


def _moved(model: str, alias: str, url: str) -> DivergedError:
    return DivergedError(
        f"{model}@{alias} moved in {url} during the transfer (the versions arrived; "
        "the alias did not move): run the transfer again to decide on it"
    )


def sink_for(dst: RepoStore) -> StoreSink | HubSink:
    from modelhub_torch.hub.fs import is_hub

    return HubSink(dst) if is_hub(dst) else StoreSink(dst)
