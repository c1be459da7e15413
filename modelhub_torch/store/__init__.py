"""Where bytes live: content-addressed objects, small refs, the lock and the SQLite index."""

from modelhub_torch.store.location import Location
from modelhub_torch.store.objects import ObjectStore
from modelhub_torch.store.refs import RefStore

__all__ = ["Location", "ObjectStore", "RefStore"]
