"""Moving versions between two repositories: push, pull, clone.

negotiate.py decides what moves (have/want by version id, divergence checks),
thin.py encodes a version against a base the destination holds (git's thin packs),
receive.py verifies and publishes it in the destination's own layout, and
transfer.py runs the whole exchange; complete.py finishes a version pulled with
only its top byte planes. Everything here takes store-level objects (RepoStore).
"""

from modelhub_torch.sync.report import SyncReport

__all__ = ["SyncReport"]
