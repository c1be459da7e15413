"""Run an archive and die (os._exit, no cleanup) at the K-th call of one step.

usage: archive_killed.py REPO STEP K [ALGORITHM]
STEP: put (manifest objects), pack (pack objects renamed into place), journal (right
after the journal is written), switch (ref switches), delete (old objects removed).
"""

import os
import sys

from modelhub_torch import Repository
from modelhub_torch.store import objects, refs, switch

root, step, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
algorithm = sys.argv[4] if len(sys.argv) > 4 else "mst"
calls = [0]


def tripwire(fn, after=False):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] > k and not after:
            os._exit(9)
        out = fn(*args, **kwargs)
        if calls[0] > k and after:
            os._exit(9)
        return out

    return wrapped


repo = Repository(root)
if step == "put":
    objects.ObjectStore.put = tripwire(objects.ObjectStore.put)
elif step == "pack":
    objects.ObjectWriter.commit = tripwire(objects.ObjectWriter.commit)
elif step == "journal":
    switch.write_switch = tripwire(switch.write_switch, after=True)
elif step == "switch":
    refs.RefStore.set_manifest = tripwire(refs.RefStore.set_manifest)
elif step == "delete":
    objects.ObjectStore.delete = tripwire(objects.ObjectStore.delete)
else:
    raise SystemExit(f"unknown step {step}")
repo.archive(8.0, algorithm=algorithm)
print("finished")
